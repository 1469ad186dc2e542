"""``record.py``: build the devices and the dataset from the config, record, report.

Kept out of the entry script so that it is importable and testable. Exit codes: 0 when the
recording finished or was stopped by the user, 2 when a required setting is missing, 1 on a
dataset or hardware error (after saving what was recorded), with one line saying what and where.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlbench_sms.cli import EXIT_CONFIG, check_required
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.writer import DatasetWriter
from rlbench_sms.features import FeatureSpec, is_reading_timing_key
from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.runtime.clock import clock_of
from rlbench_sms.runtime.keyboard import TerminalKeys
from rlbench_sms.runtime.recorder import (Recorder, RecordingConfig, StatusLine, check_time_bases,
                                          recording_features)

log = logging.getLogger(__name__)


def open_dataset(root: Path, fps: int, features: list[FeatureSpec], robot_type: str, resume: bool,
                 video_config, depth_config) -> DatasetWriter:
    """A writer for a new dataset, or for appending to ``root`` when ``resume``.

    Appending refuses a dataset recorded at another fps or with other features: mixing them
    would make a dataset no reader can use consistently. The one exception: per-reading timing
    columns (frame and force ages, device times) that a dataset recorded before they existed
    lacks are left out of the new episodes too, with a note on stderr.
    """
    if not resume:
        return DatasetWriter.create(root, fps, features, robot_type=robot_type,
                                    video_config=video_config, depth_config=depth_config)
    writer, report = DatasetWriter.open(root, video_config=video_config, depth_config=depth_config)
    if not report.clean:
        print(f"{root}: {report.summary()}", file=sys.stderr)
    if writer.fps != fps:
        raise DatasetError(root / "meta/info.json", "fps", f"dataset is {writer.fps} fps, recording "
                                                           f"asks for {fps} (set fps={writer.fps})")
    absent_timing = [f.key for f in features
                     if is_reading_timing_key(f.key) and f.key not in writer.features]
    if absent_timing:
        print(f"{root}: recorded without per-reading timing ({', '.join(absent_timing)}); "
              "the new episodes leave it out too", file=sys.stderr)
    for spec in features:
        have = writer.features.get(spec.key)
        if have is None and spec.key in absent_timing:
            continue
        if have is None:
            raise DatasetError(root / "meta/info.json", spec.key,
                               "not in the dataset being resumed (different sensors?)")
        if tuple(have.shape) != tuple(spec.shape) or have.dtype != spec.dtype:
            raise DatasetError(root / "meta/info.json", spec.key,
                               f"dataset has {have.dtype} {list(have.shape)}, the devices give "
                               f"{spec.dtype} {list(spec.shape)}")
    missing = [k for k in writer.user_keys if k not in {f.key for f in features}]
    if missing:
        raise DatasetError(root / "meta/info.json", missing[0], "recorded in the dataset but no device gives it")
    return writer


def record(cfg: DictConfig, keys: TerminalKeys | None = None, status: StatusLine | None = None) -> int:
    """Run a recording session from a composed ``conf/record.yaml``; ``keys`` and ``status``
    replace the terminal's (a builder that records unattended: ``rlbench_sms.data.sample``)."""
    problem = check_required(cfg)     # every `???` left unset (port, serial, task), one line
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    task = cfg.dataset.single_task
    robot = instantiate(cfg.robot)
    teleop = instantiate(cfg.teleop)
    cameras = {name: instantiate(c) for name, c in (cfg.get("cameras") or {}).items()}
    force_sensor = instantiate(cfg.force_sensor) if cfg.get("force_sensor") else None
    sensors = [instantiate(cfg.tip)] if cfg.get("tip") else []
    root = Path(cfg.dataset.root)
    config = RecordingConfig(single_task=task, fps=int(cfg.fps),
                             num_episodes=int(cfg.dataset.num_episodes),
                             episode_time_s=float(cfg.dataset.episode_time_s),
                             reset_time_s=float(cfg.dataset.reset_time_s),
                             **OmegaConf.to_container(cfg.recording))
    display = None
    if cfg.display or cfg.get("display_save"):
        from rlbench_sms.runtime.display import open_display

        # Before any device connects: a machine with no viewer is found (one line) before the loop.
        display = open_display(cfg.dataset.repo_id, cfg.get("display_save"),
                               **OmegaConf.to_container(cfg.display_options, resolve=True))
    try:
        with contextlib.ExitStack() as stack:
            if display is not None:
                stack.enter_context(display)    # closed last: never waits past its timeout
            devices = [robot, teleop, *cameras.values()] + ([force_sensor] if force_sensor else []) + sensors
            for device in devices:
                stack.enter_context(device)
            # The twin's simulated time when a sim device owns it, else the wall clock; every
            # stored reading must be stamped on it (checked before a dataset is created).
            clock = clock_of(devices)
            check_time_bases(clock, cameras, force_sensor, sensors)
            # Schemas after connecting: a RealSense reports its real intrinsics only then.
            features = recording_features(robot, cameras, force_sensor, sensors)
            writer = open_dataset(root, config.fps, features,
                                  getattr(robot, "robot_type", robot.name), bool(cfg.dataset.resume),
                                  instantiate(cfg.dataset.video), instantiate(cfg.dataset.depth))
            stack.enter_context(writer)
            summary = Recorder(robot, teleop, cameras, force_sensor, writer, config, keys=keys,
                               display=display, status=status, clock=clock,
                               sensors=sensors).run()
    except (DatasetError, HardwareError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    saved = len(summary.episodes)
    print(f"{saved} episode(s) saved to {root} ({writer.num_episodes} in the dataset)"
          + (" - stopped early" if summary.stopped_early else ""))
    return 0
