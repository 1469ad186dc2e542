"""Map a camera driver's frame timestamps onto the host's ``time.monotonic()`` clock.

A RealSense stamps each frame itself, in one of three timestamp domains (librealsense's
``rs2_timestamp_domain``):

* ``global_time`` -- the device clock already translated by librealsense to the host's wall clock
  (``time.time()`` milliseconds): shifted onto the monotonic clock by the wall-minus-monotonic
  offset read when the frame arrives;
* ``system_time`` -- the host's wall clock when the driver received the frame (no device
  metadata, e.g. a kernel without the RealSense metadata patch): shifted the same way. Not a
  device capture time, but still earlier and steadier than our own receive stamp;
* ``hardware_clock`` -- the camera's own clock, with an arbitrary origin. It is mapped by the
  lower envelope of ``receive - device`` (the offset of the least delayed frame seen): a frame
  can never reach the host before it was captured, so the envelope is the offset up to the
  smallest transport delay. The envelope may rise by ``max_drift`` per second of host time so a
  device crystal running slow (tens of ppm) is followed, and it restarts when the device clock
  jumps by more than ``resync_s`` (a wrapped 32-bit counter, a device reset).

Any other domain name is treated like ``hardware_clock``.
"""

from __future__ import annotations

import math

HOST_WALL_CLOCK_DOMAINS = ("global_time", "system_time")


class DeviceClockMapper:
    """Converts one stream's driver timestamps (seconds) to host monotonic seconds."""

    def __init__(self, max_drift: float, resync_s: float):
        if max_drift < 0 or resync_s <= 0:
            raise ValueError(f"max_drift must be >= 0 and resync_s > 0, got {max_drift}, {resync_s}")
        self.max_drift = float(max_drift)       # seconds of clock offset change per host second
        self.resync_s = float(resync_s)
        self.resyncs = 0                        # device clock jumps seen since reset()
        self._offset: float | None = None       # host monotonic minus device time, lower envelope
        self._last_receive = -math.inf

    def reset(self) -> None:
        """Forget the hardware clock's offset (a new streaming session)."""
        self._offset, self._last_receive, self.resyncs = None, -math.inf, 0

    def to_host(self, device_s: float, domain: str, receive_s: float,
                wall_minus_monotonic_s: float) -> float:
        """The host monotonic time of a frame stamped ``device_s`` in ``domain``, received at
        ``receive_s`` (monotonic) while ``time.time() - time.monotonic()`` was
        ``wall_minus_monotonic_s``."""
        if domain in HOST_WALL_CLOCK_DOMAINS:
            return device_s - wall_minus_monotonic_s
        sample = receive_s - device_s           # the offset this frame shows, >= the true one
        if self._offset is None or abs(sample - self._offset) > self.resync_s:
            if self._offset is not None:
                self.resyncs += 1
            self._offset = sample
        else:
            allowed = self._offset + self.max_drift * max(0.0, receive_s - self._last_receive)
            self._offset = min(allowed, sample)
        self._last_receive = receive_s
        # Never after the receive (true by construction; min() also absorbs the rounding).
        return min(device_s + self._offset, receive_s)
