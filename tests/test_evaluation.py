"""evaluate.py: the contract check before anything moves, the results, and a run in the twin."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from policy_factory import FORCE_SPEC, make_export
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.features import ACTION, FORCE, STATE, FeatureSpec, depth_key, force_feature, image_key, joint_feature
from rlbench_sms.runtime.contract import (ContractError, PolicyContract, check_devices, contract_problems,
                                          load_contract, resolution_notes)
from rlbench_sms.runtime.eval_report import EpisodeOutcome, summarize, summary_markdown, wilson_interval

REPO = Path(__file__).resolve().parents[1]
FPS = 30


# ------------------------------------------------------------------------- Wilson interval
@pytest.mark.parametrize("wins, n, low, high", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0), (1, 50, 0.0035, 0.1050),
    (45, 50, 0.7864, 0.9565)])
def test_wilson_interval_matches_the_textbook_values(wins, n, low, high):
    lo, hi = wilson_interval(wins, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_summary_leaves_discarded_episodes_out_of_the_rate():
    outcomes = [EpisodeOutcome(0, True, 10.0, 300), EpisodeOutcome(1, None, 4.0, 120),
                EpisodeOutcome(2, False, 20.0, 600)]
    summary = summarize(outcomes)
    assert (summary["judged"], summary["discarded"], summary["successes"]) == (2, 1, 1)
    assert summary["success_rate"] == 0.5 and summary["mean_episode_time_s"] == pytest.approx(34 / 3)
    table = summary_markdown({"policy_path": "p"}, summary, outcomes)
    assert "1/2 = 50.0 %" in table and "| 1 |" in table and "discarded" in table


# ------------------------------------------------------------------------- the contract
def rig(cameras=("front", "wrist"), depth=("front",), force_channels=6) -> dict[str, FeatureSpec]:
    features = {STATE: joint_feature(STATE), ACTION: joint_feature(ACTION)}
    for cam in cameras:
        features[image_key(cam)] = FeatureSpec(image_key(cam), "video", (48, 64, 3))
    for cam in depth:
        features[depth_key(cam)] = FeatureSpec(depth_key(cam), "video", (48, 64, 1))
    if force_channels:
        features[FORCE] = force_feature([f"f{i}" for i in range(force_channels)])
    return features


def policy_contract(**kw) -> PolicyContract:
    inputs = rig(**kw)
    action = inputs.pop(ACTION)
    return PolicyContract(inputs, action, FPS, 50, 50, 10, "rgb+depth+force")


def test_devices_that_match_pass_and_extra_features_are_ignored():
    check_devices(policy_contract(), rig(cameras=("front", "wrist", "side")), FPS)


@pytest.mark.parametrize("devices, message", [
    (dict(cameras=("front",)), "camera 'wrist', the devices have front"),
    (dict(depth=()), "depth observation.images.front_depth, but camera 'front' gives no depth"),
    (dict(force_channels=3), "observation.force: the policy reads 6 channels, the device gives 3"),
    (dict(force_channels=0), "no force sensor"),
])
def test_each_mismatch_is_named(devices, message):
    problems = contract_problems(policy_contract(), rig(**devices), FPS)
    assert len(problems) == 1 and message in problems[0]


def test_another_fps_and_everything_at_once_in_one_line():
    with pytest.raises(ContractError) as error:
        check_devices(policy_contract(), rig(cameras=("front",), force_channels=3), 15, where="run/policy/best")
    text = str(error.value)
    assert "\n" not in text and text.startswith("run/policy/best: the devices cannot feed this policy")
    assert "runs at 30 fps, the loop at 15 (set fps=30)" in text and "'wrist'" in text and "gives 3" in text


def test_rename_maps_device_cameras_to_policy_cameras():
    devices = rig(cameras=("top", "hand"), depth=("top",))
    assert len(contract_problems(policy_contract(), devices, FPS)) == 3
    assert contract_problems(policy_contract(), devices, FPS, rename={"top": "front", "hand": "wrist"}) == []
    bad = contract_problems(policy_contract(), devices, FPS, rename={"side": "front"})
    assert any("rename names the camera 'side'" in p for p in bad)


def test_another_resolution_is_a_note_not_a_refusal():
    devices = rig()
    devices[image_key("front")] = FeatureSpec(image_key("front"), "video", (480, 640, 3))
    assert contract_problems(policy_contract(), devices, FPS) == []
    assert resolution_notes(policy_contract(), devices) == [
        "observation.images.front: trained at 64x48, the camera gives 640x480 (resized)"]


def test_a_lerobot_checkpoint_gets_its_contract_from_config_json(tmp_path, caplog):
    config = {"type": "smolvla", "chunk_size": 50, "n_action_steps": 20, "resize_imgs_with_padding": [512, 512],
              "input_features": {STATE: {"type": "STATE", "shape": [6]},
                                 "observation.images.top": {"type": "VISUAL", "shape": [3, 480, 640]}},
              "output_features": {ACTION: {"type": "ACTION", "shape": [6]}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        contract = load_contract(tmp_path)
    assert contract.source == "lerobot" and contract.fps is None and contract.n_action_steps == 20
    assert contract.inputs["observation.images.top"].shape == (480, 640, 3)
    assert "derived from config.json" in caplog.text
    # No fps in a LeRobot config: any loop rate; the camera must still be there (or renamed).
    devices = rig(cameras=("front",), depth=(), force_channels=0)
    assert contract_problems(contract, devices, 15, rename={"front": "top"}) == []
    assert PolicyContract.from_dict(contract.to_dict()) == contract


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "no such policy directory"),
    (lambda d: d.mkdir(), "config.json is missing"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{nope")), "not valid JSON"),
])
def test_a_policy_directory_that_is_not_one_is_one_line(tmp_path, setup, message):
    directory = tmp_path / "policy"
    setup(directory)
    with pytest.raises(ContractError, match=message):
        load_contract(directory)


# ------------------------------------------------------------------------- in the twin
SIM_SIZE = ["sim.width=64", "sim.height=48", "sim.wrist_width=64", "sim.wrist_height=48"]


@pytest.fixture(scope="module")
def exported(small_sample, tiny_vlm_dir, tmp_path_factory):
    """A tiny random rgb+force policy over the twin sample's features (48x64 cameras)."""
    return make_export(tmp_path_factory.mktemp("export") / "best", small_sample, tiny_vlm_dir,
                       modality="rgb+force", branches=FORCE_SPEC)


def eval_config(policy: Path, run_dir: Path, cache: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=[f"policy_path={policy}", f"run_dir={run_dir}", f"sim.cache_dir={cache}",
                                              "episodes=2", "episode_time_s=0.5", *SIM_SIZE, *overrides])


def test_evaluate_in_the_twin_records_judges_and_reports(exported, tmp_path, capsys):
    from rlbench_sms.runtime.evaluation import evaluate

    cache = tmp_path / "cache"
    code = evaluate(eval_config(exported, tmp_path / "run", cache, "inference.sim_latency_ms=100"))
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads((tmp_path / "run/eval.json").read_text())
    episodes = result["episodes"]
    assert [e["seed"] for e in episodes] == [100000, 100001]          # held-out layouts
    assert all(e["success"] is False for e in episodes)               # a random policy
    assert all(e["frames"] == 15 and e["chunks"] == 2 for e in episodes)   # 8-action chunks, 15 ticks
    assert all(e["empty_queue_ticks"] == 6 for e in episodes)          # 100 ms = 3 ticks per chunk
    assert result["summary"]["wilson95"][1] == pytest.approx(wilson_interval(0, 2)[1])
    assert "success 0/2 = 0.0 %" in out.out
    assert (tmp_path / "run/summary.md").read_text().count("videos/episode_00") == 2
    from rlbench_sms.data.video import probe_video

    assert probe_video(tmp_path / "run/videos/episode_001.mp4").num_frames == 15
    # The evaluation episodes are a dataset: validate passes; the actions are those sent.
    check = subprocess.run([sys.executable, "-m", "rlbench_sms.data.validate", str(tmp_path / "run/dataset")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    meta = DatasetMeta.load(tmp_path / "run/dataset")
    assert [bool(e.extra["sim/success"]) for e in meta.episodes] == [False, False]
    assert meta.episodes[0].extra["inference/chunks"] == 2


def test_evaluate_is_deterministic_for_a_seed(exported, tmp_path):
    from rlbench_sms.data.reader import DatasetReader
    from rlbench_sms.runtime.evaluation import evaluate

    actions = []
    for run in ("a", "b"):
        assert evaluate(eval_config(exported, tmp_path / run, tmp_path / "cache", "episodes=1")) == 0
        with DatasetReader(tmp_path / run / "dataset") as reader:
            actions.append(reader.load_columns([ACTION])[ACTION])
    np.testing.assert_array_equal(actions[0], actions[1])
    assert np.ptp(actions[0], axis=0).max() > 0          # the policy did move the arm


def test_evaluate_refuses_devices_that_cannot_feed_the_policy_before_anything_moves(exported, tmp_path, capsys):
    from rlbench_sms.runtime.evaluation import evaluate

    code = evaluate(eval_config(exported, tmp_path / "run", tmp_path / "cache", "~force_sensor"))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "the devices cannot feed this policy: the policy reads observation.force" in err
    # Nothing was recorded; the run folder says why (a sweep's summary lists it as failed).
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.json"]
    record = json.loads((tmp_path / "run/run.json").read_text())
    assert record["status"] == "failed" and "observation.force" in record["error"]


def test_evaluate_py_without_a_policy_path_is_one_line():
    run = subprocess.run([sys.executable, "evaluate.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "policy_path" in run.stderr and run.stderr.count("\n") == 1, run.stderr


# ------------------------------------------------------------------------- a real arm: the operator judges
class OperatorKeys:
    """A terminal with an operator who presses ``script[n]`` at the n-th poll."""

    def __init__(self, script):
        import io

        from rlbench_sms.runtime.keyboard import TerminalKeys

        self.keys = TerminalKeys(io.StringIO(), verdicts=True)
        self.script, self.polls = dict(script), 0
        self.help = self.keys.help

    attached = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def poll(self):
        self.polls += 1
        if self.polls in self.script:
            self.keys.feed(self.script.pop(self.polls))
        return self.keys.poll()


def test_on_a_real_arm_the_operator_judges_each_episode(exported, tmp_path, capsys):
    """Mock hardware on the wall clock: 's' during episode 0 ends it as a success; episode 1 runs
    out and the operator answers 'f' when asked; 'd' discards episode 2 (left out of the rate)."""
    from rlbench_sms.runtime.evaluation import evaluate

    cfg = eval_config(exported, tmp_path / "run", tmp_path / "cache", "robot=mock", "camera=mock",
                      "force_sensor=mock", "episodes=3", "reset_time_s=0")
    keys = OperatorKeys({5: "s", 25: "f", 30: "d"})
    assert evaluate(cfg, keys=keys) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "run/eval.json").read_text())
    assert [e["success"] for e in result["episodes"]] == [True, False, None]
    assert [e["frames"] for e in result["episodes"]][0] == 5
    assert result["summary"]["successes"] == 1 and result["summary"]["judged"] == 2
    meta = DatasetMeta.load(tmp_path / "run/dataset")
    assert [e.extra["eval/verdict"] for e in meta.episodes] == ["success", "failure", "discard"]
    assert "trained at 64x48, the camera gives 640x480" in capsys.readouterr().err


def test_an_evaluation_sweep_writes_a_table_and_a_plot(exported, tmp_path):
    """`evaluate.py -m ... seed=0,1`: every run records run.json; the sweep summary reads them."""
    run = subprocess.run(
        [sys.executable, "evaluate.py", "-m", f"policy_path={exported}", "seed=0,1", "episodes=1", "episode_time_s=0.3",
         f"sim.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path}", *SIM_SIZE],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "MPLBACKEND": "Agg"})
    assert run.returncode == 0, run.stderr[-2000:]
    sweep = next((tmp_path / "evaluate/multiruns").iterdir())
    table = (sweep / "summary.md").read_text()
    assert "eval/success_rate" in table and "2/2" in table
    assert (sweep / "summary.png").stat().st_size > 0
    records = sorted(json.loads(p.read_text())["seed"] for p in sweep.rglob("run.json"))
    assert records == [0, 1]


# ------------------------------------------------------------------------- the expert, replayed
@pytest.fixture(scope="module")
def expert_push(tmp_path_factory):
    """One whole scripted-expert episode of push (seed 7) at 48x64."""
    from optional_deps import require_mujoco_rendering

    require_mujoco_rendering()
    from rlbench_sms.data.sample import SampleConfig, build_sample

    config = SampleConfig(height=48, width=64, episode_seconds=12.0, task="push", instruction="push the cube",
                          cache_dir=str(tmp_path_factory.mktemp("expert_cache")))
    return build_sample(tmp_path_factory.mktemp("expert") / "ds", 1, config, seed=7, show_progress=False)


@pytest.mark.parametrize("inference", [["inference=local"], ["inference=async", "inference.sim_latency_ms=300"]])
def test_the_replayed_expert_succeeds_and_the_episode_stops_at_the_success(expert_push, tmp_path, inference):
    from rlbench_sms.runtime.evaluation import evaluate
    from rlbench_sms.runtime.replay_policy import ReplayPolicy

    cfg = eval_config(expert_push, tmp_path / "run", tmp_path / "cache", "sim.task=push", "held_out_seed_base=7",
                      "episodes=1", "episode_time_s=20", *inference)
    assert evaluate(cfg, policy=ReplayPolicy(expert_push)) == 0
    (episode,) = json.loads((tmp_path / "run/eval.json").read_text())["episodes"]
    assert episode["success"] is True and episode["seed"] == 7
    recorded = DatasetMeta.load(expert_push).episodes[0].length
    assert episode["frames"] < recorded        # stopped at the success, before the recording's end


def test_tokens_never_reach_the_results():
    from rlbench_sms.runtime.evaluation import redacted

    assert redacted(["seed=1", "token=s3cret", "inference.token=abc", "+token=x", "server=gpu:8765"]) == [
        "seed=1", "token=<redacted>", "inference.token=<redacted>", "+token=<redacted>", "server=gpu:8765"]


def test_a_lerobot_pretrained_model_without_our_sidecar_evaluates(small_sample, tiny_vlm_dir, tmp_path, capsys):
    """A checkpoint as LeRobot saves it (no rlbench_sms.json): the contract comes from config.json,
    said in one line; the task must then be given."""
    from rlbench_sms.runtime.evaluation import evaluate

    policy = make_export(tmp_path / "pretrained_model", small_sample, tiny_vlm_dir, modality="rgb")
    (policy / "rlbench_sms.json").unlink()
    cfg = eval_config(policy, tmp_path / "run", tmp_path / "cache", "episodes=1")
    assert evaluate(cfg) == 2
    assert "task is required" in capsys.readouterr().err
    cfg = eval_config(policy, tmp_path / "run", tmp_path / "cache", "episodes=1", "task=push the cube")
    assert evaluate(cfg) == 0
    result = json.loads((tmp_path / "run/eval.json").read_text())
    assert result["contract_source"] == "lerobot" and result["episodes"][0]["task"] == "push the cube"
