"""Replay an episode's recorded actions on a robot (or the mock) at the dataset's rate.

    python -m rlbench_sms.tools.replay robot=so100 robot.config.port=/dev/ttyACM0 \
        dataset.root=data/me/pick episode=3
    python -m rlbench_sms.tools.replay robot=sim dataset.root=data/sim/pick episode=3

The robot's episode hooks frame the replay as they framed the recording: ``start_episode`` with
the episode's index first (the twin resets its world to that episode's seeded layout), and the
metadata it returns must agree with what the episode recorded (a replay with other settings,
e.g. another ``sim.seed`` or ``sim.task``, would not retrace it: one line saying which key
differs). The joints are read every tick before the action, as the recorder reads them, and the
largest difference from the recorded ``observation.state`` is printed; so is what
``end_episode`` reports (the twin's ``sim/success``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlbench_sms.cli import EXIT_FAILED, run_checked
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.features import ACTION, STATE
from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.runtime.clock import Clock, LoopStats, LoopTimer, clock_of
from rlbench_sms.runtime.recorder import StatusLine


# Floats of the start_episode metadata a replay must reproduce, compared within this (relative).
METADATA_RTOL = 1e-6


@dataclass
class RecordedEpisode:
    """What a replay needs from the dataset: actions (T, A), states (T, S) or None, its metadata."""

    index: int
    fps: int
    actions: np.ndarray
    states: np.ndarray | None
    extra: dict[str, Any]


def load_episode(root: str | Path, episode: int) -> RecordedEpisode:
    with DatasetReader(root, episodes=[episode]) as reader:
        keys = [ACTION] + ([STATE] if STATE in reader.meta.features else [])
        columns = reader.load_columns(keys)
        record = reader.episodes[0]
        return RecordedEpisode(int(record.index), reader.meta.fps, columns[ACTION], columns.get(STATE),
                               dict(record.extra))


def episode_actions(root: str | Path, episode: int) -> tuple[np.ndarray, int]:
    """The (T, A) actions of an episode and the dataset's fps."""
    with DatasetReader(root, episodes=[episode]) as reader:
        return reader.load_columns([ACTION])[ACTION], reader.meta.fps


def metadata_mismatch(recorded: dict[str, Any], replayed: dict[str, Any]) -> str | None:
    """The first key (in the hook's order: the twin's seed and task first) both have with
    different values (floats within METADATA_RTOL), described."""
    for key in [k for k in replayed if k in recorded]:
        a, b = recorded[key], replayed[key]
        numbers = all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
                      for v in (a, b))
        same = bool(np.isclose(float(a), float(b), rtol=METADATA_RTOL, atol=0.0) if numbers else a == b)
        if not same:
            return f"{key} was {a!r} when recorded, {b!r} now"
    return None


def start_replay_episode(robot, episode: RecordedEpisode) -> dict[str, Any]:
    """The robot's ``start_episode`` for the recorded episode's index; its metadata checked
    against the recording's (a :class:`HardwareError` naming the first key that differs)."""
    started = dict(robot.start_episode(episode.index) or {})
    started.pop("task", None)
    mismatch = metadata_mismatch(episode.extra, started)
    if mismatch:
        raise HardwareError(robot.name, f"episode {episode.index} would not be retraced: {mismatch} "
                                        "(replay with the recording's settings, e.g. sim.seed, sim.task)")
    return started


def replay(robot, actions: np.ndarray, fps: float, status: StatusLine | None = None,
           clock: Clock | None = None, joints_out: list | None = None) -> LoopStats:
    """Send ``actions`` one per tick; returns the loop timing. The loop runs on ``clock``, by
    default the robot's own (a sim world's time), else the wall clock. With ``joints_out``, the
    joints read at every tick before its action (the recorder's order) are appended to it."""
    clock = clock if clock is not None else clock_of([robot])
    timer = LoopTimer(fps, late_threshold_s=0.25 / fps, clock=clock)
    status = status or StatusLine(0.5)
    timer.start()
    for i, action in enumerate(actions):
        timer.tick()
        if joints_out is not None:
            joints_out.append(np.asarray(robot.read_joints().positions, np.float64))
        robot.send_action(action)
        if status.due():
            status.update(f"replaying {i + 1}/{len(actions)}  {timer.stats().line()}")
    stats = timer.stats()
    status.done(f"replayed {len(actions)} actions, {stats.line()}")
    return stats


def run(cfg: DictConfig) -> int:
    """Replay from a composed ``conf/replay.yaml``; 1 on a dataset or hardware error (one line)."""
    try:
        episode = load_episode(cfg.dataset.root, int(cfg.episode))
        if cfg.fps is None:
            cfg.fps = episode.fps   # before the robot is built: the twin ticks at the dataset's rate
        robot = instantiate(cfg.robot)
        joints: list[np.ndarray] = []
        with robot:
            start_replay_episode(robot, episode)
            replay(robot, episode.actions, cfg.fps, joints_out=joints)
            ended = robot.end_episode() or {}
        if episode.states is not None and len(joints) == len(episode.states):
            difference = float(np.abs(np.stack(joints) - episode.states).max()) if joints else 0.0
            print(f"largest difference from the recorded joint states: {difference:.4f} "
                  "(degrees; gripper 0-100)")
        for key, value in ended.items():
            print(f"{key}: {value}")
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
