"""A Feetech servo bus behind a pseudo-terminal: the real SDK code path runs unmodified.

``FeetechBusSimulator(motors={1: "sts3215", ...})`` opens a pty, serves the *master* side from a
background thread and exposes the *slave* tty path as ``.port``; open that port with
:class:`~rlbench_sms.hardware.feetech.FeetechBus` (or the raw ``scservo_sdk``) exactly as a
``/dev/ttyACM0``. The simulator parses instruction packets (``ff ff id len instr params chk``),
answers PING, READ, WRITE and SYNC_READ with status packets, applies SYNC_WRITE, and keeps a
register file per motor:

* ``Present_Position`` = (physical angle - ``Homing_Offset``) mod 4096, as on an STS3215;
* with torque on, the present position moves toward ``Goal_Position`` (clipped to the position
  limits) at ``speed_ticks_per_s``; with torque off the joint stays put unless moved "by hand"
  with :meth:`set_present_position`.

Fault injection (all settable while running): ``drop_rate`` / ``corrupt_rate`` (fraction of
status packets dropped / sent with a wrong checksum, seeded), :meth:`drop_next` /
:meth:`corrupt_next` (the next n status packets), ``silent_after`` (drop every reply once that
many instruction packets were received) and :meth:`go_silent` / :meth:`resume`. A silent bus still
*applies* what it receives (it models lost status packets, e.g. a broken return line), so a torque
off sent by SYNC_WRITE still lands.
"""

from __future__ import annotations

import collections
import os
import random
import select
import threading
import time
import tty
from typing import Mapping

from rlbench_sms.hardware.feetech import (BROADCAST_ID, CONTROL_TABLE, MODELS, SIGN_BITS,
                                          decode_sign_magnitude, encode_sign_magnitude)

INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83

_ADDR = {name: addr for name, (addr, _) in CONTROL_TABLE.items()}
_SIZE = {name: size for name, (_, size) in CONTROL_TABLE.items()}


def checksum(body: bytes | bytearray) -> int:
    """Feetech checksum of everything after the ``ff ff`` header (id, len, instr/err, params)."""
    return ~sum(body) & 0xFF


def status_packet(motor_id: int, params: bytes = b"", error: int = 0) -> bytes:
    body = bytes([motor_id, len(params) + 2, error]) + bytes(params)
    return b"\xff\xff" + body + bytes([checksum(body)])


class SimulatedMotor:
    """One servo's register file and physical angle (encoder ticks, 0..resolution)."""

    def __init__(self, motor_id: int, model: str, position: float = 2047.0):
        number, resolution = MODELS[model]
        self.id = motor_id
        self.model = model
        self.resolution = resolution
        self.regs = bytearray(256)
        self.error = 0
        self._set("Model_Number", number)
        self._set("Firmware_Major_Version", 3)
        self._set("Firmware_Minor_Version", 10)
        self._set("ID", motor_id)
        self._set("Return_Delay_Time", 250)
        self._set("Response_Status_Level", 1)
        self._set("Min_Position_Limit", 0)
        self._set("Max_Position_Limit", resolution - 1)
        self._set("Max_Torque_Limit", 1000)
        self._set("P_Coefficient", 32)
        self._set("Lock", 1)
        self.actual = float(position)          # physical angle, ticks
        self._set("Goal_Position", int(round(position)))
        self._refresh()

    # raw register access (little-endian, sign-magnitude handled by get/set)
    def _set(self, name: str, value: int) -> None:
        if name in SIGN_BITS:
            value = encode_sign_magnitude(value, SIGN_BITS[name])
        self.regs[_ADDR[name]:_ADDR[name] + _SIZE[name]] = int(value).to_bytes(_SIZE[name], "little")

    def get(self, name: str) -> int:
        raw = int.from_bytes(self.regs[_ADDR[name]:_ADDR[name] + _SIZE[name]], "little")
        return decode_sign_magnitude(raw, SIGN_BITS[name]) if name in SIGN_BITS else raw

    @property
    def present(self) -> float:
        return (self.actual - self.get("Homing_Offset")) % self.resolution

    def set_present(self, ticks: float) -> None:
        self.actual = (float(ticks) + self.get("Homing_Offset")) % self.resolution
        self._refresh()

    def advance(self, dt: float, speed: float) -> None:
        """Move toward the goal for ``dt`` seconds (position mode, torque on)."""
        if self.get("Torque_Enable") != 1 or dt <= 0:
            return
        low, high = self.get("Min_Position_Limit"), self.get("Max_Position_Limit")
        target = min(max(self.get("Goal_Position"), low), high)
        current = self.present
        step = max(-speed * dt, min(speed * dt, target - current))
        self.actual = (current + step + self.get("Homing_Offset")) % self.resolution

    def _refresh(self) -> None:
        self._set("Present_Position", int(round(self.present)) % self.resolution)

    def read(self, address: int, length: int) -> bytes:
        self._refresh()
        return bytes(self.regs[address:address + length])

    def write(self, address: int, data: bytes) -> None:
        ro = range(_ADDR["Present_Position"], _ADDR["Present_Current"] + 2)
        for offset, byte in enumerate(data):
            a = address + offset
            if a < 256 and a not in ro and a not in (0, 1, 3, 4):   # read-only registers
                self.regs[a] = byte
        self._refresh()


class FeetechBusSimulator:
    """Simulated servos on a pty; see the module docstring. Use as a context manager or call
    :meth:`close`."""

    def __init__(self, motors: Mapping[int, str] | None = None, *, speed_ticks_per_s: float = 3000.0,
                 initial_positions: Mapping[int, float] | None = None, drop_rate: float = 0.0,
                 corrupt_rate: float = 0.0, silent_after: int | None = None, seed: int = 0,
                 history: int = 256):
        motors = dict(motors) if motors is not None else {i: "sts3215" for i in range(1, 7)}
        initial_positions = dict(initial_positions or {})
        self.motors = {int(i): SimulatedMotor(int(i), model, initial_positions.get(i, 2047.0))
                       for i, model in motors.items()}
        self.speed_ticks_per_s = float(speed_ticks_per_s)
        self.drop_rate = float(drop_rate)
        self.corrupt_rate = float(corrupt_rate)
        self.silent_after = silent_after
        self.silent = False
        self._rng = random.Random(seed)
        self._drop_next = 0
        self._corrupt_next = 0
        # Counters and the last received instruction packets, for tests.
        self.packets_received = 0
        self.bad_packets = 0
        self.replies_sent = 0
        self.replies_dropped = 0
        self.replies_corrupted = 0
        self.instruction_counts: collections.Counter = collections.Counter()
        self.received: collections.deque[bytes] = collections.deque(maxlen=history)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._last_advance = time.monotonic()

        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"feetech-sim {self.port}",
                                        daemon=True)
        self._thread.start()

    # -- test-facing API -------------------------------------------------------------------------

    def __enter__(self) -> "FeetechBusSimulator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def register(self, motor_id: int, name: str) -> int:
        """A register's value (sign-magnitude decoded), after advancing the motion."""
        with self._lock:
            self._advance()
            self.motors[motor_id]._refresh()
            return self.motors[motor_id].get(name)

    def set_register(self, motor_id: int, name: str, value: int) -> None:
        with self._lock:
            self.motors[motor_id]._set(name, value)
            self.motors[motor_id]._refresh()

    def present_position(self, motor_id: int) -> int:
        return self.register(motor_id, "Present_Position")

    def set_present_position(self, motor_id: int, ticks: float) -> None:
        """Move a joint "by hand" (in the present-position frame, i.e. after the homing offset)."""
        with self._lock:
            self._advance()
            self.motors[motor_id].set_present(ticks)

    def set_actual_position(self, motor_id: int, ticks: float) -> None:
        """Move a joint "by hand" to a physical encoder angle (before the homing offset)."""
        with self._lock:
            self._advance()
            m = self.motors[motor_id]
            m.actual = float(ticks) % m.resolution
            m._refresh()

    def set_error(self, motor_id: int, error_bits: int) -> None:
        """Alarm bits (overload 32, overheat 4, ...) reported in this motor's status packets."""
        with self._lock:
            self.motors[motor_id].error = int(error_bits)

    def drop_next(self, n: int = 1) -> None:
        with self._lock:
            self._drop_next += int(n)

    def corrupt_next(self, n: int = 1) -> None:
        with self._lock:
            self._corrupt_next += int(n)

    def go_silent(self) -> None:
        with self._lock:
            self.silent = True

    def resume(self) -> None:
        with self._lock:
            self.silent = False
            self.silent_after = None

    def wait_for_packets(self, count: int, timeout: float = 2.0, instruction: int | None = None) -> bool:
        """Block until ``count`` instruction packets (of ``instruction`` if given) were received."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                seen = (self.packets_received if instruction is None
                        else self.instruction_counts[instruction])
                if seen >= count:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)

    # -- serving ---------------------------------------------------------------------------------

    def _advance(self) -> None:
        now = time.monotonic()
        dt, self._last_advance = now - self._last_advance, now
        for motor in self.motors.values():
            motor.advance(dt, self.speed_ticks_per_s)

    def _serve(self) -> None:
        buffer = bytearray()
        while not self._closed:
            try:
                ready, _, _ = select.select([self._master, self._wake_r], [], [], 0.5)
            except (OSError, ValueError):
                return
            if self._wake_r in ready or self._closed:
                return
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 4096)
            except OSError:          # EIO while no slave is open: wait for the next opener
                time.sleep(0.01)
                continue
            buffer += chunk
            replies = []
            with self._lock:
                while True:
                    packet = self._take_packet(buffer)
                    if packet is None:
                        break
                    replies.extend(self._handle(packet))
                self._changed.notify_all()
            out = b"".join(replies)
            while out and not self._closed:
                try:
                    written = os.write(self._master, out)
                except OSError:
                    break
                out = out[written:]

    def _take_packet(self, buffer: bytearray) -> bytes | None:
        """Pop the next complete, checksum-valid instruction packet from ``buffer``."""
        while True:
            start = buffer.find(b"\xff\xff")
            if start < 0:
                del buffer[:max(0, len(buffer) - 1)]     # keep a trailing 0xff
                return None
            del buffer[:start]
            if len(buffer) < 4:
                return None
            if buffer[2] == 0xFF:                       # "ff ff ff": resynchronise by one byte
                del buffer[0]
                continue
            total = buffer[3] + 4
            if buffer[3] < 2:
                del buffer[:2]
                self.bad_packets += 1
                continue
            if len(buffer) < total:
                return None
            packet = bytes(buffer[:total])
            if checksum(packet[2:-1]) != packet[-1]:    # a real servo ignores a corrupt packet
                del buffer[:2]
                self.bad_packets += 1
                continue
            del buffer[:total]
            return packet

    def _reply(self, motor: SimulatedMotor, params: bytes = b"") -> list[bytes]:
        """The status packet for ``motor``, unless a fault drops or corrupts it."""
        silent = self.silent or (self.silent_after is not None
                                 and self.packets_received > self.silent_after)
        if silent or self._drop_next > 0 or (self.drop_rate and self._rng.random() < self.drop_rate):
            if not silent and self._drop_next > 0:
                self._drop_next -= 1
            self.replies_dropped += 1
            return []
        packet = status_packet(motor.id, params, motor.error)
        if self._corrupt_next > 0 or (self.corrupt_rate and self._rng.random() < self.corrupt_rate):
            if self._corrupt_next > 0:
                self._corrupt_next -= 1
            packet = packet[:-1] + bytes([packet[-1] ^ 0xFF])
            self.replies_corrupted += 1
        self.replies_sent += 1
        return [packet]

    def _handle(self, packet: bytes) -> list[bytes]:
        motor_id, instruction, params = packet[2], packet[4], packet[5:-1]
        self.packets_received += 1
        self.instruction_counts[instruction] += 1
        self.received.append(packet)
        self._advance()
        motor = self.motors.get(motor_id)
        if instruction == INST_PING:
            return self._reply(motor) if motor else []
        if instruction == INST_READ and len(params) == 2:
            return self._reply(motor, motor.read(params[0], params[1])) if motor else []
        if instruction == INST_WRITE and len(params) >= 1:
            targets = self.motors.values() if motor_id == BROADCAST_ID else [motor] if motor else []
            for m in targets:
                m.write(params[0], params[1:])
            return self._reply(motor) if motor else []
        if instruction == INST_SYNC_READ and motor_id == BROADCAST_ID and len(params) >= 2:
            address, length = params[0], params[1]
            replies = []
            for requested in params[2:]:                 # each servo answers in request order
                m = self.motors.get(requested)
                if m is not None:
                    replies.extend(self._reply(m, m.read(address, length)))
            return replies
        if instruction == INST_SYNC_WRITE and motor_id == BROADCAST_ID and len(params) >= 2:
            address, length = params[0], params[1]
            body = params[2:]
            for k in range(0, len(body) - length, length + 1):
                m = self.motors.get(body[k])
                if m is not None:
                    m.write(address, body[k + 1:k + 1 + length])
            return []
        return []
