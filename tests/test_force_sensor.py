"""The serial force/torque sensor against its pseudo-terminal twin, in both wire protocols:
scaling, tare, the raw stream between reads, malformed input, and a sensor that goes quiet."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from rlbench_sms.features import FORCE, FORCE_TORQUE_NAMES
from rlbench_sms.hardware.contracts import DeviceNotConnectedError, HardwareError
from rlbench_sms.hardware.force_sensor import (BinaryParser, LineParser, SerialForceSensor,
                                               SerialForceSensorConfig, encode_binary_frame)
from rlbench_sms.hardware.sim.force_sensor import ForceSensorSimulator

RATE_HZ = 500.0
PROTOCOLS = ["line", "binary"]
# Physical value (N, N·m) and the sensor's counts-to-units factors: forces in 0.01 N, torques in
# 0.001 N·m, so the driver's per-channel scaling is what turns counts back into this.
VALUE = np.array([1.5, -2.25, 9.81, 0.125, -0.05, 0.3])
SCALE = [0.01, 0.01, 0.01, 0.001, 0.001, 0.001]


def make_sim(protocol: str) -> ForceSensorSimulator:
    """A simulator sending VALUE from its very first sample (set before it starts writing)."""
    sim = ForceSensorSimulator(protocol, rate_hz=RATE_HZ, scale=SCALE)
    sim.set_value(VALUE)
    return sim


@pytest.fixture(params=PROTOCOLS)
def sim(request):
    with make_sim(request.param) as s:
        yield s


def sensor_for(sim: ForceSensorSimulator, **cfg) -> SerialForceSensor:
    config = SerialForceSensorConfig(port=sim.port, protocol=sim.protocol, scale=SCALE,
                                     rate_hz=RATE_HZ, tare_samples=cfg.pop("tare_samples", 50),
                                     read_timeout_s=cfg.pop("read_timeout_s", 1.0),   # generous: CI boxes are loaded
                                     startup_timeout_s=cfg.pop("startup_timeout_s", 2.0), **cfg)
    return SerialForceSensor(config)


def test_feature_and_config_without_hardware():
    sensor = SerialForceSensor(SerialForceSensorConfig(port="/dev/ttyUSB9"))
    feature = sensor.feature()
    assert feature.key == FORCE and feature.names == list(FORCE_TORQUE_NAMES)
    assert feature.shape == (6,) and feature.dtype == "float32"
    three = SerialForceSensorConfig(port="x", channels=3)
    assert three.channel_names() == ["f0", "f1", "f2"]
    np.testing.assert_array_equal(three.scale_vector(), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="names"):
        SerialForceSensorConfig(port="x", channels=3, names=["a", "b"])
    with pytest.raises(ValueError, match="scale"):
        SerialForceSensorConfig(port="x", scale=[1.0, 2.0]).scale_vector()
    with pytest.raises(ValueError, match="protocol"):
        SerialForceSensorConfig(port="x", protocol="modbus")
    with pytest.raises(DeviceNotConnectedError):
        sensor.read()


def test_missing_port_is_a_clear_error(tmp_path):
    sensor = SerialForceSensor(SerialForceSensorConfig(port=str(tmp_path / "ttyNOPE")))
    with pytest.raises(HardwareError, match="cannot open"):
        sensor.connect()
    assert not sensor.is_connected


def test_values_are_scaled_to_newtons(sim):
    with sensor_for(sim) as sensor:
        time.sleep(0.02)
        reading = sensor.read()
    assert reading.value.dtype == np.float32 and reading.value.shape == (6,)
    np.testing.assert_allclose(reading.value, VALUE, atol=1e-4)
    assert reading.raw.dtype == np.float32 and reading.raw.shape[1] == 6
    np.testing.assert_allclose(reading.raw, np.broadcast_to(VALUE, reading.raw.shape), atol=1e-4)
    assert reading.timestamp == reading.raw_timestamps[-1] <= time.monotonic()


def test_tare_zeroes_the_mean_and_steps_show_through(sim):
    sim.set_noise(0.05)
    with sensor_for(sim) as sensor:
        offset = sensor.tare()
        assert offset.dtype == np.float32
        np.testing.assert_allclose(offset, VALUE, atol=0.05)       # mean of 50 noisy samples
        sensor.read()
        time.sleep(0.1)
        tared = sensor.read().raw - offset                          # ~50 fresh samples
        assert len(tared) >= 10
        assert np.all(np.abs(tared.mean(axis=0)) < 0.05)
        sim.set_noise(0.0)
        sim.step([5.0, 0, 0, 0, 0, -0.2])
        time.sleep(0.03)
        value = sensor.read().value
    np.testing.assert_allclose(value, [5.0, 0, 0, 0, 0, -0.2] + VALUE - offset, atol=1e-4)


def test_raw_stream_is_every_sample_since_the_previous_read(sim):
    with sensor_for(sim) as sensor:
        blocks = [sensor.read()]
        for _ in range(3):
            time.sleep(0.05)
            blocks.append(sensor.read())
        sim.pause()
        time.sleep(0.03)
        blocks.append(sensor.read())
        total = sensor.stats["samples"]
    stamps = np.concatenate([b.raw_timestamps for b in blocks])
    assert sum(len(b.raw) for b in blocks) == total == len(stamps)   # nothing lost or repeated
    assert np.all(np.diff(stamps) >= 0)
    assert all(len(b.raw) >= 5 for b in blocks[1:4])                 # ~25 at 500 Hz in 50 ms
    # Back-dated at the sensor rate: median spacing close to 2 ms.
    assert 0.001 < float(np.median(np.diff(stamps))) < 0.004


def test_slow_sensor_repeats_its_value_with_an_empty_raw_block(sim):
    with sensor_for(sim) as sensor:
        time.sleep(0.01)
        sensor.read()
        sim.pause()
        time.sleep(0.02)
        sensor.read()                     # anything in flight
        again = sensor.read()             # no new sample yet, but not stale either
    assert again.raw.shape == (0, 6) and again.raw_timestamps.shape == (0,)
    np.testing.assert_allclose(again.value, VALUE, atol=1e-4)


def test_malformed_line_input_is_counted_and_skipped():
    with make_sim("line") as sim:
        with sensor_for(sim) as sensor:
            before = sensor.stats["malformed"]
            sim.inject_garbage(4)         # banner, 3 fields, a non-number, non-ASCII bytes
            sim.corrupt_next(2)           # a field missing
            time.sleep(0.06)
            reading = sensor.read()
            stats = sensor.stats
    assert stats["malformed"] - before == 6
    np.testing.assert_allclose(reading.raw, np.broadcast_to(VALUE, reading.raw.shape), atol=1e-4)


def test_bad_checksums_are_counted_and_resynchronised():
    with make_sim("binary") as sim:
        with sensor_for(sim) as sensor:
            sim.inject_garbage(3)         # stray bytes between frames
            sim.corrupt_next(2)           # wrong checksums
            time.sleep(0.06)
            reading = sensor.read()
            stats = sensor.stats
    assert stats["bad_checksum"] == 2 and stats["missed"] == 2 and stats["bad_length"] == 0
    assert stats["skipped_bytes"] >= 3 * 5
    np.testing.assert_allclose(reading.raw, np.broadcast_to(VALUE, reading.raw.shape), atol=1e-4)


def test_a_sensor_that_stops_sending_raises_then_recovers(sim):
    with sensor_for(sim, read_timeout_s=0.1) as sensor:
        sensor.read()
        sim.pause()
        time.sleep(0.15)
        with pytest.raises(HardwareError) as err:
            sensor.read()
        message = str(err.value)
        assert sim.port in message and "no sample for more than 100 ms" in message
        assert "last sample" in message and "s ago" in message
        with pytest.raises(HardwareError, match="tare got 0 of 50"):
            sensor.tare()
        sim.resume()
        time.sleep(0.03)
        np.testing.assert_allclose(sensor.read().value, VALUE, atol=1e-4)


def test_wrong_protocol_fails_at_connect():
    with ForceSensorSimulator("line", rate_hz=RATE_HZ) as sim:
        sensor = SerialForceSensor(SerialForceSensorConfig(port=sim.port, protocol="binary",
                                                           startup_timeout_s=0.2))
        with pytest.raises(HardwareError, match="no valid sample within 0.2 s .* protocol='binary'"):
            sensor.connect()
        assert not sensor.is_connected


# -- the parsers, byte by byte -------------------------------------------------------------------
def test_line_parser_handles_split_lines_crlf_and_blank_lines():
    parser = LineParser(3, ",")
    stream = b"artial\r\n1,2,3\r\n\r\n4.5, -6 ,7e-1\n" + b"8,9"
    got = [s for i in range(len(stream)) for s in parser.feed(stream[i:i + 1])]
    assert [list(s) for s in got] == [[1, 2, 3], [4.5, -6, 0.7]]
    assert parser.malformed == 0
    got = parser.feed(b",10\nnan,1,2\n1,2\n" + b"x" * 2000)
    assert [list(s) for s in got] == [[8, 9, 10]]
    assert parser.malformed == 3                  # nan, 2 fields, a 2000-byte run without newline
    ws = LineParser(2, " ")
    assert [list(s) for s in ws.feed(b"\n1  2\n\t3 4 \n")] == [[1, 2], [3, 4]]


def test_binary_frames_round_trip_across_splits_and_sequence_wrap():
    counts = [[-2_000_000_000, 0, 170, 85, -1, 2_000_000_000], [1, 2, 3, 4, 5, 6]]
    stream = (encode_binary_frame(counts[0], 65535) + b"\x00\x01"
              + encode_binary_frame(counts[1], 0))
    frame = encode_binary_frame(counts[1], 7)
    assert frame[:2] == b"\xaa\x55" and frame[2] == 26 and len(frame) == 30
    assert struct.unpack_from("<H", frame, 27)[0] == 7
    assert frame[-1] == (sum(frame[2:-1]) & 0xFF)
    parser = BinaryParser(6)
    got = [s for i in range(len(stream)) for s in parser.feed(stream[i:i + 1])]
    assert [list(s) for s in got] == counts
    assert parser.missed == 0 and parser.skipped_bytes == 2 and parser.bad_checksum == 0


def test_binary_parser_rejects_bad_length_and_checksum_then_finds_the_next_frame():
    good = encode_binary_frame([1, 2, 3, 4, 5, 6], 10)
    bad_sum = bytearray(encode_binary_frame([9, 9, 9, 9, 9, 9], 11))
    bad_sum[-1] ^= 0xFF
    bad_len = b"\xaa\x55\x05" + b"\x00" * 6
    parser = BinaryParser(6)
    got = parser.feed(bytes(bad_sum) + bad_len + good)
    assert [list(s) for s in got] == [[1, 2, 3, 4, 5, 6]]
    assert parser.bad_checksum == 1 and parser.bad_length == 1
    assert parser.last_sequence == 10
