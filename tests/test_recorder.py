"""The recording loop with mock devices: rows, timing, keyboard control, faults, resume."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rlbench_sms.cli import EXIT_CONFIG
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.validate import validate
from rlbench_sms.data.video import DepthEncoderConfig, VideoEncoderConfig
from rlbench_sms.data.writer import DatasetWriter
from rlbench_sms.features import FORCE, FORCE_AGE, camera_age_key, is_reading_timing_key
from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.hardware.mock import (MockCamera, MockCameraConfig, MockForceSensor, MockRobot,
                                       MockTeleop)
from rlbench_sms.runtime.clock import LoopTimer
from rlbench_sms.runtime.keyboard import Command, TerminalKeys
from rlbench_sms.runtime.record_app import open_dataset
from rlbench_sms.runtime.recorder import CAPTURE_TIME, LATE, Recorder, RecordingConfig, recording_features

FPS = 20
REPO = Path(__file__).parent.parent


class Keys(TerminalKeys):
    """Keys typed by a test at given times after the first poll."""

    def __init__(self, script=()):
        super().__init__(stream=open("/dev/null"))
        self.script = list(script)
        self.t0 = None

    def poll(self):
        self.t0 = self.t0 or time.monotonic()
        if self.script and time.monotonic() - self.t0 >= self.script[0][0]:
            self.feed(self.script.pop(0)[1])
        return super().poll()


def devices(stall_after=None):
    cams = {"front": MockCamera(MockCameraConfig(64, 48, FPS, use_depth=True, stall_after_frames=stall_after)),
            "wrist": MockCamera(MockCameraConfig(64, 48, FPS), seed=1)}
    return MockRobot(), MockTeleop(), cams, MockForceSensor()


FAST_VIDEO = VideoEncoderConfig(vcodec="h264", crf=23, preset="ultrafast")


def run(tmp_path, episodes=2, seconds=0.5, keys=(), robot=None, stall_after=None, root=None,
        writer=None):
    r, t, cams, force = devices(stall_after)
    robot = robot or r
    root = root or tmp_path / "ds"
    writer = writer or DatasetWriter.create(root, FPS, recording_features(robot, cams, force),
                                            video_config=FAST_VIDEO)
    config = RecordingConfig(single_task="wave", fps=FPS, num_episodes=episodes, episode_time_s=seconds,
                             reset_time_s=0.1, late_threshold_s=0.02)
    all_devices = [robot, t, force, *cams.values()]
    for d in all_devices:
        d.connect()
    try:
        summary = Recorder(robot, t, cams, force, writer, config, keys=Keys(keys)).run()
    finally:
        for d in all_devices:
            d.disconnect()
        writer.close()
    return root, summary


def test_records_rows_timing_and_raw_force(tmp_path):
    root, summary = run(tmp_path)
    validate(root)
    assert [e.frames for e in summary.episodes] == [10, 10]
    meta = DatasetMeta.load(root)
    ep = meta.episodes[0]
    assert ep.extra["timing/ticks"] == 10 and ep.extra["timing/achieved_fps"] > 0
    ages = [camera_age_key("front"), camera_age_key("wrist"), FORCE_AGE]
    with DatasetReader(root) as r:
        cols = r.load_columns([CAPTURE_TIME, LATE, FORCE, *ages])
        assert all(r.meta.features[k].dtype == "float32" for k in ages)
    capture = cols[CAPTURE_TIME][:10]
    assert capture[0] < 0.05 and np.all(np.diff(capture) > 0)       # real, increasing times
    np.testing.assert_allclose(np.diff(capture).mean(), 1 / FPS, rtol=0.3)
    assert cols[LATE].dtype == bool
    # A frame is reused only while younger than camera_max_age_s (0.1 s), and the joints are read
    # before the cameras: every stored age is below it. The mock cameras stream at the loop's
    # rate, so frames are mostly taken before the tick (positive ages).
    for key in ages[:2]:
        assert np.all(cols[key] < 0.1) and np.median(cols[key]) > 0
    # The 200 Hz force reading is about one sample period old (5 ms; negative when a sample came
    # due between the joint and the force reads), plus the loop's own delays.
    assert np.all(np.abs(cols[FORCE_AGE]) < 0.05)
    raw = pq.read_table(root / "raw/observation.force/chunk-000/episode-000000.parquet")
    assert raw.num_rows > 10 * 3          # 200 Hz sensor, 20 Hz loop: the raw stream is kept
    assert raw.column_names == ["time_s", "fx", "fy", "fz", "tx", "ty", "tz"]


def test_rerecord_and_stop_keys(tmp_path):
    root, summary = run(tmp_path, episodes=3, seconds=1.0, keys=[(0.2, "r"), (0.5, "q")])
    # episode 1 re-recorded after 0.2 s, then stopped 0.3 s into its second take: one saved.
    assert summary.stopped_early and len(summary.episodes) == 1
    assert 0 < summary.episodes[0].frames < FPS
    assert DatasetMeta.load(root).info["total_episodes"] == 1
    validate(root)


class FailingRobot(MockRobot):
    def __init__(self, fail_after):
        super().__init__()
        self.reads, self.fail_after = 0, fail_after

    def read_joints(self):
        self.reads += 1
        if self.reads > self.fail_after:
            raise HardwareError("so100 follower on /dev/ttyACM0", "no status packet from motors [1, 2]")
        return super().read_joints()


def test_hardware_failure_saves_the_episode_so_far(tmp_path):
    with pytest.raises(HardwareError, match="ttyACM0"):
        run(tmp_path, episodes=2, seconds=1.0, robot=FailingRobot(fail_after=7))
    meta = DatasetMeta.load(tmp_path / "ds")
    assert [e.length for e in meta.episodes] == [7]
    validate(tmp_path / "ds")


def test_stalled_camera_is_a_clear_error_and_saves(tmp_path):
    with pytest.raises(HardwareError, match="mock camera.*no new frame"):
        run(tmp_path, episodes=1, seconds=2.0, stall_after=6)
    assert DatasetMeta.load(tmp_path / "ds").info["total_episodes"] == 1


class InterruptedRobot(MockRobot):
    def __init__(self, after):
        super().__init__()
        self.reads, self.after = 0, after

    def read_joints(self):
        self.reads += 1
        if self.reads > self.after:
            raise KeyboardInterrupt
        return super().read_joints()


def test_keyboard_interrupt_saves_and_returns(tmp_path):
    root, summary = run(tmp_path, episodes=2, seconds=1.0, robot=InterruptedRobot(after=5))
    assert summary.stopped_early and [e.frames for e in summary.episodes] == [5]
    validate(root)


def test_loop_timer_flags_late_ticks_and_keeps_absolute_deadlines():
    timer = LoopTimer(fps=50, late_threshold_s=0.005)
    timer.start()
    late = []
    for k in range(15):
        late.append(timer.tick())
        if k == 5:
            time.sleep(0.03)            # a slow iteration: the next tick is late, not shifted
    stats = timer.stats()
    assert late[6] and not any(late[8:])
    assert stats.ticks == 15 and stats.late_ticks >= 1
    assert abs(stats.duration_s - 14 / 50) < 0.02   # later deadlines did not move


def test_resume_appends_and_refuses_mismatches(tmp_path):
    root, _ = run(tmp_path, episodes=1, seconds=0.3)
    robot, _, cams, force = devices()
    features = recording_features(robot, cams, force)
    video, depth = VideoEncoderConfig(), DepthEncoderConfig()
    with pytest.raises(DatasetError, match="fps.*30"):
        open_dataset(root, 30, features, "mock", True, video, depth)
    with pytest.raises(DatasetError, match="observation.force.*recorded in the dataset but no device"):
        open_dataset(root, FPS, recording_features(robot, cams, None), "mock", True, video, depth)
    with pytest.raises(DatasetError, match="already exists"):
        open_dataset(root, FPS, features, "mock", False, video, depth)
    open_dataset(root, FPS, features, "mock", True, video, depth).close()


def test_record_cli_with_mocks(tmp_path):
    root = tmp_path / "cli"
    small = [f"cameras.{c}.config.{k}={v}" for c in ("front", "wrist", "top") for k, v in (("width", 64), ("height", 48))]
    cmd = [sys.executable, str(REPO / "record.py"), "dataset.single_task=wave", "dataset.num_episodes=1",
           "dataset.episode_time_s=0.5", "dataset.reset_time_s=0", f"dataset.root={root}",
           f"paths.output_dir={tmp_path / 'out'}", "dataset.video.vcodec=h264", "dataset.video.crf=23",
           "dataset.video.preset=ultrafast", *small]
    out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 episode(s) saved" in out.stdout
    validate(root)
    again = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    # LeRobot's habit: on resume, num_episodes is how many *more* to record.
    resumed = subprocess.run(cmd + ["dataset.resume=true"], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert DatasetMeta.load(root).info["total_episodes"] == 2
    assert f"1 episode(s) saved to {root} (2 in the dataset)" in resumed.stdout
    missing = subprocess.run([sys.executable, str(REPO / "record.py"), f"dataset.root={tmp_path / 'x'}",
                              f"paths.output_dir={tmp_path / 'out'}"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=120)
    assert missing.returncode == EXIT_CONFIG and "dataset.single_task" in missing.stderr


def test_resume_records_num_episodes_more(tmp_path):
    root, _ = run(tmp_path, episodes=1, seconds=0.2)
    robot, _, cams, force = devices()
    writer = open_dataset(root, FPS, recording_features(robot, cams, force), "mock", True, FAST_VIDEO,
                          DepthEncoderConfig())
    _, summary = run(tmp_path, episodes=2, seconds=0.2, root=root, writer=writer)
    assert [e.index for e in summary.episodes] == [1, 2]
    assert DatasetMeta.load(root).info["total_episodes"] == 3
    validate(root)


def test_resume_a_dataset_recorded_before_reading_ages(tmp_path, capsys):
    """A dataset from before the per-reading timing columns resumes without them, and loads."""
    robot, _, cams, force = devices()
    old_schema = [f for f in recording_features(robot, cams, force) if not is_reading_timing_key(f.key)]
    root = tmp_path / "old"
    run(tmp_path, episodes=1, seconds=0.2, root=root,
        writer=DatasetWriter.create(root, FPS, old_schema, video_config=FAST_VIDEO))
    assert camera_age_key("front") not in DatasetMeta.load(root).features
    capsys.readouterr()                 # the first recording's status lines
    writer = open_dataset(root, FPS, recording_features(robot, cams, force), "mock", True, FAST_VIDEO,
                          DepthEncoderConfig())
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "recorded without per-reading timing" in note[0]
    assert camera_age_key("front") in note[0] and FORCE_AGE in note[0]
    run(tmp_path, episodes=1, seconds=0.2, root=root, writer=writer)
    validate(root)
    meta = DatasetMeta.load(root)
    assert meta.info["total_episodes"] == 2 and FORCE_AGE not in meta.features
    with DatasetReader(root) as r:
        assert len(r.load_columns([CAPTURE_TIME])[CAPTURE_TIME]) == meta.info["total_frames"]
    # Another difference than the optional timing columns is still refused.
    with pytest.raises(DatasetError, match="observation.force.*recorded in the dataset but no device"):
        open_dataset(root, FPS, recording_features(robot, cams, None), "mock", True, FAST_VIDEO,
                     DepthEncoderConfig())
