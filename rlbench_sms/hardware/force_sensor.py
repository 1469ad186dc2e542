"""A force/torque sensor on a serial port (USB-serial or RS-232), read on a background thread.

Two wire protocols, chosen by ``protocol``:

**line** -- one sample per line, ASCII numbers in raw sensor units separated by ``separator``::

    12.5,-3.25,981.0,0.012,-0.4,0.0\\r\\n

``\\r\\n`` or ``\\n`` ends a line; blank lines are ignored. A line with the wrong number of
fields, a field that is not a finite number, bytes that are not ASCII, or more than
``MAX_LINE_BYTES`` without a newline is *malformed*: counted in ``stats["malformed"]`` and skipped.
The fragment before the first newline after opening is dropped uncounted (we attach mid-stream).

**binary** -- fixed frames, all integers little-endian::

    offset  size  field
    0       2     sync bytes 0xAA 0x55
    2       1     LEN = 4 * C + 2 (payload bytes; C = channels)
    3       4*C   C x int32 raw counts, channel order = ``names``
    3+4*C   2     uint16 sequence number, +1 per frame, wrapping at 65536
    5+4*C   1     checksum = (LEN + sum of the payload bytes) mod 256

A frame whose LEN is not 4*C+2 counts in ``stats["bad_length"]``, a checksum mismatch in
``stats["bad_checksum"]``; either way the parser resynchronises by searching for the next sync
pair from the byte after the bad frame's first byte. Bytes outside frames count in
``stats["skipped_bytes"]``, sequence gaps (lost or corrupt frames) in ``stats["missed"]``.

Units: raw numbers/counts times ``scale`` (one factor, or one per channel) are newtons for
forces and newton-metres for torques. ``ForceReading.raw`` holds these scaled, *untared* samples;
``ForceReading.value`` is the newest sample minus the tare offset.

Timestamps: a chunk read from the port is stamped with ``time.monotonic()`` on arrival; when a
chunk carries several samples the earlier ones are back-dated by ``1 / rate_hz`` each (never
before the previous sample), so the raw stream keeps its sampling rhythm.

The simulator twin, ``rlbench_sms.hardware.sim.force_sensor.ForceSensorSimulator``, speaks both
protocols on a pseudo-terminal.
"""

from __future__ import annotations

import collections
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlbench_sms.features import FORCE_TORQUE_NAMES, FeatureSpec, force_feature
from rlbench_sms.hardware.contracts import ForceReading, ForceSensor, HardwareError

PROTOCOLS = ("line", "binary")
SYNC = b"\xaa\x55"
MAX_LINE_BYTES = 1024


def binary_frame_length(channels: int) -> int:
    """LEN of a binary frame: the int32 counts and the uint16 sequence number."""
    return 4 * channels + 2


def encode_binary_frame(counts: np.ndarray | list[int], sequence: int) -> bytes:
    """One binary frame (see the module docstring) for ``counts`` (C int32) and ``sequence``."""
    counts = np.asarray(counts, dtype="<i4")
    payload = counts.tobytes() + struct.pack("<H", sequence & 0xFFFF)
    length = len(payload)
    checksum = (length + sum(payload)) & 0xFF
    return SYNC + bytes([length]) + payload + bytes([checksum])


class LineParser:
    """Bytes in, samples out, for the line protocol. Counts malformed lines; never raises."""

    def __init__(self, channels: int, separator: str = ","):
        self.channels = channels
        self.separator = separator if separator.strip() else None   # whitespace: split on runs
        self.malformed = 0
        self._buf = bytearray()
        self._synced = False       # False until the first newline: drop the partial first line

    def feed(self, data: bytes) -> list[np.ndarray]:
        self._buf += data
        samples: list[np.ndarray] = []
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_LINE_BYTES:         # a stream with no newlines
                    self.malformed += 1
                    self._buf.clear()
                    self._synced = False
                break
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            if not self._synced:
                self._synced = True
                continue
            sample = self._parse(line)
            if sample is not None:
                samples.append(sample)
        return samples

    def _parse(self, line: bytes) -> np.ndarray | None:
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            self.malformed += 1
            return None
        if not text:
            return None
        fields = text.split(self.separator)
        if len(fields) != self.channels:
            self.malformed += 1
            return None
        try:
            values = np.array([float(f) for f in fields], dtype=np.float64)
        except ValueError:
            self.malformed += 1
            return None
        if not np.all(np.isfinite(values)):
            self.malformed += 1
            return None
        return values


class BinaryParser:
    """Bytes in, samples out, for the binary framed protocol. Counts and resyncs; never raises."""

    def __init__(self, channels: int):
        self.channels = channels
        self.length = binary_frame_length(channels)
        self.bad_checksum = 0
        self.bad_length = 0
        self.skipped_bytes = 0
        self.missed = 0
        self.last_sequence: int | None = None
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[np.ndarray]:
        self._buf += data
        samples: list[np.ndarray] = []
        frame_bytes = 3 + self.length + 1
        while True:
            start = self._buf.find(SYNC)
            if start < 0:
                # Keep a trailing 0xAA: it may be the first half of a sync split across reads.
                keep = 1 if self._buf.endswith(SYNC[:1]) else 0
                self.skipped_bytes += len(self._buf) - keep
                del self._buf[:len(self._buf) - keep]
                break
            if start:
                self.skipped_bytes += start
                del self._buf[:start]
            if len(self._buf) < 3:
                break
            if self._buf[2] != self.length:
                self.bad_length += 1
                self._resync()
                continue
            if len(self._buf) < frame_bytes:
                break
            body = self._buf[2:3 + self.length]                  # LEN + payload
            if (sum(body) & 0xFF) != self._buf[3 + self.length]:
                self.bad_checksum += 1
                self._resync()
                continue
            counts = np.frombuffer(bytes(self._buf[3:3 + 4 * self.channels]), dtype="<i4")
            sequence = struct.unpack_from("<H", self._buf, 3 + 4 * self.channels)[0]
            if self.last_sequence is not None:
                self.missed += (sequence - self.last_sequence - 1) & 0xFFFF
            self.last_sequence = sequence
            samples.append(counts.astype(np.float64))
            del self._buf[:frame_bytes]
        return samples

    def _resync(self) -> None:
        # Drop the bad frame's first sync byte only: the real next frame may start inside it.
        self.skipped_bytes += 1
        del self._buf[:1]


@dataclass
class SerialForceSensorConfig:
    port: str                          # required: /dev/ttyUSB0, /dev/ttyACM0, COM3, ...
    baudrate: int = 115200
    protocol: str = "line"             # "line" (ASCII) or "binary" (framed, checksummed)
    channels: int = 6
    names: list[str] | None = None     # default fx, fy, fz, tx, ty, tz (f0.. if not 6 channels)
    separator: str = ","               # line protocol field separator (" " = any whitespace)
    # Raw units -> N (forces) / N·m (torques): one number, or a list with one per channel.
    # Typed Any because OmegaConf 2.3 structured configs do not take Union[float, list].
    scale: Any = 1.0
    tare_samples: int = 100            # tare() averages this many fresh samples
    rate_hz: float = 100.0             # the sensor's output rate (back-dating, tare time-out)
    read_timeout_s: float = 0.25       # read() fails when the newest sample is older than this
    startup_timeout_s: float = 3.0     # connect() waits this long for a first valid sample
    poll_s: float = 0.02               # longest single wait of the reader thread on the port
    max_buffered_samples: int = 100_000  # raw samples kept between reads; older are dropped

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.channels <= 0:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.names is not None:
            self.names = [str(n) for n in self.names]
            if len(self.names) != self.channels:
                raise ValueError(f"{len(self.names)} names for {self.channels} channels")
        if self.rate_hz <= 0 or self.tare_samples <= 0:
            raise ValueError("rate_hz and tare_samples must be positive")

    def channel_names(self) -> list[str]:
        if self.names is not None:
            return list(self.names)
        if self.channels == len(FORCE_TORQUE_NAMES):
            return list(FORCE_TORQUE_NAMES)
        return [f"f{i}" for i in range(self.channels)]

    def scale_vector(self) -> np.ndarray:
        """(C,) float64 multipliers from raw units to N / N·m."""
        scale = self.scale
        if not np.isscalar(scale):
            scale = [float(s) for s in scale]           # lists and OmegaConf ListConfigs
        vec = np.asarray(scale, dtype=np.float64)
        if vec.ndim == 0:
            return np.full(self.channels, float(vec))
        if vec.shape != (self.channels,):
            raise ValueError(f"scale has {vec.size} entries for {self.channels} channels")
        return vec


class SerialForceSensor(ForceSensor):
    """Reads a serial force/torque sensor on a thread; ``read()`` never blocks on the port."""

    def __init__(self, config: SerialForceSensorConfig, name: str | None = None):
        self.config = config
        self.name = name or f"SerialForceSensor({config.port})"
        self._names = config.channel_names()
        self._scale = config.scale_vector()
        self._offset = np.zeros(config.channels, np.float64)    # kept in float64: exact zeros
        self._cond = threading.Condition()
        self._pending: collections.deque[tuple[float, np.ndarray]] = collections.deque(
            maxlen=config.max_buffered_samples)
        self._latest: np.ndarray | None = None
        self._latest_t: float | None = None
        self._received = 0
        self._dropped = 0
        self._tare: list[np.ndarray] | None = None
        self._error: HardwareError | None = None
        self._parser: LineParser | BinaryParser | None = None
        self._serial = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False

    # -- contract ------------------------------------------------------------------------------
    def feature(self) -> FeatureSpec:
        return force_feature(self._names)

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def offset(self) -> np.ndarray:
        """The tare offset (N / N·m) subtracted from every value."""
        return self._offset.astype(np.float32)

    @property
    def stats(self) -> dict[str, int]:
        """Counters since connect: samples, and every kind of input that was skipped."""
        p = self._parser
        with self._cond:
            out = {"samples": self._received, "dropped": self._dropped}
        out["malformed"] = getattr(p, "malformed", 0)
        for key in ("bad_checksum", "bad_length", "skipped_bytes", "missed"):
            out[key] = getattr(p, key, 0)
        return out

    def connect(self) -> None:
        if self._connected:
            raise HardwareError(self.name, "already connected")
        c = self.config
        try:
            import serial
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise HardwareError(self.name, "pyserial is not installed: pip install pyserial") from exc
        try:
            self._serial = serial.Serial(c.port, c.baudrate, timeout=c.poll_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareError(self.name, f"cannot open {c.port}: {exc}") from exc
        self._serial.reset_input_buffer()           # stale bytes from before we attached
        self._parser = LineParser(c.channels, c.separator) if c.protocol == "line" \
            else BinaryParser(c.channels)
        with self._cond:
            self._pending.clear()
            self._latest = self._latest_t = self._error = self._tare = None
            self._received = self._dropped = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"read {self.name}", daemon=True)
        self._thread.start()
        self._connected = True
        deadline = time.monotonic() + c.startup_timeout_s
        with self._cond:
            while self._latest is None and self._error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            ok = self._latest is not None
        if not ok:
            problem = self._error or HardwareError(
                self.name, f"opened {c.port} but no valid sample within {c.startup_timeout_s:.1f} s "
                           f"({self._skipped_summary()}); check protocol={c.protocol!r}, "
                           f"baudrate={c.baudrate}, channels={c.channels}, separator={c.separator!r}")
            self.disconnect()
            raise problem

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._serial is not None:
            try:
                self._serial.close()
            finally:
                self._serial = None
        self._connected = False

    def tare(self) -> np.ndarray:
        """Average the next ``tare_samples`` samples into the offset; returns it (N / N·m)."""
        self._require_connected()
        c = self.config
        # Twice the nominal collection time plus the stall tolerance: a slower sensor is fine,
        # a silent one is an error.
        deadline = time.monotonic() + 2.0 * c.tare_samples / c.rate_hz + c.read_timeout_s
        with self._cond:
            self._tare = []
            try:
                while len(self._tare) < c.tare_samples:
                    if self._error is not None:
                        raise self._error
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise HardwareError(self.name, f"tare got {len(self._tare)} of "
                                                       f"{c.tare_samples} samples in time; "
                                                       f"{self._last_sample_text()}")
                    self._cond.wait(left)
                collected = np.stack(self._tare[:c.tare_samples])
            finally:
                self._tare = None
        self._offset = collected.mean(axis=0)
        return self._offset.astype(np.float32)

    def read(self) -> ForceReading:
        """The newest sample minus the tare offset, and every raw sample since the previous read.

        Never waits: a sensor slower than the caller repeats its newest value with an empty raw
        block. Raises :class:`HardwareError` once the newest sample is older than
        ``read_timeout_s`` (a sensor that stopped sending) or the reader thread failed.
        """
        self._require_connected()
        now = time.monotonic()
        with self._cond:
            if self._error is not None:
                raise self._error
            if self._latest is None or now - self._latest_t > self.config.read_timeout_s:
                raise HardwareError(self.name, f"no sample for more than "
                                               f"{self.config.read_timeout_s * 1000:.0f} ms; "
                                               f"{self._last_sample_text()}; check cable and power")
            taken = list(self._pending)
            self._pending.clear()
            latest, latest_t = self._latest, self._latest_t
        c = self.config.channels
        raw = np.stack([s for _, s in taken]).astype(np.float32) if taken \
            else np.zeros((0, c), np.float32)
        stamps = np.array([t for t, _ in taken], dtype=np.float64)
        value = (latest - self._offset).astype(np.float32)
        return ForceReading(value=value, timestamp=latest_t, raw=raw, raw_timestamps=stamps)

    # -- reader thread -------------------------------------------------------------------------
    def _run(self) -> None:
        import serial
        period = 1.0 / self.config.rate_hz
        last_t = -np.inf
        while not self._stop.is_set():
            try:
                data = self._serial.read(max(1, self._serial.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                if self._stop.is_set():           # the port was closed under us on purpose
                    return
                with self._cond:
                    self._error = HardwareError(self.name, f"serial read failed: {exc}; "
                                                           f"{self._last_sample_text()}")
                    self._cond.notify_all()
                return
            if not data:
                continue
            arrival = time.monotonic()
            samples = self._parser.feed(data)
            if not samples:
                continue
            n = len(samples)
            scaled = [s * self._scale for s in samples]
            stamps = [max(last_t, arrival - (n - 1 - k) * period) for k in range(n)]
            last_t = stamps[-1]
            with self._cond:
                room = self._pending.maxlen - len(self._pending)
                self._dropped += max(0, n - room)
                self._pending.extend(zip(stamps, scaled))
                if self._tare is not None:
                    self._tare.extend(scaled)
                self._latest, self._latest_t = scaled[-1], stamps[-1]
                self._received += n
                self._cond.notify_all()

    def _last_sample_text(self) -> str:
        if self._latest_t is None:
            return f"no valid sample since connect ({self._skipped_summary()})"
        age = time.monotonic() - self._latest_t
        return (f"last sample {age:.2f} s ago (monotonic {self._latest_t:.3f}) after "
                f"{self._received} samples")

    def _skipped_summary(self) -> str:
        p = self._parser
        if isinstance(p, LineParser):
            return f"{p.malformed} malformed lines"
        if isinstance(p, BinaryParser):
            return (f"{p.bad_checksum} bad checksums, {p.bad_length} bad lengths, "
                    f"{p.skipped_bytes} stray bytes")
        return "nothing parsed"
