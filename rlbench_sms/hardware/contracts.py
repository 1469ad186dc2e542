"""The small contracts every device implements, so the control loop, the recorder and the tests
treat a real SO-100, a simulator and a mock alike (LeRobot's ``robots/robot.py`` idea).

Every device: ``connect()``, ``disconnect()``, ``is_connected``, use as a context manager, and its
dataset feature schemas available *before* connecting (so a dataset can be created, and a config
checked, without hardware). Every reading carries a capture timestamp on the loop's clock
(hardware: ``time.monotonic()`` seconds, taken as close to the hardware as the driver allows; the
MuJoCo twin: simulated seconds, from the device's ``clock``); a camera whose driver stamps frames
itself (RealSense) also passes that stamp on, mapped onto the same clock, so the recorder can store
both (diffusion_policy keeps capture and receive times alike).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from rlbench_sms.features import FeatureSpec

if TYPE_CHECKING:
    from rlbench_sms.runtime.clock import Clock


class HardwareError(RuntimeError):
    """A device failed: the message is one line naming the device and what to do about it."""

    def __init__(self, device: str, problem: str):
        self.device = device
        super().__init__(f"{device}: {problem}")


class DeviceNotConnectedError(HardwareError):
    def __init__(self, device: str):
        super().__init__(device, "not connected (call connect() or use it in a with-block)")


@dataclass(frozen=True)
class JointReading:
    """Joint positions in the dataset's units (degrees; gripper 0-100) at ``timestamp``."""

    positions: np.ndarray          # (n,) float32
    timestamp: float               # seconds on the loop's clock (hardware: time.monotonic())


@dataclass(frozen=True)
class CameraFrame:
    """One capture: RGB (H, W, 3) uint8 and/or depth (H, W) uint16 mm aligned to the colour.

    ``timestamp`` is when the host received the frame (``time.monotonic()`` seconds). Cameras
    with :attr:`Camera.has_device_clock` also give ``device_timestamp``: the driver's own capture
    time of the frame, mapped onto ``time.monotonic()`` seconds, and ``device_clock``, the clock it
    came from (RealSense timestamp domain: ``hardware_clock``, ``global_time``, ``system_time``).
    """

    timestamp: float
    color: np.ndarray | None = None
    depth: np.ndarray | None = None
    device_timestamp: float | None = None
    device_clock: str | None = None


@dataclass(frozen=True)
class ForceReading:
    """The control-rate value (N, N·m; tared) and the raw samples since the previous read."""

    value: np.ndarray                       # (C,) float32, tared
    timestamp: float
    raw: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))   # (N, C) untared
    raw_timestamps: np.ndarray = field(default_factory=lambda: np.zeros(0))         # (N,)


class Device(abc.ABC):
    """Lifecycle shared by all devices, and the per-episode hooks the recorder calls."""

    name: str = "device"
    # The clock this device's readings are stamped on, when it owns one (the twin's simulated
    # time); None for hardware, which stamps time.monotonic(). A loop runs on the first device's
    # non-None clock (runtime.clock.clock_of).
    clock: "Clock | None" = None
    # True when start_episode puts the scene back by itself (a simulator): the recorder then has
    # no reset phase between episodes, which only gives a person time to reset the real scene.
    resets_scene: bool = False
    # The axis this device's timestamps are on: "monotonic" (hardware, mocks) or "sim" (the twin).
    # The recorder refuses a camera or sensor stamped on another axis than the loop's clock.
    time_base: str = "monotonic"

    def start_episode(self, index: int) -> dict[str, Any]:
        """Called by the recorder before the first tick of episode ``index`` (the index it will
        be saved under; after the force sensor's tare), again with the same index when the
        episode is re-recorded. Returns episode metadata: bool, int, float or str values, under
        keys such as ``sim/seed``, stored in the episode's row of ``meta/episodes``. A ``"task"``
        entry is not stored: it is the episode's task text instead of ``dataset.single_task``."""
        return {}

    def episode_done(self) -> bool:
        """Asked by the recorder after every tick of an episode: True ends it now, before its
        ``episode_time_s`` (the twin's evaluation stops at the first success)."""
        return False

    def end_episode(self) -> dict[str, Any]:
        """Called by the recorder after the last tick of the episode opened by
        :meth:`start_episode` (also when it is discarded), before saving it. Returns episode
        metadata as :meth:`start_episode` does (e.g. ``sim/success``)."""
        return {}

    @abc.abstractmethod
    def connect(self) -> None: ...

    @abc.abstractmethod
    def disconnect(self) -> None: ...

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool: ...

    def _require_connected(self) -> None:
        if not self.is_connected:
            raise DeviceNotConnectedError(self.name)

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()


class Robot(Device):
    """A follower arm: observe joints, command joints."""

    @abc.abstractmethod
    def state_feature(self) -> FeatureSpec:
        """``observation.state`` schema (names = motor keys, e.g. ``shoulder_pan.pos``)."""

    @abc.abstractmethod
    def action_feature(self) -> FeatureSpec:
        """``action`` schema."""

    @abc.abstractmethod
    def read_joints(self) -> JointReading: ...

    @abc.abstractmethod
    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Command joint targets; returns what was actually sent (after safety clipping)."""


class ActionSource(Device):
    """What drives the follower in the control loop: a teleop device, or a policy runner
    (:mod:`rlbench_sms.runtime.policy_runner`). The loop never knows which."""

    @abc.abstractmethod
    def action_feature(self) -> FeatureSpec: ...

    @abc.abstractmethod
    def next_action(self, observation: Mapping[str, Any], task: str) -> np.ndarray:
        """The joint targets (robot units) for this tick, given the tick's readings (the
        recorder's frame: state, camera frames, force under the dataset keys) and the episode's
        task text. Called exactly once per tick."""


class Teleop(ActionSource):
    """A leader arm (or any device) producing joint targets for the follower."""

    @abc.abstractmethod
    def get_action(self) -> JointReading: ...

    def next_action(self, observation: Mapping[str, Any], task: str) -> np.ndarray:
        """A person (or a script) decides: the readings are not needed."""
        return self.get_action().positions


class Camera(Device):
    """A colour camera, optionally with depth aligned to the colour stream."""

    # True when frames carry the driver's own capture time (CameraFrame.device_timestamp); the
    # recorder then stores it as a column. A schema fact: known without hardware.
    has_device_clock: bool = False

    @abc.abstractmethod
    def features(self, camera_name: str) -> list[FeatureSpec]:
        """The dataset features this camera fills (RGB, plus depth if enabled)."""

    @abc.abstractmethod
    def read(self, timeout_s: float) -> CameraFrame:
        """The newest frame not returned before, waiting at most ``timeout_s`` for it."""

    @abc.abstractmethod
    def read_latest(self, max_age_s: float, timeout_s: float) -> CameraFrame:
        """The newest frame without waiting, if captured less than ``max_age_s`` ago; else wait
        up to ``timeout_s`` for a new one. A fixed-rate loop uses this: waiting for a *new*
        frame would phase-lock the loop to the camera's clock."""


class ForceSensor(Device):
    """A force/torque sensor read in the background at its own rate."""

    @abc.abstractmethod
    def feature(self) -> FeatureSpec: ...

    @abc.abstractmethod
    def tare(self) -> np.ndarray:
        """Zero the sensor on the mean of the next samples (count from config); returns the offset."""

    @abc.abstractmethod
    def read(self) -> ForceReading:
        """The latest tared value and every raw sample since the previous read."""


@dataclass(frozen=True)
class SensorReading:
    """A :class:`Sensor`'s values by feature key (shapes and dtypes of its features) at ``timestamp``."""

    values: dict[str, np.ndarray]
    timestamp: float


class Sensor(Device):
    """Any other source of per-tick feature columns (the twin's ground-truth object tip, a live
    detector): the recorder stores what :meth:`read` gives under the keys of :meth:`features`."""

    @abc.abstractmethod
    def features(self) -> list[FeatureSpec]:
        """The dataset features this sensor fills (schemas known without hardware)."""

    @abc.abstractmethod
    def read(self) -> SensorReading:
        """The values now, one per feature key."""
