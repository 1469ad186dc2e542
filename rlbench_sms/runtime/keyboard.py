"""Keyboard control of a recording from the terminal it runs in (no X server, works over ssh).

Keys: ``n`` or → ends the episode early and saves it, ``r`` or ← re-records it, ``q`` or Esc
saves and stops. With no terminal attached (stdin closed or not a tty, e.g. under CI or nohup)
nothing is read and the recording runs unattended through every episode.

Evaluating on a real arm (``TerminalKeys(verdicts=True)``), the operator judges each episode, during
it or when asked at its end: ``s`` success, ``f`` failure, ``d`` discard (left out of the rate); a
verdict key during the episode also ends it.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from enum import Enum


class Command(Enum):
    NEXT = "next episode"
    RERECORD = "re-record episode"
    STOP = "stop recording"
    SUCCESS = "success"
    FAILURE = "failure"
    DISCARD = "discard"


KEYS = {"n": Command.NEXT, "\x1b[C": Command.NEXT, "r": Command.RERECORD, "\x1b[D": Command.RERECORD,
        "q": Command.STOP, "\x1b": Command.STOP}
VERDICT_KEYS = {"s": Command.SUCCESS, "f": Command.FAILURE, "d": Command.DISCARD}
VERDICTS = tuple(VERDICT_KEYS.values())
HELP = "keys: [n]/→ next episode   [r]/← re-record   [q]/Esc stop"
VERDICT_HELP = "[s]uccess  [f]ailure  [d]iscard"


class TerminalKeys:
    """Reads single keys in a background thread while the terminal is in cbreak mode."""

    def __init__(self, stream=None, verdicts: bool = False):
        self._stream = stream if stream is not None else sys.stdin
        self.keys = {**KEYS, **(VERDICT_KEYS if verdicts else {})}
        self.help = HELP + (f"   {VERDICT_HELP}" if verdicts else "")
        self._pending: list[Command] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved_attrs = None

    @property
    def attached(self) -> bool:
        try:
            return self._stream is not None and not self._stream.closed and self._stream.isatty()
        except (ValueError, AttributeError):
            return False

    def __enter__(self) -> "TerminalKeys":
        if self.attached:
            import termios
            import tty

            fd = self._stream.fileno()
            self._saved_attrs = termios.tcgetattr(fd)
            tty.setcbreak(fd)
            self._thread = threading.Thread(target=self._run, name="keys", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        if self._saved_attrs is not None:
            import termios

            termios.tcsetattr(self._stream.fileno(), termios.TCSADRAIN, self._saved_attrs)

    def _run(self) -> None:
        fd = self._stream.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(fd, 8).decode(errors="ignore")
            self.feed(data)

    def feed(self, data: str) -> None:
        """Interpret raw key bytes (also used by tests)."""
        command = self.keys.get(data) or self.keys.get(data[:1])
        if command is not None:
            with self._lock:
                self._pending.append(command)

    def poll(self) -> Command | None:
        """The oldest command not yet handled, if any."""
        with self._lock:
            return self._pending.pop(0) if self._pending else None
