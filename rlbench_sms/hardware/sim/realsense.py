"""A RealSense without the camera: an ``rs.software_device`` with a Depth and a Color sensor,
pushed synthetic frames, matched by librealsense's own syncer.

It plugs into :class:`~rlbench_sms.hardware.realsense.RealSenseCamera` as its frame source, so
alignment (``rs.align``), the depth-scale conversion and intrinsics run through librealsense
exactly as with a real camera. (``rs.pipeline`` cannot drive a software device; a syncer can.)

The scene (:class:`SyntheticScene`) is a fronto-parallel plane with a box face in front of it,
rendered separately in the depth camera and in the colour camera (different intrinsics, and the
colour camera offset along x as on a D435), so that raw depth and colour disagree about where the
box is and only correctly aligned depth agrees with the colour image.

The syncer hands out the very first frame of each stream unmatched; :meth:`start` pushes one
priming pair so that every later :meth:`push` yields one matched colour + depth frameset.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlbench_sms.features import CameraIntrinsics
from rlbench_sms.hardware.realsense import (RealSenseCameraConfig, StreamSetup,
                                            import_pyrealsense2)

PLANE_RGB = (120, 120, 120)
BOX_RGB = (200, 30, 30)


@dataclass
class SyntheticScene:
    """A plane at ``plane_m`` and, in front of it, the face of a box at ``box_m`` spanning
    x in ``box_x_m`` and y in ``box_y_m`` (metres, depth-camera frame: x right, y down, z ahead)."""

    plane_m: float = 0.8
    box_m: float = 0.5
    box_x_m: tuple[float, float] = (-0.06, 0.08)
    box_y_m: tuple[float, float] = (-0.05, 0.07)

    def _rays(self, intr: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
        u = (np.arange(intr.width) - intr.ppx) / intr.fx      # (W,) librealsense: integer = centre
        v = (np.arange(intr.height) - intr.ppy) / intr.fy     # (H,)
        return u[None, :], v[:, None]

    def box_mask(self, intr: CameraIntrinsics, offset_x_m: float = 0.0) -> np.ndarray:
        """(H, W) bool: where a camera with ``intr``, ``offset_x_m`` right of the depth camera
        (same orientation), sees the box."""
        x, y = self._rays(intr)
        xd = x * self.box_m + offset_x_m        # hit point on the box plane, depth-camera x
        yd = y * self.box_m
        return ((xd >= self.box_x_m[0]) & (xd <= self.box_x_m[1])
                & (yd >= self.box_y_m[0]) & (yd <= self.box_y_m[1]))

    def depth_m(self, intr: CameraIntrinsics) -> np.ndarray:
        """(H, W) float64 depth (z) in metres seen by the depth camera."""
        return np.where(self.box_mask(intr), self.box_m, self.plane_m)

    def color(self, intr: CameraIntrinsics, offset_x_m: float, n: int = 0) -> np.ndarray:
        """(H, W, 3) uint8 RGB seen by the colour camera; ``n`` shifts a faint texture per frame."""
        img = np.empty((intr.height, intr.width, 3), np.uint8)
        img[:] = PLANE_RGB
        img[..., 2] = (np.arange(intr.width)[None, :] + n) % 64 + 100   # texture on the blue
        img[self.box_mask(intr, offset_x_m)] = BOX_RGB
        return img


def default_intrinsics(width: int, height: int, fx_per_width: float) -> CameraIntrinsics:
    f = fx_per_width * width
    return CameraIntrinsics(width, height, f, f, width / 2.0, height / 2.0, "brown_conrady")


class SoftwareRealSenseSource:
    """A :class:`~rlbench_sms.hardware.realsense.FramesetSource` backed by an
    ``rs.software_device``. Call :meth:`push` / :meth:`push_scene` to deliver frames, or pass
    ``autoplay=True`` to have a thread push the scene at the configured fps.

    ``depth_units_m``: metres per raw z16 unit (0.001 like a D435, 0.0001 like a D405).
    ``color_offset_m``: the colour camera's position along x in the depth camera's frame.
    """

    def __init__(self, depth_units_m: float = 0.001, scene: SyntheticScene | None = None,
                 color_fx_per_width: float = 0.95, depth_fx_per_width: float = 0.75,
                 color_offset_m: float = 0.015, autoplay: bool = False, syncer_queue: int = 4):
        self.depth_units_m = float(depth_units_m)
        self.scene = scene or SyntheticScene()
        self.color_fx_per_width = color_fx_per_width
        self.depth_fx_per_width = depth_fx_per_width
        self.color_offset_m = color_offset_m
        self.autoplay = autoplay
        self.syncer_queue = syncer_queue
        self.pushed = 0
        self.color_intrinsics: CameraIntrinsics | None = None
        self.depth_intrinsics: CameraIntrinsics | None = None
        self._rs = None
        self._fps = 30
        self._push_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- FramesetSource ------------------------------------------------------------------------
    def probe_intrinsics(self, config: RealSenseCameraConfig
                         ) -> tuple[CameraIntrinsics, CameraIntrinsics]:
        """The colour and depth intrinsics :meth:`start` will use (like a device's factory ones)."""
        return (default_intrinsics(config.width, config.height, self.color_fx_per_width),
                default_intrinsics(config.width, config.height, self.depth_fx_per_width))

    def start(self, config: RealSenseCameraConfig) -> StreamSetup:
        rs = self._rs = import_pyrealsense2("SoftwareRealSenseSource")
        w, h, self._fps = config.width, config.height, config.fps
        self.color_intrinsics, self.depth_intrinsics = self.probe_intrinsics(config)
        self._device = rs.software_device()
        self._color_sensor = self._device.add_sensor("Color")
        self._color_profile = self._color_sensor.add_video_stream(
            self._video_stream(rs, rs.stream.color, rs.format.rgb8, 3, 1, self.color_intrinsics)
        ).as_video_stream_profile()
        self._depth_sensor = None
        sensors = [(self._color_sensor, self._color_profile)]
        if config.use_depth:
            self._depth_sensor = self._device.add_sensor("Depth")
            self._depth_profile = self._depth_sensor.add_video_stream(
                self._video_stream(rs, rs.stream.depth, rs.format.z16, 2, 0, self.depth_intrinsics)
            ).as_video_stream_profile()
            self._depth_sensor.add_read_only_option(rs.option.depth_units, self.depth_units_m)
            extrinsics = rs.extrinsics()
            extrinsics.rotation = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]   # column-major 3x3 identity
            # A point p_d in the depth frame is p_d - offset in the colour frame.
            extrinsics.translation = [-self.color_offset_m, 0.0, 0.0]
            self._depth_profile.register_extrinsics_to(self._color_profile, extrinsics)
            sensors.append((self._depth_sensor, self._depth_profile))
        self._device.create_matcher(rs.matchers.default)
        self._syncer = rs.syncer(self.syncer_queue)
        for sensor, profile in sensors:
            sensor.open(profile)
            sensor.start(self._syncer)
        self._use_depth = config.use_depth
        self.pushed = 0
        self.push_scene()              # priming pair: comes out unmatched, the camera skips it
        if self.autoplay:
            self._stop.clear()
            self._thread = threading.Thread(target=self._play, name="software realsense",
                                            daemon=True)
            self._thread.start()
        return StreamSetup(self._color_profile,
                           self._depth_profile if config.use_depth else None,
                           float(self._depth_sensor.as_depth_sensor().get_depth_scale())
                           if config.use_depth else None)

    def wait(self, timeout_s: float) -> Any | None:
        ok, frames = self._syncer.try_wait_for_frames(max(1, int(timeout_s * 1000)))
        return frames if ok else None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for sensor in (self._color_sensor, self._depth_sensor):
            if sensor is not None:
                try:
                    sensor.stop()
                    sensor.close()
                except RuntimeError:
                    pass

    # -- pushing frames ------------------------------------------------------------------------
    def push(self, color_rgb: np.ndarray, depth_raw: np.ndarray | None = None,
             timestamp_ms: float | None = None, domain: str = "hardware_clock") -> None:
        """Deliver one colour frame (H, W, 3) uint8 RGB and one raw depth frame (H, W) uint16
        in ``depth_units_m``, stamped as the same capture. (The binding copies the pixels.)

        The stamp is ``timestamp_ms`` in the timestamp ``domain`` (``hardware_clock``,
        ``global_time`` or ``system_time``, as a real device reports it); by default frame ``n``
        of a hardware clock starting at 0, at the configured fps.
        """
        rs = self._rs
        with self._push_lock:
            n = self.pushed
            stamp_ms = n * 1000.0 / self._fps if timestamp_ms is None else float(timestamp_ms)
            stamp_domain = getattr(rs.timestamp_domain, domain)
            frames = [(self._color_sensor, self._color_profile, np.ascontiguousarray(color_rgb), 3)]
            if self._use_depth:
                if depth_raw is None:
                    raise ValueError("this source streams depth: push a depth frame too")
                frames.insert(0, (self._depth_sensor, self._depth_profile,
                                  np.ascontiguousarray(depth_raw, dtype=np.uint16), 2))
            for sensor, profile, pixels, bpp in frames:
                frame = rs.software_video_frame()
                frame.pixels = pixels
                frame.stride = pixels.shape[1] * bpp
                frame.bpp = bpp
                frame.timestamp = stamp_ms
                frame.domain = stamp_domain
                frame.frame_number = n
                frame.profile = profile
                if bpp == 2:
                    frame.depth_units = self.depth_units_m
                sensor.on_video_frame(frame)
            self.pushed += 1

    def scene_frames(self, n: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The scene's colour (RGB) and raw depth (uint16 in ``depth_units_m``) for frame ``n``."""
        color = self.scene.color(self.color_intrinsics, self.color_offset_m, n)
        raw = np.rint(self.scene.depth_m(self.depth_intrinsics) / self.depth_units_m)
        return color, np.clip(raw, 0, 65535).astype(np.uint16)

    def push_scene(self) -> None:
        self.push(*self.scene_frames(self.pushed))

    def _play(self) -> None:
        # Absolute deadlines: the stamps (frame n at n / fps) then keep pace with the host clock
        # as a real camera's do, instead of falling behind by each push's duration.
        period = 1.0 / self._fps
        next_t = time.monotonic() + period
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            self.push_scene()
            next_t += period

    # -- helpers -------------------------------------------------------------------------------
    def _video_stream(self, rs, stream, fmt, bpp: int, uid: int, intr: CameraIntrinsics):
        ri = rs.intrinsics()
        ri.width, ri.height = intr.width, intr.height
        ri.fx, ri.fy, ri.ppx, ri.ppy = intr.fx, intr.fy, intr.ppx, intr.ppy
        ri.model = rs.distortion.brown_conrady
        ri.coeffs = [0.0] * 5
        vs = rs.video_stream()
        vs.type, vs.index, vs.uid = stream, 0, uid
        vs.width, vs.height, vs.fps = intr.width, intr.height, self._fps
        vs.bpp, vs.fmt, vs.intrinsics = bpp, fmt, ri
        return vs
