"""Motor calibration files and the raw-ticks <-> dataset-units conversion.

File layout (LeRobot's, so that a LeRobot calibration is used as is and vice versa)::

    {
        "shoulder_pan": {"id": 1, "drive_mode": 0, "homing_offset": -1012, "range_min": 760, "range_max": 3320},
        ...
    }

(one object per motor, written with an indent of 4), stored by default where LeRobot keeps
them: ``$HF_LEROBOT_CALIBRATION/{robots|teleoperators}/<name>/<id>.json``, i.e.
``~/.cache/huggingface/lerobot/calibration/robots/so_follower/<id>.json`` unless the
``HF_LEROBOT_CALIBRATION`` / ``HF_LEROBOT_HOME`` / ``HF_HOME`` variables say otherwise.

``homing_offset`` is what the motor stores in ``Homing_Offset`` (Present_Position = physical
angle - Homing_Offset); ``range_min`` / ``range_max`` are Present_Position ticks (the motor's
Min/Max_Position_Limit).

Normalisation modes (identical to LeRobot's, so recorded actions have the same units):

* ``DEGREES`` (the five body joints): ``(raw - mid) * 360 / (resolution - 1)`` with
  ``mid = (range_min + range_max) / 2``; no clamping; ``drive_mode`` is *not* applied (as in LeRobot).
* ``RANGE_0_100`` (the gripper): raw clamped to the range, ``(raw - min) / (max - min) * 100``;
  ``100 - v`` when ``drive_mode`` is 1.
* ``RANGE_M100_100`` (body joints of LeRobot datasets recorded before Feb 2026,
  ``use_degrees=False``): ``(raw - min) / (max - min) * 200 - 100``, negated when ``drive_mode``.

The inverse (units -> ticks) rounds to the nearest tick where LeRobot truncates with ``int()``:
the two differ by at most one tick (0.09 deg), and rounding makes ticks -> units -> ticks exact.
The inverse also clamps to the calibrated range, which the motors enforce anyway.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rlbench_sms.hardware.contracts import HardwareError

RESOLUTION = 4096                 # STS3215 encoder ticks per turn
HOMING_OFFSET_LIMIT = 2047        # Homing_Offset is sign-magnitude with the sign at bit 11
FIELDS = ("id", "drive_mode", "homing_offset", "range_min", "range_max")


class NormMode(str, Enum):
    DEGREES = "degrees"
    RANGE_0_100 = "range_0_100"
    RANGE_M100_100 = "range_m100_100"


@dataclass(frozen=True)
class MotorCalibration:
    id: int
    drive_mode: int
    homing_offset: int
    range_min: int
    range_max: int


class CalibrationError(HardwareError):
    """A calibration file is missing, unreadable or inconsistent (one line, naming the file)."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        super().__init__(f"calibration file {path}", problem)


RECALIBRATE_HINT = "recalibrate with `python -m rlbench_sms.tools.calibrate`"


# ---------------------------------------------------------------------------------------------
# Where calibration files live
# ---------------------------------------------------------------------------------------------

def lerobot_calibration_root() -> Path:
    """LeRobot's calibration root, honouring its environment variables."""
    if os.environ.get("HF_LEROBOT_CALIBRATION"):
        return Path(os.environ["HF_LEROBOT_CALIBRATION"]).expanduser()
    if os.environ.get("HF_LEROBOT_HOME"):
        home = Path(os.environ["HF_LEROBOT_HOME"]).expanduser()
    else:
        if os.environ.get("HF_HOME"):
            hf_home = Path(os.environ["HF_HOME"]).expanduser()
        else:
            cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
            hf_home = Path(cache).expanduser() / "huggingface"
        home = hf_home / "lerobot"
    return home / "calibration"


# ---------------------------------------------------------------------------------------------
# Load / save
# ---------------------------------------------------------------------------------------------

def save_calibration(path: str | os.PathLike, calibration: Mapping[str, MotorCalibration]) -> Path:
    """Write ``calibration`` as LeRobot's JSON (atomically: a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {name: {f: int(getattr(c, f)) for f in FIELDS} for name, c in calibration.items()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=4) + "\n")
    os.replace(tmp, path)
    return path


def _int_field(path: Path, motor: str, entry: Mapping[str, Any], field: str) -> int:
    if field not in entry:
        raise CalibrationError(path, f"motor {motor!r}: missing {field!r}; {RECALIBRATE_HINT}")
    value = entry[field]
    if isinstance(value, bool) or not isinstance(value, int):
        raise CalibrationError(path, f"motor {motor!r}: {field} must be an integer, got {value!r}")
    return value


def validate_motor(path: Path, motor: str, calib: MotorCalibration, expected_id: int | None = None,
                   resolution: int = RESOLUTION) -> None:
    def fail(problem: str):
        raise CalibrationError(path, f"motor {motor!r}: {problem}; {RECALIBRATE_HINT}")

    if expected_id is not None and calib.id != expected_id:
        fail(f"id {calib.id} but this arm's {motor} is motor id {expected_id}")
    if calib.drive_mode not in (0, 1):
        fail(f"drive_mode {calib.drive_mode} is not 0 or 1")
    if not -HOMING_OFFSET_LIMIT <= calib.homing_offset <= HOMING_OFFSET_LIMIT:
        fail(f"homing_offset {calib.homing_offset} outside "
             f"[-{HOMING_OFFSET_LIMIT}, {HOMING_OFFSET_LIMIT}]")
    for field in ("range_min", "range_max"):
        value = getattr(calib, field)
        if not 0 <= value <= resolution - 1:
            fail(f"{field} {value} outside [0, {resolution - 1}]")
    if calib.range_min >= calib.range_max:
        fail(f"range_min {calib.range_min} >= range_max {calib.range_max}")


def load_calibration(path: str | os.PathLike, motors: Mapping[str, int] | None = None,
                     resolution: int = RESOLUTION) -> dict[str, MotorCalibration]:
    """Read and validate a calibration file.

    ``motors`` (name -> motor id), when given, must match the file exactly: every motor present
    with that id, no other motor. Any problem raises :class:`CalibrationError` naming the file
    and the motor.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(path, f"not found; {RECALIBRATE_HINT}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CalibrationError(path, f"unreadable ({' '.join(str(error).split())}); "
                                     f"{RECALIBRATE_HINT}") from error
    if not isinstance(data, dict):
        raise CalibrationError(path, "expected a JSON object of motors")
    if motors is not None:
        for name in motors:
            if name not in data:
                raise CalibrationError(path, f"motor {name!r} missing; {RECALIBRATE_HINT}")
        extra = [name for name in data if name not in motors]
        if extra:
            raise CalibrationError(path, f"motor {extra[0]!r} is not a motor of this arm "
                                         f"(expected {list(motors)})")
    result = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise CalibrationError(path, f"motor {name!r}: expected an object with {list(FIELDS)}")
        calib = MotorCalibration(**{f: _int_field(path, name, entry, f) for f in FIELDS})
        validate_motor(path, name, calib, None if motors is None else motors[name], resolution)
        result[name] = calib
    return result


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

class Normalizer:
    """Raw Present/Goal_Position ticks <-> dataset units, for motors in a fixed order."""

    def __init__(self, calibration: Mapping[str, MotorCalibration], modes: Mapping[str, NormMode],
                 resolution: int = RESOLUTION):
        missing = [n for n in modes if n not in calibration]
        if missing:
            raise KeyError(f"no calibration for motor(s) {missing}")
        self.names: tuple[str, ...] = tuple(modes)
        self.modes = {n: NormMode(m) for n, m in modes.items()}
        self.calibration = {n: calibration[n] for n in self.names}
        self.max_res = resolution - 1

    def motor_to_units(self, name: str, raw: float) -> float:
        c, mode = self.calibration[name], self.modes[name]
        lo, hi = c.range_min, c.range_max
        if mode is NormMode.DEGREES:
            return (raw - (lo + hi) / 2) * 360 / self.max_res
        fraction = (min(max(raw, lo), hi) - lo) / (hi - lo)
        if mode is NormMode.RANGE_0_100:
            value = fraction * 100
            return 100 - value if c.drive_mode else value
        value = fraction * 200 - 100
        return -value if c.drive_mode else value

    def motor_to_raw(self, name: str, value: float) -> int:
        c, mode = self.calibration[name], self.modes[name]
        lo, hi = c.range_min, c.range_max
        if mode is NormMode.DEGREES:
            raw = value * self.max_res / 360 + (lo + hi) / 2
        elif mode is NormMode.RANGE_0_100:
            value = 100 - value if c.drive_mode else value
            raw = min(max(value, 0.0), 100.0) / 100 * (hi - lo) + lo
        else:
            value = -value if c.drive_mode else value
            raw = (min(max(value, -100.0), 100.0) + 100) / 200 * (hi - lo) + lo
        return int(min(max(round(raw), lo), hi))

    def to_units(self, raw: Mapping[str, int]) -> np.ndarray:
        """``(n,)`` float32 in motor order: degrees, gripper 0-100 (or -100..100)."""
        return np.array([self.motor_to_units(n, raw[n]) for n in self.names], dtype=np.float32)

    def to_raw(self, values: Sequence[float] | np.ndarray) -> dict[str, int]:
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape != (len(self.names),):
            raise ValueError(f"expected {len(self.names)} values ({list(self.names)}), "
                             f"got shape {values.shape}")
        return {n: self.motor_to_raw(n, float(v)) for n, v in zip(self.names, values)}

    def unit_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-motor (low, high) of the calibrated range, in units."""
        low, high = [], []
        for n in self.names:
            c, mode = self.calibration[n], self.modes[n]
            if mode is NormMode.DEGREES:
                a, b = self.motor_to_units(n, c.range_min), self.motor_to_units(n, c.range_max)
            elif mode is NormMode.RANGE_0_100:
                a, b = 0.0, 100.0
            else:
                a, b = -100.0, 100.0
            low.append(min(a, b))
            high.append(max(a, b))
        return np.array(low), np.array(high)


def to_dict(calibration: Mapping[str, MotorCalibration]) -> dict[str, dict[str, int]]:
    return {name: asdict(c) for name, c in calibration.items()}
