"""``evaluate.py``: run a policy on the devices, judge every episode, write the results.

The same fixed-rate loop, timing and dataset writer as ``record.py`` (:class:`Recorder`), with a
:class:`~rlbench_sms.runtime.policy_runner.PolicyRunner` as the action source. Before anything
moves, the policy's contract is checked against the devices' schemas (one line naming every
difference). Every episode is recorded (observations, the actions actually sent, the success
flag) as a LeRobot dataset, under the run directory unless ``dataset.root`` says where; each
episode's first policy camera is also copied out as its own mp4 (stream copy, no re-encoding).

Success: in the twin from its detector (``sim/success``). Results: ``eval.json`` and
``summary.md`` in the run directory (:mod:`rlbench_sms.runtime.eval_report`).

Exit codes as ``record.py``: 0 done (or stopped by the user), 2 a required setting missing,
1 a device, dataset, contract or policy error, with one line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlbench_sms.cli import EXIT_CONFIG, EXIT_FAILED, check_required, hydra_runtime
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.layout import atomic_write_json
from rlbench_sms.features import image_key
from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.runtime.clock import clock_of
from rlbench_sms.runtime.contract import ContractError, check_devices, load_contract, resolution_notes
from rlbench_sms.runtime.eval_report import EpisodeOutcome, outcome_from_metadata, rate_line, write_results
from rlbench_sms.runtime.inference import InferenceError, InferencePolicy
from rlbench_sms.runtime.keyboard import TerminalKeys
from rlbench_sms.runtime.policy_runner import PolicyRunner, RunnerConfig
from rlbench_sms.runtime.record_app import open_dataset
from rlbench_sms.runtime.recorder import (VERDICT_KEY, Recorder, RecordingConfig, StatusLine, check_time_bases,
                                          recording_features)

log = logging.getLogger(__name__)

SUCCESS_KEY = "sim/success"       # the twin's detector verdict in the episode metadata
RUN_FILE = "run.json"             # read by the sweep summary (rlbench_sms.training.sweep_summary)
COMPLETED, FAILED = "completed", "failed"
VIDEOS_DIR = "videos"


def build_policy(cfg: DictConfig):
    """The :class:`InferencePolicy` for ``inference``: a :class:`~rlbench_sms.serving.client.RemotePolicy`
    when ``inference.server`` names a policy server (``inference=remote``, or ``inference=async
    server=...``), else the policy in this process."""
    inference = cfg.inference
    server = inference.get("server")
    if server:
        from rlbench_sms.serving.client import CLIENT_SETTINGS, RemotePolicy

        settings = {key: inference[key] for key in CLIENT_SETTINGS if inference.get(key) is not None}
        return RemotePolicy(str(server), inference.get("token"), **settings)
    if inference.get("transport") == "remote":
        raise ContractError("inference=remote needs the policy server's address: server=gpu-box:8765 "
                            "(python -m rlbench_sms.serving.server policy_path=... runs one)")
    from rlbench_sms.runtime.local_policy import LocalPolicy

    return LocalPolicy(cfg.policy_path, device=str(inference.device), vlm_path=cfg.get("vlm_path"),
                       num_threads=inference.get("num_threads"))


def runner_config(inference: DictConfig) -> RunnerConfig:
    keys = RunnerConfig.__dataclass_fields__
    return RunnerConfig(**{k: v for k, v in OmegaConf.to_container(inference, resolve=True).items() if k in keys})


def held_out_seed(cfg: DictConfig) -> int:
    """The twin's first layout seed: ``held_out_seed_base + seed * held_out_seed_stride``, so that
    evaluation layouts are never the recorded training ones (recordings start at sim.seed=0)."""
    return int(cfg.held_out_seed_base) + int(cfg.seed) * int(cfg.held_out_seed_stride)


def episode_video(writer_root: Path, run_dir: Path, camera_key: str, index: int) -> str | None:
    """Copy episode ``index`` of ``camera_key`` out of the dataset into ``run_dir/videos``."""
    from rlbench_sms.data.metadata import DatasetMeta
    from rlbench_sms.data.video import copy_segment

    meta = DatasetMeta.load(writer_root)
    episode = next((e for e in meta.episodes if e.index == index), None)
    span = episode.videos.get(camera_key) if episode is not None else None
    if span is None:
        return None
    out = run_dir / VIDEOS_DIR / f"episode_{index:03d}.mp4"
    out.parent.mkdir(parents=True, exist_ok=True)
    copy_segment(span.path, span.from_timestamp, span.to_timestamp, out)
    return str(out.relative_to(run_dir))


class EvaluationError(Exception):
    """Why an evaluation could not run or finish, in one line; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def evaluate(cfg: DictConfig, keys: TerminalKeys | None = None, status: StatusLine | None = None,
             policy: InferencePolicy | None = None) -> int:
    """Run the evaluation ``cfg`` describes; returns the exit code. Every run folder gets a
    ``run.json`` (status, overrides, the success rate and timing as metrics, or the error) that the
    sweep summary of ``evaluate.py -m`` reads. ``policy``: an :class:`InferencePolicy` to evaluate
    instead of the one ``policy_path`` / ``inference`` name (a benchmark's replay of the expert)."""
    problem = check_required(cfg)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else Path(HydraConfig.get().runtime.output_dir)
    started = time.monotonic()
    try:
        result = run_evaluation(cfg, run_dir, keys, status, policy)
    except EvaluationError as error:
        print(f"error: {error}", file=sys.stderr)
        write_run_record(run_dir, cfg, FAILED, time.monotonic() - started, error=str(error))
        return error.code
    write_run_record(run_dir, cfg, COMPLETED, time.monotonic() - started, summary=result["summary"])
    return 0


def write_run_record(run_dir: Path, cfg: DictConfig, status: str, duration_s: float,
                     summary: Mapping[str, Any] | None = None, error: str | None = None) -> None:
    """``run.json`` as the sweep summary reads it (training writes the same shape)."""
    metrics = {}
    if summary is not None:
        low, high = summary["wilson95"]
        metrics = {"eval/success_rate": summary["success_rate"], "eval/wilson95_low": low, "eval/wilson95_high": high,
                   "eval/mean_episode_time_s": summary["mean_episode_time_s"],
                   "eval/latency_p50_ms": summary["latency_p50_ms"], "eval/empty_queue_ticks": summary["empty_queue_ticks"]}
    overrides, _, _ = hydra_runtime()
    record = {"status": status, "overrides": redacted(overrides),
              "metrics": {k: v for k, v in metrics.items() if v is not None}, "duration_s": duration_s,
              "error": error, "seed": int(cfg.seed), "policy": policy_name(cfg)}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RUN_FILE, record)


def policy_name(cfg: DictConfig) -> str:
    """What the results call the policy: its directory, or the server it runs on."""
    server = cfg.inference.get("server")
    return str(cfg.policy_path) if cfg.get("policy_path") else f"policy server {server}" if server else "?"


SECRET_KEYS = ("token",)          # never written to eval.json or run.json
REDACTED = "<redacted>"


def redacted(overrides: list[str]) -> list[str]:
    """Command-line overrides with the value of every ``token`` key hidden."""
    out = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        out.append(f"{item.split('=', 1)[0]}={REDACTED}" if key.rsplit(".", 1)[-1] in SECRET_KEYS else item)
    return out


def prepare(cfg: DictConfig, policy: InferencePolicy | None = None):
    """The contract, the devices (built, not connected) and the policy, checked against each other.
    With a policy server the contract comes from its handshake (no policy files on this machine);
    otherwise from ``policy_path``."""
    try:
        if policy is None and (cfg.inference.get("server") or cfg.inference.get("transport") == "remote"):
            policy = build_policy(cfg)          # remote: the server's handshake carries the contract
        if policy is None and not cfg.get("policy_path"):
            raise EvaluationError("policy_path is required, e.g. policy_path=outputs/train/runs/<time>/policy/best "
                                  "(or inference=remote server=host:port for a policy server)", EXIT_CONFIG)
        contract = policy.contract if policy is not None else load_contract(cfg.policy_path)
        rename = dict(cfg.get("rename") or {})
        if "sim" in cfg and cfg.sim is not None:
            cfg.sim.seed = held_out_seed(cfg)
        robot = instantiate(cfg.robot)
        if hasattr(robot, "stop_on_success"):          # the twin judges every tick
            robot.stop_on_success = bool(cfg.stop_on_success)
        cameras = {name: instantiate(c) for name, c in (cfg.get("cameras") or {}).items()}
        force_sensor = instantiate(cfg.force_sensor) if cfg.get("force_sensor") else None
        sensors = [instantiate(cfg.tip)] if cfg.get("tip") else []
        # Before anything connects or moves: can these devices feed this policy?
        features = {f.key: f for f in recording_features(robot, cameras, force_sensor, sensors)}
        check_devices(contract, features, int(cfg.fps), rename, where=policy_name(cfg))
        for note in resolution_notes(contract, features, rename):
            print(f"note: {note}", file=sys.stderr)
        task = cfg.get("task") or next(iter(contract.extra.get("tasks") or []), None)
        if not task:
            raise EvaluationError(f"task is required: {policy_name(cfg)} does not name the task it was trained "
                                  f"on (e.g. task=\"pick the red cube\")", EXIT_CONFIG)
        policy = policy if policy is not None else build_policy(cfg)
    except (ContractError, HardwareError, InferenceError, ValueError, FileNotFoundError) as error:
        raise EvaluationError(str(error)) from None
    return contract, rename, robot, cameras, force_sensor, sensors, str(task), policy


def run_evaluation(cfg: DictConfig, run_dir: Path, keys: TerminalKeys | None = None,
                   status: StatusLine | None = None, policy: InferencePolicy | None = None) -> dict[str, Any]:
    """Evaluate, write ``eval.json`` / ``summary.md`` / the videos; returns ``eval.json``'s content."""
    contract, rename, robot, cameras, force_sensor, sensors, task, policy = prepare(cfg, policy)
    root = Path(cfg.dataset.root) if cfg.dataset.get("root") else run_dir / "dataset"
    config = RecordingConfig(single_task=task, fps=int(cfg.fps), num_episodes=int(cfg.episodes),
                             episode_time_s=float(cfg.episode_time_s), reset_time_s=float(cfg.reset_time_s),
                             store_sent_action=True, **OmegaConf.to_container(cfg.recording))
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(policy.close)
            devices = [robot, *cameras.values()] + ([force_sensor] if force_sensor else []) + sensors
            for device in devices:
                stack.enter_context(device)
            clock = clock_of(devices)       # after connecting: the twin's devices own its clock then
            check_time_bases(clock, cameras, force_sensor, sensors)
            runner = PolicyRunner(policy, runner_config(cfg.inference), fps=int(cfg.fps),
                                  simulated=getattr(clock, "time_base", "monotonic") == "sim",
                                  seed=int(cfg.seed), rename=rename)
            stack.enter_context(runner)
            features = recording_features(robot, cameras, force_sensor, sensors)
            writer = open_dataset(root, config.fps, features, getattr(robot, "robot_type", robot.name),
                                  bool(cfg.dataset.resume), instantiate(cfg.dataset.video),
                                  instantiate(cfg.dataset.depth))
            stack.enter_context(writer)
            # On a real arm the operator judges each episode; the twin's detector judges its own.
            config.ask_verdict = not runner.simulated
            keys = keys if keys is not None else TerminalKeys(verdicts=not runner.simulated)
            summary = Recorder(robot, runner, cameras, force_sensor, writer, config, keys=keys, status=status,
                               clock=clock, sensors=sensors).run()
    except (DatasetError, HardwareError, InferenceError) as error:
        raise EvaluationError(str(error)) from None
    outcomes = judge(summary.episodes, int(cfg.fps), config.single_task)
    if contract.cameras:
        # The first camera the policy reads, under its device name.
        reverse = {policy_name: device for device, policy_name in rename.items()}
        device_camera = image_key(reverse.get(contract.cameras[0], contract.cameras[0]))
        for outcome in outcomes:
            outcome.video = episode_video(root, run_dir, device_camera, outcome.index)
    inference = {k: (REDACTED if k in SECRET_KEYS and v is not None else v)
                 for k, v in OmegaConf.to_container(cfg.inference, resolve=True).items()}
    header = {"policy_path": policy_name(cfg), "contract_source": contract.source, "modality": contract.modality,
              "inference": str(cfg.inference.mode), "robot": OmegaConf.select(cfg, "robot._target_"),
              "rename": rename, "seed": int(cfg.seed), "dataset": str(root),
              "sim": ({"task": cfg.sim.task, "first_layout_seed": int(cfg.sim.seed)} if "sim" in cfg else None),
              "inference_config": inference}
    result = write_results(run_dir, header, outcomes)
    print(f"success {rate_line(result['summary'])} over {len(outcomes)} episode(s); "
          f"results in {run_dir}/eval.json and summary.md" + (" - stopped early" if summary.stopped_early else ""))
    return result


VERDICT_SUCCESS = {"success": True, "failure": False, "discard": None}


def judge(episodes, fps: int, default_task: str) -> list[EpisodeOutcome]:
    """Each recorded episode's outcome: the twin's detector verdict, else the operator's (an
    episode nobody judged, or discarded, is left out of the rate)."""
    outcomes = []
    for episode in episodes:
        extra: Mapping[str, Any] = episode.extra
        success = extra.get(SUCCESS_KEY)
        if success is None:
            success = VERDICT_SUCCESS.get(str(extra.get(VERDICT_KEY)))
        outcomes.append(outcome_from_metadata(episode.index, episode.frames, fps, extra,
                                              episode.task or default_task,
                                              None if success is None else bool(success)))
    return outcomes


__all__ = ["evaluate", "run_evaluation", "held_out_seed", "EvaluationError"]
