"""The data contract: canonical feature keys, dtypes, shapes and units.

Every module that reads or writes a dataset, builds a policy input or talks to hardware names
features through this file, so that a key, a unit or a shape is decided in exactly one place.
Keys follow LeRobot's conventions (``observation.state``, ``action``, ``observation.images.<cam>``)
so that datasets we write load in LeRobot and theirs load here.

| key                                  | dtype / shape        | unit                               |
|--------------------------------------|----------------------|------------------------------------|
| ``observation.state``, ``action``    | float32 [6]          | degrees; gripper 0-100 (% open)     |
| ``observation.images.<cam>``         | video uint8 H×W×3    | RGB                                |
| ``observation.images.<cam>_depth``   | video uint16 H×W×1   | millimetres, 0 = invalid           |
| ``observation.force``                | float32 [C]          | N / N·m, tared per episode         |
| ``observation.tip.position``         | float32 [3]          | metres, camera frame               |
| ``observation.tip.valid``            | bool [1]             |                                    |
| ``timing.capture_s``                 | float32 [1]          | s since the episode's first tick   |
| ``timing.late``                      | bool [1]             | the tick started late              |
| ``timing.<cam>_age_s``               | float32 [1]          | s, the frame's age at the tick     |
| ``timing.<cam>_device_s``            | float32 [1]          | s, device capture time (RealSense) |
| ``timing.force_age_s``               | float32 [1]          | s, the force reading's age         |

The ``timing.*`` columns are the recorder's record of *when* each reading was taken (design rule
6: every reading carries a monotonic capture timestamp). The per-reading ones (ages, device
times) came later than the first recordings: :func:`is_reading_timing_key` names them, so that
resuming a dataset recorded without them can go on without them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

STATE = "observation.state"
ACTION = "action"
FORCE = "observation.force"
TIP_POSITION = "observation.tip.position"
TIP_VALID = "observation.tip.valid"
IMAGES_PREFIX = "observation.images."
DEPTH_SUFFIX = "_depth"
# A windowed feature's flag of steps outside the episode (``action_is_pad``, ``observation.force_is_pad``).
PAD_SUFFIX = "_is_pad"

# Columns LeRobot adds to every frame row (its DEFAULT_FEATURES); written by the dataset writer.
TIMESTAMP = "timestamp"
FRAME_INDEX = "frame_index"
EPISODE_INDEX = "episode_index"
INDEX = "index"
TASK_INDEX = "task_index"
DEFAULT_FEATURE_KEYS = (TIMESTAMP, FRAME_INDEX, EPISODE_INDEX, INDEX, TASK_INDEX)

# SO-100 / SO-101: five arm joints in degrees then the gripper in 0-100 (LeRobot's names since 2026-02).
SO100_MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
SO100_JOINT_NAMES = tuple(f"{m}.pos" for m in SO100_MOTORS)
# A 6-axis force/torque sensor: forces in newtons, torques in newton-metres, in the sensor frame.
FORCE_TORQUE_NAMES = ("fx", "fy", "fz", "tx", "ty", "tz")
TIP_POSITION_NAMES = ("x", "y", "z")

# Recorder timing columns (see the table above and rlbench_sms.runtime.recorder).
TIMING_PREFIX = "timing."
CAPTURE_TIME = "timing.capture_s"   # the tick's joint reading, s since the episode's first tick
LATE = "timing.late"                # the tick started more than late_threshold_s after its deadline
FORCE_AGE = "timing.force_age_s"    # tick time minus the force reading's capture time, s
AGE_SUFFIX = "_age_s"
DEVICE_TIME_SUFFIX = "_device_s"

VECTOR_DTYPES = ("float32", "float64", "int64", "int32", "bool")
MEDIA_DTYPES = ("video", "image")
CAMERA_NAMES = ["height", "width", "channels"]


@dataclass(frozen=True)
class FeatureSpec:
    """One dataset feature as LeRobot's ``info.json`` describes it.

    ``shape`` is (H, W, C) for cameras (C = 1 for depth) and (n,) for vectors. ``info`` holds the
    per-feature extras: video codec fields, and for depth the intrinsics and depth scale.
    """

    key: str
    dtype: str
    shape: tuple[int, ...]
    names: Any = None
    unit: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_media(self) -> bool:
        return self.dtype in MEDIA_DTYPES

    @property
    def is_video(self) -> bool:
        return self.dtype == "video"

    @property
    def is_depth(self) -> bool:
        return self.is_media and is_depth_key(self.key)

    def to_info(self) -> dict[str, Any]:
        """The entry of ``info.json["features"]`` for this feature."""
        entry: dict[str, Any] = {"dtype": self.dtype, "shape": list(self.shape), "names": self.names}
        info = dict(self.info)
        if self.unit is not None and not self.is_media:
            entry["unit"] = self.unit
        if info:
            entry["info"] = info
        return entry

    @classmethod
    def from_info(cls, key: str, entry: Mapping[str, Any]) -> "FeatureSpec":
        """Inverse of :meth:`to_info`; raises ``KeyError``/``TypeError`` on a malformed entry."""
        info = dict(entry.get("info") or entry.get("video_info") or {})
        unit = entry.get("unit")
        if unit is None and is_depth_key(key):
            unit = "mm"
        return cls(
            key=key,
            dtype=str(entry["dtype"]),
            shape=tuple(int(s) for s in entry["shape"]),
            names=entry.get("names"),
            unit=unit,
            info=info,
        )

    def with_info(self, **extra: Any) -> "FeatureSpec":
        merged = dict(self.info)
        merged.update(extra)
        return FeatureSpec(self.key, self.dtype, self.shape, self.names, self.unit, merged)


def image_key(camera: str) -> str:
    return f"{IMAGES_PREFIX}{camera}"


def depth_key(camera: str) -> str:
    """Depth of ``camera``, aligned to its colour stream."""
    return f"{IMAGES_PREFIX}{camera}{DEPTH_SUFFIX}"


def is_camera_key(key: str) -> bool:
    return key.startswith(IMAGES_PREFIX)


def is_depth_key(key: str) -> bool:
    return is_camera_key(key) and key.endswith(DEPTH_SUFFIX)


def channels_first(frame: np.ndarray) -> np.ndarray:
    """A camera frame in dataset/device layout -> the policy's: (H, W) or (H, W, 1) depth ->
    (1, H, W); (H, W, 3) RGB -> (3, H, W). Contiguous, dtype unchanged."""
    if frame.ndim == 2:
        return np.ascontiguousarray(frame[None])
    if frame.ndim == 3:
        return np.ascontiguousarray(frame.transpose(2, 0, 1))
    raise ValueError(f"a camera frame has 2 or 3 dimensions (H, W[, C]), got shape {frame.shape}")


def camera_of(key: str) -> str:
    """``observation.images.front_depth`` -> ``front``; ``observation.images.wrist`` -> ``wrist``."""
    name = key[len(IMAGES_PREFIX):]
    return name[: -len(DEPTH_SUFFIX)] if name.endswith(DEPTH_SUFFIX) else name


def joint_feature(key: str = STATE, names: Sequence[str] = SO100_JOINT_NAMES) -> FeatureSpec:
    """State or action: joint positions in degrees, the gripper in 0-100."""
    return FeatureSpec(key, "float32", (len(names),), list(names), unit="deg|gripper_pct")


def rgb_feature(camera: str, height: int, width: int, dtype: str = "video") -> FeatureSpec:
    return FeatureSpec(image_key(camera), dtype, (height, width, 3), list(CAMERA_NAMES))


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of a stream in pixels (principal point from the top-left pixel corner)."""

    width: int
    height: int
    fx: float
    fy: float
    ppx: float
    ppy: float
    model: str = "none"
    coeffs: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy,
            "ppx": self.ppx, "ppy": self.ppy, "model": self.model, "coeffs": list(self.coeffs),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CameraIntrinsics":
        return cls(int(d["width"]), int(d["height"]), float(d["fx"]), float(d["fy"]),
                   float(d["ppx"]), float(d["ppy"]), str(d.get("model", "none")),
                   tuple(float(c) for c in d.get("coeffs", (0.0,) * 5)))


def depth_feature(camera: str, height: int, width: int, intrinsics: CameraIntrinsics | None = None,
                  depth_scale_m: float = 0.001, aligned_to: str | None = None,
                  dtype: str = "video") -> FeatureSpec:
    """Depth in uint16 millimetres (0 = invalid), aligned to ``aligned_to``'s colour stream.

    ``depth_scale_m`` is metres per stored unit (0.001 for millimetres). The intrinsics are those
    of the stream the depth is aligned to, so that a pixel (u, v) deprojects with them.
    """
    info: dict[str, Any] = {"is_depth_map": True, "depth_unit": "mm", "depth_scale_m": depth_scale_m}
    if intrinsics is not None:
        info["intrinsics"] = intrinsics.to_dict()
    if aligned_to is not None:
        info["aligned_to"] = image_key(aligned_to)
    return FeatureSpec(depth_key(camera), dtype, (height, width, 1), list(CAMERA_NAMES), "mm", info)


def force_feature(names: Sequence[str] = FORCE_TORQUE_NAMES) -> FeatureSpec:
    """Force/torque, tared at the start of each episode: N for f*, N·m for t*."""
    return FeatureSpec(FORCE, "float32", (len(names),), list(names), unit="N|Nm")


def tip_features() -> list[FeatureSpec]:
    """The object "tip": a 3-D point in the camera frame (metres) and whether it was detected."""
    return [
        FeatureSpec(TIP_POSITION, "float32", (3,), list(TIP_POSITION_NAMES), unit="m"),
        FeatureSpec(TIP_VALID, "bool", (1,), None),
    ]


def default_frame_features() -> list[FeatureSpec]:
    """The bookkeeping columns every frame row carries (LeRobot's DEFAULT_FEATURES)."""
    return [
        FeatureSpec(TIMESTAMP, "float32", (1,), None, unit="s"),
        FeatureSpec(FRAME_INDEX, "int64", (1,), None),
        FeatureSpec(EPISODE_INDEX, "int64", (1,), None),
        FeatureSpec(INDEX, "int64", (1,), None),
        FeatureSpec(TASK_INDEX, "int64", (1,), None),
    ]


def camera_age_key(camera: str) -> str:
    """``timing.<camera>_age_s``: how old ``camera``'s frame was at the tick (tick time minus the
    frame's host capture time, seconds; negative when the frame arrived after the joints were
    read, i.e. the loop waited for a fresh frame)."""
    return f"{TIMING_PREFIX}{camera}{AGE_SUFFIX}"


def camera_device_time_key(camera: str) -> str:
    """``timing.<camera>_device_s``: the driver's own capture time of ``camera``'s frame, mapped
    onto the host monotonic clock, in seconds since the episode's first tick (the axis of
    ``timing.capture_s``)."""
    return f"{TIMING_PREFIX}{camera}{DEVICE_TIME_SUFFIX}"


def is_reading_timing_key(key: str) -> bool:
    """Whether ``key`` is a per-reading timing column (an age or a device time). Datasets recorded
    before these columns existed lack them; a resumed recording then goes on without them."""
    return key.startswith(TIMING_PREFIX) and key.endswith((AGE_SUFFIX, DEVICE_TIME_SUFFIX))


def timing_features(camera_device_clocks: Mapping[str, bool], has_force: bool) -> list[FeatureSpec]:
    """The recorder's timing columns: the tick's capture time and lateness, then per camera (in
    order) its frame age and, where ``camera_device_clocks[name]`` is true, its device capture
    time, then the force reading's age when a force sensor is recorded."""
    features = [FeatureSpec(CAPTURE_TIME, "float32", (1,), None, unit="s"),
                FeatureSpec(LATE, "bool", (1,), None)]
    for name, has_device_clock in camera_device_clocks.items():
        features.append(FeatureSpec(camera_age_key(name), "float32", (1,), None, unit="s"))
        if has_device_clock:
            features.append(FeatureSpec(camera_device_time_key(name), "float32", (1,), None, unit="s"))
    if has_force:
        features.append(FeatureSpec(FORCE_AGE, "float32", (1,), None, unit="s"))
    return features
