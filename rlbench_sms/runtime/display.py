"""Live view of a recording in rerun: cameras, depth as a depth image, joints and force as series.

The control loop never waits on the view. :class:`LiveDisplay` hands each frame to a background
thread through a one-frame slot (a newer frame replaces one not yet shown), so a slow or stuck
viewer costs the loop one deque append per tick, never a tick. :func:`open_display` picks the
sink before the loop starts: a viewer (running, or spawned where a screen exists), else an
``.rrd`` file, announced in one line, to open later with ``rerun FILE``.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from rlbench_sms.features import ACTION, DEPTH_SUFFIX, FORCE, IMAGES_PREFIX, STATE
from rlbench_sms.runtime.viewer import DEFAULT_PORT, SETTLE_S, SPAWN_TIMEOUT_S, NoViewer, find_viewer

SERIES = (STATE, ACTION, FORCE)
CLOSE_TIMEOUT_S = 2.0           # at the end, wait this long at most for the view to take the last frame


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class RerunDisplay:
    """Log recorded frames to rerun's global recording, streamed to ``url`` (a viewer's gRPC
    address, see :func:`runtime.viewer.find_viewer`) or saved to ``save_path``.

    A saved view must not fill the disk: raw, three 640x480 cameras plus depth at 10 Hz write
    ~32 MB/s. ``image_stride`` keeps every n-th pixel of every image (2: a quarter of the bytes,
    depth values unchanged) and ``jpeg_quality`` (1-100) JPEG-compresses the colour images (at 75
    ~40x smaller, ~14 ms of the display thread per 640x480 image, a quarter of that strided).
    """

    def __init__(self, app_id: str, save_path: str | Path | None = None, url: str | None = None,
                 jpeg_quality: int | None = None, image_stride: int = 1):
        import rerun as rr

        if (save_path is None) == (url is None):
            raise ValueError("RerunDisplay needs exactly one of save_path and url")
        self.rr = rr
        rr.init("rlbench_sms-" + app_id.replace("/", "-"), spawn=False)
        self.stream = rr.get_global_data_recording()
        if save_path is not None:
            Path(save_path).parent.mkdir(parents=True, exist_ok=True)
            rr.save(str(save_path), recording=self.stream)
        else:
            rr.connect_grpc(url, recording=self.stream)
        self.jpeg_quality = jpeg_quality
        self.image_stride = max(int(image_stride), 1)
        self._tick = 0

    def __call__(self, frame: dict) -> None:
        rr, stream = self.rr, self.stream
        stream.set_time("tick", sequence=self._tick)
        self._tick += 1
        for key, value in frame.items():
            if key.startswith(IMAGES_PREFIX):
                name = key[len(IMAGES_PREFIX):]
                value = value[::self.image_stride, ::self.image_stride]     # (H, W[, C])
                if key.endswith(DEPTH_SUFFIX):
                    stream.log(f"cameras/{name}", rr.DepthImage(value, meter=1000.0))   # stored in mm
                else:
                    image = rr.Image(value)
                    if self.jpeg_quality:
                        image = image.compress(jpeg_quality=self.jpeg_quality)
                    stream.log(f"cameras/{name}", image)
            elif key in SERIES:
                values = np.asarray(value, dtype=np.float64).reshape(-1)
                stream.log(key.replace(".", "/"), rr.Scalars(values))

    def flush(self, timeout_s: float) -> None:
        """Wait at most ``timeout_s`` for logged data to reach the file or the viewer."""
        try:
            self.stream.flush(timeout_sec=timeout_s)
        except Exception:       # a viewer that went away: what it missed is only the live view
            pass


class LiveDisplay:
    """Call it with each frame; a daemon thread passes the newest to ``sink`` at most ``fps`` times a second.

    The call is O(1) and never waits: a frame still in the slot when the next arrives is dropped
    (counted in :attr:`dropped`). A sink that raises stops the view with one line, not the recording.
    """

    def __init__(self, sink: Callable[[dict], None], fps: float | None = None, close_timeout_s: float = CLOSE_TIMEOUT_S,
                 say: Callable[[str], None] = _say):
        self.sink = sink
        self.close_timeout_s = close_timeout_s
        self._say = say
        self._period = 1.0 / fps if fps else 0.0
        self._due = 0.0
        self._slot: collections.deque = collections.deque(maxlen=1)   # drop-oldest hand-off
        self._wake = threading.Event()
        self._stop = False
        self._failed = False
        self.offered = 0            # frames put in the slot (written by the loop thread only)
        self.shown = 0              # frames the sink took (written by the display thread only)
        self._thread = threading.Thread(target=self._run, name="live-display", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Frames replaced in the slot before the display thread took them."""
        return max(self.offered - self.shown - len(self._slot), 0)

    def __call__(self, frame: dict) -> None:
        if self._failed or self._stop:
            return
        now = time.monotonic()
        if now < self._due:         # above the view's rate: skipped by design, not dropped
            return
        self._due = max(self._due + self._period, now)
        self._slot.append(frame)
        self.offered += 1
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()      # before taking: a frame added after this sets it again
            while self._slot:       # only this thread takes from the slot
                try:
                    self.sink(self._slot.popleft())
                except Exception as error:
                    self._failed = True
                    self._say(f"display: stopped ({type(error).__name__}: {error}); the recording goes on")
                    return
                self.shown += 1
            if self._stop:
                return

    def close(self) -> None:
        """Show the last frame if the sink takes it within ``close_timeout_s``, then report drops."""
        if self._stop:
            return
        self._stop = True
        self._wake.set()
        self._thread.join(self.close_timeout_s)
        if self._thread.is_alive():
            self._say(f"display: the viewer stopped taking frames; not waiting for it "
                      f"({self.shown} of {self.offered} frames shown)")
            return
        if self._failed:            # already said, once
            return
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush(self.close_timeout_s)
        if self.dropped:
            self._say(f"display: {self.dropped} of {self.offered} frames not shown "
                      f"(the viewer was slower than the loop; the dataset has them all)")

    def __enter__(self) -> "LiveDisplay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_display(app_id: str, save_path: str | Path | None = None, fallback_rrd: str | Path | None = None,
                 fps: float | None = None, port: int = DEFAULT_PORT, spawn_timeout_s: float = SPAWN_TIMEOUT_S,
                 settle_s: float = SETTLE_S, close_timeout_s: float = CLOSE_TIMEOUT_S,
                 file_jpeg_quality: int | None = None, file_image_stride: int = 1,
                 say: Callable[[str], None] = _say) -> LiveDisplay | None:
    """The live view of a recording: to ``save_path`` if given, else to a viewer, else (one line
    says so) to ``fallback_rrd``; None (one line) when there is no viewer and no fallback file.
    A saved view keeps every ``file_image_stride``-th pixel and JPEG-compresses colour at
    ``file_jpeg_quality`` (None: raw); a viewer gets full frames."""
    saved = dict(jpeg_quality=file_jpeg_quality, image_stride=file_image_stride)
    try:
        import rerun  # noqa: F401
    except ImportError as error:
        say(f"display: off - rerun cannot load ({error}; pip install rerun-sdk)")
        return None
    if save_path is not None:
        sink = RerunDisplay(app_id, save_path=save_path, **saved)
    else:
        try:
            url = find_viewer(port, spawn_timeout_s, settle_s)
        except NoViewer as why:
            if fallback_rrd is None:
                say(f"display: off - {why}")
                return None
            say(f"display: {why}; saving the live view to {fallback_rrd} instead "
                f"(open it with `rerun {fallback_rrd}` on a machine with a display)")
            sink = RerunDisplay(app_id, save_path=fallback_rrd, **saved)
        else:
            sink = RerunDisplay(app_id, url=url)
    return LiveDisplay(sink, fps, close_timeout_s, say)
