"""Every reading keeps its age: the recorder stores, per camera, how old the frame was at the tick
(and the force reading's age), and a RealSense's own frame stamps flow into a device-time column,
mapped onto the host clock (``hardware/device_clock.py``)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from optional_deps import import_or_skip_native

from stub_devices import ConnectFlag
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.validate import validate
from rlbench_sms.data.video import VideoEncoderConfig
from rlbench_sms.data.writer import DatasetWriter
from rlbench_sms.features import (CAPTURE_TIME, FORCE_AGE, camera_age_key, camera_device_time_key,
                                  rgb_feature)
from rlbench_sms.hardware.contracts import Camera, CameraFrame, ForceReading, ForceSensor
from rlbench_sms.hardware.device_clock import DeviceClockMapper
from rlbench_sms.hardware.mock import MockRobot, MockTeleop
from rlbench_sms.runtime.keyboard import TerminalKeys
from rlbench_sms.runtime.recorder import Recorder, RecordingConfig, recording_features

FPS = 50
TICKS = 10
# Known lags per tick (seconds): camera frame behind the tick, device stamp behind the receive,
# force sample behind the tick. Distinct values, so a row can only match its own tick.
FRAME_LAG = 0.004 + 0.003 * np.arange(TICKS)
DEVICE_LEAD = 0.020 + 0.001 * np.arange(TICKS)
FORCE_LAG = 0.001 + 0.0005 * np.arange(TICKS)


class ClockedRobot(MockRobot):
    """A mock arm that remembers the timestamp of its latest joint reading (the tick's time)."""

    def __init__(self):
        super().__init__()
        self.tick_times: list[float] = []

    def read_joints(self):
        reading = super().read_joints()
        self.tick_times.append(reading.timestamp)
        return reading


class LaggingCamera(ConnectFlag, Camera):
    """Hands out, at tick k, a frame captured FRAME_LAG[k] before the tick, which its driver
    stamped DEVICE_LEAD[k] before that (a camera with a device clock)."""

    has_device_clock = True

    def __init__(self, robot: ClockedRobot):
        self.robot, self.name, self._connected = robot, "lagging camera", False
        self.image = np.zeros((16, 16, 3), np.uint8)

    def features(self, camera_name):
        return [rgb_feature(camera_name, 16, 16)]

    def read(self, timeout_s):
        raise AssertionError("the recorder reads with read_latest")

    def read_latest(self, max_age_s, timeout_s):
        k = (len(self.robot.tick_times) - 1) % TICKS
        captured = self.robot.tick_times[-1] - FRAME_LAG[k]
        return CameraFrame(captured, self.image, device_timestamp=captured - DEVICE_LEAD[k],
                           device_clock="hardware_clock")


class LaggingForce(ConnectFlag, ForceSensor):
    """A force reading whose newest sample is FORCE_LAG[k] older than tick k."""

    name = "lagging force"

    def __init__(self, robot: ClockedRobot):
        self.robot, self._connected = robot, False

    def feature(self):
        from rlbench_sms.features import force_feature
        return force_feature()

    def tare(self):
        return np.zeros(6, np.float32)

    def read(self):
        k = (len(self.robot.tick_times) - 1) % TICKS
        return ForceReading(np.zeros(6, np.float32), self.robot.tick_times[-1] - FORCE_LAG[k])


def record(root, robot, cameras, force, fps, seconds):
    teleop = MockTeleop()
    devices = [robot, teleop, *cameras.values()] + ([force] if force is not None else [])
    for d in devices:
        d.connect()
    try:
        writer = DatasetWriter.create(root, fps, recording_features(robot, cameras, force),
                                      video_config=VideoEncoderConfig(vcodec="h264", crf=23,
                                                                      preset="ultrafast"))
        config = RecordingConfig(single_task="wave", fps=fps, num_episodes=1, episode_time_s=seconds,
                                 reset_time_s=0)
        with writer:
            Recorder(robot, teleop, cameras, force, writer, config,
                     keys=TerminalKeys(stream=open("/dev/null"))).run()
    finally:
        for d in devices:
            d.disconnect()
    validate(root)


def test_stored_ages_are_tick_time_minus_capture_time(tmp_path):
    robot = ClockedRobot()
    record(tmp_path / "ds", robot, {"front": LaggingCamera(robot)}, LaggingForce(robot), FPS, TICKS / FPS)
    keys = [CAPTURE_TIME, camera_age_key("front"), camera_device_time_key("front"), FORCE_AGE]
    with DatasetReader(tmp_path / "ds") as r:
        cols = r.load_columns(keys)
        assert {r.meta.features[k].unit for k in keys} == {"s"}
    assert len(cols[CAPTURE_TIME]) == TICKS
    np.testing.assert_allclose(cols[camera_age_key("front")], FRAME_LAG, atol=1e-6)
    np.testing.assert_allclose(cols[FORCE_AGE], FORCE_LAG, atol=1e-6)
    # The device time is on the capture_s axis: the tick's time minus both lags.
    np.testing.assert_allclose(cols[camera_device_time_key("front")],
                               cols[CAPTURE_TIME] - FRAME_LAG - DEVICE_LEAD, atol=1e-5)
    episode = DatasetMeta.load(tmp_path / "ds").episodes[0]
    assert episode.extra["timing/front_device_clock"] == "hardware_clock"


def test_cameras_without_a_device_clock_get_no_device_column(tmp_path):
    from rlbench_sms.hardware.mock import MockCamera, MockCameraConfig

    robot = MockRobot()
    keys = {f.key for f in recording_features(robot, {"wrist": MockCamera(MockCameraConfig(8, 8))}, None)}
    assert camera_age_key("wrist") in keys
    assert camera_device_time_key("wrist") not in keys and FORCE_AGE not in keys


# -- the device clock mapping (no pyrealsense2 needed) ---------------------------------------------
def test_hardware_clock_maps_by_the_least_delayed_frame():
    mapper = DeviceClockMapper(max_drift=0.0, resync_s=1.0)
    offset = 1000.0                                       # host monotonic minus device clock
    delays = [0.012, 0.004, 0.020, 0.009]                 # transport delay of each frame
    mapped = [mapper.to_host(k / 30, "hardware_clock", offset + k / 30 + d, 0.0)
              for k, d in enumerate(delays)]
    # From the least delayed frame on, the offset is that frame's (4 ms low at most here) ...
    np.testing.assert_allclose(mapped[1:], [offset + k / 30 + 0.004 for k in range(1, 4)], atol=1e-9)
    # ... and a mapped capture time is never after the frame reached the host.
    assert all(m <= offset + k / 30 + d + 1e-12 for k, (m, d) in enumerate(zip(mapped, delays)))


def test_hardware_clock_follows_drift_and_resyncs_on_a_jump():
    # A device clock running 50 ppm slow: host - device grows by 50 us per second. Every frame
    # takes 5 ms to arrive, so the right mapping is the receive time minus... 0 (unobservable).
    def run(max_drift):
        mapper = DeviceClockMapper(max_drift=max_drift, resync_s=1.0)
        for k in range(600):
            t = k * 0.1
            mapped = mapper.to_host(t * (1 - 50e-6), "hardware_clock", t + 0.005, 0.0)
        return mapper, t, mapped

    stuck = run(0.0)
    assert stuck[2] - (stuck[1] + 0.005) < -0.0025          # a fixed offset falls 3 ms behind
    mapper, t, mapped = run(1e-4)
    assert abs(mapped - (t + 0.005)) < 1e-4                 # the allowed drift keeps up
    # A wrapped 32-bit microsecond counter: the device clock jumps back by ~4295 s.
    device = (t + 0.1) * (1 - 50e-6) - 2**32 / 1e6
    jumped = mapper.to_host(device, "hardware_clock", t + 0.105, 0.0)
    assert mapper.resyncs == 1 and abs(jumped - (t + 0.105)) < 1e-9


def test_wall_clock_domains_shift_by_the_wall_minus_monotonic_offset():
    mapper = DeviceClockMapper(max_drift=1e-4, resync_s=1.0)
    wall_minus_mono = 1.7e9
    for domain in ("global_time", "system_time"):
        assert mapper.to_host(wall_minus_mono + 50.0, domain, 50.02, wall_minus_mono) \
            == pytest.approx(50.0, abs=1e-6)
    with pytest.raises(ValueError):
        DeviceClockMapper(max_drift=-1.0, resync_s=1.0)


# -- RealSense software device ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def rs():
    return import_or_skip_native("pyrealsense2")


def software_camera(fps=30, autoplay=False, use_depth=True):
    from rlbench_sms.hardware.realsense import RealSenseCamera, RealSenseCameraConfig
    from rlbench_sms.hardware.sim.realsense import SoftwareRealSenseSource

    source = SoftwareRealSenseSource(autoplay=autoplay)
    config = RealSenseCameraConfig(serial_number="sim", width=64, height=48, fps=fps,
                                   use_depth=use_depth, warmup_s=0.2 if autoplay else 0.0,
                                   poll_s=0.02)
    return RealSenseCamera(config, source=source), source


def test_realsense_hardware_clock_stamps_become_device_timestamps(rs):
    # Colour only: with one stream the syncer passes every frame on, whatever its stamp.
    cam, source = software_camera(use_depth=False)
    origin_s = 5000.0                   # the device clock's own origin: unrelated to the host's
    with cam:
        cam.read(2.0)                           # the source's priming frame, stamped 0
        base = time.monotonic()
        for n in range(1, 7):
            exposed = time.monotonic()          # the device stamps this moment on its own clock
            source.push(source.scene_frames(n)[0], timestamp_ms=(origin_s + exposed - base) * 1000.0,
                        domain="hardware_clock")
            frame = cam.read(2.0)
            assert frame.device_clock == "hardware_clock"
            # Mapped onto the monotonic clock: the exposure plus the least transport delay seen so
            # far, never after the host received the frame.
            assert exposed - 1e-6 <= frame.device_timestamp <= frame.timestamp
            assert frame.device_timestamp - exposed < 0.1


def test_realsense_global_time_stamps_map_onto_the_monotonic_clock(rs):
    cam, source = software_camera(use_depth=False)
    latency_s = 0.030
    with cam:
        cam.read(2.0)                           # the source's priming frame (hardware clock)
        for n in range(1, 4):
            # As librealsense's global time: the device capture on the host's wall clock (ms).
            pushed_at = time.monotonic()
            source.push(source.scene_frames(n)[0], timestamp_ms=(time.time() - latency_s) * 1000.0,
                        domain="global_time")
            frame = cam.read(2.0)
            assert frame.device_clock == "global_time"
            # The capture happened latency_s before the push, and was received after it.
            assert frame.device_timestamp == pytest.approx(pushed_at - latency_s, abs=0.002)
            assert frame.timestamp - frame.device_timestamp >= latency_s - 0.002


def test_realsense_device_times_flow_into_the_dataset(rs, tmp_path):
    fps = 15
    cam, _ = software_camera(fps=fps, autoplay=True)
    record(tmp_path / "rs", MockRobot(), {"front": cam}, None, fps, 1.0)
    keys = [CAPTURE_TIME, camera_age_key("front"), camera_device_time_key("front")]
    with DatasetReader(tmp_path / "rs") as r:
        cols = r.load_columns(keys)
    capture, age, device = (cols[k] for k in keys)
    assert len(capture) == fps
    # On the capture_s axis: shortly before the host received the frame (capture_s - age), the
    # gap being the frame's transport delay beyond the least one seen.
    received = capture - age
    assert np.all(device <= received + 1e-4) and np.all(received - device < 0.1)
    assert np.all(np.diff(device) >= 0)
    assert DatasetMeta.load(tmp_path / "rs").episodes[0].extra["timing/front_device_clock"] == "hardware_clock"
