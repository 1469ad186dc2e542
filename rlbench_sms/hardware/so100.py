"""SO-100 / SO-101 follower and leader arms (six STS3215 servos on a Feetech bus).

Both variants have the same motor layout: ids 1..6 = shoulder_pan, shoulder_lift, elbow_flex,
wrist_flex, wrist_roll, gripper. Joint values are in the dataset's units (``features.py``):
degrees for the five body joints, 0-100 for the gripper, both through the calibration file
(``calibration.py``, LeRobot's layout and default location, so an arm calibrated with LeRobot
works here unchanged).

Build from a config dataclass or from keyword arguments (what a Hydra ``_target_`` passes)::

    SO100Follower(SO100FollowerConfig(port="/dev/ttyACM0", id="my_arm"))
    SO100Follower(port="/dev/ttyACM0", id="my_arm", max_relative_target=10.0)

Failure policy: a :class:`~rlbench_sms.hardware.feetech.BusCommunicationError` in ``read_joints``
or ``send_action`` first switches the follower's torque off (best effort, broadcast, no reply
awaited) and is then re-raised, so the caller can save what was recorded and stop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from rlbench_sms.features import ACTION, SO100_JOINT_NAMES, SO100_MOTORS, STATE, FeatureSpec, joint_feature
from rlbench_sms.hardware.calibration import (CalibrationError, MotorCalibration, Normalizer, NormMode,
                                              lerobot_calibration_root, load_calibration)
from rlbench_sms.hardware.contracts import HardwareError, JointReading, Robot, Teleop
from rlbench_sms.hardware.feetech import DEFAULT_BAUDRATE, BusCommunicationError, FeetechBus, Motor

log = logging.getLogger(__name__)

MOTOR_IDS: dict[str, int] = {name: i for i, name in enumerate(SO100_MOTORS, start=1)}
MOTOR_MODEL = "sts3215"
GRIPPER = "gripper"
FULL_TURN_MOTORS = ("wrist_roll",)     # no range to record: it may turn all the way round
VARIANTS = ("so100", "so101")
ROLES = ("follower", "leader")
# (LeRobot's calibration sub-folder, its device name since v0.4); v0.3 used "<variant>_<role>".
CALIBRATION_SUBDIRS = {"follower": ("robots", "so_follower"), "leader": ("teleoperators", "so_leader")}


def so100_motors() -> dict[str, Motor]:
    return {name: Motor(motor_id, MOTOR_MODEL) for name, motor_id in MOTOR_IDS.items()}


def so100_norm_modes(use_degrees: bool = True) -> dict[str, NormMode]:
    """Body joints in degrees (LeRobot's default since Feb 2026) or -100..100; gripper 0-100."""
    body = NormMode.DEGREES if use_degrees else NormMode.RANGE_M100_100
    return {name: NormMode.RANGE_0_100 if name == GRIPPER else body for name in SO100_MOTORS}


def calibration_path(role: str, arm_id: str, calibration_dir: str | None = None,
                     variant: str = "so100") -> Path:
    """Where the calibration of arm ``arm_id`` is: ``<calibration_dir>/<id>.json`` if a folder is
    given, else LeRobot's location (falling back to its v0.3 folder ``<variant>_<role>`` when
    only that one has the file)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if calibration_dir:
        return Path(calibration_dir).expanduser() / f"{arm_id}.json"
    kind, name = CALIBRATION_SUBDIRS[role]
    root = lerobot_calibration_root() / kind
    path = root / name / f"{arm_id}.json"
    legacy = root / f"{variant}_{role}" / f"{arm_id}.json"
    if not path.exists() and legacy.exists():
        return legacy
    return path


@dataclass
class SO100LeaderConfig:
    port: str                                   # e.g. /dev/ttyACM1 (find_ports tells which)
    id: str = "default"                         # calibration name: <calibration_dir>/<id>.json
    variant: str = "so100"                      # "so100" or "so101" (same motors and ids)
    calibration_dir: Optional[str] = None       # None: LeRobot's calibration folder
    retries: int = 3                            # extra attempts per bus transaction
    latency_timer_ms: float = 16.0              # USB-serial latency the reply timeout allows for
    use_degrees: bool = True                    # False: body joints in -100..100 (pre-2026 LeRobot)
    baudrate: int = DEFAULT_BAUDRATE
    return_delay_time: int = 0                  # Return_Delay_Time register, x2 us

    def __post_init__(self) -> None:
        _check_common(self)


@dataclass
class SO100FollowerConfig:
    port: str                                   # e.g. /dev/ttyACM0 (find_ports tells which)
    id: str = "default"                         # calibration name: <calibration_dir>/<id>.json
    variant: str = "so100"                      # "so100" or "so101" (same motors and ids)
    calibration_dir: Optional[str] = None       # None: LeRobot's calibration folder
    # Largest step per command relative to the present position, in action units (deg, gripper
    # 0-100): None (no limit), one number for every joint, or {joint: number} for all six joints.
    max_relative_target: Any = None
    retries: int = 3                            # extra attempts per bus transaction
    latency_timer_ms: float = 16.0              # USB-serial latency the reply timeout allows for
    disable_torque_on_disconnect: bool = True
    use_degrees: bool = True                    # False: body joints in -100..100 (pre-2026 LeRobot)
    baudrate: int = DEFAULT_BAUDRATE
    return_delay_time: int = 0                  # Return_Delay_Time register, x2 us
    # Servo settings written at connect (LeRobot's SO follower values; registers in raw units).
    p_coefficient: int = 16
    i_coefficient: int = 0
    d_coefficient: int = 32
    acceleration: int = 254
    gripper_max_torque_limit: int = 500
    gripper_protection_current: int = 250
    gripper_overload_torque: int = 25

    def __post_init__(self) -> None:
        _check_common(self)
        parse_max_relative_target(self.max_relative_target)


def _check_common(config) -> None:
    if not config.port or str(config.port) == "???":
        raise ValueError("port is required, e.g. port=/dev/ttyACM0 "
                         "(`python -m rlbench_sms.tools.find_ports` tells which)")
    if config.variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {config.variant!r}")
    if int(config.retries) < 0:
        raise ValueError(f"retries must be >= 0, got {config.retries}")


def parse_max_relative_target(value: Any) -> np.ndarray | None:
    """``None`` or a (6,) array of positive per-joint limits in action units."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"max_relative_target must be a number or a per-joint mapping, got {value!r}")
    if isinstance(value, (int, float)):
        limits = np.full(len(SO100_MOTORS), float(value))
    elif isinstance(value, Mapping):
        given = {str(k).removesuffix(".pos"): v for k, v in value.items()}
        missing = [m for m in SO100_MOTORS if m not in given]
        unknown = [k for k in given if k not in SO100_MOTORS]
        if missing or unknown:
            raise ValueError(f"max_relative_target must give every joint {list(SO100_MOTORS)} "
                             f"exactly (missing {missing}, unknown {unknown})")
        for k, v in given.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"max_relative_target[{k!r}] must be a number, got {v!r}")
        limits = np.array([float(given[m]) for m in SO100_MOTORS])
    else:
        raise TypeError(f"max_relative_target must be a number or a per-joint mapping, got "
                        f"{type(value).__name__}")
    if not np.all(np.isfinite(limits)) or np.any(limits <= 0):
        raise ValueError(f"max_relative_target must be positive, got {value!r}")
    return limits


class ActionLimits:
    """A follower's safety clipping of joint commands, shared by the SO-100 and its MuJoCo twin:
    a command is checked (six finite values), clipped to the joints' range, then to the present
    position +- ``max_relative_target`` (action units: degrees, gripper 0-100), as LeRobot does.
    """

    def __init__(self, device: str, max_relative_target: Any):
        self.device = device
        self.max_relative = parse_max_relative_target(max_relative_target)
        self.low: np.ndarray | None = None      # the joints' range in action units, once known
        self.high: np.ndarray | None = None
        self.clipped_steps = 0                  # commands shortened by max_relative_target so far

    def apply(self, action: Any, present: Callable[[], np.ndarray]) -> np.ndarray:
        """The goal to send (float64); ``present`` reads the joints, only when a step limit is set."""
        goal = np.asarray(action, dtype=np.float64).reshape(-1)
        if goal.shape != (len(SO100_MOTORS),):
            raise ValueError(f"{self.device}: action must have {len(SO100_MOTORS)} values "
                             f"{list(SO100_JOINT_NAMES)}, got shape {np.shape(action)}")
        if not np.all(np.isfinite(goal)):
            raise ValueError(f"{self.device}: refusing a non-finite action {goal.tolist()}")
        goal = np.clip(goal, self.low, self.high)
        if self.max_relative is None:
            return goal
        now = np.asarray(present(), dtype=np.float64)
        clipped = np.clip(goal, now - self.max_relative, now + self.max_relative)
        if not np.array_equal(clipped, goal):
            self.clipped_steps += 1
            level = logging.WARNING if self.clipped_steps == 1 else logging.DEBUG
            log.log(level, "%s: action clipped by max_relative_target (from %s to %s)",
                    self.device, np.round(goal, 2).tolist(), np.round(clipped, 2).tolist())
        return clipped


def _make_config(cls, config, fields_given: dict):
    if config is None:
        return cls(**fields_given)
    if fields_given:
        raise TypeError(f"give either a {cls.__name__} or keyword fields, not both")
    if isinstance(config, cls):
        return config
    if isinstance(config, Mapping):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})
    raise TypeError(f"expected a {cls.__name__}, got {type(config).__name__}")


class _SOArm:
    """What the follower and the leader share: calibration, bus, configuration on connect."""

    role = "follower"

    def _setup(self, config) -> None:
        self.config = config
        self.robot_type = f"{config.variant}_{self.role}"
        self.name = f"{config.variant} {self.role} {config.id!r} ({config.port})"
        self.calibration_path = calibration_path(self.role, config.id, config.calibration_dir,
                                                 config.variant)
        self.calibration: dict[str, MotorCalibration] | None = None
        self._normalizer: Normalizer | None = None
        self._bus: FeetechBus | None = None

    @property
    def bus(self) -> FeetechBus | None:
        return self._bus

    @property
    def is_connected(self) -> bool:
        return self._bus is not None and self._bus.is_connected

    def _load_calibration(self) -> None:
        if not self.calibration_path.is_file():
            raise CalibrationError(
                self.calibration_path,
                f"not found: calibrate this arm first with `python -m rlbench_sms.tools.calibrate "
                f"--port {self.config.port} --id {self.config.id} --role {self.role}"
                + (f" --calibration-dir {self.config.calibration_dir}`" if self.config.calibration_dir
                   else "`"))
        self.calibration = load_calibration(self.calibration_path, MOTOR_IDS)
        self._normalizer = Normalizer(self.calibration, so100_norm_modes(self.config.use_degrees))

    def _open(self) -> None:
        if self.is_connected:
            raise HardwareError(self.name, "already connected")
        self._load_calibration()
        bus = FeetechBus(self.config.port, so100_motors(), baudrate=int(self.config.baudrate),
                         retries=int(self.config.retries),
                         latency_timer_ms=float(self.config.latency_timer_ms))
        bus.connect(handshake=True)
        self._bus = bus
        try:
            self._sync_calibration_to_motors()
            self._configure()
        except BaseException:
            self._bus = None
            bus.disconnect()
            raise

    def _ensure(self, register: str, values: Mapping[str, int]) -> None:
        """Write ``register`` only on motors that hold another value (spares EEPROM wear)."""
        present = self._bus.sync_read(register, list(values))
        for name, value in values.items():
            if present[name] != int(value):
                self._bus.write(register, name, int(value))

    def _sync_calibration_to_motors(self) -> None:
        """Motors keep Homing_Offset and their position limits; the file is the reference."""
        bus = self._bus
        offsets = bus.sync_read("Homing_Offset")
        mins = bus.sync_read("Min_Position_Limit")
        maxs = bus.sync_read("Max_Position_Limit")
        differs = [n for n, c in self.calibration.items()
                   if (offsets[n], mins[n], maxs[n]) != (c.homing_offset, c.range_min, c.range_max)]
        if not differs:
            return
        log.warning("%s: motors %s hold another calibration than %s; writing the file's values",
                    self.name, differs, self.calibration_path)
        bus.disable_torque(differs)
        for n in differs:
            c = self.calibration[n]
            bus.write("Homing_Offset", n, c.homing_offset)
            bus.write("Min_Position_Limit", n, c.range_min)
            bus.write("Max_Position_Limit", n, c.range_max)

    def _configure(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _read_positions(self) -> JointReading:
        raw = self._bus.sync_read("Present_Position")
        return JointReading(self._normalizer.to_units(raw), self._bus.last_read_timestamp)

    def state_feature(self) -> FeatureSpec:
        return joint_feature(STATE, SO100_JOINT_NAMES)

    def action_feature(self) -> FeatureSpec:
        return joint_feature(ACTION, SO100_JOINT_NAMES)


class SO100Follower(_SOArm, Robot):
    """The follower arm: position servo, torque on while connected."""

    role = "follower"

    def __init__(self, config: SO100FollowerConfig | Mapping | None = None, **fields_given):
        self._setup(_make_config(SO100FollowerConfig, config, fields_given))
        self._limits = ActionLimits(self.name, self.config.max_relative_target)
        self._comm_lost = False

    @property
    def clipped_steps(self) -> int:
        """Commands shortened by ``max_relative_target`` so far."""
        return self._limits.clipped_steps

    def connect(self) -> None:
        self._open()
        self._limits.low, self._limits.high = self._normalizer.unit_limits()
        self._comm_lost = False

    def _configure(self) -> None:
        cfg, bus = self.config, self._bus
        bus.disable_torque()
        every = lambda value: {n: value for n in SO100_MOTORS}  # noqa: E731
        self._ensure("Operating_Mode", every(0))
        self._ensure("Return_Delay_Time", every(cfg.return_delay_time))
        self._ensure("Maximum_Acceleration", every(cfg.acceleration))
        self._ensure("Acceleration", every(cfg.acceleration))
        self._ensure("P_Coefficient", every(cfg.p_coefficient))
        self._ensure("I_Coefficient", every(cfg.i_coefficient))
        self._ensure("D_Coefficient", every(cfg.d_coefficient))
        # Phase bit 4 set would let positions run outside 0..4095.
        phase = bus.sync_read("Phase")
        self._ensure("Phase", {n: v & ~0x10 for n, v in phase.items()})
        self._ensure("Max_Torque_Limit", {GRIPPER: cfg.gripper_max_torque_limit})
        self._ensure("Protection_Current", {GRIPPER: cfg.gripper_protection_current})
        self._ensure("Overload_Torque", {GRIPPER: cfg.gripper_overload_torque})
        # Hold the pose the arm is in: a stale Goal_Position would make it jump at torque on.
        bus.sync_write("Goal_Position", bus.sync_read("Present_Position"))
        bus.enable_torque()

    def _comm_loss(self, error: BusCommunicationError) -> None:
        self._comm_lost = True
        log.error("%s: %s; switching torque off", self.name, error)
        self._bus.emergency_torque_off()

    def read_joints(self) -> JointReading:
        self._require_connected()
        try:
            return self._read_positions()
        except BusCommunicationError as error:
            self._comm_loss(error)
            raise

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Command joint targets (deg, gripper 0-100); returns what was sent after clipping to the
        calibrated range and to ``max_relative_target`` around the present position."""
        self._require_connected()
        goal = self._limits.apply(action, lambda: self.read_joints().positions)
        try:
            self._bus.sync_write("Goal_Position", self._normalizer.to_raw(goal))
        except BusCommunicationError as error:
            self._comm_loss(error)
            raise
        return goal.astype(np.float32)

    def disconnect(self) -> None:
        bus = self._bus
        if bus is None:
            return
        try:
            if self.config.disable_torque_on_disconnect and bus.is_connected:
                if self._comm_lost:
                    bus.emergency_torque_off()
                else:
                    try:
                        bus.disable_torque()
                    except BusCommunicationError as error:
                        log.error("%s: %s; sending torque off without acknowledgement",
                                  self.name, error)
                        bus.emergency_torque_off()
        finally:
            self._bus = None
            bus.disconnect()


class SO100Leader(_SOArm, Teleop):
    """The leader arm: torque off, moved by hand; its joint positions are the action."""

    role = "leader"

    def __init__(self, config: SO100LeaderConfig | Mapping | None = None, **fields_given):
        self._setup(_make_config(SO100LeaderConfig, config, fields_given))

    def connect(self) -> None:
        self._open()

    def _configure(self) -> None:
        every = lambda value: {n: value for n in SO100_MOTORS}  # noqa: E731
        self._bus.disable_torque()
        self._ensure("Operating_Mode", every(0))
        self._ensure("Return_Delay_Time", every(self.config.return_delay_time))

    def get_action(self) -> JointReading:
        self._require_connected()
        return self._read_positions()

    def disconnect(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
