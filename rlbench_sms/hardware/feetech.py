"""A Feetech servo bus (STS3215 on SO-100/SO-101) on top of ``scservo_sdk`` (feetech-servo-sdk).

What this layer adds to the SDK:

* names: motors are addressed by name (``"elbow_flex"``), registers by their control-table name
  (``"Present_Position"``), values are plain ints with Feetech's sign-magnitude encoding undone;
* retries: every transaction that expects status packets (read, write, ping, sync read) is
  repeated up to ``retries`` times, because these half-duplex buses drop or corrupt status packets
  in practice (several joints moving at once is enough). After the last attempt a
  :class:`BusCommunicationError` names the port, the motor ids and the SDK's result text;
* errors a user can act on: a port without permission or a port that does not exist become one
  line saying what to do.

Values here are *raw* (ticks, register units). Conversion to degrees / 0-100 lives in
:mod:`rlbench_sms.hardware.calibration`.

Protocol facts used (Feetech STS/SMS, protocol 0, little-endian): packets are
``ff ff <id> <len> <instr> <params...> <checksum>`` with ``len = n_params + 2`` and
``checksum = ~(id + len + instr + sum(params)) & 0xff``; status packets carry an error byte in
place of the instruction. Broadcast id 0xfe; SYNC_WRITE gets no reply.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from rlbench_sms.hardware.contracts import HardwareError

log = logging.getLogger(__name__)

try:                                   # what a vanished serial device raises, besides OSError
    import termios

    _PORT_ERRORS: tuple[type[BaseException], ...] = (OSError, termios.error)
except ImportError:                    # pragma: no cover - Windows
    _PORT_ERRORS = (OSError,)

# ---------------------------------------------------------------------------------------------
# Models and control table (STS/SMS series, which the STS3215 belongs to)
# ---------------------------------------------------------------------------------------------

# model name -> (model number reported at address 3, encoder ticks per turn)
MODELS: dict[str, tuple[int, int]] = {
    "sts3215": (777, 4096),
    "sts3250": (2825, 4096),
    "sm8512bl": (11272, 4096),
}
MODEL_BY_NUMBER = {number: name for name, (number, _) in MODELS.items()}

# register name -> (address, size in bytes). Addresses below 40 are EEPROM (need Lock = 0 to
# persist), 40 and above are RAM.
CONTROL_TABLE: dict[str, tuple[int, int]] = {
    "Firmware_Major_Version": (0, 1),
    "Firmware_Minor_Version": (1, 1),
    "Model_Number": (3, 2),
    "ID": (5, 1),
    "Baud_Rate": (6, 1),
    "Return_Delay_Time": (7, 1),        # units of 2 us; factory 250 (= 500 us)
    "Response_Status_Level": (8, 1),
    "Min_Position_Limit": (9, 2),
    "Max_Position_Limit": (11, 2),
    "Max_Temperature_Limit": (13, 1),
    "Max_Voltage_Limit": (14, 1),
    "Min_Voltage_Limit": (15, 1),
    "Max_Torque_Limit": (16, 2),
    "Phase": (18, 1),
    "P_Coefficient": (21, 1),
    "D_Coefficient": (22, 1),
    "I_Coefficient": (23, 1),
    "Protection_Current": (28, 2),
    "Homing_Offset": (31, 2),
    "Operating_Mode": (33, 1),          # 0 = position servo
    "Protective_Torque": (34, 1),
    "Protection_Time": (35, 1),
    "Overload_Torque": (36, 1),
    "Torque_Enable": (40, 1),
    "Acceleration": (41, 1),
    "Goal_Position": (42, 2),
    "Goal_Time": (44, 2),
    "Goal_Velocity": (46, 2),
    "Torque_Limit": (48, 2),
    "Lock": (55, 1),                    # 1 = EEPROM writes do not persist
    "Present_Position": (56, 2),
    "Present_Velocity": (58, 2),
    "Present_Load": (60, 2),
    "Present_Voltage": (62, 1),
    "Present_Temperature": (63, 1),
    "Status": (65, 1),
    "Moving": (66, 1),
    "Present_Current": (69, 2),
    "Maximum_Acceleration": (85, 1),
}

# Feetech stores these signed values as sign-magnitude: bit N is the sign, the bits below the
# magnitude (not two's complement).
SIGN_BITS: dict[str, int] = {
    "Homing_Offset": 11,
    "Goal_Position": 15,
    "Present_Position": 15,
    "Goal_Velocity": 15,
    "Present_Velocity": 15,
}

PROTOCOL_END = 0              # STS/SMS: little-endian (scservo_sdk's "protocol_end")
BROADCAST_ID = 0xFE
MAX_ID = 0xFC                 # 252
DEFAULT_BAUDRATE = 1_000_000
# The SDK's PortHandler refuses any other rate (its fixed cflag table).
SUPPORTED_BAUDRATES = (4800, 9600, 14400, 19200, 38400, 57600, 115200, 128000, 250000, 500000,
                       1_000_000)

# scservo_sdk result codes (scservo_def), repeated so that importing this module does not need
# the SDK installed (feature schemas must be available without the robot extras).
COMM_SUCCESS = 0
COMM_TX_FAIL = -2
COMM_RX_TIMEOUT = -6
COMM_RX_CORRUPT = -7

ERROR_BITS = {1: "input voltage", 2: "angle sensor", 4: "overheat", 8: "overcurrent",
              32: "overload"}


def encode_sign_magnitude(value: int, sign_bit: int) -> int:
    magnitude = abs(int(value))
    if magnitude >= (1 << sign_bit):
        raise ValueError(f"{value} does not fit a sign-magnitude value with the sign at bit {sign_bit}")
    return magnitude | (1 << sign_bit) if value < 0 else magnitude


def decode_sign_magnitude(raw: int, sign_bit: int) -> int:
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if raw & (1 << sign_bit) else magnitude


def encode_register(register: str, value: int) -> list[int]:
    """``value`` as the little-endian bytes of ``register`` (sign-magnitude where Feetech uses it)."""
    _, size = CONTROL_TABLE[register]
    value = int(value)
    if register in SIGN_BITS:
        value = encode_sign_magnitude(value, SIGN_BITS[register])
    if not 0 <= value < (1 << (8 * size)):
        raise ValueError(f"{register}: {value} does not fit {size} byte(s)")
    return list(value.to_bytes(size, "little"))


def decode_register(register: str, data: Sequence[int]) -> int:
    _, size = CONTROL_TABLE[register]
    raw = int.from_bytes(bytes(data[:size]), "little")
    if register in SIGN_BITS:
        return decode_sign_magnitude(raw, SIGN_BITS[register])
    return raw


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

class BusCommunicationError(HardwareError):
    """Status packets did not come back (or came back corrupted) after every retry."""

    def __init__(self, port: str, operation: str, motor_ids: Sequence[int], result_text: str,
                 attempts: int, detail: str = ""):
        self.port = port
        self.operation = operation
        self.motor_ids = list(motor_ids)
        self.result_text = result_text
        self.attempts = attempts
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"Feetech bus {port}",
            f"lost communication with motor id(s) {self.motor_ids} during {operation} after "
            f"{attempts} attempt(s){extra}: {result_text} - check the servo power supply and the "
            f"cables between the controller board and the motors")


def _port_listing() -> str:
    """The serial ports that exist, for messages about a port that does not."""
    try:
        from serial.tools import list_ports

        ports = sorted(list_ports.comports(), key=lambda p: p.device)
    except Exception:  # pragma: no cover - listing is best effort in an error path
        ports = []
    if not ports:
        return ("no serial ports found: is the arm's USB cable plugged in and its controller "
                "board powered?")
    listed = ", ".join(f"{p.device} ({p.description})" if p.description and p.description != "n/a"
                       else p.device for p in ports)
    return (f"serial ports present: {listed} (`python -m rlbench_sms.tools.find_ports` tells which "
            f"one is the arm)")


def open_error(port: str, error: BaseException) -> HardwareError:
    """A one-line, actionable :class:`HardwareError` for a port that failed to open."""
    code = getattr(error, "errno", None)
    device = f"Feetech bus {port}"
    if isinstance(error, PermissionError) or code in (errno.EACCES, errno.EPERM):
        return HardwareError(
            device, f"permission denied opening the port: add yourself to the dialout group "
                    f"(`sudo usermod -aG dialout $USER`, then log out and back in), or for a quick "
                    f"test `sudo chmod 666 {port}`")
    if isinstance(error, FileNotFoundError) or code == errno.ENOENT:
        return HardwareError(device, f"port does not exist; {_port_listing()}")
    if code == errno.EBUSY:
        return HardwareError(device, "port is busy: another program (another recording, a "
                                     "LeRobot script, a serial monitor) has it open; close it")
    text = " ".join(str(error).split())
    return HardwareError(device, f"could not open the port: {text}")


# ---------------------------------------------------------------------------------------------
# The bus
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Motor:
    id: int
    model: str = "sts3215"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown Feetech model {self.model!r}; known: {sorted(MODELS)}")
        if not 0 <= self.id <= MAX_ID:
            raise ValueError(f"motor id {self.id} outside 0..{MAX_ID}")

    @property
    def resolution(self) -> int:
        return MODELS[self.model][1]


# The SDK waits ``2 x LATENCY_TIMER + 2 ms`` (+ bytes on the wire) for a reply: 16 ms matches a
# USB-serial adapter's default latency timer. A loaded machine or a slow adapter may need more.
DEFAULT_LATENCY_TIMER_MS = 16.0


def _port_handler_class(scs):
    """scservo_sdk's PortHandler with the latency timer as a parameter (the SDK hard-codes it)."""

    class PortHandler(scs.PortHandler):
        def __init__(self, port: str, latency_timer_ms: float):
            super().__init__(port)
            self.latency_timer_ms = latency_timer_ms

        def setPacketTimeout(self, packet_length):  # noqa: N802 - the SDK's name
            self.packet_start_time = self.getCurrentTime()
            self.packet_timeout = (self.tx_time_per_byte * packet_length
                                   + 2.0 * self.latency_timer_ms + 2.0)

    return PortHandler


class FeetechBus:
    """Named motors on one Feetech serial bus.

    ``retries`` is the number of *extra* attempts after a failed transaction (so ``retries=3``
    means up to 4 attempts). ``retry_count`` counts the extra attempts made since connecting;
    ``last_read_timestamp`` is the ``time.monotonic()`` midpoint of the last successful read,
    the best estimate of when the motors sampled their registers.
    """

    def __init__(self, port: str, motors: Mapping[str, Motor], *, baudrate: int = DEFAULT_BAUDRATE,
                 retries: int = 3, latency_timer_ms: float = DEFAULT_LATENCY_TIMER_MS):
        if not port:
            raise ValueError("a serial port is required, e.g. /dev/ttyACM0")
        if baudrate not in SUPPORTED_BAUDRATES:
            raise ValueError(f"baudrate {baudrate} is not supported by scservo_sdk; use one of "
                             f"{list(SUPPORTED_BAUDRATES)}")
        if int(retries) < 0:
            raise ValueError("retries must be >= 0")
        ids = [m.id for m in motors.values()]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate motor ids in {dict(motors)}")
        self.port = str(port)
        self.motors: dict[str, Motor] = dict(motors)
        self.baudrate = int(baudrate)
        self.retries = int(retries)
        self.latency_timer_ms = float(latency_timer_ms)
        self.retry_count = 0
        self.last_read_timestamp = 0.0
        self._port_handler = None
        self._packet_handler = None
        self._sync_readers: dict[tuple, object] = {}
        # One transaction at a time: the SDK's port is not thread safe, and its ``is_using`` flag
        # is forced clear before each attempt (an exception mid-transaction would leave it set).
        self._lock = threading.RLock()
        self._warned_errors: set[tuple[int, int]] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        return f"Feetech bus {self.port}"

    @property
    def is_connected(self) -> bool:
        return self._port_handler is not None

    def connect(self, handshake: bool = True) -> None:
        """Open the port; with ``handshake``, check every motor answers with its expected model."""
        if self.is_connected:
            raise HardwareError(self.device, "already connected")
        try:
            import scservo_sdk as scs
        except ImportError as error:
            raise HardwareError(self.device, "feetech-servo-sdk is not installed: "
                                             "pip install 'rlbench_sms[robot]'") from error

        handler = _port_handler_class(scs)(self.port, self.latency_timer_ms)
        handler.baudrate = self.baudrate
        try:
            opened = handler.openPort()        # opens pyserial at handler.baudrate
        except Exception as error:             # serial.SerialException is an OSError
            raise open_error(self.port, error) from error
        if not opened:
            raise HardwareError(self.device, f"could not open the port at {self.baudrate} baud")
        self._port_handler = handler
        # Sets scservo_sdk's module-global byte order to little-endian (STS/SMS).
        self._packet_handler = scs.PacketHandler(PROTOCOL_END)
        self._sync_readers.clear()
        self.retry_count = 0
        if handshake:
            try:
                self.handshake()
            except BaseException:
                self.disconnect()
                raise

    def disconnect(self) -> None:
        handler, self._port_handler = self._port_handler, None
        self._sync_readers.clear()
        if handler is not None:
            try:
                handler.closePort()
            except Exception as error:  # closing a vanished USB device fails; nothing to do
                log.debug("%s: close failed: %s", self.device, error)

    def __enter__(self) -> "FeetechBus":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    def handshake(self) -> None:
        """Every configured motor answers a ping with the model number of its configured model."""
        missing, wrong = [], []
        for name, motor in self.motors.items():
            number = self.ping(motor.id)
            if number is None:
                missing.append(f"{name} (id {motor.id})")
            elif number != MODELS[motor.model][0]:
                found = MODEL_BY_NUMBER.get(number, f"model number {number}")
                wrong.append(f"{name} (id {motor.id}) is {found}, expected {motor.model}")
        if missing:
            raise HardwareError(
                self.device, f"no answer from {', '.join(missing)}: check the servo power supply, "
                             f"the daisy-chain cables, and that the motor ids were set up")
        if wrong:
            raise HardwareError(self.device, "unexpected motor model: " + "; ".join(wrong))

    # -- transactions ----------------------------------------------------------------------------

    def _require_connected(self) -> None:
        if self._port_handler is None:
            raise HardwareError(self.device, "not connected (call connect() first)")

    def _ids(self, motors: Iterable[str] | None) -> tuple[list[str], list[int]]:
        names = list(self.motors) if motors is None else list(motors)
        unknown = [n for n in names if n not in self.motors]
        if unknown:
            raise KeyError(f"unknown motor(s) {unknown}; this bus has {list(self.motors)}")
        return names, [self.motors[n].id for n in names]

    def _result_text(self, result: int) -> str:
        text = self._packet_handler.getTxRxResult(result) if self._packet_handler else ""
        return text or f"result code {result}"

    def _prepare_attempt(self) -> None:
        handler = self._port_handler
        handler.is_using = False
        # The SDK's clearPort() only flushes output; drop stale input (the tail of a corrupted or
        # late status packet) so that it cannot be parsed as the reply to this attempt.
        handler.ser.reset_input_buffer()

    def _check_error_byte(self, motor_id: int, error: int) -> None:
        """Motor alarm bits (overload, overheat, ...) are logged once per motor and bit."""
        for bit, what in ERROR_BITS.items():
            if error & bit and (motor_id, bit) not in self._warned_errors:
                self._warned_errors.add((motor_id, bit))
                log.warning("%s: motor id %d reports a %s error", self.device, motor_id, what)

    def _run(self, operation: str, ids: Sequence[int], attempt: Callable[[], tuple[int, object]],
             retries: int | None, detail: Callable[[], str] | None = None):
        """Call ``attempt`` until it returns COMM_SUCCESS, at most ``1 + retries`` times."""
        self._require_connected()
        attempts = 1 + (self.retries if retries is None else int(retries))
        result = COMM_TX_FAIL
        with self._lock:
            for n in range(attempts):
                if n:
                    self.retry_count += 1
                try:
                    self._prepare_attempt()
                    result, payload = attempt()
                except (IndexError, ValueError) as error:
                    # The SDK indexes into a reply cut short by its timeout (e.g. ping's model
                    # read): a garbled attempt like any other, so retry it.
                    log.debug("%s: %s: short reply (%s)", self.device, operation, error)
                    result = COMM_RX_CORRUPT
                    continue
                except _PORT_ERRORS as error:   # serial.SerialException too: the port is gone
                    text = " ".join(str(error).split())
                    raise BusCommunicationError(
                        self.port, operation, ids, f"the serial port failed ({text}); was the USB "
                        f"cable unplugged?", n + 1) from error
                if result == COMM_SUCCESS:
                    return payload
                log.debug("%s: %s failed (attempt %d/%d): %s", self.device, operation, n + 1,
                          attempts, self._result_text(result))
            extra = detail() if detail else ""
        raise BusCommunicationError(self.port, operation, ids, self._result_text(result), attempts,
                                    extra)

    def ping(self, motor: str | int, retries: int | None = None) -> int | None:
        """The motor's model number, or ``None`` if it does not answer."""
        motor_id = self.motors[motor].id if isinstance(motor, str) else int(motor)

        def attempt():
            number, result, error = self._packet_handler.ping(self._port_handler, motor_id)
            return result, number

        try:
            return self._run(f"ping of id {motor_id}", [motor_id], attempt, retries)
        except BusCommunicationError:
            return None

    def scan(self, ids: Iterable[int] = range(MAX_ID + 1), retries: int = 0) -> dict[int, int]:
        """``{id: model number}`` of every motor that answers a ping (each silent id costs ~35 ms)."""
        found = {}
        for motor_id in ids:
            number = self.ping(int(motor_id), retries=retries)
            if number is not None:
                found[int(motor_id)] = number
        return found

    def read(self, register: str, motor: str, retries: int | None = None) -> int:
        """One register of one motor (a READ with a status packet)."""
        address, size = CONTROL_TABLE[register]
        motor_id = self.motors[motor].id

        def attempt():
            t0 = time.monotonic()
            data, result, error = self._packet_handler.readTxRx(self._port_handler, motor_id,
                                                                address, size)
            if result == COMM_SUCCESS:
                if len(data) < size:
                    return COMM_RX_CORRUPT, None
                self._check_error_byte(motor_id, error)
                self.last_read_timestamp = (t0 + time.monotonic()) / 2
            return result, data

        data = self._run(f"read of {register}", [motor_id], attempt, retries)
        return decode_register(register, data)

    def write(self, register: str, motor: str, value: int, retries: int | None = None) -> None:
        """One register of one motor, acknowledged by a status packet."""
        address, size = CONTROL_TABLE[register]
        motor_id = self.motors[motor].id
        data = encode_register(register, value)

        def attempt():
            result, error = self._packet_handler.writeTxRx(self._port_handler, motor_id, address,
                                                           size, data)
            if result == COMM_SUCCESS:
                self._check_error_byte(motor_id, error)
            return result, None

        self._run(f"write of {register}={value}", [motor_id], attempt, retries)

    def _sync_reader(self, address: int, size: int, ids: Sequence[int]):
        key = (address, size, tuple(ids))
        reader = self._sync_readers.get(key)
        if reader is None:
            import scservo_sdk as scs

            reader = scs.GroupSyncRead(self._port_handler, self._packet_handler, address, size)
            for motor_id in ids:
                reader.addParam(motor_id)
            self._sync_readers[key] = reader
        return reader

    def sync_read(self, register: str, motors: Iterable[str] | None = None,
                  retries: int | None = None) -> dict[str, int]:
        """``register`` of several motors in one SYNC_READ (one status packet per motor)."""
        names, ids = self._ids(motors)
        address, size = CONTROL_TABLE[register]
        reader = self._sync_reader(address, size, ids)

        def attempt():
            for motor_id in ids:                      # forget the previous attempt's data
                reader.data_dict[motor_id] = []
            t0 = time.monotonic()
            result = reader.txRxPacket()
            if result != COMM_SUCCESS:
                return result, None
            if any(len(reader.data_dict[i]) < size for i in ids):
                return COMM_RX_CORRUPT, None
            self.last_read_timestamp = (t0 + time.monotonic()) / 2
            return result, {n: decode_register(register, reader.data_dict[i])
                            for n, i in zip(names, ids)}

        def detail():
            silent = [i for i in ids if len(reader.data_dict.get(i) or []) < size]
            return f"first motor without a valid reply: id {silent[0]}" if silent else ""

        return self._run(f"sync read of {register}", ids, attempt, retries, detail)

    def sync_write(self, register: str, values: Mapping[str, int], retries: int | None = None) -> None:
        """``register`` of several motors in one SYNC_WRITE. Motors send no status packet, so a
        lost packet is not detected here (only a failed transmission is retried)."""
        import scservo_sdk as scs

        names, ids = self._ids(values)
        address, size = CONTROL_TABLE[register]
        payload = {i: encode_register(register, values[n]) for n, i in zip(names, ids)}

        def attempt():
            group = scs.GroupSyncWrite(self._port_handler, self._packet_handler, address, size)
            for motor_id, data in payload.items():
                group.addParam(motor_id, data)
            return group.txPacket(), None

        self._run(f"sync write of {register}", ids, attempt, retries)

    # -- torque ----------------------------------------------------------------------------------

    def enable_torque(self, motors: Iterable[str] | None = None, retries: int | None = None) -> None:
        """Torque on, then Lock = 1 (EEPROM writes stop persisting)."""
        names, _ = self._ids(motors)
        for name in names:
            self.write("Torque_Enable", name, 1, retries)
            self.write("Lock", name, 1, retries)

    def disable_torque(self, motors: Iterable[str] | None = None, retries: int | None = None) -> None:
        """Torque off, then Lock = 0 (so calibration and configuration can be written)."""
        names, _ = self._ids(motors)
        for name in names:
            self.write("Torque_Enable", name, 0, retries)
            self.write("Lock", name, 0, retries)

    def emergency_torque_off(self) -> None:
        """Best effort, fast: Torque_Enable = 0 to every motor by SYNC_WRITE, sent twice, no
        status packets awaited (so it also works on a bus whose replies are lost). Never raises."""
        if not self.is_connected:
            return
        values = {name: 0 for name in self.motors}
        for _ in range(2):
            try:
                self.sync_write("Torque_Enable", values, retries=0)
            except Exception as error:
                log.error("%s: could not send torque off: %s", self.device, error)
