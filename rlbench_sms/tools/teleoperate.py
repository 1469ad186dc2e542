"""Leader arm drives the follower at a fixed rate, nothing recorded (check a setup before recording).

    python -m rlbench_sms.tools.teleoperate robot=so100 robot.config.port=/dev/ttyACM0 \
        teleop=so100_leader teleop.config.port=/dev/ttyACM1 [duration_s=30] [display=true]
"""

from __future__ import annotations

import sys

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlbench_sms.cli import EXIT_FAILED, run_checked
from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.runtime.clock import Clock, LoopTimer, clock_of
from rlbench_sms.runtime.recorder import StatusLine


def teleoperate(robot, teleop, fps: float, duration_s: float | None, display=None,
                status: StatusLine | None = None, clock: Clock | None = None) -> int:
    """Run the leader->follower loop; returns the number of ticks. Ctrl-C ends it. The loop
    runs on ``clock``, by default the devices' own (a sim world's time), else the wall clock."""
    clock = clock if clock is not None else clock_of([robot, teleop])
    timer = LoopTimer(fps, late_threshold_s=0.25 / fps, clock=clock)
    status = status or StatusLine(0.5)
    timer.start()
    ticks = 0
    try:
        while duration_s is None or ticks < round(duration_s * fps):
            timer.tick()
            action = teleop.get_action().positions
            sent = robot.send_action(action)
            if display is not None:
                display({"action": sent, "observation.state": robot.read_joints().positions})
            ticks += 1
            if status.due():
                status.update(f"teleoperating  {timer.stats().line()}  Ctrl-C to stop")
    except KeyboardInterrupt:
        pass
    status.done(f"teleoperated {ticks} ticks, {timer.stats().line()}")
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
