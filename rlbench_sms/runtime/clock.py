"""A fixed-rate loop on absolute deadlines, with a record of how late each tick ran.

Deadlines are ``start + k / fps`` (never ``now + period``), so a slow tick does not shift every
later one; a tick that starts more than ``late_threshold_s`` after its deadline is *late*. When
the loop falls a whole period behind, the schedule is re-anchored to now instead of bursting
through the missed ticks, and those ticks are counted as late; nothing is dropped.

The loop's time comes from a :class:`Clock`: the wall clock (:class:`WallClock`) for hardware,
the simulated time of the MuJoCo twin for sim devices (whose ``sleep_until`` advances the physics
instead of sleeping). A device that owns a clock exposes it as its ``clock`` attribute;
:func:`clock_of` picks the one a loop runs on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Protocol

import numpy as np


class Clock(Protocol):
    """Where a loop reads the time and waits for a deadline (seconds, one axis per clock).

    ``time_base`` names the axis (``"monotonic"``, ``"sim"``): a reading stamped on another axis
    than the loop's cannot be aged against the tick (see ``Device.time_base``)."""

    time_base: str

    def now(self) -> float:
        """Seconds: monotonic for hardware, simulated time for the twin."""
        ...

    def sleep_until(self, t: float) -> None:
        """Return once :meth:`now` >= ``t`` (at once when it already is)."""
        ...


class WallClock:
    """The host's monotonic clock; waiting really sleeps."""

    time_base = "monotonic"

    def now(self) -> float:
        return time.monotonic()

    def sleep_until(self, t: float) -> None:
        remaining = t - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)


def clock_of(devices: Iterable[object]) -> Clock:
    """The clock a loop over ``devices`` runs on: the first device's non-None ``clock`` attribute
    (a simulated world's time), else the wall clock. ``None`` entries (an absent force sensor)
    are skipped."""
    for device in devices:
        clock = getattr(device, "clock", None)
        if clock is not None:
            return clock
    return WallClock()


@dataclass
class LoopStats:
    """Timing of one run of the loop (one episode)."""

    ticks: int
    duration_s: float
    achieved_fps: float
    period_mean_s: float
    period_p99_s: float
    period_max_s: float
    late_ticks: int
    max_lateness_s: float

    def as_dict(self, prefix: str = "timing/") -> dict[str, float]:
        return {prefix + k: float(v) for k, v in self.__dict__.items()}

    def line(self) -> str:
        return (f"{self.achieved_fps:5.1f} Hz, p99 period {self.period_p99_s * 1000:5.1f} ms, "
                f"{self.late_ticks} late")


class LoopTimer:
    """Call :meth:`start`, then :meth:`tick` at the top of every iteration (it waits for the
    iteration's deadline and returns whether the iteration is late). Every time it reads or
    waits for is on ``clock`` (default: the wall clock)."""

    def __init__(self, fps: float, late_threshold_s: float, clock: Clock | None = None):
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.clock: Clock = clock if clock is not None else WallClock()
        self.period = 1.0 / fps
        self.late_threshold_s = late_threshold_s
        self._anchor = 0.0
        self._k = 0
        self._starts: list[float] = []
        self._lateness: list[float] = []

    def start(self) -> float:
        self._anchor = self.clock.now()
        self._k = 0
        self._starts.clear()
        self._lateness.clear()
        return self._anchor

    def tick(self) -> bool:
        """Sleep until this iteration's deadline; return True when it starts late."""
        deadline = self._anchor + self._k * self.period
        now = self.clock.now()
        if now < deadline:
            self.clock.sleep_until(deadline)
            now = self.clock.now()
        lateness = now - deadline
        if lateness > self.period:           # a whole period behind: re-anchor, don't burst
            self._anchor = now - self._k * self.period
        self._k += 1
        self._starts.append(now)
        self._lateness.append(max(0.0, lateness))
        return lateness > self.late_threshold_s

    @property
    def elapsed_s(self) -> float:
        return self.clock.now() - self._anchor if self._starts else 0.0

    def stats(self) -> LoopStats:
        starts = np.asarray(self._starts)
        periods = np.diff(starts) if len(starts) > 1 else np.array([self.period])
        duration = float(starts[-1] - starts[0]) if len(starts) > 1 else 0.0
        lateness = np.asarray(self._lateness) if self._lateness else np.zeros(1)
        return LoopStats(
            ticks=len(starts),
            duration_s=duration,
            achieved_fps=(len(starts) - 1) / duration if duration > 0 else 0.0,
            period_mean_s=float(periods.mean()),
            period_p99_s=float(np.percentile(periods, 99)),
            period_max_s=float(periods.max()),
            late_ticks=int((lateness > self.late_threshold_s).sum()),
            max_lateness_s=float(lateness.max()),
        )
