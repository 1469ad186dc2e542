"""Tiny deterministic datasets for the tests: every value is a function of (episode, frame)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlbench_sms.data.writer import DatasetWriter
from rlbench_sms.features import (ACTION, FORCE, STATE, CameraIntrinsics, depth_feature, depth_key,
                                  force_feature, image_key, joint_feature, rgb_feature)

FPS = 10
H, W = 24, 32
TASKS = ("pick the cube", "push the cube")
INTRINSICS = CameraIntrinsics(W, H, fx=30.0, fy=30.0, ppx=W / 2, ppy=H / 2)


def features() -> list:
    return [joint_feature(STATE), joint_feature(ACTION), force_feature(),
            rgb_feature("front", H, W), rgb_feature("wrist", H, W),
            depth_feature("front", H, W, intrinsics=INTRINSICS, aligned_to="front")]


def episode_length(e: int) -> int:
    return 6 + (e * 3) % 7


def state(e: int, i: int) -> np.ndarray:
    return (e * 100 + i + np.arange(6) / 10).astype(np.float32)


def action(e: int, i: int) -> np.ndarray:
    return state(e, i) + np.float32(0.5)


def force(e: int, i: int) -> np.ndarray:
    return (np.arange(6) - 2.5 + e + i / 10).astype(np.float32)


def rgb(e: int, i: int, cam: str) -> np.ndarray:
    """A flat colour per (episode, frame, camera): survives lossy coding as its mean."""
    level = (40 + 17 * e + 9 * i + (60 if cam == "wrist" else 0)) % 200 + 20
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = level, 255 - level, 128
    return img


def depth(e: int, i: int) -> np.ndarray:
    """uint16 mm over the full range (0 = invalid holes, values above 4095 and up to 65535)."""
    yy, xx = np.mgrid[0:H, 0:W]
    d = (400 + 37 * e + 11 * i + 5 * yy + 3 * xx).astype(np.uint16)
    d[0, 0] = 0
    d[1, :4] = 0
    d[-1, -1] = 65535
    d[2, 2] = 4096 + e
    return d


def frame(e: int, i: int) -> dict:
    return {STATE: state(e, i), ACTION: action(e, i), FORCE: force(e, i),
            image_key("front"): rgb(e, i, "front"), image_key("wrist"): rgb(e, i, "wrist"),
            depth_key("front"): depth(e, i)}


def task(e: int) -> str:
    return TASKS[e % 2]


def write_episode(writer: DatasetWriter, e: int) -> None:
    for i in range(episode_length(e)):
        writer.add_frame(frame(e, i), task(e))
    writer.save_episode()


def make_dataset(root: Path, episodes: int = 3, **kwargs) -> Path:
    with DatasetWriter.create(root, FPS, features(), robot_type="so100_follower", **kwargs) as w:
        for e in range(episodes):
            write_episode(w, e)
    return root
