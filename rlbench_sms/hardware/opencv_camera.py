"""A colour camera read through OpenCV (UVC webcams, video files, GStreamer/FFmpeg URLs).

The capture source is a seam: :class:`VideoCaptureSource` wraps ``cv2.VideoCapture``; tests and
simulators inject any object with ``open()``, ``grab()`` and ``close()`` (the
:class:`FrameSource` protocol) and go through the very same thread, locking, colour conversion
and size checks.

Find indexes and the sizes they deliver with ``python -m rlbench_sms.tools.find_cameras``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rlbench_sms.features import FeatureSpec, rgb_feature
from rlbench_sms.hardware.camera_thread import ThreadedCamera
from rlbench_sms.hardware.contracts import CameraFrame, HardwareError

COLOR_MODES = ("rgb", "bgr")


@dataclass
class OpenCVCameraConfig:
    # int: a device index (/dev/video<N> on Linux); str: a device path, file or stream URL.
    # Typed Any because OmegaConf 2.3 structured configs do not take Union[int, str].
    index_or_path: Any = 0
    width: int = 640                  # pixels; the camera must deliver exactly this size
    height: int = 480
    fps: int = 30                     # requested from the driver (a file plays as fast as read)
    color_mode: str = "rgb"           # "rgb" is what datasets store; "bgr" keeps OpenCV's order
    warmup_s: float = 1.0             # auto-exposure settling after connect; 0 skips the check
    read_timeout_s: float = 0.5       # default wait for a new frame in read()
    max_consecutive_errors: int = 10  # failed grabs in a row before the camera counts as lost

    def __post_init__(self) -> None:
        if isinstance(self.index_or_path, str) and self.index_or_path.strip().isdigit():
            self.index_or_path = int(self.index_or_path)
        if self.color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode must be one of {COLOR_MODES}, got {self.color_mode!r}")
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise ValueError(f"width, height and fps must be positive, got "
                             f"{self.width}x{self.height} @ {self.fps}")


class FrameSource(Protocol):
    """Where frames come from. ``grab()`` blocks for at most about one frame period and returns a
    (H, W, 3) uint8 frame in **BGR** order (OpenCV's), or None when no frame came this time; it
    raises on a read error."""

    def open(self) -> None: ...

    def grab(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class VideoCaptureSource:
    """``cv2.VideoCapture`` as a :class:`FrameSource`."""

    def __init__(self, index_or_path: int | str, width: int, height: int, fps: int):
        self.index_or_path = index_or_path
        self.width, self.height, self.fps = width, height, fps
        self._cap = None

    def open(self) -> None:
        try:
            import cv2
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise HardwareError(f"OpenCVCamera({self.index_or_path})",
                                "OpenCV is not installed: pip install opencv-python-headless") from exc
        cap = cv2.VideoCapture(self.index_or_path)
        if not cap.isOpened():
            cap.release()
            raise HardwareError(f"OpenCVCamera({self.index_or_path})",
                                "cannot be opened; list cameras with "
                                "`python -m rlbench_sms.tools.find_cameras`")
        # Requests only: a driver may ignore them, which the size check on each frame catches.
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap

    def grab(self) -> np.ndarray | None:
        ok, frame = self._cap.read()
        if not ok:
            raise RuntimeError("cv2.VideoCapture.read() returned no frame")
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class OpenCVCamera(ThreadedCamera):
    """An RGB camera through OpenCV, read on a background thread (newest frame wins)."""

    def __init__(self, config: OpenCVCameraConfig | None = None, source: FrameSource | None = None,
                 name: str | None = None):
        self.config = config or OpenCVCameraConfig()
        c = self.config
        super().__init__(name or f"OpenCVCamera({c.index_or_path})", c.warmup_s, c.read_timeout_s,
                         c.max_consecutive_errors)
        self.source: FrameSource = source or VideoCaptureSource(c.index_or_path, c.width, c.height,
                                                                c.fps)

    def features(self, camera_name: str) -> list[FeatureSpec]:
        return [rgb_feature(camera_name, self.config.height, self.config.width)]

    def _open(self) -> None:
        try:
            self.source.open()
        except HardwareError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the backend raises, say who failed
            raise HardwareError(self.name, f"cannot be opened: {type(exc).__name__}: {exc}") from exc

    def _close(self) -> None:
        self.source.close()

    def _capture(self) -> CameraFrame | None:
        frame = self.source.grab()
        if frame is None:
            return None
        # Stamp as close to the hand-over as we can: before any conversion work.
        timestamp = time.monotonic()
        return CameraFrame(timestamp=timestamp, color=self._to_color(frame))

    def _to_color(self, frame: np.ndarray) -> np.ndarray:
        c = self.config
        if frame.ndim == 2:                       # a monochrome camera: replicate to 3 channels
            frame = np.repeat(frame[:, :, None], 3, axis=2)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise HardwareError(self.name, f"delivered {frame.dtype} frames of shape {frame.shape}, "
                                           "expected (H, W, 3) uint8")
        h, w = frame.shape[:2]
        if (h, w) != (c.height, c.width):
            raise HardwareError(self.name, f"delivers {w}x{h} frames but the config asks for "
                                           f"{c.width}x{c.height}; set width/height to a size it "
                                           "supports (see `python -m rlbench_sms.tools.find_cameras`)")
        if c.color_mode == "rgb":
            return np.ascontiguousarray(frame[:, :, ::-1])    # BGR -> RGB
        return frame.copy()                       # a source may reuse its buffer
