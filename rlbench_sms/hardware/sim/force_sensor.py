"""A force/torque sensor on a pseudo-terminal, speaking the same wire protocols as the real one
(:mod:`rlbench_sms.hardware.force_sensor`: ASCII lines or checksummed binary frames).

``port`` is the pty's slave path: give it to ``SerialForceSensorConfig(port=...)``. The signal
is in physical units (N, N·m) and written in raw units (``value / scale``), so a test checks the
driver's scaling as well as its parsing. Controls: :meth:`set_value` (constant offset),
:meth:`step` (add a step now), :meth:`set_noise`; faults: :meth:`inject_garbage` (junk lines or
stray bytes), :meth:`corrupt_next` (bad checksums / wrong field counts), :meth:`pause` (stop
sending, e.g. a cable pulled out).
"""

from __future__ import annotations

import os
import pty
import select
import threading
import time
import tty

import numpy as np

from rlbench_sms.hardware.force_sensor import PROTOCOLS, encode_binary_frame

# Junk the line protocol must survive: a boot banner, too few fields, a non-number, non-ASCII.
GARBAGE_LINES = (b"FT sensor v1.2 ready\r\n", b"1.0,2.0,3.0\r\n", b"1,2,x,4,5,6\r\n",
                 b"\xff\xfe\xfd\r\n")
# Stray bytes between binary frames (no 0xAA in them, so no false sync starts).
GARBAGE_BYTES = b"\x00\x13\x37\x55\x42"


class ForceSensorSimulator:
    def __init__(self, protocol: str = "line", channels: int = 6, rate_hz: float = 500.0,
                 scale: float | list[float] = 1.0, separator: str = ",", decimals: int = 4,
                 noise_std: float = 0.0, seed: int = 0):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        self.protocol = protocol
        self.channels = channels
        self.rate_hz = rate_hz
        self.scale = np.broadcast_to(np.asarray(scale, np.float64), (channels,)).copy()
        self.separator = separator
        self.decimals = decimals
        self._rng = np.random.default_rng(seed)
        self._noise_std = noise_std
        self._value = np.zeros(channels, np.float64)       # N / N·m
        self._lock = threading.Lock()
        self._garbage = 0
        self._corrupt = 0
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sequence = 0
        self.samples_sent = 0       # valid samples written
        self.garbage_sent = 0       # junk lines / byte runs generated
        self.corrupt_sent = 0       # corrupted samples written
        self.writes_dropped = 0     # samples dropped because nobody drained the pty
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)     # no echo, no CR/LF translation: bytes pass untouched
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)

    # -- signal --------------------------------------------------------------------------------
    @property
    def value(self) -> np.ndarray:
        """The current noiseless signal (N / N·m)."""
        with self._lock:
            return self._value.copy()

    def set_value(self, value) -> None:
        with self._lock:
            self._value = np.broadcast_to(np.asarray(value, np.float64), (self.channels,)).copy()

    def step(self, delta) -> None:
        with self._lock:
            self._value = self._value + np.asarray(delta, np.float64)

    def set_noise(self, std: float) -> None:
        with self._lock:
            self._noise_std = std

    # -- faults --------------------------------------------------------------------------------
    def inject_garbage(self, n: int = 1) -> None:
        """Write ``n`` junk lines (line) or stray byte runs (binary) between the next samples."""
        with self._lock:
            self._garbage += n

    def corrupt_next(self, n: int = 1) -> None:
        """Corrupt the next ``n`` samples: a wrong checksum (binary) or a missing field (line)."""
        with self._lock:
            self._corrupt += n

    def pause(self) -> None:
        """Stop sending (the port stays open, like a sensor that lost power)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "ForceSensorSimulator":
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="force sensor sim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "ForceSensorSimulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            if not self._paused.is_set():
                message, corrupt = self._next_message()
                if self._write(message):
                    if corrupt:
                        self.corrupt_sent += 1
                    else:
                        self.samples_sent += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:             # fell behind (a busy CI core): re-anchor, no burst
                next_t = time.monotonic()
            self._stop.wait(max(0.0, delay))

    def _next_message(self) -> tuple[bytes, bool]:
        with self._lock:
            value = self._value.copy()
            if self._noise_std:
                value += self._rng.normal(0.0, self._noise_std, self.channels)
            garbage = self._garbage > 0
            self._garbage -= int(garbage)
            corrupt = self._corrupt > 0
            self._corrupt -= int(corrupt)
        raw = value / self.scale
        prefix = b""
        if garbage:
            self.garbage_sent += 1
            prefix = (GARBAGE_LINES[self.garbage_sent % len(GARBAGE_LINES)]
                      if self.protocol == "line" else GARBAGE_BYTES)
        if self.protocol == "line":
            fields = [f"{x:.{self.decimals}f}" for x in raw]
            if corrupt:
                fields = fields[:-1]
            body = (self.separator.join(fields) + "\r\n").encode("ascii")
        else:
            body = bytearray(encode_binary_frame(np.rint(raw).astype(np.int64), self.sequence))
            if corrupt:
                body[-1] ^= 0x5A            # wrong checksum, frame otherwise intact
            body = bytes(body)
            self.sequence = (self.sequence + 1) & 0xFFFF
        return prefix + body, corrupt

    def _write(self, data: bytes) -> bool:
        """Write a whole message; False when it was dropped."""
        view = memoryview(data)
        deadline = time.monotonic() + 0.5
        first = True
        while view:
            try:
                n = os.write(self._master, view)
            except BlockingIOError:
                n = 0
            except OSError:              # closed while stopping
                return False
            if n == 0 and first:
                # Nobody drains the pty (no reader attached): drop the sample like a real sensor
                # streaming into the void, rather than block.
                self.writes_dropped += 1
                return False
            first = False
            view = view[n:]
            if view:
                # A partial write: finish it, or the stream would carry half a sample.
                if time.monotonic() > deadline:
                    return False
                select.select([], [self._master], [], 0.05)
        return True
