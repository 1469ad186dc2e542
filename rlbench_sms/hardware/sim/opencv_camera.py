"""A synthetic :class:`~rlbench_sms.hardware.opencv_camera.FrameSource`: frames at a set rate,
in BGR like ``cv2.VideoCapture`` gives them, with faults to inject (stall, wrong size).

Frame ``n`` encodes ``n`` in its pixels (blue channel = n mod 256 at every pixel, a moving bar
on top), so a test can tell which frame a read returned.
"""

from __future__ import annotations

import threading
import time

import numpy as np


class SyntheticFrameSource:
    def __init__(self, width: int = 64, height: int = 48, fps: float = 30.0,
                 poll_s: float = 0.05):
        self.width, self.height, self.fps = width, height, fps
        self.poll_s = poll_s                  # longest a grab() blocks when nothing is due
        self.frames_made = 0
        self.opened = False
        self._stalled = threading.Event()
        self._next_t = 0.0
        self._size: tuple[int, int] | None = None     # (width, height) override, for faults

    # -- fault injection -----------------------------------------------------------------------
    def stall(self) -> None:
        """Stop delivering frames (a camera whose USB link died without an error)."""
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def deliver_size(self, width: int, height: int) -> None:
        """From now on deliver frames of another size than configured."""
        self._size = (width, height)

    # -- FrameSource ---------------------------------------------------------------------------
    def open(self) -> None:
        self.opened = True
        self._next_t = time.monotonic()

    def close(self) -> None:
        self.opened = False

    def grab(self) -> np.ndarray | None:
        if self._stalled.is_set():
            time.sleep(self.poll_s)
            return None
        wait = self._next_t - time.monotonic()
        if wait > self.poll_s:
            time.sleep(self.poll_s)
            return None
        if wait > 0:
            time.sleep(wait)
        self._next_t = max(self._next_t + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
        frame = self.make_frame(self.frames_made)
        self.frames_made += 1
        return frame

    def make_frame(self, n: int) -> np.ndarray:
        """Frame ``n`` in BGR: blue = n mod 256, green = a bar at column n mod W, red = 200."""
        w, h = self._size or (self.width, self.height)
        frame = np.zeros((h, w, 3), np.uint8)
        frame[:, :, 0] = n % 256
        frame[:, n % w, 1] = 255
        frame[:, :, 2] = 200
        return frame
