"""Build the bundled sample dataset: the procedural cell rendered into a v3.0 dataset.

    python -m rlbench_sms.data.sample data/sample [--episodes 8] [--overwrite]

Two RGB cameras (``front``, ``wrist``), depth aligned to ``front`` (uint16 mm, FFV1), a 6-axis
wrist force, joint state and action, the object "tip" (the cube centre in the ``front`` camera
frame, from the renderer's ground truth; a detector writes the same keys on real data), one task
string. Built offline in seconds; the dataset is
written to a sibling folder first and moved into place only when complete.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rlbench_sms.cli import doc_description
from rlbench_sms.data.sample_scene import SceneConfig, render_episode
from rlbench_sms.data.writer import DatasetWriter
from rlbench_sms.features import (ACTION, FORCE, STATE, TIP_POSITION, TIP_VALID, depth_feature, depth_key,
                                  force_feature, image_key, joint_feature, rgb_feature, tip_features)

ROBOT_TYPE = "so100_follower"
CAMERAS = ("front", "wrist")
DEPTH_CAMERA = "front"


def sample_features(config: SceneConfig, intrinsics) -> list:
    h, w = config.height, config.width
    return [
        joint_feature(STATE),
        joint_feature(ACTION),
        force_feature(),
        *[rgb_feature(cam, h, w) for cam in CAMERAS],
        depth_feature(DEPTH_CAMERA, h, w, intrinsics=intrinsics, aligned_to=DEPTH_CAMERA),
        *tip_features(),
    ]


def build_sample(root: str | Path, episodes: int = 8, config: SceneConfig | None = None,
                 seed: int = 0, overwrite: bool = False, show_progress: bool = True) -> Path:
    """Render ``episodes`` episodes and write them as a v3.0 dataset at ``root``."""
    root = Path(root)
    config = config or SceneConfig()
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists (pass overwrite=True / --overwrite to rebuild it)")
    staging = root.with_name(root.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    first = render_episode(seed, config)
    writer = DatasetWriter.create(staging, config.fps,
                                  sample_features(config, first.intrinsics[DEPTH_CAMERA]),
                                  robot_type=ROBOT_TYPE)
    columns = [TextColumn("sample"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with writer, Progress(*columns, disable=not show_progress, transient=True) as progress:
        bar = progress.add_task("episodes", total=episodes)
        for ep in range(episodes):
            episode = first if ep == 0 else render_episode(seed + ep, config)
            for t in range(len(episode.state)):
                frame = {STATE: episode.state[t], ACTION: episode.action[t], FORCE: episode.force[t],
                         depth_key(DEPTH_CAMERA): episode.depth[DEPTH_CAMERA][t],
                         # Ground truth is always "detected": the cube stays in the front view.
                         TIP_POSITION: episode.object_position[t], TIP_VALID: np.array([True])}
                frame.update({image_key(cam): episode.images[cam][t] for cam in CAMERAS})
                writer.add_frame(frame, episode.task)
            writer.save_episode()
            progress.advance(bar)
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlbench_sms.data.sample", description=doc_description(__doc__))
    parser.add_argument("root", type=Path)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        path = build_sample(args.root, args.episodes, seed=args.seed, overwrite=args.overwrite)
    except FileExistsError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"sample dataset written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
