"""Baseline for benchmarks/dataloader.py: LeRobot's own LeRobotDataset on the same dataset.

Runs in an interpreter that has ``lerobot`` installed (never a dependency of this project):

    /path/to/lerobot-venv/bin/python benchmarks/lerobot_loader.py ROOT --workers 0 2 \
        [--batch-size 8 --batches 40 --chunk 50 --backends pyav torchcodec]

Same settings as ours: SmolVLA's delta_timestamps (a ``chunk``-step action chunk, observations at
t), shuffled frames, torch at one thread in the loading process. Each (backend, workers) pair runs
in a fresh process, since LeRobot caches decoders per process. Prints one JSON line with
``samples_per_s`` = the best backend per worker count, and every backend's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def measure(root: str, backend: str, workers: int, batch_size: int, batches: int, chunk: int,
            warmup: int = 3) -> float:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata

    torch.set_num_threads(1)
    meta = LeRobotDatasetMetadata("local/bench", root=root)
    delta = {"action": [i / meta.fps for i in range(chunk)]}
    ds = LeRobotDataset("local/bench", root=root, delta_timestamps=delta, video_backend=backend)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))
    it = iter(loader)

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(loader)
            return next(it)

    for _ in range(warmup):
        next_batch()
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += len(next_batch()["index"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--backends", nargs="+", default=["pyav", "torchcodec"])
    parser.add_argument("--keys", nargs="*", help="ignored: LeRobot loads every feature")
    parser.add_argument("--one", nargs=2, metavar=("BACKEND", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        rate = measure(args.root, args.one[0], int(args.one[1]), args.batch_size, args.batches, args.chunk)
        print(json.dumps({"rate": rate}))
        return
    import lerobot

    result: dict = {"lerobot": getattr(lerobot, "__version__", "?"), "backends": {}}
    for backend in args.backends:
        for w in args.workers:
            cmd = [sys.executable, __file__, args.root, "--one", backend, str(w), "--batch-size",
                   str(args.batch_size), "--batches", str(args.batches), "--chunk", str(args.chunk)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            lines = out.stdout.strip().splitlines()
            if out.returncode == 0 and lines:
                rate = round(json.loads(lines[-1])["rate"], 1)
            else:
                rate = None
                print(f"{backend} workers={w} failed: {out.stderr.strip()[-300:]}", file=sys.stderr)
            result["backends"].setdefault(backend, {})[f"workers={w}"] = rate
    result["samples_per_s"] = {
        f"workers={w}": max((r[f"workers={w}"] for r in result["backends"].values()
                             if r.get(f"workers={w}")), default=None)
        for w in args.workers}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
