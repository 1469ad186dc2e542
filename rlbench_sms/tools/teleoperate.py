"""Leader arm drives the follower at a fixed rate, nothing recorded (check a setup before recording).

    python -m rlbench_sms.tools.teleoperate robot=so100 robot.config.port=/dev/ttyACM0 \
        teleop=so100_leader teleop.config.port=/dev/ttyACM1 [duration_s=30] [display=true]
    python -m rlbench_sms.tools.teleoperate robot=sim teleop=so100_leader teleop.config.port=/dev/ttyACM1

The loop runs on the devices' clock: the twin's simulated time with ``robot=sim`` (paced to the
wall clock by ``sim.realtime``, true in conf/teleoperate.yaml). On a simulated clock the loop's own
rate is exact by construction, so the status also gives the rate on the wall clock, the one a
person moving the leader feels.
"""

from __future__ import annotations

import sys
import time

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlbench_sms.cli import EXIT_FAILED, run_checked
from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.runtime.clock import Clock, LoopTimer, clock_of
from rlbench_sms.runtime.recorder import StatusLine


class WallRate:
    """Ticks per second on the host's monotonic clock, whatever clock the loop runs on."""

    def __init__(self) -> None:
        self.ticks = 0
        self._first = self._last = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        if self.ticks == 0:
            self._first = now
        self._last = now
        self.ticks += 1

    @property
    def hz(self) -> float:
        span = self._last - self._first
        return (self.ticks - 1) / span if self.ticks > 1 and span > 0 else 0.0


def rate_line(timer: LoopTimer, wall: WallRate) -> str:
    """The loop's timing; on a simulated clock also the wall-clock rate (is the twin keeping up?)."""
    line = timer.stats().line()
    base = getattr(timer.clock, "time_base", "monotonic")
    return line if base == "monotonic" else f"{line} ({base} time; {wall.hz:.1f} Hz on the wall clock)"


def teleoperate(robot, teleop, fps: float, duration_s: float | None, display=None,
                status: StatusLine | None = None, clock: Clock | None = None) -> int:
    """Run the leader->follower loop; returns the number of ticks. Ctrl-C ends it. The loop
    runs on ``clock``, by default the devices' own (a sim world's time), else the wall clock.
    ``display`` (if given) gets each tick's sent action and the follower's joints."""
    clock = clock if clock is not None else clock_of([robot, teleop])
    timer = LoopTimer(fps, late_threshold_s=0.25 / fps, clock=clock)
    wall = WallRate()
    status = status or StatusLine(0.5)
    timer.start()
    ticks = 0
    try:
        while duration_s is None or ticks < round(duration_s * fps):
            timer.tick()
            wall.tick()
            action = teleop.get_action().positions
            sent = robot.send_action(action)
            if display is not None:
                display({"action": sent, "observation.state": robot.read_joints().positions})
            ticks += 1
            if ticks > 1 and status.due():        # one tick has no rate yet
                status.update(f"teleoperating  {rate_line(timer, wall)}  Ctrl-C to stop")
    except KeyboardInterrupt:
        pass
    status.done(f"teleoperated {ticks} ticks, {rate_line(timer, wall)}")
    return ticks


def run(cfg: DictConfig) -> int:
    """Teleoperate from a composed ``conf/teleoperate.yaml``; 1 on a hardware error (one line)."""
    robot, teleop = instantiate(cfg.robot), instantiate(cfg.teleop)
    display = None
    if cfg.display:
        from rlbench_sms.runtime.display import open_display

        display = open_display("teleoperate")     # a viewer, else one line and no display
    try:
        with robot, teleop:
            teleoperate(robot, teleop, cfg.fps, cfg.duration_s, display)
    except HardwareError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if display is not None:
            display.close()          # waits at most its close timeout for the viewer
    return 0


@hydra.main(config_path="../../conf", config_name="teleoperate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    code = run_checked(lambda: run(cfg), cfg, "teleoperation failed")
    if code:
        sys.exit(code)


if __name__ == "__main__":
    from rlbench_sms.cli import exit_on_bad_overrides

    exit_on_bad_overrides("teleoperate")     # an unknown option or key: one line, not Hydra's dump
    main()
