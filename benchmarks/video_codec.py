"""RGB video: quality (PSNR), size and speed of LeRobot's AV1 default against H.264.

    python benchmarks/video_codec.py [ROOT] [--synthetic] [--frames 60] [--width 640 --height 480]

Frames are camera-like and never taken from an already-compressed video (that would flatter
every codec): by default they are rendered by the MuJoCo twin (``rlbench_sms.sim``, both
cameras, its scripted expert moving the arm, with sigma=2 camera noise added); with
``--synthetic`` (or when the twin cannot render) they are a gradient, a texture, moving shapes
and sigma=3 noise. With ROOT (a dataset, e.g. ``data/sample``), the frame size and fps are those of its first
RGB video feature.

Encoding uses each codec's default threading. Decoding goes through our ``VideoDecoder``, one
frame per call, sequentially and in random order, with one decoder thread and with FFmpeg's
automatic thread count, to choose the reader's default.

Prints exactly one JSON line on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rlbench_sms.data.video import VideoDecoder, VideoEncoder, VideoEncoderConfig

CODECS = {
    "libsvtav1": VideoEncoderConfig(),                                   # LeRobot's default
    "h264": VideoEncoderConfig(vcodec="h264", crf=23),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synthetic_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: gradient + texture + moving shapes + sigma=3 noise."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[:height, :width].astype(np.float32)
    base = np.stack([40 + 150 * u / width, 60 + 120 * v / height, 90 + 60 * (u + v) / (width + height)], -1)
    texture = (rng.random((height // 8 + 1, width // 8 + 1)) * 40 - 20).repeat(8, 0).repeat(8, 1)
    base += texture[:height, :width, None]
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        img = base.copy()
        cx, cy = width * (0.2 + 0.6 * i / max(n - 1, 1)), height * 0.5
        img[((u - cx) ** 2 + (v - cy) ** 2) < (0.08 * height) ** 2] = (200, 40, 30)
        y0, x0 = int(height * 0.2), int(width * (0.7 - 0.4 * i / max(n - 1, 1)))
        img[y0:y0 + height // 6, x0:x0 + width // 8] = (30, 160, 60)
        img += rng.normal(0, 3, img.shape).astype(np.float32)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


CAMERA_NOISE_STD = 2.0    # 8-bit levels: a real sensor's noise, which the twin's renders lack


def rendered_frames(n: int, height: int, width: int, fps: int) -> dict[str, np.ndarray] | None:
    """``n`` frames of the twin's front and wrist cameras while its expert starts a pick."""
    try:
        from omegaconf import OmegaConf

        from rlbench_sms.sim.devices import SimRobot
        from rlbench_sms.sim.expert import ScriptedExpert
        from rlbench_sms.sim.world import SimWorld

        sim = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf/sim/default.yaml"))
        sim.update(fps=fps, width=width, height=height, wrist_width=width, wrist_height=height)
        world = SimWorld(sim)
        robot, expert = SimRobot(world), ScriptedExpert(world)
        robot.connect()
        expert.connect()
        rng = np.random.default_rng(0)
        frames: dict[str, list[np.ndarray]] = {"front": [], "wrist": []}
        for _ in range(n):
            robot.send_action(expert.get_action().positions)
            world.tick()
            for cam, out in frames.items():
                rgb = world.render(cam, width, height)[0].astype(np.float32)
                out.append(np.clip(rgb + rng.normal(0, CAMERA_NOISE_STD, rgb.shape), 0, 255).astype(np.uint8))
        world.close()
    except Exception as e:          # no MuJoCo, no EGL: the synthetic frames still measure the codecs
        log(f"the twin cannot render here ({type(e).__name__}: {e}); using synthetic frames")
        return None
    return {cam: np.stack(out) for cam, out in frames.items()}


def size_from_dataset(root: Path) -> tuple[int, int, int]:
    info = json.loads((root / "meta" / "info.json").read_text())
    for key, feat in info["features"].items():
        finfo = feat.get("info") or {}
        if feat.get("dtype") == "video" and not finfo.get("is_depth_map", finfo.get("video.is_depth_map")):
            h, w = feat["shape"][0], feat["shape"][1]
            return int(h), int(w), int(info["fps"])
    raise SystemExit(f"{root}: no RGB video feature in meta/info.json")


def decode_rate(path: Path, times: np.ndarray, threads: int, repeats: int) -> tuple[float, np.ndarray]:
    best, frames = 0.0, None
    for _ in range(repeats):
        dec = VideoDecoder(path, thread_count=threads)
        dec.frames_at([times[0]])              # open outside the timing
        dec.close()
        dec = VideoDecoder(path, thread_count=threads)
        t0 = time.perf_counter()
        frames = np.stack([dec.frames_at([t])[0] for t in times])
        best = max(best, len(times) / (time.perf_counter() - t0))
        dec.close()
    return best, frames


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", type=Path, help="dataset whose camera size/fps to use")
    ap.add_argument("--synthetic", action="store_true", help="synthetic frames, not the renderer")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    height, width, fps = args.height, args.width, args.fps
    if args.root is not None:
        height, width, fps = size_from_dataset(args.root)
    sequences = None if args.synthetic else rendered_frames(args.frames, height, width, fps)
    source = "twin" if sequences else "synthetic"
    if sequences is None:
        sequences = {"synthetic": synthetic_frames(args.frames, height, width)}
    n_total = sum(len(s) for s in sequences.values())
    log(f"{source}: {list(sequences)} {n_total} frames {width}x{height} @ {fps} fps")

    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for name, config in CODECS.items():
            size = 0
            enc_time = 0.0
            dec = {"seq_1": 0.0, "seq_auto": 0.0, "rand_1": 0.0, "rand_auto": 0.0}
            sq_err, n_px = 0.0, 0
            for cam, frames in sequences.items():
                path = Path(tmpdir) / f"{name}-{cam}.mp4"
                best = float("inf")
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    with VideoEncoder(path, fps, config) as enc:
                        for f in frames:
                            enc.add(f)
                    best = min(best, time.perf_counter() - t0)
                enc_time += best
                size += path.stat().st_size
                times = np.arange(len(frames)) / fps
                shuffled = times[rng.permutation(len(times))]
                for label, ts, threads in [("seq_1", times, 1), ("seq_auto", times, 0),
                                           ("rand_1", shuffled, 1), ("rand_auto", shuffled, 0)]:
                    rate, out = decode_rate(path, ts, threads, args.repeats)
                    dec[label] += len(ts) / rate          # seconds, summed over cameras
                    if label == "seq_1":
                        sq_err += float(np.sum((out.astype(np.float64) - frames) ** 2))
                        n_px += out.size
            mse = sq_err / n_px
            r = {"codec": name, "settings": {k: v for k, v in config.info().items()},
                 "bytes_per_frame": round(size / n_total),
                 "psnr_db": round(10.0 * np.log10(255.0 ** 2 / mse), 2),
                 "encode_fps": round(n_total / enc_time, 1),
                 "decode_fps_sequential_1thread": round(n_total / dec["seq_1"], 1),
                 "decode_fps_sequential_auto": round(n_total / dec["seq_auto"], 1),
                 "decode_fps_random_1thread": round(n_total / dec["rand_1"], 1),
                 "decode_fps_random_auto": round(n_total / dec["rand_auto"], 1)}
            results.append(r)
            log(f"  {name:22s} {r['bytes_per_frame'] / 1024:6.1f} KiB/f  {r['psnr_db']:5.2f} dB  "
                f"enc {r['encode_fps']:6.1f}/s  dec seq {r['decode_fps_sequential_1thread']:6.1f}"
                f"/{r['decode_fps_sequential_auto']:6.1f}  rand {r['decode_fps_random_1thread']:6.1f}"
                f"/{r['decode_fps_random_auto']:6.1f} /s (1 thread / auto)")
    print(json.dumps({"benchmark": "video_codec", "source": source, "cameras": list(sequences),
                      "frames": n_total, "width": width, "height": height, "fps": fps,
                      "cpu_count": os.cpu_count(), "results": results}))


if __name__ == "__main__":
    main()
