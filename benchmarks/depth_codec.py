"""Exact depth storage: FFV1 (ours) against 16-bit PNG, zstd and other lossless options.

    python benchmarks/depth_codec.py [--frames 60] [--width 640 --height 480] [--repeats 3]

Synthetic uint16 millimetre depth of a tabletop (tilted table 600-900 mm, a moving box, a sphere),
with sensor-like noise (Gaussian, sigma ~1 mm at 0.6 m growing with distance squared, ~2 mm at
0.9 m) and holes (0 = invalid: the box's shadow, the sphere's rim, random blobs, an invalid band
at the left edge). Every codec runs on ONE thread; each rate is the best of ``--repeats`` runs.
Reports bytes/frame, ratio to raw, encode and decode frames/s and bit-exactness.

Prints exactly one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from rlbench_sms.data.video import DepthEncoderConfig, VideoDecoder, VideoEncoder

FPS = 30


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synthetic_depth(n: int, height: int, width: int, seed: int = 0, noise: bool = True) -> np.ndarray:
    """(n, height, width) uint16 mm, 0 = invalid."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[:height, :width].astype(np.float64)
    table = 600.0 + 300.0 * v / height + 20.0 * u / width          # tilted away from the camera
    cy, cx, r = 0.35 * height, 0.7 * width, 0.12 * height          # a sphere resting on the table
    rho2 = ((v - cy) ** 2 + (u - cx) ** 2) / r ** 2
    sphere = np.where(rho2 < 1.0, table - 1.2 * r * np.sqrt(np.clip(1.0 - rho2, 0, 1)), np.inf)
    frames = np.empty((n, height, width), dtype=np.uint16)
    bh, bw = int(0.2 * height), int(0.15 * width)
    for i in range(n):
        d = table.copy()
        # a box sliding to the right, 80 mm tall, with its shadow (no return) beside it
        y0 = int(0.55 * height)
        x0 = int((0.1 + 0.5 * i / max(n - 1, 1)) * width)
        d[y0:y0 + bh, x0:x0 + bw] -= 80.0
        d = np.minimum(d, sphere)
        sigma = 1.0 * (d / 600.0) ** 2                               # mm, grows with distance^2
        if noise:
            d = d + rng.normal(0.0, 1.0, d.shape) * sigma
        out = np.clip(np.rint(d), 0, 65535).astype(np.uint16)
        out[y0:y0 + bh, x0 + bw:x0 + bw + bw // 3] = 0               # the box's shadow
        out[(rho2 > 0.9) & (rho2 < 1.05)] = 0                        # the sphere's rim
        for _ in range(6):                                           # random blobs (specular, dark)
            by, bx = rng.integers(0, height), rng.integers(0, width)
            rr = rng.integers(2, max(3, height // 40))
            out[max(0, by - rr):by + rr, max(0, bx - rr):bx + rr] = 0
        out[:, : max(1, width // 40)] = 0                            # invalid band at the edge
        frames[i] = out
    return frames


@dataclass
class Result:
    name: str
    settings: str
    bytes_per_frame: float
    ratio: float
    encode_fps: float
    decode_fps: float
    exact: bool

    def as_dict(self) -> dict:
        return {"name": self.name, "settings": self.settings,
                "bytes_per_frame": round(self.bytes_per_frame), "ratio": round(self.ratio, 2),
                "encode_fps": round(self.encode_fps, 1), "decode_fps": round(self.decode_fps, 1),
                "exact": self.exact}


def best_rate(n: int, repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, out = 0.0, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return best, out


def bench_video(name: str, settings: str, config: DepthEncoderConfig, frames: np.ndarray,
                tmp: Path, repeats: int, decode_threads: int = 1) -> Result:
    path = tmp / f"{name}.mp4"

    def encode() -> None:
        with VideoEncoder(path, FPS, config) as enc:
            for f in frames:
                enc.add(f)

    def decode() -> np.ndarray:
        # the reader's path: sequential frames_at, one frame per call
        dec = VideoDecoder(path, thread_count=decode_threads)
        out = np.stack([dec.frames_at([i / FPS])[0] for i in range(len(frames))])
        dec.close()
        return out

    enc_fps, _ = best_rate(len(frames), repeats, encode)
    dec_fps, out = best_rate(len(frames), repeats, decode)
    size = path.stat().st_size / len(frames)
    return Result(name, settings, size, frames[0].nbytes / size, enc_fps, dec_fps,
                  bool(np.array_equal(out, frames)))


def bench_bytes(name: str, settings: str, frames: np.ndarray, repeats: int,
                enc: Callable[[np.ndarray], bytes], dec: Callable[[bytes], np.ndarray]) -> Result:
    enc_fps, blobs = best_rate(len(frames), repeats, lambda: [enc(f) for f in frames])
    dec_fps, out = best_rate(len(frames), repeats, lambda: [dec(b) for b in blobs])
    size = sum(len(b) for b in blobs) / len(frames)
    exact = all(np.array_equal(a, b) for a, b in zip(out, frames))
    return Result(name, settings, size, frames[0].nbytes / size, enc_fps, dec_fps, exact)


def png_codec(level: int, shape: tuple[int, int]):
    from PIL import Image

    def enc(f: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG", compress_level=level)   # mode I;16: 16-bit gray
        return buf.getvalue()

    def dec(b: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(b)) as im:
            return np.asarray(im, dtype=np.uint16).reshape(shape)

    return enc, dec


def zstd_codec(level: int, shape: tuple[int, int], delta: bool):
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level, threads=0)     # threads=0: in the calling thread
    dctx = zstandard.ZstdDecompressor()

    def enc(f: np.ndarray) -> bytes:
        if delta:   # horizontal differences (mod 2^16): smooth surfaces become small numbers
            f = np.diff(f, axis=1, prepend=np.zeros((f.shape[0], 1), np.uint16))
        return cctx.compress(np.ascontiguousarray(f).tobytes())

    def dec(b: bytes) -> np.ndarray:
        f = np.frombuffer(dctx.decompress(b), dtype=np.uint16).reshape(shape)
        return np.cumsum(f, axis=1, dtype=np.uint16) if delta else f

    return enc, dec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    frames = synthetic_depth(args.frames, args.height, args.width)
    shape = (args.height, args.width)
    raw = frames[0].nbytes
    log(f"{args.frames} frames {args.width}x{args.height}, raw {raw} B/frame, "
        f"{(frames == 0).mean():.1%} invalid pixels")

    results: list[Result] = []
    default = DepthEncoderConfig()
    ffv1_cases = [
        ("ffv1", "ours (DepthEncoderConfig()): " + ", ".join(
            f"{k}={v}" for k, v in default.codec_options().items()), default),
        ("ffv1-range_def", "coder=range_def (default state table)",
         DepthEncoderConfig(coder="range_def")),
        ("ffv1-context1", "context=1 (large context model)", DepthEncoderConfig(context=1)),
        ("ffv1-slices16", "slices=16", DepthEncoderConfig(slices=16)),
        ("ffv1-slices24-context1", "slices=24, context=1", DepthEncoderConfig(slices=24, context=1)),
        ("ffv1-noslicecrc", "slicecrc=0 (no per-slice CRC)",
         DepthEncoderConfig(extra_options={"slicecrc": "0"})),
    ]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name, settings, cfg in ffv1_cases:
            log(f"{name} ...")
            results.append(bench_video(name, settings, cfg, frames, tmp, args.repeats))
        # how the reader does with more threads (decoding only; slices are decoded in parallel)
        threads = os.cpu_count() or 1
        log(f"ffv1 decode with {threads} threads ...")
        multi = bench_video("ffv1-decode-threads", f"our default, decoder thread_count={threads}",
                            default, frames, tmp, args.repeats, decode_threads=threads)
        log("ffv1 on noise-free depth ...")
        clean = bench_video("ffv1-noise-free", "ours, same scene without sensor noise", default,
                            synthetic_depth(args.frames, args.height, args.width, noise=False),
                            tmp, args.repeats)
    for level in (1, 6):
        log(f"png level {level} ...")
        results.append(bench_bytes(f"png-{level}", f"Pillow 16-bit PNG, compress_level={level}",
                                   frames, args.repeats, *png_codec(level, shape)))
    for level in (1, 3, 9):
        log(f"zstd {level} ...")
        results.append(bench_bytes(f"zstd-{level}", f"zstandard level {level} on raw uint16",
                                   frames, args.repeats, *zstd_codec(level, shape, delta=False)))
    log("zstd 3 + delta ...")
    results.append(bench_bytes("zstd-3-delta", "zstandard level 3 on horizontal uint16 deltas",
                               frames, args.repeats, *zstd_codec(3, shape, delta=True)))

    for r in results + [multi, clean]:
        log(f"  {r.name:20s} {r.bytes_per_frame / 1024:8.1f} KiB/f  x{r.ratio:5.2f}  "
            f"enc {r.encode_fps:6.1f}/s  dec {r.decode_fps:6.1f}/s  exact={r.exact}")
    print(json.dumps({
        "benchmark": "depth_codec",
        "frames": args.frames, "width": args.width, "height": args.height,
        "raw_bytes_per_frame": raw, "invalid_fraction": round(float((frames == 0).mean()), 4),
        "threads": 1,
        "results": [r.as_dict() for r in results],
        "ffv1_decode_multithreaded": {"threads": threads, "decode_fps": round(multi.decode_fps, 1)},
        "ffv1_noise_free": clean.as_dict(),
        "chosen": "ffv1",
    }))


if __name__ == "__main__":
    main()
