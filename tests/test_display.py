"""The live display never holds up a recording: a stuck viewer, no screen, Ctrl-C; and how a
viewer is found (runtime.viewer)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from optional_deps import import_or_skip_native

from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.validate import validate
from rlbench_sms.data.video import VideoEncoderConfig
from rlbench_sms.data.writer import DatasetWriter
from rlbench_sms.hardware.mock import MockCamera, MockCameraConfig, MockForceSensor, MockRobot, MockTeleop
from rlbench_sms.runtime import viewer
from rlbench_sms.runtime.display import LiveDisplay, open_display
from rlbench_sms.runtime.keyboard import TerminalKeys
from rlbench_sms.runtime.recorder import Recorder, RecordingConfig, recording_features

REPO = Path(__file__).parent.parent
FPS = 20
SECONDS = 1.5
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY decides only on X11/Wayland")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_screen_env(monkeypatch):
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET"):
        monkeypatch.delenv(name, raising=False)


def record_with(tmp_path, display, seconds=SECONDS):
    """One mock episode (two small cameras, force) with ``display``; (summary, seconds taken)."""
    robot, teleop, force = MockRobot(), MockTeleop(), MockForceSensor()
    cams = {"front": MockCamera(MockCameraConfig(64, 48, FPS, use_depth=True)),
            "wrist": MockCamera(MockCameraConfig(64, 48, FPS), seed=1)}
    writer = DatasetWriter.create(tmp_path / "ds", FPS, recording_features(robot, cams, force),
                                  video_config=VideoEncoderConfig(vcodec="h264", crf=23, preset="ultrafast"))
    config = RecordingConfig(single_task="wave", fps=FPS, num_episodes=1, episode_time_s=seconds,
                             reset_time_s=0, late_threshold_s=0.02)
    devices = [robot, teleop, force, *cams.values()]
    for d in devices:
        d.connect()
    t0 = time.monotonic()
    try:
        summary = Recorder(robot, teleop, cams, force, writer, config,
                           keys=TerminalKeys(stream=open(os.devnull)), display=display).run()
        took = time.monotonic() - t0
    finally:
        for d in devices:
            d.disconnect()
        writer.close()
    return summary, took


def assert_loop_kept_its_rate(summary, seconds=SECONDS):
    [episode] = summary.episodes
    assert episode.frames == round(seconds * FPS)
    stats = episode.stats
    assert stats.achieved_fps > 0.8 * FPS, stats.line()
    assert stats.late_ticks <= stats.ticks // 4, stats.line()


class StuckViewer:
    """A sink that never returns (a viewer that stopped reading) until ``release`` is set."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, frame):
        self.calls += 1
        self.release.wait()


def test_a_stuck_viewer_does_not_slow_the_loop(tmp_path):
    sink, said = StuckViewer(), []
    display = LiveDisplay(sink, fps=None, close_timeout_s=0.2, say=said.append)
    # If the loop ever waited on the sink it would stall here until this fires, and fail late.
    watchdog = threading.Timer(10 * SECONDS, sink.release.set)
    watchdog.start()
    try:
        summary, took = record_with(tmp_path, display)
        assert took < 4 * SECONDS
        assert_loop_kept_its_rate(summary)
        assert sink.calls == 1 and display.shown == 0
        assert display.offered == round(SECONDS * FPS) and display.dropped == display.offered - 1
        t0 = time.monotonic()
        display.close()
        assert time.monotonic() - t0 < 1.0
        assert len(said) == 1 and "stopped taking frames" in said[0]
    finally:
        sink.release.set()
        watchdog.cancel()
    validate(tmp_path / "ds")


def test_a_slow_viewer_drops_frames_and_says_how_many(tmp_path):
    shown, said = [], []

    def slow(frame):
        time.sleep(3 / FPS)             # a third of the loop's rate
        shown.append(frame)

    display = LiveDisplay(slow, fps=None, close_timeout_s=1.0, say=said.append)
    summary, _ = record_with(tmp_path, display)
    display.close()
    assert_loop_kept_its_rate(summary)
    assert 0 < len(shown) < display.offered and display.dropped == display.offered - len(shown)
    assert len(said) == 1 and f"{display.dropped} of {display.offered} frames not shown" in said[0]


def test_display_rate_is_capped_without_counting_drops():
    shown = []
    display = LiveDisplay(shown.append, fps=5, say=lambda _: None)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.5:
        display({"tick": 1})
        time.sleep(0.005)
    display.close()
    assert 2 <= display.offered <= 4 and display.dropped == 0 and len(shown) == display.offered


def test_a_failing_viewer_stops_the_view_not_the_recording(tmp_path):
    said = []

    def broken(frame):
        raise ConnectionError("viewer went away")

    display = LiveDisplay(broken, fps=None, say=said.append)
    summary, _ = record_with(tmp_path, display)
    display.close()
    assert_loop_kept_its_rate(summary)
    assert said == ["display: stopped (ConnectionError: viewer went away); the recording goes on"]
    validate(tmp_path / "ds")


@linux_only
def test_no_screen_saves_the_view_to_a_file_in_one_line(tmp_path, monkeypatch):
    import_or_skip_native("rerun")
    no_screen_env(monkeypatch)
    said = []
    t0 = time.monotonic()
    display = open_display("me/wave", fallback_rrd=tmp_path / "out/display.rrd", fps=10, port=free_port(),
                           say=said.append)
    assert time.monotonic() - t0 < 1.0        # decided without spawning a viewer
    assert len(said) == 1 and "no screen" in said[0] and f"rerun {tmp_path / 'out/display.rrd'}" in said[0]
    summary, took = record_with(tmp_path, display)
    display.close()
    assert took < 4 * SECONDS
    assert_loop_kept_its_rate(summary)
    assert display.shown > 0 and (tmp_path / "out/display.rrd").stat().st_size > 1000
    # With no fallback file the display is off, in one line.
    said.clear()
    assert open_display("me/wave", port=free_port(), say=said.append) is None
    assert len(said) == 1 and said[0].startswith("display: off")


# --- finding a viewer ------------------------------------------------------------------------

def fake_viewer(tmp_path, body: str) -> str:
    """An executable standing in for `rerun --port N`."""
    exe = tmp_path / "rerun"
    exe.write_text(f"#!{sys.executable}\nimport socket, sys, time\nport = int(sys.argv[2])\n{body}\n")
    exe.chmod(0o755)
    return str(exe)


def test_a_listening_viewer_is_used_without_spawning(tmp_path):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        url = viewer.find_viewer(port, env={}, executable=str(tmp_path / "never-run"))
    assert url == f"rerun+http://127.0.0.1:{port}/proxy"


@linux_only
def test_no_screen_is_known_at_once():
    t0 = time.monotonic()
    with pytest.raises(viewer.NoViewer, match="no screen here.*DISPLAY.*port"):
        viewer.find_viewer(free_port(), env={})
    assert time.monotonic() - t0 < 1.0
    assert viewer.missing_screen({"WAYLAND_DISPLAY": "wayland-0"}) is None
    assert viewer.missing_screen({}, platform="darwin") is None


def test_a_viewer_that_dies_at_start_gives_its_reason(tmp_path):
    # What the real viewer does with a DISPLAY it cannot use: listens, then exits with an error.
    exe = fake_viewer(tmp_path, "s = socket.create_server(('127.0.0.1', port))\n"
                                "print('\\x1b[31mError: winit EventLoopError: cannot open display\\x1b[0m',"
                                " file=sys.stderr)\nsys.exit(1)")
    t0 = time.monotonic()
    with pytest.raises(viewer.NoViewer, match=r"exited at start \(Error: winit EventLoopError: cannot open display\)"):
        viewer.find_viewer(free_port(), env={"DISPLAY": ":99"}, executable=exe)
    assert time.monotonic() - t0 < 5.0


def test_a_viewer_that_starts_is_reached(tmp_path):
    exe = fake_viewer(tmp_path, "s = socket.create_server(('127.0.0.1', port))\ntime.sleep(3)")  # then leaves
    port = free_port()
    assert viewer.find_viewer(port, settle_s=0.2, env={"DISPLAY": ":0"}, executable=exe).endswith(f":{port}/proxy")


def test_a_viewer_that_never_listens_times_out(tmp_path):
    exe = fake_viewer(tmp_path, "time.sleep(5)")
    with pytest.raises(viewer.NoViewer, match="not reachable on port .* after 1 s"):
        viewer.find_viewer(free_port(), spawn_timeout_s=1.0, env={"DISPLAY": ":0"}, executable=exe)


# --- record.py end to end --------------------------------------------------------------------

@linux_only
def test_ctrl_c_during_a_display_recording_saves_and_exits_0(tmp_path):
    """The reported case: display=true on a machine with no screen (the rerun viewer on PATH), then
    Ctrl-C: the view goes to a file, the episode is saved, no staging files are left."""
    import_or_skip_native("rerun")
    root = tmp_path / "ds"
    small = [f"cameras.{c}.config.{k}={v}" for c in ("front", "wrist", "top") for k, v in (("width", 64), ("height", 48))]
    cmd = [sys.executable, str(REPO / "record.py"), "display=true", f"display_options.port={free_port()}",
           "dataset.single_task=wave", "dataset.num_episodes=1", "dataset.episode_time_s=60",
           "dataset.reset_time_s=0", f"dataset.root={root}", f"paths.output_dir={tmp_path / 'out'}",
           "dataset.video.vcodec=h264", "dataset.video.crf=23", "dataset.video.preset=ultrafast", *small]
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONFAULTHANDLER"] = "1"         # SIGABRT on a hang dumps every thread's stack
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env)
    try:
        deadline = time.monotonic() + 90
        # Staging video files exist once the loop has stored frames.
        while not list(root.rglob(".tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(1.0)                                   # some more frames
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            err = proc.communicate(timeout=30)[1]
            pytest.fail(f"record.py did not exit within 60 s of Ctrl-C; its threads:\n{err[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "1 episode(s) saved" in out and "stopped early" in out
    assert not list(root.rglob(".tmp-*"))
    validate(root)
    assert DatasetMeta.load(root).episodes[0].length > FPS // 2
    notes = [line for line in err.splitlines() if line.startswith("display:")]
    assert len(notes) == 1 and "no screen" in notes[0], err[-3000:]
    [rrd] = (tmp_path / "out/record").glob("display-*.rrd")
    assert rrd.stat().st_size > 1000 and f"rerun {rrd}" in notes[0]
    assert "Traceback" not in err and "gRPC" not in err


def test_a_saved_view_stores_colour_as_jpeg(tmp_path):
    """Raw frames would fill a saved view at ~32 MB/s (3 cameras at 640x480, 10 Hz)."""
    import numpy as np

    from rlbench_sms.runtime.display import RerunDisplay

    rr = import_or_skip_native("rerun")
    rows, cols = np.mgrid[0:240, 0:320]
    sizes = {}
    for quality, stride in ((None, 1), (75, 1), (75, 2)):
        path = tmp_path / f"view-{quality}-{stride}.rrd"
        sink = RerunDisplay("me/wave", save_path=path, jpeg_quality=quality, image_stride=stride)
        for i in range(5):
            smooth = ((rows + cols + 7 * i) % 256).astype(np.uint8)          # a camera-like gradient
            sink({"observation.images.front": np.stack([smooth, smooth[::-1], np.fliplr(smooth)], -1),
                  "observation.images.front_depth": (600 + rows * cols % 300).astype(np.uint16)})
        sink.flush(5.0)
        rr.disconnect()
        sizes[quality, stride] = path.stat().st_size
    assert sizes[75, 1] * 2 < sizes[None, 1], sizes
    assert sizes[75, 2] * 3 < sizes[75, 1], sizes          # depth too: a quarter of the pixels
