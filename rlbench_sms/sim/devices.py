"""Sim devices: the SO-101 follower, the cameras and the wrist force/torque sensor of the MuJoCo
twin, behind the same contracts as the hardware (``rlbench_sms.hardware.contracts``).

Each device is built from the ``sim`` config node (``world: ${sim}`` in conf/) and gets the
process's shared :class:`~rlbench_sms.sim.world.SimWorld` when it connects, so building one
(a config check, a dataset schema) costs no MuJoCo model. Schemas come from the config alone.
Every reading is stamped with the world's simulated time; the robot exposes the world's
:class:`~rlbench_sms.sim.world.SimClock` as ``clock`` once connected, so the loop runs on it.

Units are the SO-100 follower's: degrees for the five arm joints, the gripper 0 (closed, the
joint's lower limit) .. 100 (open, its upper limit), linear over the joint's range; depth uint16
millimetres (0 = nothing within ``sim.cameras.far_m``); force N and N.m in the wrist sensor's
frame, the gripper's own weight removed (``gravity_compensation``), tared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from rlbench_sms.features import (FORCE_TORQUE_NAMES, SO100_JOINT_NAMES, SO100_MOTORS, ACTION, STATE,
                                  CameraIntrinsics, FeatureSpec, depth_feature, force_feature,
                                  joint_feature, rgb_feature)
from rlbench_sms.hardware.contracts import (Camera, CameraFrame, ForceReading, ForceSensor,
                                            HardwareError, JointReading, Robot)
from rlbench_sms.hardware.so100 import ActionLimits, parse_max_relative_target
from rlbench_sms.sim.config import SimConfig, SimConfigError, parse_sim_config


GRIPPER_SPAN = 100.0                 # dataset units of the gripper: 0 closed .. 100 open
DEPTH_SCALE_M = 0.001                # stored depth unit: millimetres
DEPTH_MAX_STORED = np.iinfo(np.uint16).max


def _make_config(cls, config, given: dict):
    """``cls`` from an instance, a mapping (what Hydra passes) or keyword fields."""
    if config is None:
        return cls(**given)
    if given:
        raise TypeError(f"give either a {cls.__name__} or keyword fields, not both")
    if isinstance(config, cls):
        return config
    if isinstance(config, Mapping):
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - names - {"_target_"})
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown setting {unknown[0]!r}")
        return cls(**{k: v for k, v in config.items() if k in names})
    raise TypeError(f"expected a {cls.__name__}, got {type(config).__name__}")


class _SimDevice:
    """What the sim devices share: the world (built or taken from the shared cache at connect)."""

    time_base = "sim"                  # readings are stamped with the world's simulated time

    def _setup_world(self, world) -> None:
        from rlbench_sms.sim.world import SimWorld

        if isinstance(world, SimWorld):
            self._given_world, self.sim_config = world, world.config
        else:
            self._given_world = None
            try:
                self.sim_config: SimConfig = parse_sim_config(world)
            except SimConfigError as error:
                raise HardwareError(self.name, str(error)) from None
            self._world_config = world
        self.world = None

    def _open_world(self):
        from rlbench_sms.sim.world import shared_world

        if self.world is not None:
            raise HardwareError(self.name, "already connected")
        try:
            self.world = self._given_world or shared_world(self._world_config)
        except SimConfigError as error:
            raise HardwareError(self.name, str(error)) from None
        return self.world

    @property
    def is_connected(self) -> bool:
        return self.world is not None

    def _require_world(self):
        self._require_connected()
        return self.world


# ---------------------------------------------------------------------------------- joints
def gripper_range(world) -> tuple[float, float]:
    low, high = world.arm_joint_range[-1]
    return float(low), float(high)


def radians_to_units(world, radians: np.ndarray) -> np.ndarray:
    """(6,) joint radians -> degrees, gripper 0-100 (float64)."""
    q = np.asarray(radians, np.float64)
    out = np.rad2deg(q)
    low, high = gripper_range(world)
    out[-1] = (q[-1] - low) / (high - low) * GRIPPER_SPAN
    return out


def units_to_radians(world, units: np.ndarray) -> np.ndarray:
    """(6,) degrees, gripper 0-100 -> joint radians (float64)."""
    v = np.asarray(units, np.float64)
    out = np.deg2rad(v)
    low, high = gripper_range(world)
    out[-1] = low + v[-1] / GRIPPER_SPAN * (high - low)
    return out


@dataclass
class SimRobotConfig:
    # Largest step per command relative to the present position, in action units (deg, gripper
    # 0-100): None, one number for every joint, or {joint: number} for all six (as the SO-100).
    max_relative_target: Any = None

    def __post_init__(self) -> None:
        parse_max_relative_target(self.max_relative_target)


class SimRobot(_SimDevice, Robot):
    """The twin's SO-101 follower: position actuators take the commanded joint targets.

    ``send_action`` clips to the joints' ranges, then (with ``max_relative_target``) to the
    present position +- the limit, as the real follower does, sets the actuators' targets and
    returns what was sent. ``start_episode(index)`` resets the world with seed ``sim.seed +
    index`` and returns the episode's variant as ``sim/...`` metadata; the task's success
    detector (:mod:`rlbench_sms.sim.success`) then follows the episode (every ``read_joints`` and
    ``send_action`` shows it the world's state) and ``end_episode`` returns its verdict,
    ``sim/success`` and the figures behind it.
    """

    robot_type = "so101_follower"      # the real arm's type: the same schema as its recordings
    resets_scene = True                # start_episode re-lays the cell: no reset phase is needed
    # End an episode at the first tick its success detector says success (evaluate.py sets it:
    # the episode's time is then the time to success). Recording runs every episode to its end.
    stop_on_success = False

    def __init__(self, world: Mapping | Any, config: SimRobotConfig | Mapping | None = None, **given):
        self.name = "sim so101 follower"
        self.config = _make_config(SimRobotConfig, config, given)
        self._limits = ActionLimits(self.name, self.config.max_relative_target)
        self._setup_world(world)
        self.clock = None
        self.detector = None            # the episode's success detector (start_episode .. end_episode)

    @property
    def clipped_steps(self) -> int:
        """Commands shortened by ``max_relative_target`` so far."""
        return self._limits.clipped_steps

    def state_feature(self) -> FeatureSpec:
        return joint_feature(STATE, SO100_JOINT_NAMES)

    def action_feature(self) -> FeatureSpec:
        return joint_feature(ACTION, SO100_JOINT_NAMES)

    def connect(self) -> None:
        world = self._open_world()
        self.clock = world.clock
        self._limits.low = radians_to_units(world, world.arm_joint_range[:, 0])
        self._limits.high = radians_to_units(world, world.arm_joint_range[:, 1])

    def disconnect(self) -> None:
        self.world = None
        self.clock = None
        self.detector = None

    def read_joints(self) -> JointReading:
        world = self._require_world()
        if self.detector is not None:
            self.detector.observe()
        return JointReading(radians_to_units(world, world.arm_qpos()).astype(np.float32), world.time)

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Command joint targets (deg, gripper 0-100); returns what was sent after clipping."""
        world = self._require_world()
        goal = self._limits.apply(action, lambda: self.read_joints().positions)
        world.set_arm_ctrl(units_to_radians(world, goal))
        if self.detector is not None:
            self.detector.observe()
        return goal.astype(np.float32)

    def start_episode(self, index: int) -> dict[str, Any]:
        """Reset the world for episode ``index``: seed ``sim.seed + index``, task ``sim.task``."""
        world = self._require_world()
        seed = int(self.sim_config.seed) + int(index)
        variant = world.reset(seed, self.sim_config.task)
        out: dict[str, Any] = {"sim/seed": seed, "sim/task": world.task}
        out.update({f"sim/{key}": value for key, value in variant.items()})
        if world.layout.instruction:
            out["task"] = world.layout.instruction
        from rlbench_sms.sim.success import detector_for

        try:
            self.detector = detector_for(world)
        except SimConfigError as error:
            raise HardwareError(self.name, str(error)) from None
        return out

    def episode_done(self) -> bool:
        """With ``stop_on_success``: whether the task is done now (the detector on this state)."""
        if not self.stop_on_success or self.detector is None or self.world is None:
            return False
        return bool(self.detector.result()["sim/success"])

    def end_episode(self) -> dict[str, Any]:
        """The task's success detector on the final state: ``sim/success`` and its figures."""
        if self.detector is None:
            return {}
        detector, self.detector = self.detector, None
        if self.world is None:
            return {}
        detector.observe()
        return detector.result()


# ---------------------------------------------------------------------------------- cameras
@dataclass
class SimCameraConfig:
    camera: str = "front"            # the scene's camera: "front" or "wrist"
    width: int = 640
    height: int = 480
    use_depth: bool = False          # aligned uint16 mm depth from the same draw

    def __post_init__(self) -> None:
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")


class SimCamera(_SimDevice, Camera):
    """A camera of the twin: renders the world's current state (one draw per state; depth from
    the same draw, so exactly aligned). ``read`` waits for the next frame by advancing the world
    one tick on its clock, as a real camera's next frame comes one period later."""

    has_device_clock = False

    def __init__(self, world: Mapping | Any, config: SimCameraConfig | Mapping | None = None, **given):
        self.config = _make_config(SimCameraConfig, config, given)
        self.name = f"sim camera {self.config.camera!r}"
        self._setup_world(world)
        poses = {"front": self.sim_config.cameras.front, "wrist": self.sim_config.cameras.wrist}
        if self.config.camera not in poses:
            raise HardwareError(self.name, f"no such camera in the scene (known: {', '.join(poses)})")
        self._fovy_deg = poses[self.config.camera].fovy_deg
        self._frame: CameraFrame | None = None
        self._frame_state = -1
        self._returned_state = -1

    @property
    def intrinsics(self) -> CameraIntrinsics:
        """Pinhole intrinsics of the render: square pixels, principal point at the centre."""
        w, h = int(self.config.width), int(self.config.height)
        focal = (h / 2) / np.tan(np.deg2rad(self._fovy_deg) / 2)
        return CameraIntrinsics(w, h, float(focal), float(focal), w / 2, h / 2)

    def features(self, camera_name: str) -> list[FeatureSpec]:
        c = self.config
        out = [rgb_feature(camera_name, int(c.height), int(c.width))]
        if c.use_depth:
            out.append(depth_feature(camera_name, int(c.height), int(c.width), intrinsics=self.intrinsics,
                                     depth_scale_m=DEPTH_SCALE_M, aligned_to=camera_name))
        return out

    def connect(self) -> None:
        world = self._open_world()
        buffer = (world.model.vis.global_.offwidth, world.model.vis.global_.offheight)
        if int(self.config.width) > buffer[0] or int(self.config.height) > buffer[1]:
            self.world = None
            raise HardwareError(self.name, f"{self.config.width}x{self.config.height} is larger than the "
                                           f"twin renders ({buffer[0]}x{buffer[1]}: the largest of "
                                           "sim.width/height and sim.wrist_width/height)")
        self._frame, self._frame_state, self._returned_state = None, -1, -1

    def disconnect(self) -> None:
        self.world = None
        self._frame = None

    def _current(self) -> CameraFrame:
        world = self._require_world()
        if self._frame is None or self._frame_state != world.state_id:
            c = self.config
            rgb, metres = world.render(c.camera, int(c.width), int(c.height), depth=bool(c.use_depth))
            depth = None if metres is None else metres_to_millimetres(metres, world.clip_planes()[1])
            self._frame, self._frame_state = CameraFrame(world.time, rgb, depth), world.state_id
        return self._frame

    def read_latest(self, max_age_s: float, timeout_s: float) -> CameraFrame:
        """The frame of the world's current state (never older: the world only changes by ticks)."""
        frame = self._current()
        self._returned_state = self._frame_state
        return frame

    def read(self, timeout_s: float) -> CameraFrame:
        """A frame not returned before: the current one, or the next tick's."""
        world = self._require_world()
        if self._returned_state == world.state_id:
            world.clock.sleep_until(world.time + world.period_s)
        return self.read_latest(0.0, timeout_s)


def metres_to_millimetres(metres: np.ndarray, far_m: float) -> np.ndarray:
    """Planar depth in metres -> uint16 millimetres, rounded; 0 where nothing was hit, at or
    beyond the far plane, or beyond what uint16 holds (the RealSense convention for invalid)."""
    valid = np.isfinite(metres) & (metres < far_m)
    mm = np.where(valid, np.rint(metres / DEPTH_SCALE_M), 0)
    mm[mm > DEPTH_MAX_STORED] = 0
    return mm.astype(np.uint16)


# ---------------------------------------------------------------------------------- force
@dataclass
class SimForceSensorConfig:
    # Take the tare again after every world reset (a new episode starts from another state; the
    # recorder tares before the robot's start_episode resets the world).
    retare_on_reset: bool = True
    # Subtract the tool's weight (gripper and jaw, below the sensor; from the model) at the
    # sensor's present orientation, as an F/T sensor configured with its tool load does. The
    # sensor turns with the gripper, so without it ~1 N of the gripper's own weight moves between
    # the axes as the wrist tilts and a tare at one pose is wrong at every other.
    gravity_compensation: bool = True
    # true: the control-rate value is the mean of the tick's physics samples (a boxcar over one
    # control period, an anti-alias filter: sub-tick transients such as contact impacts are
    # averaged, not aliased; it lags by half a tick). false: the state at the tick's end, as the
    # serial sensor's driver gives its newest sample.
    tick_average: bool = False


class SimForceSensor(_SimDevice, ForceSensor):
    """The 6-axis force/torque sensor at the twin's wrist (``ft_site``, between the wrist and the
    gripper): fx, fy, fz in N and tx, ty, tz in N.m about the site, in the sensor frame (z along
    the wrist-roll axis, pointing from the jaws to the wrist). It reads the wrench the wrist
    exerts on the gripper (MuJoCo's ``force``/``torque`` sensors): a mass held still adds its
    weight pointing *up*; pressing the jaws on the table adds the pressing force (pointing into
    the table).

    With ``gravity_compensation`` every sample has the tool's own gravity wrench removed (the
    gripper's subtree, masses and centre of mass from the model, at that sample's orientation:
    :meth:`~rlbench_sms.sim.world.SimWorld.ft_tool_load`): the free gripper at rest reads ~0 in
    any pose, a held cube reads its weight, pressing reads the pressing force. ``tare`` then
    removes only what remains. With ``tick_average`` the value is the mean over the last tick's
    physics samples (:meth:`~rlbench_sms.sim.world.SimWorld.ft_tick_mean`), else the state at
    the tick's end.

    ``read`` gives the tared value at the world's time and, in ``raw``, every physics-step sample
    since the previous read: untared, not averaged, gravity-compensated when the value is.
    ``tare`` zeroes on the current value (the world is at rest after a reset).
    """

    def __init__(self, world: Mapping | Any, config: SimForceSensorConfig | Mapping | None = None, **given):
        self.config = _make_config(SimForceSensorConfig, config, given)
        self.name = "sim wrist force/torque sensor"
        self._setup_world(world)
        self._offset = np.zeros(len(FORCE_TORQUE_NAMES))
        self._tared = False

    def feature(self) -> FeatureSpec:
        return force_feature(FORCE_TORQUE_NAMES)

    def connect(self) -> None:
        world = self._open_world()
        world.drain_force_record()                # "since the previous read": nothing before connect
        self._offset[:] = 0.0
        self._tared = False
        if self.config.retare_on_reset:
            world.add_reset_listener(self._on_reset)

    def disconnect(self) -> None:
        if self.world is not None:
            self.world.remove_reset_listener(self._on_reset)
        self.world = None

    def _untared(self, world) -> np.ndarray:
        """(6,) the current value before the tare (averaged and compensated as configured)."""
        if self.config.tick_average:
            wrench, tool_load = world.ft_tick_mean()
        else:
            wrench, tool_load = world.ft_wrench(), world.ft_tool_load()
        return wrench - tool_load if self.config.gravity_compensation else wrench

    def _on_reset(self, world) -> None:
        if self._tared:
            self._offset = self._untared(world)

    def tare(self) -> np.ndarray:
        world = self._require_world()
        self._offset = self._untared(world)
        self._tared = True
        return self._offset.astype(np.float32)

    def read(self) -> ForceReading:
        world = self._require_world()
        record = world.drain_force_record()
        raw = record.wrench - record.tool_load if self.config.gravity_compensation else record.wrench
        value = (self._untared(world) - self._offset).astype(np.float32)
        return ForceReading(value, world.time, raw.astype(np.float32), record.times)
