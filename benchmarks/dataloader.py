"""Data-loading throughput: samples/s of FrameDataModule batches, and decode frames/s per stream.

    python benchmarks/dataloader.py ROOT --modality rgb+depth+force [--batches 40] [--workers 0 2]
        [--lerobot-python /path/to/venv-with-lerobot/bin/python]

Prints one JSON line. Items are SmolVLA-shaped: observation at t, a 50-step action chunk, shuffled
frames, batch 8. With ``--lerobot-python`` the same dataset and settings are also loaded by
LeRobot's own ``LeRobotDataset`` (run in that interpreter by ``benchmarks/lerobot_loader.py``),
so the two numbers come from one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlbench_sms.data.datamodule import FrameDataModule, modality_keys
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DatasetReader


def loader_throughput(root: Path, keys: list[str], batch_size: int, workers: int, batches: int,
                      chunk: int, warmup: int = 3) -> float:
    dm = FrameDataModule(root, keys, chunk_size=chunk, val_fraction=0.0, batch_size=batch_size,
                         num_workers=workers, seed=0)
    loader = dm.train_dataloader()
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += len(batch["task"])
    dt = time.perf_counter() - t0
    del it, loader
    return n / dt


def decode_rates(root: Path, keys: list[str], frames: int, seed: int = 0) -> dict[str, float]:
    """Random-access decode rate per video stream (frames/s, one thread, cached decoders)."""
    rng = np.random.default_rng(seed)
    rates = {}
    with DatasetReader(root) as reader:
        picks = [(reader.episodes[e], int(rng.integers(reader.episodes[e].length)))
                 for e in rng.integers(len(reader.episodes), size=frames)]
        for key in [k for k in keys if reader.meta.features[k].is_video]:
            reader.frames(key, picks[0][0], [0.0])   # open the decoder outside the timing
            t0 = time.perf_counter()
            for ep, i in picks:
                reader.frames(key, ep, [i / reader.meta.fps])
            rates[key] = frames / (time.perf_counter() - t0)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--modality", default="rgb+depth+force")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--decode-frames", type=int, default=200)
    parser.add_argument("--lerobot-python", help="python of a venv with lerobot installed (baseline)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    meta = DatasetMeta.load(args.root)
    keys = modality_keys(meta, args.modality)
    result = {"benchmark": "dataloader", "root": str(args.root), "modality": args.modality,
              "batch_size": args.batch_size, "chunk": args.chunk,
              "frame_size": {k: list(meta.features[k].shape) for k in meta.video_keys if k in keys}}
    result["samples_per_s"] = {}
    for w in args.workers:
        print(f"loading with {w} workers ...", file=sys.stderr)
        result["samples_per_s"][f"workers={w}"] = round(
            loader_throughput(args.root, keys, args.batch_size, w, args.batches, args.chunk), 1)
    print("decoding streams ...", file=sys.stderr)
    result["decode_frames_per_s"] = {k: round(v, 1) for k, v in
                                     decode_rates(args.root, keys, args.decode_frames).items()}
    if args.lerobot_python:
        script = Path(__file__).with_name("lerobot_loader.py")
        cmd = [args.lerobot_python, str(script), str(args.root), "--batch-size", str(args.batch_size),
               "--batches", str(args.batches), "--chunk", str(args.chunk), "--keys", *keys,
               "--workers", *map(str, args.workers)]
        print("loading with LeRobot ...", file=sys.stderr)
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            result["lerobot"] = {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
        else:
            lerobot = json.loads(out.stdout.strip().splitlines()[-1])
            result["lerobot"] = lerobot
            ratios = {}
            for w, ours in result["samples_per_s"].items():
                theirs = lerobot.get("samples_per_s", {}).get(w)
                if theirs:
                    ratios[w] = round(ours / theirs, 2)
            result["speedup_vs_lerobot"] = ratios
    print(json.dumps(result))


if __name__ == "__main__":
    main()
