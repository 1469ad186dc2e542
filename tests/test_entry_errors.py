"""Every entry point reports a missing setting, or a failure, in ONE line on stderr.

A required setting left ``???`` is named with its full key and a pasteable example, exit code 2,
no traceback; a failure carries its root cause (Hydra's instantiation wrapper removed); every
tool's ``--help`` opens with whole sentences.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlbench_sms.cli import EXIT_CONFIG, EXIT_FAILED, doc_description, error_line, example_for, run_checked

REPO = Path(__file__).parent.parent
CONF = REPO / "conf"
RECORD, TRAIN = [str(REPO / "record.py")], [str(REPO / "train.py")]
TELEOPERATE = ["-m", "rlbench_sms.tools.teleoperate"]
REPLAY = ["-m", "rlbench_sms.tools.replay"]
CALIBRATE = ["-m", "rlbench_sms.tools.calibrate"]

# (command, the keys its one line must name); the record cases give the task so that the device
# key is the one reported.
MISSING_CASES = [
    (RECORD + ["robot=so100", "dataset.single_task=pick"], ["robot.config.port"]),
    (RECORD + ["camera=realsense", "dataset.single_task=pick"], ["cameras.front.config.serial_number"]),
    (RECORD + ["force_sensor=serial", "dataset.single_task=pick"], ["force_sensor.config.port"]),
    (RECORD + ["teleop=so100_leader", "dataset.single_task=pick"], ["teleop.config.port"]),
    (RECORD, ["dataset.single_task"]),
    (RECORD + ["robot=so100", "camera=[realsense,opencv_wrist]"],
     ["robot.config.port", "cameras.front.config.serial_number", "cameras.wrist.config.index_or_path",
      "dataset.single_task"]),
    (TELEOPERATE + ["robot=so100", "teleop=so100_leader"], ["robot.config.port", "teleop.config.port"]),
    (REPLAY, ["dataset.root"]),
    (TRAIN + ["experiment=demo", "dataset=lerobot"], ["dataset.repo_id"]),
    (CALIBRATE + ["robot=so100"], ["robot.config.port"]),
    (CALIBRATE + ["teleop=so101_leader"], ["teleop.config.port"]),
]


def run_entry(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    hydra_args = [] if args[:2] == CALIBRATE else [f"paths.output_dir={tmp_path / 'out'}"]
    return subprocess.run([sys.executable, *args, *hydra_args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)


def only_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def case_id(args: list[str]) -> str:
    entry = args[1].rsplit(".", 1)[-1] if args[0] == "-m" else Path(args[0]).stem
    return " ".join([entry, *(a for a in args[2 if args[0] == "-m" else 1:] if "single_task" not in a)])


@pytest.mark.parametrize("args,keys", MISSING_CASES, ids=[case_id(a) for a, _ in MISSING_CASES])
def test_a_missing_setting_is_one_line_naming_the_key_and_an_example(args, keys, tmp_path):
    proc = run_entry(args, tmp_path)
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    line = only_line(proc.stderr)
    assert line.startswith("error: ") and "Traceback" not in proc.stderr
    for key in keys:
        assert f"{key}={example_for(key)}" in line, line       # the example is written as an override
    assert ("is required" if len(keys) == 1 else "are required") in line


def test_a_missing_value_met_while_building_is_the_same_one_line(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cfg = OmegaConf.create({"fps": 30})
    late = OmegaConf.create({"robot": {"_target_": "builtins.dict", "port": "???"}})
    code = run_checked(lambda: instantiate(late.robot), cfg, "recording failed")
    assert code == EXIT_CONFIG
    assert only_line(capsys.readouterr().err) == "error: robot.port is required"


def test_a_failure_names_its_root_cause_and_the_config_key(capsys, monkeypatch):
    """``train.py trainer=gpu`` on a CPU machine: the cause, not Hydra's "Error in call to target"."""
    import torch

    from rlbench_sms.training import run

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: trainer=gpu builds")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=demo", "trainer=gpu", "run_dir=unused"])
    monkeypatch.setattr(run, "train", lambda cfg: run.build_trainer(cfg, [], []))   # what fit() builds first
    assert run.main(cfg) == EXIT_FAILED
    assert only_line(capsys.readouterr().err) == (
        "training failed: trainer: MisconfigurationException: No supported gpu backend found! "
        "(full traceback: HYDRA_FULL_ERROR=1)")


def test_error_line_keeps_the_cause_of_a_wrapped_error():
    def load():
        try:
            {}["policy"]
        except KeyError as error:
            raise RuntimeError("cannot load the policy") from error

    with pytest.raises(RuntimeError) as caught:
        load()
    assert error_line(caught.value) == "RuntimeError: cannot load the policy (cause: KeyError: 'policy')"


def test_calibrate_names_the_arm_options_in_one_line(capsys):
    from rlbench_sms.tools.calibrate import main

    assert main(["robot=so99"]) == EXIT_CONFIG
    line = only_line(capsys.readouterr().err)
    assert "robot/so99" in line and "so100" in line and "so101" in line


# ------------------------------------------------------------------ --help
HELP_TOOLS = ["rlbench_sms.tools.calibrate", "rlbench_sms.tools.export_frames", "rlbench_sms.tools.find_cameras",
              "rlbench_sms.tools.find_ports", "rlbench_sms.tools.visualize", "rlbench_sms.data.sample",
              "rlbench_sms.data.validate", "rlbench_sms.training.sweep_summary"]


@pytest.mark.parametrize("module", HELP_TOOLS)
def test_help_opens_with_whole_sentences(module, capsys):
    tool = importlib.import_module(module)
    with pytest.raises(SystemExit) as done:
        tool.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {module} ")
    description = " ".join(out.split("\n\n")[1].split())        # the paragraph after the usage
    assert description[-1] in ".?!)", description
    assert description.count("(") == description.count(")"), description
    assert "``" not in description


def test_help_names_the_module_when_run_with_dash_m(tmp_path):
    """``prog`` is spelled out: ``__name__`` would be ``__main__`` under ``python -m``."""
    proc = subprocess.run([sys.executable, "-m", "rlbench_sms.training.sweep_summary", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m rlbench_sms.training.sweep_summary ")


def test_doc_description_takes_the_whole_first_paragraph():
    doc = """Export an episode's frames: RGB to PNG, depth to 16-bit PNG (millimetres,
    exact), with ``--every``::

        python -m tool ROOT
    """
    assert doc_description(doc) == "Export an episode's frames: RGB to PNG, depth to 16-bit PNG (millimetres, " \
                                   "exact), with --every:"


# (command line, what its one line must say): what Hydra itself would print over many lines.
BAD_OVERRIDE_CASES = [
    (TRAIN + ["modality=rgb+sonar"], ["modality/rgb+sonar", "rgb+depth+force"]),
    (TRAIN + ["-m", "modality=rgb,rgb+sonar", "seed=0,1"], ["modality/rgb+sonar"]),     # any job of a sweep
    (TRAIN + ["trainer.max_stepz=3"], ["trainer.max_stepz"]),
    (TRAIN + ["seed=1=="], ["seed=1=="]),
    (RECORD + ["robot=so99"], ["robot/so99", "so100"]),
    (TELEOPERATE + ["teleop=so99_leader"], ["teleop/so99_leader"]),
    (REPLAY + ["robot=so99"], ["robot/so99"]),
]


@pytest.mark.parametrize("args,says", BAD_OVERRIDE_CASES, ids=[" ".join(a[-2:]) for a, _ in BAD_OVERRIDE_CASES])
def test_a_command_line_that_does_not_compose_is_one_line(args, says, tmp_path):
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"})
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    line = only_line(proc.stderr)
    assert line.startswith("error: ") and all(s in line for s in says), line
    assert not (tmp_path / "outputs").exists()             # stopped before Hydra made a run folder


def test_ctrl_c_outside_the_loop_is_one_line_and_exit_130(capsys):
    """Ctrl-C while devices connect or a model loads: no KeyboardInterrupt traceback."""
    def body():
        raise KeyboardInterrupt

    assert run_checked(body, OmegaConf.create({}), "recording failed") == 130
    assert capsys.readouterr().err.strip() == "recording stopped (Ctrl-C)"
