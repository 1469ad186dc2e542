"""How often the scripted expert solves each task of the MuJoCo twin, judged by the tasks'
success detectors (rlbench_sms/sim/success.py).

    python benchmarks/expert_success.py [--episodes 50] [--tasks pick_place,push,press] [--seed 0]

Physics only, no rendering (the package's collision meshes; nothing is drawn): per task, a world
from conf/sim/default.yaml, the sim robot and the expert from conf/robot/sim.yaml and
conf/teleop/scripted.yaml, and episodes seeded ``seed + i`` as ``record.py`` lays them out. Each
tick reads the joints, sends the expert's action and advances the world, as the recorder does;
an episode ends ``--settle-s`` after the expert's plan is done (the cube comes to rest), or at
``--max-s``. Its length is the time until the plan was done. The goal: >= 90 % per task.

Prints exactly one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from rlbench_sms.sim.devices import SimRobot  # noqa: E402
from rlbench_sms.sim.world import SimWorld  # noqa: E402

FPS = 30
GOAL = 0.9                       # success rate per task (issue 11)
TASKS = ("pick_place", "push", "press")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(task: str, seed: int, cache_dir: str):
    """World, sim robot and scripted expert for ``task``, configured as the conf files say."""
    sim = yaml.safe_load((REPO / "conf/sim/default.yaml").read_text())
    sim.update(fps=FPS, task=task, seed=seed, cache_dir=cache_dir)
    sim["visual_meshes"]["decimate"] = False           # nothing is rendered
    world = SimWorld(sim)
    robot_cfg = OmegaConf.load(REPO / "conf/robot/sim.yaml")
    robot = SimRobot(world, instantiate(robot_cfg.config))
    teleop_cfg = OmegaConf.load(REPO / "conf/teleop/scripted.yaml")
    expert = instantiate(teleop_cfg, world=world)
    return world, robot, expert


def run_episode(world, robot, expert, index: int, settle_s: float, max_s: float) -> dict:
    """One episode; its success verdict, the time the plan took and what the detector saw."""
    robot.start_episode(index)
    expert.start_episode(index)
    done_at = None
    for tick in range(round(max_s * FPS)):
        robot.read_joints()
        robot.send_action(expert.get_action().positions)
        world.clock.sleep_until(world.time + 1.0 / FPS)
        if done_at is None and expert.end_episode().get("sim/expert_done"):
            done_at = tick + 1
        if done_at is not None and tick + 1 - done_at >= settle_s * FPS:
            break
    verdict = robot.end_episode()
    info = expert.end_episode()
    return {**verdict, **info, "length_s": (done_at if done_at is not None else tick + 1) / FPS}


def run_task(task: str, episodes: int, seed: int, settle_s: float, max_s: float, cache_dir: str) -> dict:
    world, robot, expert = build(task, seed, cache_dir)
    robot.connect()
    expert.connect()
    results, failures = [], []
    started = time.perf_counter()
    try:
        for i in range(episodes):
            result = run_episode(world, robot, expert, i, settle_s, max_s)
            results.append(result)
            if not result["sim/success"]:
                failures.append({"seed": seed + i, **{k.removeprefix("sim/"): v for k, v in result.items()}})
                log(f"{task} seed {seed + i}: FAILED {result}")
    finally:
        robot.disconnect()
        expert.disconnect()
        world.close()
    rate = float(np.mean([r["sim/success"] for r in results]))
    out = {"success_rate": rate, "episodes": episodes,
           "mean_episode_s": float(np.mean([r["length_s"] for r in results])),
           "goal_met": rate >= GOAL, "wall_s": round(time.perf_counter() - started, 1),
           "failed_seeds": [f["seed"] for f in failures]}
    if task == "press":
        errors = np.array([r["sim/force_error_n"] for r in results])
        out["force_error_n_mean_abs"] = float(np.abs(errors).mean())
    elif results:
        out["final_distance_m_mean"] = float(np.mean([r["sim/final_distance_m"] for r in results]))
    log(f"{task}: {rate:.0%} of {episodes} in {out['wall_s']} s")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seed", type=int, default=0, help="episode i is laid out from seed + i")
    parser.add_argument("--settle-s", type=float, default=1.0, help="after the plan is done")
    parser.add_argument("--max-s", type=float, default=40.0, help="an episode's limit")
    parser.add_argument("--cache-dir", default=None, help="meshes cache (default: a temporary one)")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"--tasks: unknown {unknown[0]!r} (known: {', '.join(TASKS)})")
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or tmp
        report = {task: run_task(task, args.episodes, args.seed, args.settle_s, args.max_s, cache)
                  for task in tasks}
    print(json.dumps({"benchmark": "expert_success", "fps": FPS, "seed": args.seed, "tasks": report,
                      "goal": GOAL, "all_goals_met": all(r["goal_met"] for r in report.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
