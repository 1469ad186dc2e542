"""Which serial port is the arm? ``python -m rlbench_sms.tools.find_ports``

Lists the serial ports with their descriptions, then asks you to unplug the arm's USB cable and
press Enter: the port that disappeared is the arm's. ``--list`` only lists. The comparison needs
a terminal to answer on: with stdin redirected it says so in one line and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Sequence, TextIO


@dataclass(frozen=True)
class PortInfo:
    device: str
    description: str = ""
    hwid: str = ""

    def __str__(self) -> str:
        extras = [x for x in (self.description, self.hwid) if x and x != "n/a"]
        return f"{self.device}" + (f"  ({'; '.join(extras)})" if extras else "")


def list_ports() -> list[PortInfo]:
    """The serial ports the OS reports (USB adapters: /dev/ttyACM*, /dev/ttyUSB*, COM*, ...)."""
    from serial.tools import list_ports as lp

    return sorted((PortInfo(p.device, p.description or "", p.hwid or "") for p in lp.comports()),
                  key=lambda p: p.device)


def find_port(ask: Callable[[str], str], say: Callable[[str], None],
              lister: Callable[[], list[PortInfo]] = list_ports) -> str | None:
    """The device of the one port that disappears while the user unplugs the arm, else None."""
    before = lister()
    if not before:
        say("No serial ports found: plug the arm's USB cable in and power its controller board.")
        return None
    say("Serial ports now:")
    for port in before:
        say(f"  {port}")
    ask("Unplug the USB cable of the arm (leave the others), then press Enter... ")
    after = {p.device for p in lister()}
    gone = [p for p in before if p.device not in after]
    if len(gone) == 1:
        say(f"The arm's port is {gone[0].device}. Plug the cable back in.")
        return gone[0].device
    if not gone:
        say("No port disappeared: was the right cable unplugged? Run this again.")
    else:
        say(f"Several ports disappeared ({', '.join(p.device for p in gone)}): unplug only the "
            f"arm and run this again.")
    return None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):     # a closed or replaced stdin
        return False


def needs_terminal(ports: list[PortInfo], why: str = "stdin is not one") -> str:
    """The one line said when there is no terminal to wait on for the unplug."""
    now = ", ".join(p.device for p in ports) or "none"
    return (f"find_ports needs a terminal: it waits for Enter after you unplug the arm ({why}). "
            f"Serial ports now: {now}. `--list` only lists them.")


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None, lister: Callable[[], list[PortInfo]] = list_ports) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlbench_sms.tools.find_ports",
                                     description="List serial ports and find the arm's.")
    parser.add_argument("--list", action="store_true", help="only list the ports")
    args = parser.parse_args(argv)
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def say(text: str) -> None:
        print(text, file=stdout, flush=True)

    def ask(prompt: str) -> str:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if line == "":
            raise EOFError("input ended")
        return line

    if args.list:
        ports = lister()
        for port in ports:
            say(str(port))
        if not ports:
            say("No serial ports found.")
        return 0
    if stdin is sys.stdin and not _is_terminal(stdin):
        print(needs_terminal(lister()), file=sys.stderr, flush=True)
        return 1
    try:
        return 0 if find_port(ask, say, lister) else 1
    except EOFError:                    # Ctrl-D at the prompt: end its line, then say why
        say("")
        print(needs_terminal(lister(), "the input ended"), file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    sys.exit(main())
