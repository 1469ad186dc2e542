"""What each inference mode costs the arm, in the twin, through the real serving path.

    python benchmarks/async_vs_sync.py [--latency-ms 300] [--episodes 5] [--task push]

The policy is a replay of the scripted expert (its recorded actions served as 50-action chunks,
:class:`~rlbench_sms.runtime.replay_policy.ReplayPolicy`), so what is measured is the inference
mode, not what a model learnt. ``local`` runs it in this process at zero latency; ``remote`` (ask
when the queue is empty, wait) and ``async`` (ask at half a chunk, merge by timestep, never wait)
go through a policy server on loopback (:mod:`rlbench_sms.serving`) with ``--latency-ms`` of
inference latency injected in simulated time, so the figures do not depend on this machine.

1. A fixed run of 300 executed actions: the ticks the arm stood waiting (empty queue) and ticks
   per executed action. The physical limit: async waits only for its first chunk (1.00 ticks per
   action after it); remote pays the latency at every chunk (1 + ceil(0.3 s x 30 Hz) / 50 = 1.18).
2. ``--episodes`` whole episodes in the twin (layouts the expert was recorded on), stopped at the
   twin's success: success rate and mean episode time. Goal: async within 2 % of local.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("MUJOCO_GL", "egl")

from rlbench_sms.features import FORCE, STATE  # noqa: E402
from rlbench_sms.runtime.policy_runner import PolicyRunner, RunnerConfig  # noqa: E402
from rlbench_sms.runtime.replay_policy import ReplayPolicy  # noqa: E402

FPS = 30
CHUNK = 50
FIXED_ACTIONS = 300
SIZE = {"width": 96, "height": 72}       # small frames: rendering is not what is measured
SEED_BASE = 500                          # the expert's layouts (any seeds the expert solves)


def record_expert(root: Path, task: str, episodes: int, seconds: float) -> Path:
    from rlbench_sms.data.sample import SampleConfig, build_sample

    config = SampleConfig(height=SIZE["height"], width=SIZE["width"], episode_seconds=seconds, task=task,
                          instruction=f"{task} (expert)")
    return build_sample(root, episodes, config, seed=SEED_BASE, show_progress=False)


@contextlib.contextmanager
def served(policy):
    """``policy`` behind a loopback policy server; yields a connected RemotePolicy."""
    from rlbench_sms.serving.client import RemotePolicy
    from rlbench_sms.serving.server import PolicyServer, ServerConfig, ServerThread

    with ServerThread(PolicyServer(policy, ServerConfig(port=0))) as server:
        client = RemotePolicy(server.address)
        try:
            yield client
        finally:
            client.close()


def modes(latency_ms: float) -> dict[str, tuple[RunnerConfig, bool]]:
    """mode -> (runner settings, through the server)."""
    return {"local": (RunnerConfig(mode="sync", sim_latency_ms=0.0), False),
            "remote": (RunnerConfig(mode="sync", sim_latency_ms=latency_ms), True),
            "async": (RunnerConfig(mode="async", sim_latency_ms=latency_ms), True)}


def fixed_run(root: Path, config: RunnerConfig, remote: bool) -> dict:
    """Ticks until FIXED_ACTIONS actions were executed (no physics: the queue is what is measured)."""
    replay = ReplayPolicy(root, chunk_size=CHUNK, episode=0)
    with (served(replay) if remote else contextlib.nullcontext(replay)) as policy:
        runner = PolicyRunner(policy, config, fps=FPS, simulated=True)
        runner.connect()
        runner.start_episode(0)
        frame = {STATE: np.zeros(6, np.float32), FORCE: np.zeros(6, np.float32)}
        while runner.stats["ticks"] - runner.stats["empty_queue_ticks"] < FIXED_ACTIONS:
            runner.next_action(frame, "benchmark")
        stats = runner.end_episode()
        runner.disconnect()
    ticks = stats["inference/ticks"]
    return {"ticks": ticks, "empty_queue_ticks": stats["inference/empty_queue_ticks"],
            "empty_after_first_chunk": stats["inference/empty_after_first"],
            "ticks_per_action": round(ticks / FIXED_ACTIONS, 4),
            # Without the wait for the very first chunk (every mode has one, except at zero latency).
            "ticks_per_action_after_first_chunk": round(
                (ticks - (stats["inference/empty_queue_ticks"] - stats["inference/empty_after_first"]))
                / FIXED_ACTIONS, 4),
            "chunks": stats["inference/chunks"]}


def episodes_in_twin(root: Path, task: str, episodes: int, config: RunnerConfig, remote: bool, workdir: Path,
                     label: str) -> dict:
    """Each recorded layout evaluated once, stopped at the twin's success."""
    from hydra import compose, initialize_config_dir

    from rlbench_sms.runtime.evaluation import evaluate

    results = []
    for i in range(episodes):
        overrides = [f"policy_path={root}", f"run_dir={workdir / label / str(i)}", f"sim.task={task}",
                     f"held_out_seed_base={SEED_BASE + i}", "episodes=1", "episode_time_s=40",
                     f"sim.width={SIZE['width']}", f"sim.height={SIZE['height']}",
                     f"sim.wrist_width={SIZE['width']}", f"sim.wrist_height={SIZE['height']}",
                     f"inference.mode={config.mode}", f"inference.sim_latency_ms={config.sim_latency_ms}"]
        if config.mode == "async":
            overrides[0:0] = ["inference=async"]
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides=overrides)
        replay = ReplayPolicy(root, chunk_size=CHUNK, episode=i)
        with (served(replay) if remote else contextlib.nullcontext(replay)) as policy, \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = evaluate(cfg, policy=policy)
        if code:
            raise RuntimeError(f"{label} episode {i}: evaluate exited {code}")
        (episode,) = json.loads((workdir / label / str(i) / "eval.json").read_text())["episodes"]
        results.append(episode)
    return {"success_rate": sum(bool(e["success"]) for e in results) / len(results),
            "mean_episode_time_s": round(float(np.mean([e["time_s"] for e in results])), 3),
            "episode_times_s": [e["time_s"] for e in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=300.0)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--task", default="push", choices=["pick_place", "push", "press"])
    parser.add_argument("--episode-seconds", type=float, default=14.0, help="of the expert's recordings")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="async_vs_sync-") as tmp:
        workdir = Path(tmp)
        root = record_expert(workdir / "expert", args.task, max(1, args.episodes), args.episode_seconds)
        fixed, twin = {}, {}
        for label, (config, remote) in modes(args.latency_ms).items():
            fixed[label] = fixed_run(root, config, remote)
            twin[label] = episodes_in_twin(root, args.task, args.episodes, config, remote, workdir, label)
    base = twin["local"]["mean_episode_time_s"]
    result = {
        "benchmark": "async_vs_sync", "latency_ms": args.latency_ms, "fps": FPS, "chunk": CHUNK,
        "task": args.task, "episodes": args.episodes, f"fixed_run_{FIXED_ACTIONS}_actions": fixed, "twin": twin,
        "episode_time_vs_local": {k: round(v["mean_episode_time_s"] / base, 4) for k, v in twin.items()},
        "goal": "async: 0 empty-queue ticks after the first chunk, 1.00 ticks/action, episode time within 2 % of "
                "local; remote ~1.18 ticks/action",
        "wall_s": round(time.monotonic() - started, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
