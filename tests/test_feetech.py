"""The Feetech bus against the pty servo-bus simulator: the real scservo_sdk code path."""

from __future__ import annotations

import errno
import logging
import time

import pytest
import serial

from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.hardware.feetech import (BusCommunicationError, FeetechBus, Motor,
                                          decode_register, decode_sign_magnitude, encode_register,
                                          encode_sign_magnitude)
from rlbench_sms.hardware.sim.feetech_bus import INST_SYNC_READ, FeetechBusSimulator, status_packet
from rlbench_sms.hardware.so100 import so100_motors

# The simulator answers from a thread: on a loaded 2-core CI machine it can miss the SDK's 34 ms
# real-hardware reply window, so the tests give the bus a longer latency timer.
SIM_LATENCY_MS = 100.0

SYNC_READ_POSITIONS = bytes.fromhex("ff ff fe 0a 82 38 02 01 02 03 04 05 06 26")


@pytest.fixture
def sim():
    with FeetechBusSimulator() as simulator:
        yield simulator


@pytest.fixture
def bus(sim):
    bus = FeetechBus(sim.port, so100_motors(), retries=3, latency_timer_ms=SIM_LATENCY_MS)
    bus.connect()
    yield bus
    bus.disconnect()


def test_sign_magnitude_and_register_bytes():
    assert encode_sign_magnitude(-300, 11) == 300 | 1 << 11
    assert decode_sign_magnitude(300 | 1 << 11, 11) == -300
    assert encode_register("Homing_Offset", -300) == [0x2C, 0x09]       # little-endian
    assert decode_register("Homing_Offset", [0x2C, 0x09]) == -300
    assert encode_register("Goal_Position", 1000) == [0xE8, 0x03]
    with pytest.raises(ValueError):
        encode_sign_magnitude(2048, 11)
    # The simulator's status packets carry a valid checksum (~(id+len+err+params) & 0xff).
    assert status_packet(1, bytes([0xE8, 0x03])) == bytes.fromhex("ff ff 01 04 00 e8 03 0f")


def test_sync_read_values_and_exact_packet(sim, bus):
    for motor_id in range(1, 7):
        sim.set_present_position(motor_id, 1000 + 10 * motor_id)
    values = bus.sync_read("Present_Position")
    assert values == {name: 1000 + 10 * m.id for name, m in so100_motors().items()}
    assert sim.received[-1] == SYNC_READ_POSITIONS
    assert bus.last_read_timestamp <= time.monotonic()


def test_sync_write_reaches_registers(sim, bus):
    bus.sync_write("Goal_Position", {name: 1000 + m.id for name, m in so100_motors().items()})
    assert sim.wait_for_packets(sim.packets_received)     # processed before we look
    time.sleep(0.02)
    assert [sim.register(i, "Goal_Position") for i in range(1, 7)] == [1001, 1002, 1003, 1004, 1005, 1006]
    packet = sim.received[-1]
    assert packet[:7] == bytes.fromhex("ff ff fe 16 83 2a 02")
    assert packet[7:10] == bytes.fromhex("01 e9 03")


def test_read_write_single_register_sign_magnitude(sim, bus):
    bus.write("Homing_Offset", "elbow_flex", -300)
    assert sim.motors[3].regs[31:33] == bytes([0x2C, 0x09])
    assert bus.read("Homing_Offset", "elbow_flex") == -300
    assert sim.register(3, "Homing_Offset") == -300


def test_torque_enable_disable(sim, bus):
    bus.enable_torque()
    assert all(sim.register(i, "Torque_Enable") == 1 and sim.register(i, "Lock") == 1 for i in range(1, 7))
    bus.disable_torque(["gripper"])
    assert sim.register(6, "Torque_Enable") == 0 and sim.register(6, "Lock") == 0
    assert sim.register(5, "Torque_Enable") == 1


def test_ping_and_scan(sim, bus):
    assert bus.ping("gripper") == 777
    assert bus.ping(9, retries=0) is None
    assert bus.scan(range(0, 9)) == {i: 777 for i in range(1, 7)}


def test_handshake_names_missing_motor():
    with FeetechBusSimulator({i: "sts3215" for i in range(1, 6)}) as sim:
        bus = FeetechBus(sim.port, so100_motors(), retries=0, latency_timer_ms=SIM_LATENCY_MS)
        with pytest.raises(HardwareError, match=r"no answer from gripper \(id 6\)"):
            bus.connect()
        assert not bus.is_connected


def test_handshake_wrong_model():
    with FeetechBusSimulator({1: "sts3250"}) as sim:
        bus = FeetechBus(sim.port, {"a": Motor(1, "sts3215")}, latency_timer_ms=SIM_LATENCY_MS)
        with pytest.raises(HardwareError, match="a \\(id 1\\) is sts3250, expected sts3215"):
            bus.connect()


def test_retries_recover_dropped_and_corrupted(sim, bus):
    # Each injected fault costs at least one retry and the read still succeeds. Counts are lower
    # bounds: on a loaded machine the simulator can also miss a reply window on its own.
    for motor_id in range(1, 7):
        sim.set_present_position(motor_id, 2100 + motor_id)
    expected = {name: 2100 + m.id for name, m in so100_motors().items()}
    reads_before = sim.instruction_counts[INST_SYNC_READ]
    retries = bus.retry_count
    sim.drop_next(1)                    # first status packet of the next sync read lost
    assert bus.sync_read("Present_Position") == expected
    assert bus.retry_count >= retries + 1
    retries = bus.retry_count
    sim.corrupt_next(1)                 # a reply with a wrong checksum
    assert bus.sync_read("Present_Position") == expected
    assert bus.retry_count >= retries + 1
    retries = bus.retry_count
    sim.drop_next(7)                    # all 6 replies, then the first of the next attempt
    assert bus.sync_read("Present_Position") == expected
    assert bus.retry_count >= retries + 2
    assert sim.instruction_counts[INST_SYNC_READ] - reads_before >= 3 + 4
    retries = bus.retry_count
    sim.corrupt_next(1)                 # single-register reads retry too
    assert bus.read("Present_Position", "wrist_flex") == 2104
    assert bus.retry_count >= retries + 1


def test_random_faults_are_absorbed_by_retries(sim, bus):
    sim.set_present_position(4, 1234)
    sim.drop_rate, sim.corrupt_rate = 0.02, 0.02          # seeded: deterministic
    for _ in range(30):
        assert bus.sync_read("Present_Position")["wrist_flex"] == 1234
    assert sim.replies_dropped + sim.replies_corrupted > 0
    assert bus.retry_count > 0


def test_silent_bus_raises_after_retries_in_bounded_time(sim, bus):
    sim.go_silent()
    retries = bus.retry_count
    start = time.monotonic()
    with pytest.raises(BusCommunicationError) as info:
        bus.sync_read("Present_Position")
    elapsed = time.monotonic() - start
    assert elapsed < 4 * (2 * SIM_LATENCY_MS + 10) / 1000 + 1.0    # 4 attempts x one timeout
    error = info.value
    assert error.attempts == 4 and bus.retry_count - retries == 3
    assert error.motor_ids == [1, 2, 3, 4, 5, 6]
    message = str(error)
    assert sim.port in message and "[1, 2, 3, 4, 5, 6]" in message
    assert "There is no status packet" in message and "\n" not in message
    assert isinstance(error, HardwareError)
    with pytest.raises(BusCommunicationError, match="after 1 attempt"):
        bus.read("Present_Position", "gripper", retries=0)
    sim.resume()                                            # the bus comes back
    assert len(bus.sync_read("Present_Position")) == 6


def test_vanished_port_is_a_communication_error(sim, bus):
    sim.close()                                             # like pulling the USB cable
    with pytest.raises(BusCommunicationError, match="serial port failed"):
        bus.sync_read("Present_Position")
    bus.emergency_torque_off()                              # logs, never raises
    bus.disconnect()


def test_silent_after_n_packets(sim, bus):
    sim.silent_after = sim.packets_received + 2
    bus.sync_read("Present_Position")
    bus.sync_read("Present_Position")
    with pytest.raises(BusCommunicationError, match="first motor without a valid reply: id 1"):
        bus.sync_read("Present_Position", retries=1)


def test_motor_alarm_bits_are_logged_once(sim, bus, caplog):
    sim.set_error(6, 32)
    with caplog.at_level(logging.WARNING, logger="rlbench_sms.hardware.feetech"):
        bus.read("Present_Position", "gripper")
        bus.read("Present_Position", "gripper")
    assert [r.getMessage() for r in caplog.records].count(
        f"Feetech bus {sim.port}: motor id 6 reports a overload error") == 1


def test_unsupported_baudrate_and_arguments():
    with pytest.raises(ValueError, match="not supported"):
        FeetechBus("/dev/null", so100_motors(), baudrate=3_000_000)
    with pytest.raises(ValueError, match="duplicate"):
        FeetechBus("/dev/null", {"a": Motor(1), "b": Motor(1)})
    with pytest.raises(ValueError):
        Motor(1, "xl330")


class _FakePort:
    def __init__(self, device, description):
        self.device, self.description, self.hwid = device, description, "USB VID:PID=1a86:55d3"


def test_missing_port_lists_existing_ports(monkeypatch):
    from serial.tools import list_ports

    monkeypatch.setattr(list_ports, "comports",
                        lambda: [_FakePort("/dev/ttyACM0", "USB Single Serial"), _FakePort("/dev/ttyS0", "n/a")])
    bus = FeetechBus("/dev/ttyACM7-does-not-exist", so100_motors())
    with pytest.raises(HardwareError) as info:
        bus.connect()
    message = str(info.value)
    assert "/dev/ttyACM7-does-not-exist" in message and "does not exist" in message
    assert "/dev/ttyACM0 (USB Single Serial)" in message and "/dev/ttyS0" in message
    assert "find_ports" in message and "\n" not in message
    monkeypatch.setattr(list_ports, "comports", lambda: [])
    with pytest.raises(HardwareError, match="no serial ports found"):
        bus.connect()


def test_permission_denied_says_how_to_fix(monkeypatch, tmp_path):
    port = tmp_path / "ttyACM0"
    port.write_text("")
    port.chmod(0)
    from serial import serialposix

    real_open = serialposix.os.open

    def deny(path, *args, **kwargs):             # what a chmod 000 device gives a non-root user
        if str(path) == str(port):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(serialposix.os, "open", deny)
    with pytest.raises(HardwareError) as info:
        FeetechBus(str(port), so100_motors()).connect()
    message = str(info.value)
    assert "permission denied" in message
    assert "sudo usermod -aG dialout $USER" in message and f"sudo chmod 666 {port}" in message
    assert "\n" not in message


def test_serial_exception_with_eacces_errno(monkeypatch):
    def raise_eacces(*args, **kwargs):
        raise serial.SerialException(errno.EACCES, "could not open port /dev/ttyACM0: [Errno 13] Permission denied")

    monkeypatch.setattr(serial, "Serial", raise_eacces)
    with pytest.raises(HardwareError, match="dialout"):
        FeetechBus("/dev/ttyACM0", so100_motors()).connect()
