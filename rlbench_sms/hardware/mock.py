"""Mock devices: the contracts with synthetic data, for trying the pipeline without hardware
(``record.py robot=mock camera=mock force_sensor=mock teleop=mock``) and for benchmarks.

Camera frames carry camera-like noise on purpose: smooth synthetic frames encode several times
faster than real ones and would hide the real cost of recording.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from rlbench_sms.features import (SO100_JOINT_NAMES, CameraIntrinsics, FeatureSpec, depth_feature,
                                  force_feature, joint_feature, rgb_feature, STATE, ACTION)
from rlbench_sms.hardware.camera_thread import ThreadedCamera
from rlbench_sms.hardware.contracts import (CameraFrame, ForceReading, ForceSensor, JointReading,
                                            Robot, Teleop)


class _Connectable:
    name = "mock"

    def __init__(self) -> None:
        self._connected = False

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected


@dataclass
class MockRobotConfig:
    # First-order lag of the joints towards the commanded targets (seconds).
    response_time_s: float = 0.1
    names: tuple[str, ...] = SO100_JOINT_NAMES


class MockRobot(_Connectable, Robot):
    """Joints follow the last action with a first-order lag; no limits, no faults."""

    def __init__(self, config: MockRobotConfig | None = None):
        super().__init__()
        self.config = config or MockRobotConfig()
        self.name = "mock robot"
        self.robot_type = "mock"
        self._position = np.zeros(len(self.config.names), np.float32)
        self._target = self._position.copy()
        self._last = time.monotonic()

    def state_feature(self) -> FeatureSpec:
        return joint_feature(STATE, self.config.names)

    def action_feature(self) -> FeatureSpec:
        return joint_feature(ACTION, self.config.names)

    def read_joints(self) -> JointReading:
        self._require_connected()
        now = time.monotonic()
        alpha = 1.0 - np.exp(-(now - self._last) / self.config.response_time_s)
        self._position += np.float32(alpha) * (self._target - self._position)
        self._last = now
        return JointReading(self._position.copy(), now)

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._require_connected()
        self._target = np.asarray(action, np.float32).copy()
        return self._target.copy()


@dataclass
class MockTeleopConfig:
    period_s: float = 4.0           # one sweep of the scripted motion
    amplitude_deg: float = 30.0
    names: tuple[str, ...] = SO100_JOINT_NAMES


class MockTeleop(_Connectable, Teleop):
    """A scripted leader: smooth sinusoids per joint, gripper opening and closing (0-100)."""

    def __init__(self, config: MockTeleopConfig | None = None):
        super().__init__()
        self.config = config or MockTeleopConfig()
        self.name = "mock teleop"
        self._t0 = time.monotonic()

    def action_feature(self) -> FeatureSpec:
        return joint_feature(ACTION, self.config.names)

    def get_action(self) -> JointReading:
        self._require_connected()
        now = time.monotonic()
        phase = 2 * np.pi * (now - self._t0) / self.config.period_s
        n = len(self.config.names)
        joints = self.config.amplitude_deg * np.sin(phase + np.arange(n) * 0.7)
        joints[-1] = 50.0 + 50.0 * np.sin(phase)       # gripper, percent open
        return JointReading(joints.astype(np.float32), now)


@dataclass
class MockCameraConfig:
    width: int = 640
    height: int = 480
    fps: int = 30
    use_depth: bool = False
    noise_std: float = 3.0          # 8-bit levels, like a real sensor's
    stall_after_frames: int | None = None   # fault injection: stop producing frames
    read_timeout_s: float = 0.5


class MockCamera(ThreadedCamera):
    """Frames at ``fps`` on the shared capture thread: a moving gradient with noise, and, with
    ``use_depth``, a tilted plane in millimetres with noise and a moving band of holes."""

    def __init__(self, config: MockCameraConfig | None = None, seed: int = 0):
        self.config = config or MockCameraConfig()
        super().__init__("mock camera", warmup_s=0.0, read_timeout_s=self.config.read_timeout_s,
                         max_consecutive_errors=1)
        self._rng = np.random.default_rng(seed)
        self._ring: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._produced = 0
        self._next_t = 0.0

    @property
    def intrinsics(self) -> CameraIntrinsics:
        c = self.config
        f = 0.9 * c.width
        return CameraIntrinsics(c.width, c.height, f, f, c.width / 2, c.height / 2)

    def features(self, camera_name: str) -> list[FeatureSpec]:
        c = self.config
        out = [rgb_feature(camera_name, c.height, c.width)]
        if c.use_depth:
            out.append(depth_feature(camera_name, c.height, c.width, intrinsics=self.intrinsics,
                                     aligned_to=camera_name))
        return out

    def _make_ring(self) -> None:
        """Pre-render a second of distinct noisy frames, replayed in a loop: rendering 640x480
        noise live would cost more CPU than the USB camera we stand in for, and steal it from
        the recording loop being measured."""
        c = self.config
        yy, xx = np.mgrid[0:c.height, 0:c.width]
        base = np.stack([xx * 255 // max(c.width - 1, 1), yy * 255 // max(c.height - 1, 1),
                         np.full_like(xx, 128)], -1).astype(np.float32)
        plane_mm = (600 + 0.5 * yy + 0.1 * xx).astype(np.float32)
        for n in range(max(2, c.fps)):
            shift = (n * 8) % c.width
            noise = self._rng.normal(0, c.noise_std, (c.height, c.width, 1)).astype(np.float32)
            color = np.clip(np.roll(base, shift, axis=1) + noise, 0, 255).astype(np.uint8)
            depth = None
            if c.use_depth:
                d = plane_mm + 1.5 * noise[..., 0] / max(c.noise_std, 1e-6)   # ~1.5 mm noise
                d[:, shift:shift + 8] = 0
                depth = d.astype(np.uint16)
            self._ring.append((color, depth))

    # -- ThreadedCamera hooks ------------------------------------------------------------------
    def _open(self) -> None:
        if not self._ring:
            self._make_ring()
        self._produced = 0
        self._next_t = time.monotonic()

    def _capture(self) -> CameraFrame | None:
        # Deliver on the camera's own clock; poll in short slices so disconnect is prompt.
        wait = self._next_t - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.05))
            return None
        self._next_t += 1.0 / self.config.fps
        stall = self.config.stall_after_frames
        if stall is not None and self._produced >= stall:
            return None
        color, depth = self._ring[self._produced % len(self._ring)]
        self._produced += 1
        return CameraFrame(time.monotonic(), color, depth)

    def _close(self) -> None:
        pass


@dataclass
class MockForceSensorConfig:
    rate_hz: float = 200.0
    channels: int = 6
    noise_n: float = 0.05
    tare_samples: int = 20
    max_buffered_samples: int = 100_000   # raw samples kept between reads; older are dropped


class MockForceSensor(_Connectable, ForceSensor):
    """A 6-axis sensor sampling at ``rate_hz``: a slow oscillation plus noise and a bias.

    No producer thread: the samples due since the previous call are computed on demand from the
    clock (sample ``k`` at ``connect time + k / rate_hz``). A thread starved by a busy machine
    would make reads fail that a real sensor (which samples in hardware) serves; like
    :class:`~rlbench_sms.hardware.force_sensor.SerialForceSensor`, ``read()`` never waits and
    repeats the newest value when no new sample is due. ``clock`` and ``sleep`` are injectable
    for tests (monotonic seconds).
    """

    def __init__(self, config: MockForceSensorConfig | None = None, seed: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__()
        self.config = config or MockForceSensorConfig()
        if self.config.rate_hz <= 0 or self.config.tare_samples <= 0:
            raise ValueError("rate_hz and tare_samples must be positive")
        self.name = "mock force sensor"
        self._clock, self._sleep = clock, sleep
        self._rng = np.random.default_rng(seed)
        self._bias = self._rng.normal(0, 2.0, self.config.channels).astype(np.float32)
        self._gain = np.linspace(0.5, 2.0, self.config.channels, dtype=np.float32)
        self._offset = np.zeros(self.config.channels, np.float32)
        self._lock = threading.Lock()
        self._t0 = 0.0
        self._next_k = 0                  # index of the next sample to generate
        self._pending: collections.deque[tuple[float, np.ndarray]] = collections.deque(
            maxlen=self.config.max_buffered_samples)
        self._latest: tuple[float, np.ndarray] | None = None
        self.dropped = 0                  # samples older than the buffer when finally read

    def feature(self) -> FeatureSpec:
        names = ["fx", "fy", "fz", "tx", "ty", "tz"][: self.config.channels]
        return force_feature(names if len(names) == self.config.channels
                             else [f"f{i}" for i in range(self.config.channels)])

    def connect(self) -> None:
        super().connect()
        with self._lock:
            self._t0 = self._clock()
            self._next_k, self._latest, self.dropped = 0, None, 0
            self._pending.clear()
            self._generate(self._t0)      # sample 0, taken at connect

    def _generate(self, now: float) -> np.ndarray:
        """Append the samples due by ``now`` to the pending ones; returns their values (N, C)."""
        c = self.config
        last_k = int(np.floor((now - self._t0) * c.rate_hz))
        if self._t0 + (last_k + 1) / c.rate_hz <= now:     # floor() rounded a due sample away
            last_k += 1
        if last_k < self._next_k:
            return np.zeros((0, c.channels), np.float32)
        first_k = max(self._next_k, last_k - c.max_buffered_samples + 1)
        self.dropped += first_k - self._next_k
        t = self._t0 + np.arange(first_k, last_k + 1) / c.rate_hz            # (N,) monotonic s
        values = (self._bias + np.sin(t - self._t0)[:, None] * self._gain
                  + self._rng.normal(0, c.noise_n, (t.size, c.channels))).astype(np.float32)
        self._pending.extend(zip(t.tolist(), values))
        self._latest = (float(t[-1]), values[-1])
        self._next_k = last_k + 1
        return values

    def tare(self) -> np.ndarray:
        """Average the next ``tare_samples`` samples (due over the next ``tare_samples / rate_hz``
        seconds) into the offset; returns it."""
        self._require_connected()
        c = self.config
        collected: list[np.ndarray] = []
        with self._lock:
            self._generate(self._clock())             # what is due already is not "next"
        while len(collected) < c.tare_samples:
            with self._lock:
                due_t = self._t0 + (self._next_k + c.tare_samples - len(collected) - 1) / c.rate_hz
            self._sleep(max(0.0, due_t - self._clock()))
            with self._lock:
                collected += list(self._generate(self._clock()))
        self._offset = np.mean(collected[: c.tare_samples], axis=0).astype(np.float32)
        return self._offset.copy()

    def read(self) -> ForceReading:
        """The newest sample minus the tare offset, and every raw sample since the previous read."""
        self._require_connected()
        with self._lock:
            self._generate(self._clock())
            taken = list(self._pending)
            self._pending.clear()
            latest_t, latest = self._latest
        if taken:
            ts = np.array([t for t, _ in taken], dtype=np.float64)
            raw = np.stack([v for _, v in taken])
        else:
            ts, raw = np.zeros(0), np.zeros((0, self.config.channels), np.float32)
        return ForceReading((latest - self._offset).astype(np.float32), latest_t, raw, ts)
