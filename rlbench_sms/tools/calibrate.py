"""Calibrate an SO-100/SO-101 arm, named with the same configs as ``record.py``::

    python -m rlbench_sms.tools.calibrate robot=so100 robot.config.port=/dev/ttyACM0 robot.config.id=my_arm
    python -m rlbench_sms.tools.calibrate teleop=so100_leader teleop.config.port=/dev/ttyACM1

or with plain flags: ``--port /dev/ttyACM0 --id my_arm --role follower [--variant so101]
[--calibration-dir DIR]``.

The procedure is LeRobot's, so the file it writes is interchangeable with a LeRobot calibration:

1. torque off, position mode;
2. the user puts the arm in the middle of its range and presses Enter: each motor's
   Homing_Offset becomes ``raw - 2047`` so that this pose reads 2047 (half a turn), far from
   the encoder's wrap-around point;
3. the user moves every joint except ``wrist_roll`` through its whole range and presses Enter,
   while the positions are polled; the extremes become ``range_min`` / ``range_max``
   (``wrist_roll`` gets the full turn 0..4095);
4. offsets and limits are written to the motors and saved to
   ``<calibration_dir>/<id>.json`` (LeRobot's folder by default).

Input is read line by line from a stream (stdin by default), so tests drive it with a script.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
from typing import Callable, Sequence, TextIO

from rlbench_sms.cli import CONF_DIR, EXIT_CONFIG, check_required, error_line
from rlbench_sms.hardware.calibration import (HOMING_OFFSET_LIMIT, MotorCalibration, save_calibration)
from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.hardware.feetech import DEFAULT_BAUDRATE, DEFAULT_LATENCY_TIMER_MS, FeetechBus
from rlbench_sms.hardware.so100 import (FULL_TURN_MOTORS, ROLES, VARIANTS, calibration_path,
                                        so100_motors)

Ask = Callable[[str], str]
Say = Callable[[str], None]


def record_ranges(bus: FeetechBus, motors: Sequence[str], ask: Ask, prompt: str,
                  poll_s: float = 0.02) -> tuple[dict[str, int], dict[str, int]]:
    """Track each motor's min and max Present_Position until ``ask(prompt)`` returns."""
    done = threading.Event()
    failure: list[BaseException] = []

    def wait_for_enter() -> None:
        try:
            ask(prompt)
        except EOFError:
            pass                          # end of input: stop recording like Enter
        except BaseException as error:    # pragma: no cover - surfaced below
            failure.append(error)
        finally:
            done.set()

    waiter = threading.Thread(target=wait_for_enter, name="calibrate-enter", daemon=True)
    positions = bus.sync_read("Present_Position", motors)
    mins, maxs = dict(positions), dict(positions)
    waiter.start()
    while True:
        stop = done.wait(poll_s)
        positions = bus.sync_read("Present_Position", motors)   # one last read after Enter too
        for name, value in positions.items():
            mins[name] = min(mins[name], value)
            maxs[name] = max(maxs[name], value)
        if stop:
            break
    waiter.join()
    if failure:
        raise failure[0]
    return mins, maxs


def calibrate_arm(bus: FeetechBus, ask: Ask, say: Say = print,
                  full_turn_motors: Sequence[str] = FULL_TURN_MOTORS,
                  poll_s: float = 0.02) -> dict[str, MotorCalibration]:
    """Run the interactive procedure on a connected bus; writes the motors, returns the records."""
    names = list(bus.motors)
    resolution = min(m.resolution for m in bus.motors.values())
    half_turn = (resolution - 1) // 2                        # 2047 on an STS3215
    bus.disable_torque()
    for name in names:
        bus.write("Operating_Mode", name, 0)

    ask("Move the arm to the middle of its range of motion (every joint half-way), "
        "then press Enter... ")
    for name in names:                                       # read physical angles
        bus.write("Homing_Offset", name, 0)
        bus.write("Min_Position_Limit", name, 0)
        bus.write("Max_Position_Limit", name, resolution - 1)
    middle = bus.sync_read("Present_Position")
    offsets = {n: max(-HOMING_OFFSET_LIMIT, min(HOMING_OFFSET_LIMIT, middle[n] - half_turn))
               for n in names}
    for name in names:
        bus.write("Homing_Offset", name, offsets[name])

    ranging = [n for n in names if n not in full_turn_motors]
    full = [n for n in names if n in full_turn_motors]
    mins, maxs = record_ranges(
        bus, ranging, ask,
        f"Move every joint{' except ' + ', '.join(full) if full else ''} through its whole range "
        f"of motion, then press Enter... ", poll_s)
    for name in full:
        mins[name], maxs[name] = 0, resolution - 1
    still = [n for n in ranging if maxs[n] - mins[n] <= 0]
    if still:
        raise HardwareError(bus.device, f"joint(s) {still} did not move while the ranges were "
                                        f"recorded: run the calibration again and move every joint "
                                        f"from one end of its range to the other")

    calibration = {n: MotorCalibration(id=bus.motors[n].id, drive_mode=0, homing_offset=offsets[n],
                                       range_min=mins[n], range_max=maxs[n]) for n in names}
    for name, c in calibration.items():
        bus.write("Min_Position_Limit", name, c.range_min)
        bus.write("Max_Position_Limit", name, c.range_max)

    say(f"{'motor':<15}{'id':>4}{'offset':>8}{'min':>6}{'max':>6}")
    for name, c in calibration.items():
        say(f"{name:<15}{c.id:>4}{c.homing_offset:>8}{c.range_min:>6}{c.range_max:>6}")
    return calibration


def _line_reader(stream: TextIO, out: TextIO) -> Ask:
    def ask(prompt: str) -> str:
        out.write(prompt)
        out.flush()
        line = stream.readline()
        if line == "":
            raise EOFError("input ended")
        return line.rstrip("\n")
    return ask


def overrides_to_flags(overrides: Sequence[str]) -> list[str]:
    """``robot=so100 robot.config.port=...`` (Hydra overrides of conf/calibrate.yaml) -> flags."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    groups = [g for g in ("robot", "teleop") if any(o.startswith(g + "=") for o in overrides)]
    if len(groups) != 1:
        raise ValueError("name one arm: robot=so100 robot.config.port=... (follower) or "
                         "teleop=so100_leader teleop.config.port=... (leader)")
    group = groups[0]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="calibrate", overrides=list(overrides))
    except HydraException as error:          # unknown arm, bad override: Hydra's message, one line
        raise ValueError(error_line(error)) from None
    problem = check_required(cfg)
    if problem:
        raise ValueError(problem)
    arm = cfg[group].config
    if "port" not in arm:
        choice = next(o for o in overrides if o.startswith(group + "=")).split("=", 1)[1]
        raise ValueError(f"{group}={choice}: not an arm on a servo bus, nothing to calibrate "
                         f"(e.g. {group}={'so100' if group == 'robot' else 'so100_leader'})")
    flags = ["--port", str(arm.port), "--id", str(arm.id),
             "--role", "follower" if group == "robot" else "leader", "--variant", str(arm.variant)]
    if arm.get("calibration_dir"):
        flags += ["--calibration-dir", str(arm.calibration_dir)]
    return flags


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlbench_sms.tools.calibrate",
        description="Calibrate an SO-100/SO-101 follower or leader arm.",
        epilog="Or name the arm with the configs record.py uses: robot=so100 robot.config.port=/dev/ttyACM0 "
               "robot.config.id=my_arm (a follower), teleop=so100_leader teleop.config.port=/dev/ttyACM1 "
               "(a leader).")
    parser.add_argument("--port", required=True, help="serial port of the arm, e.g. /dev/ttyACM0")
    parser.add_argument("--id", required=True, help="name of this arm's calibration file")
    parser.add_argument("--role", required=True, choices=ROLES, help="follower (driven) or leader (moved by hand)")
    parser.add_argument("--variant", default="so100", choices=VARIANTS, help="arm model (default so100)")
    parser.add_argument("--calibration-dir", default=None,
                        help="folder of the calibration files (default: LeRobot's)")
    parser.add_argument("--retries", type=int, default=3, help="bus read retries before giving up (default 3)")
    parser.add_argument("--baudrate", type=int, default=DEFAULT_BAUDRATE,
                        help=f"bus baud rate (default {DEFAULT_BAUDRATE})")
    parser.add_argument("--latency-timer-ms", type=float, default=DEFAULT_LATENCY_TIMER_MS,
                        help="USB-serial latency the reply timeout allows for")
    parser.add_argument("--poll-s", type=float, default=0.02, help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and all("=" in a and not a.startswith("-") for a in argv):
        try:
            argv = overrides_to_flags(argv)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_CONFIG
    args = parser.parse_args(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    say: Say = lambda text: print(text, file=stdout, flush=True)  # noqa: E731
    ask = _line_reader(stdin, stdout)

    path = calibration_path(args.role, args.id, args.calibration_dir, args.variant)
    try:
        bus = FeetechBus(args.port, so100_motors(), baudrate=args.baudrate, retries=args.retries,
                         latency_timer_ms=args.latency_timer_ms)
        with bus:
            say(f"Calibrating the {args.variant} {args.role} {args.id!r} on {args.port}; "
                f"torque is off, the arm can be moved by hand.")
            calibration = calibrate_arm(bus, ask, say, poll_s=args.poll_s)
        if path.exists():
            backup = path.with_name(path.name + ".bak")
            shutil.copyfile(path, backup)
            say(f"Previous calibration kept as {backup}")
        save_calibration(path, calibration)
    except HardwareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except EOFError:
        print("error: input ended before the calibration was complete", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("calibration interrupted; nothing saved", file=sys.stderr)
        return 130
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    say(f"Calibration saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
