"""The capture machinery every real camera shares: a background thread that keeps the newest
frame, and the reads the control loop makes on it.

A camera class supplies three hooks, ``_open()``, ``_capture()`` and ``_close()``; this base runs
``_capture()`` in a loop on its own thread, stamps nothing itself (the hook returns a
:class:`CameraFrame` whose ``timestamp`` it took right after the device handed the frame over) and
hands the newest frame to ``read``/``read_latest`` under a condition variable. Why a thread: a
camera delivers at its own clock, and a control loop that waited on the device would phase-lock to
that clock and inherit its jitter.

Failures: a hook raising :class:`HardwareError` is fatal (a wrong frame size never fixes itself);
any other exception is a transient read error, tolerated up to ``max_consecutive_errors`` in a
row. A fatal error stops the thread and is re-raised by the next read, naming the camera.
"""

from __future__ import annotations

import abc
import threading
import time

from rlbench_sms.hardware.contracts import Camera, CameraFrame, HardwareError


class ThreadedCamera(Camera):
    """Base of :class:`OpenCVCamera` and :class:`RealSenseCamera` (see the module docstring)."""

    name = "camera"

    def __init__(self, name: str, warmup_s: float, read_timeout_s: float,
                 max_consecutive_errors: int):
        self.name = name
        self._warmup_s = float(warmup_s)
        self._read_timeout_s = float(read_timeout_s)
        self._max_errors = int(max_consecutive_errors)
        self._cond = threading.Condition()
        self._latest: CameraFrame | None = None
        self._latest_seq = 0            # frames captured since connect
        self._returned_seq = 0          # the sequence number read() handed out last
        self._error: HardwareError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False

    # -- hooks ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _open(self) -> None:
        """Open the device; raise :class:`HardwareError` with what to do when it cannot."""

    @abc.abstractmethod
    def _capture(self) -> CameraFrame | None:
        """Block for at most a short poll interval; return a frame, or None when none came."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the device (called after the capture thread ended)."""

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        if self._connected:
            raise HardwareError(self.name, "already connected")
        self._open()
        with self._cond:
            self._latest, self._latest_seq, self._returned_seq, self._error = None, 0, 0, None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"capture {self.name}", daemon=True)
        self._thread.start()
        self._connected = True
        if self._warmup_s > 0:
            # Let auto-exposure settle, then insist the camera actually streams: a camera that
            # opens but never delivers must fail here, not at the first recorded tick.
            self._stop.wait(self._warmup_s)
            try:
                self._wait_for_frame(self._read_timeout_s, during="warm-up")
            except HardwareError:
                self.disconnect()
                raise

    def disconnect(self) -> None:
        if self._thread is not None:
            self._stop.set()
            # _capture polls in short slices, so the thread notices the stop flag promptly.
            self._thread.join(timeout=max(2.0, 4 * self._read_timeout_s))
            alive = self._thread.is_alive()
            self._thread = None
            if alive:
                # A driver stuck inside a blocking read: releasing the device under it can crash
                # the process, so leave it to the (daemon) thread and the OS.
                self._connected = False
                return
        if self._connected:
            self._connected = False
            self._close()

    # -- reads ---------------------------------------------------------------------------------
    def read(self, timeout_s: float | None = None) -> CameraFrame:
        """The newest frame not returned before, waiting at most ``timeout_s`` (default: the
        config's ``read_timeout_s``); raises :class:`HardwareError` naming the camera on timeout."""
        self._require_connected()
        return self._wait_for_frame(self._read_timeout_s if timeout_s is None else timeout_s)

    def read_latest(self, max_age_s: float, timeout_s: float) -> CameraFrame:
        """The newest frame at once if younger than ``max_age_s`` (even if returned before), else
        wait up to ``timeout_s`` for a new one."""
        self._require_connected()
        with self._cond:
            if self._error is not None:
                raise self._error
            latest = self._latest
            if latest is not None and time.monotonic() - latest.timestamp < max_age_s:
                self._returned_seq = self._latest_seq
                return latest
        return self._wait_for_frame(timeout_s)

    def _wait_for_frame(self, timeout_s: float, during: str | None = None) -> CameraFrame:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                # A frame captured before a failure is still a good frame: hand it out first.
                if self._latest is not None and self._latest_seq > self._returned_seq:
                    self._returned_seq = self._latest_seq
                    return self._latest
                if self._error is not None:
                    raise self._error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HardwareError(self.name, self._timeout_message(timeout_s, during))
                self._cond.wait(left)

    def _timeout_message(self, timeout_s: float, during: str | None) -> str:
        where = f" during {during}" if during else ""
        if self._latest is None:
            last = "no frame at all since connect"
        else:
            last = f"last frame {time.monotonic() - self._latest.timestamp:.2f} s ago"
        return (f"no new frame within {timeout_s * 1000:.0f} ms{where} ({last}); "
                "check the cable/USB bandwidth and that no other program holds the camera")

    # -- capture thread ------------------------------------------------------------------------
    def _run(self) -> None:
        errors = 0
        while not self._stop.is_set():
            try:
                frame = self._capture()
            except HardwareError as exc:
                self._fail(exc)
                return
            except Exception as exc:  # noqa: BLE001 - a driver hiccup; tolerated up to a limit
                errors += 1
                if errors >= self._max_errors:
                    self._fail(HardwareError(self.name, f"{errors} read errors in a row, last: "
                                                        f"{type(exc).__name__}: {exc}"))
                    return
                continue
            if frame is None:
                continue
            errors = 0
            with self._cond:
                self._latest = frame
                self._latest_seq += 1
                self._cond.notify_all()

    def _fail(self, error: HardwareError) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()
