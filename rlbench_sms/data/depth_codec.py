"""LeRobot's 12-bit depth quantisation (log or linear), in pure numpy.

LeRobot (PR #3644) stores depth as HEVC ``gray12le`` video of 12-bit *codes*, not millimetres:

    code = rint((ln(d + shift) - ln(dmin + shift)) / (ln(dmax + shift) - ln(dmin + shift)) * 4095)

clipped to 0..4095, with d, dmin, dmax and shift in metres (defaults 0.01, 10.0, 3.5); the linear
variant is ``rint((d - dmin) / (dmax - dmin) * 4095)``. The codec itself is lossless, so the only
loss is this quantisation: about 1.25 mm per code at 0.3 m and 4.4 mm per code at 10 m (log).

We read such files (``dequantize_depth``) and write them only to produce LeRobot-style fixtures;
our own depth is stored exactly (uint16 mm, FFV1). Our contract is that 0 mm means "invalid".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

MAX_CODE = 4095                 # 12 bits
MM_PER_M = 1000.0

# LeRobot's DepthEncoderConfig defaults (metres).
DEFAULT_DEPTH_MIN_M = 0.01
DEFAULT_DEPTH_MAX_M = 10.0
DEFAULT_SHIFT_M = 3.5
DEFAULT_USE_LOG = True


@dataclass(frozen=True)
class DepthQuantization:
    """Parameters of LeRobot's 12-bit depth quantisation; all lengths in metres."""

    depth_min: float = DEFAULT_DEPTH_MIN_M
    depth_max: float = DEFAULT_DEPTH_MAX_M
    shift: float = DEFAULT_SHIFT_M
    use_log: bool = DEFAULT_USE_LOG

    def __post_init__(self) -> None:
        if not self.depth_max > self.depth_min:
            raise ValueError(f"depth_max ({self.depth_max} m) must exceed depth_min ({self.depth_min} m)")
        if self.use_log and not self.depth_min + self.shift > 0:
            raise ValueError(f"depth_min + shift must be > 0 for log quantisation, got "
                             f"{self.depth_min} + {self.shift} m")

    @classmethod
    def from_feature_info(cls, info: Mapping[str, Any] | None) -> "DepthQuantization | None":
        """The quantisation of a LeRobot depth video feature, or None if it is not quantised.

        LeRobot marks depth with ``is_depth_map`` (legacy: ``video.is_depth_map``) and records
        ``video.depth_min``/``video.depth_max``/``video.shift``/``video.use_log``; it stores the
        codes as ``gray12le``. Our exact depth (``gray16le``, millimetres) is not quantised.
        """
        if not info:
            return None
        is_depth = bool(info.get("is_depth_map", info.get("video.is_depth_map", False)))
        pix_fmt = info.get("video.pix_fmt")
        has_params = any(f"video.{k}" in info for k in ("depth_min", "depth_max", "shift", "use_log"))
        if not is_depth or pix_fmt == "gray16le":
            return None
        if not (has_params or pix_fmt == "gray12le"):
            return None

        def num(key: str, default: float) -> float:
            value = info.get(f"video.{key}")
            return default if value is None else float(value)

        use_log = info.get("video.use_log")
        return cls(depth_min=num("depth_min", DEFAULT_DEPTH_MIN_M),
                   depth_max=num("depth_max", DEFAULT_DEPTH_MAX_M),
                   shift=num("shift", DEFAULT_SHIFT_M),
                   use_log=DEFAULT_USE_LOG if use_log is None else _as_bool(use_log))

    def info(self) -> dict[str, Any]:
        """The fields LeRobot writes into a depth feature's info."""
        return {"video.depth_min": self.depth_min, "video.depth_max": self.depth_max,
                "video.shift": self.shift, "video.use_log": self.use_log}

    def _log_range(self) -> tuple[float, float]:
        lo = np.log(self.depth_min + self.shift)
        return float(lo), float(np.log(self.depth_max + self.shift) - lo)

    def step_m(self, depth_m: np.ndarray | float) -> np.ndarray | float:
        """Depth spanned by one code at ``depth_m`` (metres): the resolution of this scheme."""
        if self.use_log:
            _, span = self._log_range()
            return (np.asarray(depth_m, dtype=np.float64) + self.shift) * (np.expm1(span / MAX_CODE))
        return (self.depth_max - self.depth_min) / MAX_CODE


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def quantize_depth(depth_mm: np.ndarray, q: DepthQuantization) -> np.ndarray:
    """uint16 millimetres -> uint16 codes 0..4095 (LeRobot's formula, computed in metres).

    Depths at or below ``depth_min`` (including our invalid 0) become code 0; above ``depth_max``
    they clip to 4095.
    """
    depth_m = np.asarray(depth_mm, dtype=np.float64) / MM_PER_M
    if q.use_log:
        lo, span = q._log_range()
        # clip before the log so that d + shift > 0 even for d far below depth_min
        x = (np.log(np.maximum(depth_m, q.depth_min) + q.shift) - lo) / span
    else:
        x = (depth_m - q.depth_min) / (q.depth_max - q.depth_min)
    return np.clip(np.rint(x * MAX_CODE), 0, MAX_CODE).astype(np.uint16)


def dequantize_depth(codes: np.ndarray, q: DepthQuantization) -> np.ndarray:
    """uint16 codes -> uint16 millimetres (rounded), the inverse of ``quantize_depth``.

    Code 0 maps to 0 mm, not to ``depth_min``: LeRobot returns depth_min (10 mm) there, a value
    no sensor measures, and code 0 is what every invalid (0) pixel was quantised to. Our contract
    is 0 = invalid, so that is what we return.
    """
    c = np.asarray(codes)
    if c.size and int(c.max()) > MAX_CODE:
        raise ValueError(f"depth codes must be 0..{MAX_CODE}, got max {int(c.max())}")
    x = c.astype(np.float64) / MAX_CODE
    if q.use_log:
        lo, span = q._log_range()
        depth_m = np.exp(x * span + lo) - q.shift
    else:
        depth_m = x * (q.depth_max - q.depth_min) + q.depth_min
    depth_m = np.clip(depth_m, q.depth_min, q.depth_max)
    mm = np.rint(depth_m * MM_PER_M)
    mm[c == 0] = 0
    return mm.astype(np.uint16)
