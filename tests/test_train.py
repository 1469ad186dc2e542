"""Training end to end on the tiny SmolVLA: config checks, fit, export, resume, sweeps, DDP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from rlbench_sms.policy.smolvla import SmolVLAPolicy
from rlbench_sms.training.export import SIDECAR_FILE, read_export_info
from rlbench_sms.training.plan import ConfigError, plan_training
from rlbench_sms.training.run import RUN_FILE, train
from train_helpers import REPO, compose_train, run_train_script, sweep_overrides, small_run_overrides

PRESETS = ["rgb", "rgb+depth", "rgb+force", "rgb+depth+force", "rgb+tip", "rgb+depth+tip", "rgb+depth+force+tip"]


@pytest.fixture()
def models(tmp_path, tiny_vlm_dir) -> Path:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(tiny_vlm_dir, root / "tiny_smolvlm")
    return root


def demo_cfg(small_sample, models, run_dir, *extra, steps=2):
    return compose_train(["experiment=demo", *small_run_overrides(small_sample, models, run_dir, steps), *extra])


# ------------------------------------------------------------------ config checks
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_switches_branches_and_data_together(preset, small_sample, models, tmp_path):
    cfg = demo_cfg(small_sample, models, tmp_path, f"modality={preset}")
    plan = plan_training(cfg)
    parts = preset.split("+")
    assert plan.modality == preset
    assert sorted(plan.branches) == sorted(p for p in parts if p != "rgb")
    assert ("observation.force" in plan.keys) == ("force" in parts)
    assert ("observation.images.front_depth" in plan.keys) == ("depth" in parts)
    assert ("observation.tip.position" in plan.keys) == ("tip" in parts)
    assert "observation.images.front" in plan.keys and "observation.images.wrist" in plan.keys


@pytest.mark.parametrize("overrides, key", [
    (["modality=rgb+depth", "~policy/branch/depth"], "policy.branch.depth"),
    (["modality=rgb+depth+force", "~policy/branch/force"], "policy.branch.force"),
    (["modality=rgb", "policy/branch/force=mlp"], "policy.branch.force"),
    (["modality=rgb+tip", "dataset.modality=rgb"], "policy.branch.tip"),
    (["dataset.modality=rgb+sonar"], "dataset.modality"),
    (["dataset.modality=depth"], "dataset.modality"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["dataset.root=/nonexistent/dataset"], "dataset.root"),
    (["policy.pretrained_path=/nonexistent/ckpt"], "policy.pretrained_path"),
])
def test_bad_config_is_one_line_naming_the_key(overrides, key, small_sample, models, tmp_path):
    cfg = demo_cfg(small_sample, models, tmp_path, *overrides)
    with pytest.raises(ConfigError) as err:
        plan_training(cfg)
    message = str(err.value)
    assert key in message and "\n" not in message


def test_feature_missing_from_dataset_is_named(tiny_dataset, models, tmp_path):
    # The tiny test dataset has RGB, depth and force but no tip.
    cfg = demo_cfg(tiny_dataset, models, tmp_path, "modality=rgb+tip")
    with pytest.raises(ConfigError, match="tip") as err:
        plan_training(cfg)
    assert "dataset.root" in str(err.value) and "\n" not in str(err.value)


def test_train_script_config_errors_exit_2_with_one_line(small_sample, models, tmp_path):
    args = ["experiment=demo", *small_run_overrides(small_sample, models, None), "modality=rgb+depth",
            "~policy/branch/depth", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_train_script(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "policy.branch.depth" in lines[0]


def test_unknown_modality_preset_names_the_options(small_sample, models, tmp_path):
    proc = run_train_script(["modality=rgb+sonar", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode != 0
    assert "modality/rgb+sonar" in proc.stderr and "rgb+depth+force" in proc.stderr


# ------------------------------------------------------------------ fit + export
def test_demo_trains_exports_and_reloads(small_sample, models, tmp_path):
    run = tmp_path / "run"
    cfg = demo_cfg(small_sample, models, run, "modality=rgb+depth+force+tip", "policy/branch/tip=token", steps=3)
    value = train(cfg)
    record = json.loads((run / RUN_FILE).read_text())
    assert record["status"] == "completed" and record["global_step"] == 3
    assert math.isfinite(value) and value == pytest.approx(record["metrics"]["val/loss"])
    for key in ("train/loss", "val/loss", "val/action_mse"):
        assert math.isfinite(record["metrics"][key])
    assert (run / "csv" / "metrics.csv").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    for which in ("best", "last"):
        export = run / "policy" / which
        info = read_export_info(export)
        assert info["modality"] == "rgb+depth+force+tip" and info["export"] == which
        assert info["branches"]["tip"]["type"] == "token" and info["force_window"] == 10
        assert {"observation.force", "observation.images.front_depth", "action"} <= set(info["features"])
        assert (export / "branches.json").is_file() and (export / "model.safetensors").is_file()
    # The exported directory alone rebuilds the policy (the VLM dir is the one recorded in config.json).
    policy = SmolVLAPolicy.from_pretrained(run / "policy" / "last")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    weights = {k.removeprefix("policy."): v for k, v in ckpt["state_dict"].items()}
    for key, value in policy.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_rgb_only_export_is_a_plain_lerobot_checkpoint(small_sample, models, tmp_path):
    run = tmp_path / "run"
    train(demo_cfg(small_sample, models, run, "modality=rgb"))
    export = run / "policy" / "last"
    assert not (export / "branches.json").exists()
    config = json.loads((export / "config.json").read_text())
    assert config["type"] == "smolvla"
    assert set(config["input_features"]) == {"observation.images.front", "observation.images.wrist",
                                             "observation.state"}
    assert read_export_info(export)["branches"] == {"depth": None, "force": None, "tip": None} or \
        not any(read_export_info(export)["branches"].values())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["state_dict"], ckpt["global_step"]


def test_resume_continues_at_the_same_step_with_the_same_data(small_sample, models, tmp_path):
    straight, first = tmp_path / "straight", tmp_path / "first"
    extra = ["modality=rgb+force", "trainer.val_check_interval=2", "trainer.max_steps=4"]
    train(demo_cfg(small_sample, models, straight, *extra, steps=4))
    # A 4-step run stopped after step 2: its schedule and data order are those of 4 steps.
    train(demo_cfg(small_sample, models, first, *extra[:-1], "trainer.max_steps=2", "data.total_steps=4",
                   "policy.scheduler.total_steps=4", steps=2))
    resumed = tmp_path / "resumed"
    cfg = demo_cfg(small_sample, models, resumed, *extra, f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", steps=4)
    train(cfg)
    a, step_a = _weights(straight / "checkpoints" / "last.ckpt")
    b, step_b = _weights(resumed / "checkpoints" / "last.ckpt")
    assert (step_a, step_b) == (4, 4)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


# ------------------------------------------------------------------ sweeps and DDP
def test_multirun_sweep_with_a_failed_run_writes_a_summary(small_sample, models, tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=demo", *sweep_overrides(small_sample, models), "modality=rgb,rgb+force",
            "seed=0,1", f"hydra.sweep.dir={sweep}"]
    # One more job whose optimiser refuses its learning rate: it must fail alone.
    proc = run_train_script(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = run_train_script(["-m", "experiment=demo", *sweep_overrides(small_sample, models),
                            "modality=rgb", "seed=2", "policy.optimizer.lr=-1", f"hydra.sweep.dir={sweep}"],
                           tmp_path)
    # The failed job makes the sweep exit 1 with one line, after the summary; the 4 runs already in
    # the folder from the first sweep are summarised but do not count for this sweep's status.
    assert bad.returncode == 1, bad.stderr[-2000:]
    assert bad.stderr.strip().splitlines()[-1] == f"sweep: 1 of 1 runs failed; summary: {sweep / 'summary.md'}"
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert "modality=rgb+force,seed=1" in runs and "modality=rgb,policy.optimizer.lr=-1,seed=2" in runs
    failed = json.loads((sweep / "modality=rgb,policy.optimizer.lr=-1,seed=2" / RUN_FILE).read_text())
    assert failed["status"] == "failed" and "learning rate" in failed["error"].lower()
    summary = (sweep / "summary.md").read_text()
    assert "rgb+force" in summary and "±" in summary and "learning rate" in summary.lower()
    assert (sweep / "summary.csv").is_file() and (sweep / "summary.png").stat().st_size > 1000
    # The ablation notebook reads this real sweep too.
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "notebooks" / "ablation_report.ipynb", as_version=4)
    for key, value in {"SWEEP_DIR": sweep, "OUTPUT_DIR": tmp_path / "report", "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(key, str(value))
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    text = "".join(str(o.get("text", "")) + "".join(str(v) for v in o.get("data", {}).values())
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "rgb+force" in text and "±" in text


def test_joblib_sweep_runs_jobs_with_dataloader_workers(small_sample, models, tmp_path):
    # Two jobs at once in loky processes, each starting DataLoader workers (loky leaves its own start
    # method as the process default, which a plain multiprocessing.Process cannot start with).
    sweep = tmp_path / "joblib"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "experiment=demo",
            *sweep_overrides(small_sample, models, num_workers=1), "modality=rgb,rgb+force", f"hydra.sweep.dir={sweep}"]
    proc = run_train_script(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for modality in ("rgb", "rgb+force"):
        record = json.loads((sweep / f"modality={modality}" / RUN_FILE).read_text())
        assert record["status"] == "completed" and record["global_step"] == 2, record["error"]
        # The end-of-run report prints every path whole, on a line of its own.
        for label, path in (("exported policy", record["export_dir"]), ("resume from", record["last_checkpoint"])):
            assert any(line.startswith(f"{label}:") and line.split(":", 1)[1].strip() == path
                       for line in proc.stdout.splitlines()), (label, path)
    assert "2 runs: 2 completed, 0 failed" in (sweep / "summary.md").read_text()


def test_optuna_sweep_returns_the_metric(small_sample, models, tmp_path):
    sweep = tmp_path / "optuna"
    args = ["experiment=demo", "hparams_search=optuna", *sweep_overrides(small_sample, models),
            "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={sweep}"]
    proc = run_train_script(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert math.isfinite(float(results["best_value"])) and "policy.optimizer.lr" in results["best_params"]


def test_ddp_on_two_cpu_processes_writes_one_run_folder(small_sample, models, tmp_path):
    outputs = tmp_path / "outputs"
    run = outputs / "ddp_run"
    args = ["experiment=demo", *small_run_overrides(small_sample, models, None), "trainer=ddp", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.precision=32-true", f"hydra.run.dir={run}"]
    proc = run_train_script(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in outputs.iterdir()] == ["ddp_run"]
    record = json.loads((run / RUN_FILE).read_text())
    assert record["status"] == "completed" and record["global_step"] == 2
    assert (run / "policy" / "last" / SIDECAR_FILE).is_file()
