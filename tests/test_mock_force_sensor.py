"""The mock force sensor must not fail where the real one would not: its samples come from its
clock, so a starved thread or a busy machine cannot leave a read without one (it once raised
"no samples" mid-episode on a 2-core machine), and, like the serial sensor, a read never waits."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rlbench_sms.hardware.contracts import DeviceNotConnectedError
from rlbench_sms.hardware.mock import MockForceSensor, MockForceSensorConfig


class FakeClock:
    """Monotonic seconds that move only when told (or when slept on)."""

    def __init__(self, start: float = 100.0):
        self.now = start
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


def sensor(clock: FakeClock, **cfg) -> MockForceSensor:
    return MockForceSensor(MockForceSensorConfig(**cfg), clock=clock, sleep=clock.sleep)


def test_a_read_with_no_new_sample_repeats_the_newest_instead_of_failing():
    clock = FakeClock()
    force = sensor(clock, rate_hz=200)
    with pytest.raises(DeviceNotConnectedError):
        force.read()
    with force:
        first = force.read()
        assert first.raw.shape == (1, 6) and first.timestamp == clock.now
        # No time passed: the producer "did not run" (a starved thread, a busy machine) ...
        for _ in range(3):
            again = force.read()
            # ... and the read still gives the newest value, with no raw samples.
            np.testing.assert_array_equal(again.value, first.value)
            assert again.timestamp == first.timestamp and again.raw.shape == (0, 6)


def test_samples_after_a_delay_keep_the_sensor_rate_and_clock():
    clock = FakeClock()
    force = sensor(clock, rate_hz=200)
    with force:
        start = force.read().timestamp
        clock.now += 1.0                       # the loop was held up for a second
        reading = force.read()
    assert reading.raw.shape == (200, 6)
    np.testing.assert_allclose(np.diff(reading.raw_timestamps), 1 / 200, atol=1e-9)
    assert reading.raw_timestamps[0] > start and reading.timestamp == pytest.approx(start + 1.0)
    np.testing.assert_array_equal(reading.value, reading.raw[-1])    # untared: offset 0


def test_tare_averages_the_next_samples_and_waits_for_them():
    clock = FakeClock()
    force = sensor(clock, rate_hz=100, tare_samples=20, noise_n=0.0)
    with force:
        offset = force.tare()
        # 20 fresh samples at 100 Hz: the last is due 0.2 s after the one taken at connect.
        assert clock.slept == pytest.approx(0.2)
        reading = force.read()              # every sample since connect, the tare's included
    assert reading.raw.shape == (21, 6)
    np.testing.assert_allclose(offset, reading.raw[1:].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(reading.value, reading.raw[-1] - offset, rtol=1e-6)


def test_the_raw_buffer_is_bounded_like_the_serial_sensor():
    clock = FakeClock()
    force = sensor(clock, rate_hz=1000, max_buffered_samples=500)
    with force:
        force.read()
        clock.now += 60.0                      # an unread minute: 60 000 samples due
        reading = force.read()
    assert reading.raw.shape == (500, 6) and force.dropped == 60_000 - 500
    assert reading.timestamp == pytest.approx(clock.now)


def test_reads_never_block_on_the_real_clock():
    # A 2 Hz sensor read back to back by a faster loop: each read returns at once (a sensor
    # thread that fell behind used to be waited on for 1.5 periods, then failed).
    with MockForceSensor(MockForceSensorConfig(rate_hz=2)) as force:
        force.read()
        for _ in range(3):
            t0 = time.monotonic()
            reading = force.read()
            assert time.monotonic() - t0 < 0.25
            assert reading.value.shape == (6,)
