"""Which cameras are there? ``python -m rlbench_sms.tools.find_cameras``

Prints a table of the OpenCV cameras that open (their index or path, and the size a frame
comes out at by default) and of the connected Intel RealSense cameras (serial, name, firmware,
USB type). The serial goes into ``camera=realsense``'s ``serial_number``; the OpenCV index or
path into ``index_or_path``.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence, TextIO


@dataclass(frozen=True)
class OpenCVCameraInfo:
    index_or_path: int | str
    width: int
    height: int
    fps: float
    backend: str = ""


@dataclass(frozen=True)
class RealSenseInfo:
    serial_number: str
    name: str
    firmware: str = ""
    usb_type: str = ""


def opencv_candidates(max_index: int) -> list[int | str]:
    """Linux: the /dev/video* nodes (most V4L2 cameras expose a second, metadata-only node that
    will not open; that is expected). Elsewhere: indexes 0..max_index-1."""
    if sys.platform.startswith("linux"):
        return sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))
    return list(range(max_index))


def list_opencv_cameras(candidates: Sequence[int | str]) -> list[OpenCVCameraInfo]:
    """The candidates that open and deliver a frame, with that frame's size."""
    if not candidates:
        return []
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")    # no warning per node that fails
    import cv2

    found = []
    for cand in candidates:
        cap = cv2.VideoCapture(cand)
        try:
            if not cap.isOpened():
                continue
            ok, frame = cap.read()
            if not ok or frame is None:
                continue
            found.append(OpenCVCameraInfo(cand, int(frame.shape[1]), int(frame.shape[0]),
                                          float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
                                          cap.getBackendName()))
        finally:
            cap.release()
    return found


def list_realsense() -> list[RealSenseInfo]:
    """Connected RealSense devices; raises ImportError (or OSError) when pyrealsense2 cannot load."""
    import pyrealsense2 as rs

    def info(dev, key) -> str:
        return dev.get_info(key) if dev.supports(key) else ""

    return [RealSenseInfo(info(d, rs.camera_info.serial_number), info(d, rs.camera_info.name),
                          info(d, rs.camera_info.firmware_version),
                          info(d, rs.camera_info.usb_type_descriptor))
            for d in rs.context().query_devices()]


def _table(header: Sequence[str], rows: list[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + \
        [fmt.format(*(str(x) for x in row)) for row in rows]


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         opencv_lister: Callable[[Sequence[int | str]], list[OpenCVCameraInfo]] = list_opencv_cameras,
         realsense_lister: Callable[[], list[RealSenseInfo]] = list_realsense) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlbench_sms.tools.find_cameras",
                                     description="List OpenCV and RealSense cameras.")
    parser.add_argument("--max-index", type=int, default=10,
                        help="indexes to try where there is no /dev/video* (default 10)")
    parser.add_argument("--no-opencv", action="store_true", help="skip the OpenCV scan")
    parser.add_argument("--no-realsense", action="store_true", help="skip the RealSense scan")
    args = parser.parse_args(argv)
    out = stdout or sys.stdout

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    if not args.no_opencv:
        say("OpenCV cameras")
        try:
            cams = opencv_lister(opencv_candidates(args.max_index))
        except (ImportError, OSError) as exc:     # OSError: the wheel's native library does not load
            say(f"  cannot scan: {exc} (pip install opencv-python-headless)")
        else:
            if cams:
                rows = [(c.index_or_path, f"{c.width}x{c.height}", f"{c.fps:g}", c.backend)
                        for c in cams]
                for line in _table(("index_or_path", "default size", "fps", "backend"), rows):
                    say("  " + line)
            else:
                say("  none found")
        say()
    if not args.no_realsense:
        say("Intel RealSense cameras")
        try:
            devices = realsense_lister()
        except (ImportError, OSError, RuntimeError) as exc:   # OSError: libusb missing
            say(f"  cannot scan: {exc} (pip install pyrealsense2; on Linux apt install libusb-1.0-0)")
        else:
            if devices:
                rows = [(d.serial_number, d.name, d.firmware, d.usb_type) for d in devices]
                for line in _table(("serial_number", "name", "firmware", "usb"), rows):
                    say("  " + line)
            else:
                say("  none found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
