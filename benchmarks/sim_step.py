"""The MuJoCo twin's speed: world ticks per second with what a recording reads every tick.

    python benchmarks/sim_step.py [--ticks 90] [--sizes 320x240,640x480] [--cache-dir DIR]

Per tick, through the sim devices exactly as ``record.py robot=sim camera=sim
force_sensor=sim`` uses them: read the joints, the front camera (RGB + aligned uint16 depth, one
draw), the wrist camera (RGB, same size as the front) and the force sensor, send an action (a
slow sweep, so every frame differs), then advance the world one tick (physics at 30 fps: 17
substeps). Each size runs with the decimated visual meshes and, as the baseline in the same run,
with the package's original meshes. Reports ticks/s, the share of the time spent in the camera
reads (rendering and read-back), and whether the goals hold on this machine (>= 30 ticks/s at
320x240, >= 10 at 640x480, decimated).

Prints exactly one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rlbench_sms.sim.devices import SimCamera, SimForceSensor, SimRobot  # noqa: E402
from rlbench_sms.sim.world import SimWorld  # noqa: E402

FPS = 30
GOALS = {(320, 240): 30.0, (640, 480): 10.0}      # ticks/s with decimated meshes (issue 11)
SWEEP_DEG = 15.0                                  # amplitude of the commanded joint sweep
SWEEP_PERIOD_S = 3.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sim_config(width: int, height: int, decimate: bool, cache_dir: str) -> dict:
    cfg = yaml.safe_load((REPO / "conf/sim/default.yaml").read_text())
    cfg.update(fps=FPS, width=width, height=height, wrist_width=width, wrist_height=height,
               cache_dir=cache_dir)
    cfg["visual_meshes"]["decimate"] = decimate
    return cfg


def run(width: int, height: int, decimate: bool, ticks: int, cache_dir: str) -> dict:
    world = SimWorld(sim_config(width, height, decimate, cache_dir))
    robot = SimRobot(world)
    front = SimCamera(world, camera="front", width=width, height=height, use_depth=True)
    wrist = SimCamera(world, camera="wrist", width=width, height=height)
    sensor = SimForceSensor(world)
    faces = int(sum(world.model.mesh_facenum[world.model.geom_dataid[g]]
                    for g in range(world.model.ngeom)
                    if world.model.geom_dataid[g] >= 0 and world.model.geom_group[g] <= 2))
    with robot, front, wrist, sensor:
        sensor.tare()
        home = robot.read_joints().positions.astype(np.float64)
        render_s = 0.0
        warmup = 5
        for k in range(warmup + ticks):
            if k == warmup:
                render_s, start = 0.0, time.perf_counter()
            robot.read_joints()
            t = time.perf_counter()
            front.read_latest(0.1, 0.5)
            wrist.read_latest(0.1, 0.5)
            render_s += time.perf_counter() - t
            sensor.read()
            phase = 2 * np.pi * world.time / SWEEP_PERIOD_S
            robot.send_action(home + SWEEP_DEG * np.sin(phase + np.arange(6)))
            world.tick()
        total = time.perf_counter() - start
    world.close()
    return {"size": f"{width}x{height}", "meshes": "decimated" if decimate else "original",
            "drawn_mesh_faces": faces, "ticks_per_s": round(ticks / total, 2),
            "ms_per_tick": round(1000 * total / ticks, 2), "render_share": round(render_s / total, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ticks", type=int, default=90)
    parser.add_argument("--sizes", default="320x240,640x480")
    parser.add_argument("--cache-dir", default=None,
                        help="decimated mesh cache (default: a fresh temporary folder, built here)")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = args.cache_dir or scratch
        t = time.perf_counter()
        SimWorld(sim_config(*sizes[0], True, cache_dir)).close()
        first_build_s = time.perf_counter() - t          # decimation (cold cache) + compile
        t = time.perf_counter()
        SimWorld(sim_config(*sizes[0], True, cache_dir)).close()
        warm_build_s = time.perf_counter() - t
        results = []
        for width, height in sizes:
            for decimate in (True, False):
                result = run(width, height, decimate, args.ticks, cache_dir)
                log(f"{result['size']} {result['meshes']:9s}: {result['ticks_per_s']:6.1f} ticks/s "
                    f"({result['ms_per_tick']:.1f} ms, {100 * result['render_share']:.0f}% rendering)")
                results.append(result)
    speedups = {}
    goals = {}
    for width, height in sizes:
        name = f"{width}x{height}"
        dec = next(r for r in results if r["size"] == name and r["meshes"] == "decimated")
        orig = next(r for r in results if r["size"] == name and r["meshes"] == "original")
        speedups[name] = round(dec["ticks_per_s"] / orig["ticks_per_s"], 2)
        if (width, height) in GOALS:
            goals[name] = {"goal_ticks_per_s": GOALS[(width, height)],
                           "met": dec["ticks_per_s"] >= GOALS[(width, height)]}
    print(json.dumps({
        "benchmark": "sim_step", "fps": FPS, "ticks": args.ticks,
        "per_tick": "joints + front RGB-D + wrist RGB + force + action + 1 world tick",
        "results": results, "decimated_speedup": speedups, "goals": goals,
        "world_build_s": {"cold_cache": round(first_build_s, 2), "warm_cache": round(warm_build_s, 2)},
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "mujoco_gl": os.environ.get("MUJOCO_GL")},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
