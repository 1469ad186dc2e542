"""Intel RealSense: RGB plus depth **aligned to the colour stream, in millimetres**.

What we fix over LeRobot's driver (``reference/lerobot_facts.md`` 4.1): it stores the raw z16
values and calls them millimetres, and never aligns. Here

* depth is reprojected into the colour camera (``rs.align(rs.stream.color)``), so depth pixel
  (u, v) and colour pixel (u, v) see the same point, and the colour intrinsics deproject it;
* raw z16 units are converted with the device's depth scale (metres per unit: 0.001 on most
  D4xx, 0.0001 on a D405) to uint16 millimetres: rounded, saturated at 65535, 0 kept as 0
  (= invalid) and a valid reading never rounded down to 0.

The frame source is a seam. :class:`RealSenseSource` streams a real camera through
``rs.pipeline``; ``rlbench_sms.hardware.sim.realsense.SoftwareRealSenseSource`` builds an
``rs.software_device`` and pushes synthetic colour + depth through a syncer (``rs.pipeline``
does not run on a software device; stack_notes 6). Everything after the source -- matching
colour with depth, alignment, the mm conversion, intrinsics, the capture thread -- is shared.

Time: a frame's ``timestamp`` is when the host received it (``time.monotonic()``); its
``device_timestamp`` is the driver's own stamp of the colour frame (``frame.get_timestamp()``, in
its timestamp domain), mapped onto the same monotonic clock by
:class:`~rlbench_sms.hardware.device_clock.DeviceClockMapper`, with the domain's name in
``device_clock``. The recorder stores both.

``pyrealsense2`` is imported lazily: the feature schemas work on a machine without it. On Linux
it needs libusb-1.0 (``apt install libusb-1.0-0``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rlbench_sms.features import (CameraIntrinsics, FeatureSpec, depth_feature, rgb_feature)
from rlbench_sms.hardware.camera_thread import ThreadedCamera
from rlbench_sms.hardware.contracts import CameraFrame, HardwareError
from rlbench_sms.hardware.device_clock import DeviceClockMapper

UINT16_MAX = 65535


def import_pyrealsense2(device: str = "RealSense"):
    """``pyrealsense2``, or a :class:`HardwareError` saying how to get it."""
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        raise HardwareError(device, f"pyrealsense2 cannot be imported ({exc}); pip install "
                                    "pyrealsense2, and on Linux apt install libusb-1.0-0") from exc
    return rs


@dataclass
class RealSenseCameraConfig:
    # Required: the camera's serial (a string; quote it in YAML so leading zeros survive).
    serial_number: str
    width: int = 640                  # colour and depth are both requested at this size
    height: int = 480
    fps: int = 30
    use_depth: bool = True
    align_depth_to_color: bool = True  # False keeps depth in the depth camera's own frame
    warmup_s: float = 1.0              # auto-exposure settling after connect; 0 skips the check
    read_timeout_s: float = 0.5        # default wait for a new frame in read()
    exposure: float | None = None      # colour exposure in microseconds; disables auto-exposure
    gain: float | None = None          # colour gain; disables auto-exposure
    max_consecutive_errors: int = 10   # device errors in a row before the camera counts as lost
    poll_s: float = 0.1                # longest single wait of the capture thread (stop latency)
    # Mapping a hardware-clock frame stamp onto the host clock (hardware/device_clock.py): how
    # fast the device clock may drift from the host's (s per s; crystals are within ~50 ppm),
    # and the jump (s) taken as a reset or wrap of the device clock rather than as delay.
    device_clock_max_drift: float = 1e-4
    device_clock_resync_s: float = 1.0

    def __post_init__(self) -> None:
        self.serial_number = str(self.serial_number)
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise ValueError(f"width, height and fps must be positive, got "
                             f"{self.width}x{self.height} @ {self.fps}")


@dataclass
class StreamSetup:
    """What a started source reports: the active profiles and the depth scale."""

    color_profile: Any                  # rs.video_stream_profile of the colour stream
    depth_profile: Any | None = None    # rs.video_stream_profile of the depth stream
    depth_scale_m: float | None = None  # metres per raw z16 unit, as the depth sensor reports


class FramesetSource(Protocol):
    """Where framesets come from (a real pipeline, or a software device in tests)."""

    def start(self, config: RealSenseCameraConfig) -> StreamSetup: ...

    def wait(self, timeout_s: float) -> Any | None:
        """The next ``rs.composite_frame``, or None if none came within ``timeout_s``."""

    def stop(self) -> None: ...


def intrinsics_from_rs(intr: Any) -> CameraIntrinsics:
    """``rs.intrinsics`` -> :class:`CameraIntrinsics` (model name without the ``distortion.``)."""
    model = str(intr.model).rsplit(".", 1)[-1]
    return CameraIntrinsics(int(intr.width), int(intr.height), float(intr.fx), float(intr.fy),
                            float(intr.ppx), float(intr.ppy), model,
                            tuple(float(c) for c in intr.coeffs))


def depth_to_mm(raw: np.ndarray, units_m: float) -> np.ndarray:
    """Raw z16 depth (``units_m`` metres per unit) -> uint16 millimetres.

    Rounded to the nearest mm and saturated at 65535 mm; 0 stays 0 (invalid) and a nonzero
    reading below half a millimetre becomes 1 mm, so that 0 keeps meaning "no depth" only.
    """
    raw = np.asarray(raw)
    if raw.dtype != np.uint16:
        raise TypeError(f"raw depth must be uint16, got {raw.dtype}")
    factor = float(units_m) * 1000.0        # mm per raw unit
    if abs(factor - 1.0) < 1e-6:
        # 1 mm units (the float32 0.001 the device reports is 1.0000000475e-3): already mm.
        return raw.copy()
    mm = np.rint(raw.astype(np.float32) * np.float32(factor))
    np.clip(mm, 0, UINT16_MAX, out=mm)
    out = mm.astype(np.uint16)
    out[(out == 0) & (raw != 0)] = 1
    return out


class RealSenseSource:
    """A real camera through ``rs.pipeline``, selected by serial number."""

    def __init__(self, serial_number: str):
        self.serial_number = str(serial_number)
        self.device_name = f"RealSenseCamera({self.serial_number})"
        self._pipe = None

    def start(self, config: RealSenseCameraConfig) -> StreamSetup:
        rs = import_pyrealsense2(self.device_name)
        ctx = rs.context()
        found = {d.get_info(rs.camera_info.serial_number): d.get_info(rs.camera_info.name)
                 for d in ctx.query_devices()}
        if self.serial_number not in found:
            listed = ", ".join(f"{s} ({n})" for s, n in found.items()) or "none"
            raise HardwareError(self.device_name, f"not found (connected RealSense: {listed}); "
                                                  "list with `python -m rlbench_sms.tools.find_cameras`")
        c = config
        cfg = rs.config()
        cfg.enable_device(self.serial_number)
        cfg.enable_stream(rs.stream.color, c.width, c.height, rs.format.rgb8, c.fps)
        if c.use_depth:
            cfg.enable_stream(rs.stream.depth, c.width, c.height, rs.format.z16, c.fps)
        pipe = rs.pipeline(ctx)
        try:
            profile = pipe.start(cfg)
        except RuntimeError as exc:
            raise HardwareError(self.device_name, f"cannot stream {c.width}x{c.height} @ {c.fps} fps "
                                                  f"({'rgb8 + z16' if c.use_depth else 'rgb8'}): {exc}; "
                                                  "pick a mode the model supports") from exc
        self._pipe = pipe
        device = profile.get_device()
        try:
            self._apply_exposure(rs, device, c)
        except Exception:
            self.stop()
            raise
        color = profile.get_stream(rs.stream.color).as_video_stream_profile()
        depth = scale = None
        if c.use_depth:
            depth = profile.get_stream(rs.stream.depth).as_video_stream_profile()
            scale = float(device.first_depth_sensor().get_depth_scale())
        return StreamSetup(color, depth, scale)

    def probe_intrinsics(self, config: RealSenseCameraConfig
                         ) -> tuple[CameraIntrinsics | None, CameraIntrinsics | None]:
        """Colour and depth intrinsics of the profiles ``config`` asks for, read from the device
        without streaming (so a dataset can be created before connecting); (None, None) when
        pyrealsense2, the device or the mode is missing."""
        try:
            import pyrealsense2 as rs
            devices = [d for d in rs.context().query_devices()
                       if d.get_info(rs.camera_info.serial_number) == self.serial_number]
            if not devices:
                return None, None
            found: dict[Any, CameraIntrinsics] = {}
            wanted = {rs.stream.color: rs.format.rgb8, rs.stream.depth: rs.format.z16}
            for sensor in devices[0].query_sensors():
                for profile in sensor.get_stream_profiles():
                    stream = profile.stream_type()
                    if wanted.get(stream) != profile.format() or profile.fps() != config.fps:
                        continue
                    video = profile.as_video_stream_profile()
                    if (video.width(), video.height()) == (config.width, config.height):
                        found.setdefault(stream, intrinsics_from_rs(video.get_intrinsics()))
            return found.get(rs.stream.color), found.get(rs.stream.depth)
        except (ImportError, RuntimeError):
            return None, None

    def _apply_exposure(self, rs, device, c: RealSenseCameraConfig) -> None:
        if c.exposure is None and c.gain is None:
            return
        try:
            sensor = device.first_color_sensor()
        except RuntimeError:
            # D405: the colour stream comes from the stereo module, which holds its options.
            sensor = device.first_depth_sensor()
        try:
            sensor.set_option(rs.option.enable_auto_exposure, 0)
            if c.exposure is not None:
                sensor.set_option(rs.option.exposure, float(c.exposure))
            if c.gain is not None:
                sensor.set_option(rs.option.gain, float(c.gain))
        except RuntimeError as exc:
            raise HardwareError(self.device_name, f"cannot set exposure={c.exposure} "
                                                  f"gain={c.gain}: {exc}") from exc

    def wait(self, timeout_s: float) -> Any | None:
        ok, frames = self._pipe.try_wait_for_frames(max(1, int(timeout_s * 1000)))
        return frames if ok else None

    def stop(self) -> None:
        if self._pipe is not None:
            try:
                self._pipe.stop()
            finally:
                self._pipe = None


class RealSenseCamera(ThreadedCamera):
    """Colour (RGB) + depth (uint16 mm, aligned to colour) from a RealSense, on a capture thread.

    ``intrinsics`` (colour stream; what aligned depth deprojects with) and ``depth_scale_m`` are
    known once connected; :meth:`features` puts the intrinsics into the depth feature. Called
    before connect, it reads them from the device if one with this serial is plugged in
    (without streaming), else leaves them out.
    """

    has_device_clock = True       # frames carry the driver's capture stamp (CameraFrame.device_timestamp)

    def __init__(self, config: RealSenseCameraConfig, source: FramesetSource | None = None,
                 name: str | None = None):
        self.config = config
        super().__init__(name or f"RealSenseCamera({config.serial_number})", config.warmup_s,
                         config.read_timeout_s, config.max_consecutive_errors)
        self.source: FramesetSource = source or RealSenseSource(config.serial_number)
        self.intrinsics: CameraIntrinsics | None = None          # colour stream
        self.depth_intrinsics: CameraIntrinsics | None = None    # depth stream, before alignment
        self.depth_scale_m: float | None = None                  # the device's, metres per unit
        self.partial_framesets = 0        # framesets lacking colour or depth, skipped
        self._align = None
        self._probed = False
        self._clock = DeviceClockMapper(config.device_clock_max_drift, config.device_clock_resync_s)

    # -- schema --------------------------------------------------------------------------------
    def features(self, camera_name: str) -> list[FeatureSpec]:
        c = self.config
        if c.use_depth and self.intrinsics is None and not self._probed:
            # Before connect: ask a present device for its factory intrinsics; no device, no
            # intrinsics (the schema must work without hardware).
            self._probed = True
            probe = getattr(self.source, "probe_intrinsics", None)
            if probe is not None:
                self.intrinsics, self.depth_intrinsics = probe(c)
        out = [rgb_feature(camera_name, c.height, c.width)]
        if c.use_depth:
            if c.align_depth_to_color:
                out.append(depth_feature(camera_name, c.height, c.width, intrinsics=self.intrinsics,
                                         depth_scale_m=0.001, aligned_to=camera_name))
            else:
                out.append(depth_feature(camera_name, c.height, c.width,
                                         intrinsics=self.depth_intrinsics, depth_scale_m=0.001))
        return out

    # -- ThreadedCamera hooks ------------------------------------------------------------------
    def _open(self) -> None:
        rs = import_pyrealsense2(self.name)
        try:
            setup = self.source.start(self.config)
        except HardwareError:
            raise
        except RuntimeError as exc:
            raise HardwareError(self.name, f"cannot start streaming: {exc}") from exc
        self.intrinsics = intrinsics_from_rs(setup.color_profile.get_intrinsics())
        if setup.depth_profile is not None:
            self.depth_intrinsics = intrinsics_from_rs(setup.depth_profile.get_intrinsics())
        self.depth_scale_m = setup.depth_scale_m
        self.partial_framesets = 0
        self._clock.reset()           # a new session: the device clock may have restarted
        c = self.config
        self._align = (rs.align(rs.stream.color)
                       if c.use_depth and c.align_depth_to_color else None)

    def _close(self) -> None:
        self.source.stop()
        self._align = None

    def _capture(self) -> CameraFrame | None:
        frames = self.source.wait(self.config.poll_s)
        if frames is None:
            return None
        timestamp = time.monotonic()
        # Read together with the receive time: global/system-time stamps are wall-clock ones.
        wall_minus_monotonic = time.time() - timestamp
        return self._process(frames, timestamp, wall_minus_monotonic)

    def _process(self, frames: Any, timestamp: float,
                 wall_minus_monotonic: float) -> CameraFrame | None:
        c = self.config
        # A syncer emits unmatched frames at stream start (and when one stream drops a frame):
        # skip those, never pair a colour frame with a stale depth frame.
        if not frames.get_color_frame() or (c.use_depth and not frames.get_depth_frame()):
            self.partial_framesets += 1
            return None
        # The colour frame's stamp (ms in its domain): the image the dataset stores. Taken before
        # alignment, which builds a new depth frame but passes the colour frame through.
        stamped = frames.get_color_frame()
        domain = stamped.get_frame_timestamp_domain().name
        device_timestamp = self._clock.to_host(stamped.get_timestamp() / 1000.0, domain,
                                               timestamp, wall_minus_monotonic)
        if self._align is not None:
            frames = self._align.process(frames)
        color_frame = frames.get_color_frame()
        color = np.array(np.asanyarray(color_frame.get_data()), dtype=np.uint8, copy=True)
        self._check_shape("colour", color.shape[:2])
        depth = None
        if c.use_depth:
            depth_frame = frames.get_depth_frame()
            raw = np.asanyarray(depth_frame.get_data())
            self._check_shape("depth", raw.shape)
            # The frame's own units: the depth sensor's scale at capture time.
            depth = depth_to_mm(raw, depth_frame.get_units())
        return CameraFrame(timestamp=timestamp, color=color, depth=depth,
                           device_timestamp=device_timestamp, device_clock=domain)

    def _check_shape(self, what: str, hw: tuple[int, ...]) -> None:
        c = self.config
        if tuple(hw) != (c.height, c.width):
            raise HardwareError(self.name, f"{what} frames are {hw[1]}x{hw[0]}, the config asks for "
                                           f"{c.width}x{c.height}")
