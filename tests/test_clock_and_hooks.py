"""The runtime seams of the MuJoCo twin, with mock devices: an injected clock drives the recording,
teleoperation and replay loops (no wall-clock sleeping), and every device's episode hooks put
their metadata (and the task text) into the dataset."""

import threading
import time

import numpy as np
import pytest

from stub_devices import ConnectFlag
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.validate import validate
from rlbench_sms.data.video import DepthEncoderConfig, VideoEncoderConfig
from rlbench_sms.data.writer import DatasetWriter, _StreamEncoder
from rlbench_sms.features import CAPTURE_TIME, FORCE_AGE, LATE, camera_age_key, rgb_feature
from rlbench_sms.hardware.contracts import Camera, CameraFrame, HardwareError, JointReading
from rlbench_sms.hardware.mock import MockForceSensor, MockRobot, MockTeleop
from rlbench_sms.runtime.clock import LoopTimer, WallClock, clock_of
from rlbench_sms.runtime.keyboard import TerminalKeys
from rlbench_sms.runtime.record_app import open_dataset
from rlbench_sms.runtime.recorder import Recorder, RecordingConfig, recording_features
from rlbench_sms.tools.replay import replay
from rlbench_sms.tools.teleoperate import teleoperate

FPS = 30
FAST_VIDEO = VideoEncoderConfig(vcodec="h264", crf=23, preset="ultrafast")
# Equality on the fake clock, up to float32 rounding of the stored seconds; wall-clock jitter
# is orders of magnitude larger.
EXACT_S = 1e-6


class FakeClock:
    """Simulated time: waiting jumps straight to the deadline; nothing else moves it."""

    def __init__(self, start: float = 0.0):
        self.t = start
        self.waits = 0

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        self.waits += 1
        self.t = max(self.t, t)


class ClockedRobot(MockRobot):
    """A follower whose joint readings are stamped on the fake clock (as sim devices stamp sim
    time), owning that clock; its hooks name a seed and a task per episode."""

    def __init__(self, clock, events):
        super().__init__()
        self.clock, self.events = clock, events

    def read_joints(self):
        reading = super().read_joints()
        return JointReading(reading.positions, self.clock.now())

    def start_episode(self, index):
        self.events.append(("robot", "start", index))
        return {"sim/seed": np.int64(100 + index), "sim/task": "press",
                "task": f"press with {index + 2} N"}

    def end_episode(self):
        self.events.append(("robot", "end"))
        return {"sim/success": np.bool_(True)}


class HookedTeleop(MockTeleop):
    def __init__(self, events):
        super().__init__()
        self.events = events

    def start_episode(self, index):
        self.events.append(("teleop", "start", index))
        return {"expert/speed": 0.25}

    def end_episode(self):
        self.events.append(("teleop", "end"))
        return {"expert/plan": "grasp,lift"}


class FakeCamera(ConnectFlag, Camera):
    """A tiny RGB camera whose frames are taken at the moment they are read, on the fake clock."""

    name = "fake camera"

    def __init__(self, clock, events):
        self.clock, self.events = clock, events
        self._connected = False
        self._image = np.full((16, 16, 3), 128, np.uint8)

    def features(self, camera_name):
        return [rgb_feature(camera_name, 16, 16)]

    def read(self, timeout_s):
        return CameraFrame(self.clock.now(), self._image)

    def read_latest(self, max_age_s, timeout_s):
        return self.read(timeout_s)

    def start_episode(self, index):
        self.events.append(("camera", "start", index))
        return {"camera/exposure_us": np.float32(33.0)}

    def end_episode(self):
        self.events.append(("camera", "end"))
        return {}


class HookedForceSensor(MockForceSensor):
    """The mock sensor sampled on the fake clock (its tare waits on it, too)."""

    def __init__(self, clock, events):
        super().__init__(clock=clock.now, sleep=lambda s: clock.sleep_until(clock.now() + s))
        self.events = events

    def tare(self):
        self.events.append(("force", "tare"))
        return super().tare()

    def start_episode(self, index):
        self.events.append(("force", "start", index))
        return {}

    def end_episode(self):
        self.events.append(("force", "end"))
        return {"force/peak_n": 1.5}


class KeysAtPoll(TerminalKeys):
    """Keys typed at given poll counts (one poll per tick), not wall times: exact on any clock."""

    def __init__(self, script=()):
        super().__init__(stream=open("/dev/null"))
        self.script, self.polls = dict(script), 0

    def poll(self):
        self.polls += 1
        if self.polls in self.script:
            self.feed(self.script.pop(self.polls))
        return super().poll()


def make_devices(clock, events):
    return (ClockedRobot(clock, events), HookedTeleop(events), {"front": FakeCamera(clock, events)},
            HookedForceSensor(clock, events))


def record(tmp_path, clock, events, episodes, seconds, keys=(), root=None, resume=False,
           resets_scene=False):
    robot, teleop, cams, force = make_devices(clock, events)
    robot.resets_scene = resets_scene
    root = root or tmp_path / "ds"
    features = recording_features(robot, cams, force)
    writer = (open_dataset(root, FPS, features, "mock", True, FAST_VIDEO, DepthEncoderConfig()) if resume
              else DatasetWriter.create(root, FPS, features, video_config=FAST_VIDEO))
    config = RecordingConfig(single_task="the config's task", fps=FPS, num_episodes=episodes,
                             episode_time_s=seconds, reset_time_s=1.0, late_threshold_s=0.01)
    all_devices = [robot, teleop, *cams.values(), force]
    for d in all_devices:
        d.connect()
    try:
        summary = Recorder(robot, teleop, cams, force, writer, config, keys=KeysAtPoll(keys),
                           clock=clock_of(all_devices)).run()
    finally:
        for d in all_devices:
            d.disconnect()
        writer.close()
    return root, summary


def episode_events(index):
    """The hook calls of one take of episode ``index``: tare, starts, ends, in device order."""
    return [("force", "tare"), ("robot", "start", index), ("teleop", "start", index),
            ("camera", "start", index), ("force", "start", index),
            ("robot", "end"), ("teleop", "end"), ("camera", "end"), ("force", "end")]


def test_a_fake_clock_drives_the_recording_without_sleeping(tmp_path):
    clock, events = FakeClock(start=1000.0), []
    wall = time.monotonic()
    root, summary = record(tmp_path, clock, events, episodes=2, seconds=10.0)
    assert time.monotonic() - wall < 5.0        # 2 x 10 s episodes + a 1 s reset, on fake time
    assert [e.frames for e in summary.episodes] == [10 * FPS, 10 * FPS]
    validate(root)
    meta = DatasetMeta.load(root)
    with DatasetReader(root) as reader:
        cols = reader.load_columns([CAPTURE_TIME, LATE, camera_age_key("front"), FORCE_AGE])
    k = np.arange(10 * FPS)
    for ep in range(2):
        rows = slice(ep * 10 * FPS, (ep + 1) * 10 * FPS)
        # Deadlines on the fake clock, hit exactly: tick k is captured at k / fps.
        np.testing.assert_allclose(cols[CAPTURE_TIME][rows], k / FPS, rtol=0, atol=EXACT_S)
        assert not cols[LATE][rows].any()
        assert meta.episodes[ep].extra["timing/late_ticks"] == 0
        assert meta.episodes[ep].extra["timing/achieved_fps"] == pytest.approx(FPS)
    # Every reading is on the same clock: a frame read at the tick is 0 s old, the 200 Hz force
    # sample at most one sample period.
    np.testing.assert_allclose(cols[camera_age_key("front")], 0.0, atol=EXACT_S)
    assert np.all((cols[FORCE_AGE] >= -EXACT_S) & (cols[FORCE_AGE] <= 1 / 200 + EXACT_S))
    assert clock.t > 1000.0 + 21.0              # the episodes, the reset and the tares
    assert events == episode_events(0) + episode_events(1)


def test_a_device_that_resets_the_scene_skips_the_reset_phase(tmp_path):
    """A simulator re-lays its scene in start_episode: no 1 s reset between the episodes."""
    with_reset, without = FakeClock(), FakeClock()
    record(tmp_path / "a", with_reset, [], episodes=2, seconds=1.0)
    record(tmp_path / "b", without, [], episodes=2, seconds=1.0, resets_scene=True)
    assert with_reset.t - without.t == pytest.approx(1.0, abs=1.5 / FPS)


def test_hook_metadata_and_task_land_in_the_episode_metadata(tmp_path):
    root, _ = record(tmp_path, FakeClock(), [], episodes=2, seconds=0.5)
    validate(root)
    meta = DatasetMeta.load(root)
    for ep in meta.episodes:
        extra = ep.extra
        # bool, int, float and str survive the round trip, numpy scalars as Python values.
        assert extra["sim/seed"] == 100 + ep.index and type(extra["sim/seed"]) is int
        assert extra["sim/success"] is True
        assert extra["sim/task"] == "press" and extra["expert/plan"] == "grasp,lift"
        assert extra["expert/speed"] == 0.25 and extra["camera/exposure_us"] == 33.0
        assert extra["force/peak_n"] == 1.5
        assert "task" not in extra                 # the task text is the episode's task, not metadata
        assert ep.tasks == (f"press with {ep.index + 2} N",)
    with DatasetReader(root) as reader:
        stored = [reader.meta.tasks[int(i)] for i in reader.load_columns(["task_index"])["task_index"]]
    assert stored == ["press with 2 N"] * 15 + ["press with 3 N"] * 15


def test_a_device_saying_the_episode_is_done_ends_it_at_that_tick(tmp_path, monkeypatch):
    """The twin's evaluation stops at the first success: the episode is saved with the ticks so far."""
    ticks = {"n": 0}

    def done_after_7(self):
        ticks["n"] += 1
        return ticks["n"] % 7 == 0

    monkeypatch.setattr(HookedForceSensor, "episode_done", done_after_7)
    root, summary = record(tmp_path, FakeClock(), [], episodes=2, seconds=1.0, resets_scene=True)
    assert [e.frames for e in summary.episodes] == [7, 7]
    validate(root)


def test_rerecord_and_resume_start_the_same_episode_index_again(tmp_path):
    clock, events = FakeClock(), []
    # "r" at the 5th tick of the first episode: it is discarded and recorded again as episode 0.
    root, summary = record(tmp_path, clock, events, episodes=2, seconds=0.5, keys=[(5, "r")])
    assert [e.index for e in summary.episodes] == [0, 1]
    assert events == episode_events(0) + episode_events(0) + episode_events(1)
    events.clear()
    root, summary = record(tmp_path, clock, events, episodes=1, seconds=0.5, root=root, resume=True)
    assert [e.index for e in summary.episodes] == [2] and events == episode_events(2)
    meta = DatasetMeta.load(root)
    assert [e.extra["sim/seed"] for e in meta.episodes] == [100, 101, 102]
    assert meta.episodes[2].tasks == ("press with 4 N",)
    validate(root)


def test_discarding_an_episode_before_its_first_frame_is_encoded_does_not_hang(tmp_path):
    """On a fake clock a re-record comes ticks, not seconds, after the start: the encoder thread
    may not have taken one frame yet. Its close() then fails (no frames), and the thread used to
    wait forever for a second end-of-stream marker, hanging clear_episode()."""
    encoder = _StreamEncoder(tmp_path / "v.mp4", FPS, FAST_VIDEO)
    aborting = threading.Thread(target=encoder.abort, daemon=True)
    aborting.start()
    aborting.join(timeout=10)
    assert not aborting.is_alive() and not (tmp_path / "v.mp4").exists()


class BadHookRobot(ClockedRobot):
    def __init__(self, clock, events, metadata):
        super().__init__(clock, events)
        self.metadata = metadata

    def start_episode(self, index):
        return self.metadata


@pytest.mark.parametrize("metadata, problem", [
    ({"sim/pose": [1.0, 2.0]}, "sim/pose.*bool, int, float or str"),
    ({"timing/ticks": 3}, "'timing/ticks'.*reserved"),
    ({"task": ""}, "task.*non-empty string"),
    (None, "returned NoneType, not a dict"),
])
def test_bad_hook_metadata_is_one_line_before_recording(tmp_path, metadata, problem):
    clock = FakeClock()
    _, teleop, cams, force = make_devices(clock, [])
    robot = BadHookRobot(clock, [], metadata)
    root = tmp_path / "ds"
    writer = DatasetWriter.create(root, FPS, recording_features(robot, cams, force), video_config=FAST_VIDEO)
    config = RecordingConfig(single_task="t", fps=FPS, num_episodes=1, episode_time_s=0.5, reset_time_s=0)
    devices = [robot, teleop, *cams.values(), force]
    for d in devices:
        d.connect()
    try:
        with pytest.raises(HardwareError, match=problem) as error:
            Recorder(robot, teleop, cams, force, writer, config, keys=KeysAtPoll()).run()
    finally:
        for d in devices:
            d.disconnect()
        writer.close()
    assert "\n" not in str(error.value) and str(error.value).startswith("mock robot:")
    assert DatasetMeta.load(root).info["total_episodes"] == 0


class FailingRobot(ClockedRobot):
    def __init__(self, clock, events, fail_after):
        super().__init__(clock, events)
        self.reads, self.fail_after = 0, fail_after

    def read_joints(self):
        self.reads += 1
        if self.reads > self.fail_after:
            raise HardwareError("so100 follower on /dev/ttyACM0", "no status packet from motors [1, 2]")
        return super().read_joints()


def test_a_failing_device_still_ends_the_episode_and_keeps_its_metadata(tmp_path):
    clock, events = FakeClock(), []
    _, teleop, cams, force = make_devices(clock, events)
    robot = FailingRobot(clock, events, fail_after=7)
    root = tmp_path / "ds"
    writer = DatasetWriter.create(root, FPS, recording_features(robot, cams, force), video_config=FAST_VIDEO)
    config = RecordingConfig(single_task="t", fps=FPS, num_episodes=2, episode_time_s=1.0, reset_time_s=0)
    devices = [robot, teleop, *cams.values(), force]
    for d in devices:
        d.connect()
    try:
        with pytest.raises(HardwareError, match="ttyACM0"):
            Recorder(robot, teleop, cams, force, writer, config, keys=KeysAtPoll()).run()
    finally:
        for d in devices:
            d.disconnect()
        writer.close()
    assert events == episode_events(0)
    (episode,) = DatasetMeta.load(root).episodes
    assert episode.length == 7 and episode.extra["sim/success"] is True
    assert episode.extra["sim/seed"] == 100 and episode.tasks == ("press with 2 N",)


def test_clock_of_picks_the_first_device_clock(tmp_path):
    first, second = FakeClock(), FakeClock()

    class Owner:
        def __init__(self, clock):
            self.clock = clock

    assert clock_of([MockRobot(), None, Owner(None), Owner(first), Owner(second)]) is first
    assert isinstance(clock_of([MockRobot(), MockTeleop(), None]), WallClock)
    # A recorder given no clock runs on its devices' clock too.
    clock = FakeClock()
    robot, teleop, cams, force = make_devices(clock, [])
    with DatasetWriter.create(tmp_path / "ds", FPS, recording_features(robot, cams, force)) as writer:
        assert Recorder(robot, teleop, cams, force, writer, RecordingConfig("t")).timer.clock is clock


def test_loop_timer_on_a_fake_clock_keeps_absolute_deadlines_and_reanchors():
    clock = FakeClock(start=5.0)
    timer = LoopTimer(fps=10, late_threshold_s=0.01, clock=clock)
    assert timer.start() == 5.0
    late = []
    for k in range(6):
        late.append(timer.tick())
        if k == 1:
            clock.t += 0.15             # 1.5 periods of work: the next tick is late, later ones not shifted
        if k == 3:
            clock.t += 0.35             # 2.5 periods behind: re-anchored, no burst of ticks
    assert late == [False, False, True, False, True, False]
    assert timer._starts == pytest.approx([5.0, 5.1, 5.25, 5.3, 5.65, 5.75])
    assert timer.stats().late_ticks == 2 and clock.waits == 3     # ticks 1, 3 and 5 waited
    assert timer.elapsed_s == pytest.approx(0.5)      # since the re-anchored start (5.25)


def test_teleoperate_and_replay_run_on_the_robot_clock():
    clock = FakeClock()
    robot, teleop = ClockedRobot(clock, []), MockTeleop()
    wall = time.monotonic()
    with robot, teleop:
        assert teleoperate(robot, teleop, fps=FPS, duration_s=10.0) == 10 * FPS
        teleop_end = clock.t
        stats = replay(robot, np.zeros((10 * FPS, 6), np.float32), fps=FPS)
    assert time.monotonic() - wall < 5.0           # 20 s of loop time, on the fake clock
    assert teleop_end == pytest.approx((10 * FPS - 1) / FPS)
    assert stats.ticks == 10 * FPS and stats.duration_s == pytest.approx((10 * FPS - 1) / FPS)
    assert stats.late_ticks == 0


def test_a_reading_on_another_clock_than_the_loop_is_refused_in_one_line():
    """A mock camera beside the twin's robot stamps the wall clock while the loop runs on
    simulated time: the ages stored against the tick would be nonsense."""
    from rlbench_sms.hardware.mock import MockCamera
    from rlbench_sms.runtime.recorder import check_time_bases

    class SimulatedClock(FakeClock):
        time_base = "sim"

    with pytest.raises(HardwareError) as info:
        check_time_bases(SimulatedClock(), {"front": MockCamera()}, MockForceSensor())
    assert str(info.value).startswith("cameras.front, force_sensor: stamped on monotonic time while "
                                      "the loop runs on sim time") and "camera=sim" in str(info.value)
    check_time_bases(WallClock(), {"front": MockCamera()}, MockForceSensor())     # same clock: fine
