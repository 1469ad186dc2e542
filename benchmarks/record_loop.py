"""Recording loop under load: simulated devices at 30 Hz, 2 RGB + 1 RGB-D 640x480 cameras with
camera-like noise and a 200 Hz force sensor, written to a real dataset.

    python benchmarks/record_loop.py [--seconds 60] [--episodes 2] [--fps 30] [--display]

Prints one JSON line: achieved fps, p99 period, late ticks and dropped frames per episode
(dropped = ticks without a stored row, or rows without a video frame), how long the encoder
backlog took to drain after each episode (it must be empty before the next one starts), and the
encoders' own speed as a multiple of real time. ``--display`` records the same episodes again
with the live view on, saved to an ``.rrd`` as on a machine with no screen (conf/record.yaml's
defaults: 10 Hz, every 2nd pixel, JPEG colour), and reports both runs, so the view's cost on the
loop is measured against no view in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rlbench_sms.cli import doc_description
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.video import (DepthEncoderConfig, VideoEncoder, VideoEncoderConfig,
                                    frame_times)
from rlbench_sms.data.writer import DatasetWriter
from rlbench_sms.hardware.mock import (MockCamera, MockCameraConfig, MockForceSensor,
                                       MockForceSensorConfig, MockRobot, MockTeleop)
from rlbench_sms.runtime.keyboard import TerminalKeys
from rlbench_sms.runtime.recorder import Recorder, RecordingConfig, recording_features


def encoder_speed(camera: MockCamera, config, depth: bool, frames: int = 90) -> float:
    """Frames/s one encoder sustains on these frames, as a multiple of the camera's rate."""
    camera._make_ring()
    ring = [d if depth else c for c, d in camera._ring]
    with tempfile.TemporaryDirectory() as tmp:
        enc = VideoEncoder(Path(tmp) / "x.mp4", camera.config.fps, config)
        t0 = time.perf_counter()
        for i in range(frames):
            enc.add(ring[i % len(ring)])
        enc.close()
        fps = frames / (time.perf_counter() - t0)
    return fps / camera.config.fps


def record_episodes(args: argparse.Namespace, display: bool) -> tuple[list[dict], dict | None]:
    """Record ``args.episodes`` episodes; (per-episode loop figures, the live view's counts)."""
    cam = lambda depth, seed: MockCamera(MockCameraConfig(640, 480, args.fps, use_depth=depth), seed)
    cameras = {"front": cam(True, 0), "wrist": cam(False, 1), "top": cam(False, 2)}
    robot, teleop = MockRobot(), MockTeleop()
    force = MockForceSensor(MockForceSensorConfig(rate_hz=200))
    config = RecordingConfig(single_task="benchmark", fps=args.fps, num_episodes=args.episodes,
                             episode_time_s=args.seconds, reset_time_s=args.reset_seconds)
    drains: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        writer = DatasetWriter.create(root, args.fps, recording_features(robot, cameras, force))
        save = writer.save_episode

        def timed_save(*a, **kw):                 # the save blocks until the backlog is encoded
            backlog = writer.encoder_backlog
            t0 = time.perf_counter()
            out = save(*a, **kw)
            drains.append({"backlog_frames": backlog, "drain_and_save_s": round(time.perf_counter() - t0, 2)})
            return out

        writer.save_episode = timed_save
        view = None
        if display:
            from rlbench_sms.runtime.display import open_display

            view = open_display("benchmark", save_path=Path(tmp) / "view.rrd", fps=10, file_jpeg_quality=75,
                                file_image_stride=2)
        devices = [robot, teleop, force, *cameras.values()]
        for d in devices:
            d.connect()
        try:
            print(f"recording {args.episodes} x {args.seconds:.0f} s"
                  f"{' with the live view' if display else ''} ...", file=sys.stderr)
            summary = Recorder(robot, teleop, cameras, force, writer, config, display=view,
                               keys=TerminalKeys(stream=open("/dev/null"))).run()
        finally:
            for d in devices:
                d.disconnect()
            writer.close()
            if view is not None:
                view.close()
        view_counts = None if view is None else {
            "frames_offered": view.offered, "frames_shown": view.shown, "frames_dropped": view.dropped,
            "rrd_mb": round((Path(tmp) / "view.rrd").stat().st_size / 1e6, 1)}
        episodes = []
        with DatasetReader(root) as reader:
            for result, ep, drain in zip(summary.episodes, reader.episodes, drains):
                ticks = result.stats.ticks
                video_frames = {k: int(((frame_times(s.path) >= s.from_timestamp - 1e-4)
                                        & (frame_times(s.path) < s.to_timestamp - 1e-4)).sum())
                                for k, s in ep.videos.items()}
                episodes.append({
                    "achieved_fps": round(result.stats.achieved_fps, 3),
                    "fps_error_pct": round(100 * abs(result.stats.achieved_fps - args.fps) / args.fps, 2),
                    "period_p99_ms": round(result.stats.period_p99_s * 1000, 1),
                    "period_max_ms": round(result.stats.period_max_s * 1000, 1),
                    "late_ticks": result.stats.late_ticks,
                    "ticks": ticks, "rows": ep.length,
                    "dropped_frames": (ticks - ep.length) + sum(ep.length - n for n in video_frames.values()),
                    **drain,
                })
    return episodes, view_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=doc_description(__doc__))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--reset-seconds", type=float, default=2.0)
    parser.add_argument("--display", action="store_true", help="also record with the live view to an .rrd")
    args = parser.parse_args()
    episodes, _ = record_episodes(args, display=False)
    with_display = None
    if args.display:
        display_episodes, view = record_episodes(args, display=True)
        with_display = {"episodes": display_episodes, "view": view}
    cameras = {"front": MockCamera(MockCameraConfig(640, 480, args.fps, use_depth=True), 0),
               "wrist": MockCamera(MockCameraConfig(640, 480, args.fps, use_depth=False), 1)}
    speed = {"av1_rgb_x_realtime": round(encoder_speed(cameras["wrist"], VideoEncoderConfig(), False), 2),
             "ffv1_depth_x_realtime": round(encoder_speed(cameras["front"], DepthEncoderConfig(), True), 2)}
    print(json.dumps({"benchmark": "record_loop", "fps": args.fps, "seconds": args.seconds,
                      "streams": "2 RGB + 1 RGB-D 640x480, force 200 Hz", "episodes": episodes,
                      **({"with_live_view": with_display} if with_display else {}),
                      "encoder_speed_one_thread_each": speed}))


if __name__ == "__main__":
    main()
