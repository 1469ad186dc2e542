"""Find a rerun viewer to stream to, before any data flows: one already listening on the port,
else one spawned now, and only where it can open a window.

Without this, ``rr.init(spawn=True)`` on a machine with no screen spends seconds spawning a viewer
that dies at once, and every later log call queues data for it until rerun blocks the caller.
Here the "no viewer" case is one :class:`NoViewer` with a readable reason, found in milliseconds
when there is no screen, so callers can save to an ``.rrd`` file instead or tell the user what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping

DEFAULT_PORT = 9876             # rerun's default viewer port
PROBE_TIMEOUT_S = 0.2           # a local TCP connect answers at once; this only bounds a firewalled one
SPAWN_TIMEOUT_S = 10.0          # a first start (shader compilation) can take seconds on a slow machine
SETTLE_S = 0.5                  # a viewer that cannot open its window exits right after it listens
POLL_S = 0.05                   # how often the spawn wait checks the port and the process
REASON_CHARS = 200              # the viewer's last error line, cut to keep the message one line

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class NoViewer(Exception):
    """No rerun viewer can be reached; ``str(error)`` says why in one line."""


def grpc_url(port: int) -> str:
    """The address rerun's SDK streams to for a viewer on this machine."""
    return f"rerun+http://127.0.0.1:{port}/proxy"


def viewer_listening(port: int, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether something accepts connections on ``127.0.0.1:port`` (a viewer, or an SSH tunnel to one)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def missing_screen(env: Mapping[str, str] | None = None, platform: str | None = None) -> str | None:
    """Why no window can open here (an X11/Wayland system without a display), else None."""
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if platform.startswith(("darwin", "win", "cygwin")):
        return None
    if any(env.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET")):
        return None
    return "no screen here (DISPLAY and WAYLAND_DISPLAY are unset)"


def viewer_executable() -> str | None:
    """The ``rerun`` viewer of this Python's environment (version-matched to the SDK), else on PATH."""
    name = "rerun.exe" if sys.platform.startswith("win") else "rerun"
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("rerun")


def _last_line(text: str) -> str:
    lines = [_ANSI.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    return lines[-1][:REASON_CHARS] if lines else ""


def spawn_viewer(executable: str, port: int, timeout_s: float = SPAWN_TIMEOUT_S,
                 settle_s: float = SETTLE_S) -> None:
    """Start a viewer listening on ``port`` and wait until it listens and stays up ``settle_s``.

    The viewer runs in its own session, so a Ctrl-C meant for the recording leaves it open.
    Raises :class:`NoViewer` (with the viewer's last error line) when it exits or is not
    reachable within ``timeout_s``.
    """
    errors = tempfile.TemporaryFile(mode="w+")
    try:
        proc = subprocess.Popen([executable, "--port", str(port), "--expect-data-soon"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                start_new_session=True, env={**os.environ, "RERUN_APP_ONLY": "true"})
    except OSError as error:
        errors.close()
        raise NoViewer(f"the rerun viewer {executable} could not start: {error}") from None
    deadline = time.monotonic() + timeout_s
    listening_since = None
    while True:
        if proc.poll() is not None:
            errors.seek(0)
            why = _last_line(errors.read()) or f"exit status {proc.returncode}"
            errors.close()
            raise NoViewer(f"the rerun viewer exited at start ({why})")
        now = time.monotonic()
        if listening_since is None and viewer_listening(port):
            listening_since = now
        if listening_since is not None and now - listening_since >= settle_s:
            errors.close()      # the viewer keeps its own handle to the (unlinked) file
            return
        if now > deadline:
            proc.terminate()
            errors.close()
            raise NoViewer(f"the rerun viewer was not reachable on port {port} after {timeout_s:.0f} s")
        time.sleep(POLL_S)


def find_viewer(port: int = DEFAULT_PORT, spawn_timeout_s: float = SPAWN_TIMEOUT_S,
                settle_s: float = SETTLE_S, env: Mapping[str, str] | None = None,
                executable: str | None = None) -> str:
    """The gRPC URL of a reachable viewer: one listening on ``port``, else one spawned there.

    Raises :class:`NoViewer` without spawning anything when there is no screen to open it on.
    """
    if viewer_listening(port):
        return grpc_url(port)
    no_screen = missing_screen(env)
    if no_screen:
        raise NoViewer(f"{no_screen} and no rerun viewer is listening on port {port}")
    executable = executable or viewer_executable()
    if executable is None:
        raise NoViewer("the rerun viewer executable was not found (it comes with `pip install rerun-sdk`)")
    spawn_viewer(executable, port, spawn_timeout_s, settle_s)
    return grpc_url(port)
