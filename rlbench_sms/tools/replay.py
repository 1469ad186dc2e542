"""Replay an episode's recorded actions on a robot (or the mock) at the dataset's rate.

    python -m rlbench_sms.tools.replay robot=so100 robot.config.port=/dev/ttyACM0 \
        dataset.root=data/me/pick episode=3
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlbench_sms.cli import EXIT_FAILED, run_checked
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.features import ACTION
from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.runtime.clock import Clock, LoopStats, LoopTimer, clock_of
from rlbench_sms.runtime.recorder import StatusLine


def episode_actions(root: str | Path, episode: int) -> tuple[np.ndarray, int]:
    """The (T, A) actions of an episode and the dataset's fps."""
    with DatasetReader(root, episodes=[episode]) as reader:
        return reader.load_columns([ACTION])[ACTION], reader.meta.fps


def replay(robot, actions: np.ndarray, fps: float, status: StatusLine | None = None,
           clock: Clock | None = None) -> LoopStats:
    """Send ``actions`` one per tick; returns the loop timing. The loop runs on ``clock``, by
    default the robot's own (a sim world's time), else the wall clock."""
    clock = clock if clock is not None else clock_of([robot])
    timer = LoopTimer(fps, late_threshold_s=0.25 / fps, clock=clock)
    status = status or StatusLine(0.5)
    timer.start()
    for i, action in enumerate(actions):
        timer.tick()
        robot.send_action(action)
        if status.due():
            status.update(f"replaying {i + 1}/{len(actions)}  {timer.stats().line()}")
    stats = timer.stats()
    status.done(f"replayed {len(actions)} actions, {stats.line()}")
    return stats


def run(cfg: DictConfig) -> int:
    """Replay from a composed ``conf/replay.yaml``; 1 on a dataset or hardware error (one line)."""
    try:
        actions, fps = episode_actions(cfg.dataset.root, int(cfg.episode))
        if cfg.fps is None:
            cfg.fps = fps       # before the robot is built: the twin ticks at the dataset's rate
        robot = instantiate(cfg.robot)
        with robot:
            replay(robot, actions, cfg.fps)
    except (DatasetError, HardwareError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    return 0


@hydra.main(config_path="../../conf", config_name="replay", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run_checked(lambda: run(cfg), cfg, "replay failed")
    if code:
        sys.exit(code)


if __name__ == "__main__":
    from rlbench_sms.cli import exit_on_bad_overrides

    exit_on_bad_overrides("replay")     # an unknown option or key: one line, not Hydra's dump
    main()
