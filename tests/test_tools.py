"""Dataset and device tools: export_frames, visualize, replay, teleoperate, the rerun display."""

import numpy as np
from PIL import Image

import dataset_factory as f
from optional_deps import import_or_skip_native
from rlbench_sms.features import ACTION, FORCE, STATE, depth_key
from rlbench_sms.hardware.mock import MockRobot, MockTeleop
from rlbench_sms.runtime.display import RerunDisplay
from rlbench_sms.tools import export_frames, visualize
from rlbench_sms.tools.replay import episode_actions, replay
from rlbench_sms.tools.teleoperate import teleoperate


def test_export_frames_depth_png_is_exact(tiny_dataset, tmp_path):
    assert export_frames.main([str(tiny_dataset), "--episode", "1", "--out", str(tmp_path), "--every", "2"]) == 0
    depth = np.asarray(Image.open(tmp_path / "front_depth/frame_000002.png"))
    assert depth.dtype == np.uint16
    np.testing.assert_array_equal(depth, f.depth(1, 2))
    rgb = np.asarray(Image.open(tmp_path / "wrist/frame_000000.png"))
    assert rgb.shape == (f.H, f.W, 3) and abs(rgb.mean() - f.rgb(1, 0, "wrist").mean()) < 4
    assert len(list((tmp_path / "front").glob("*.png"))) == (f.episode_length(1) + 1) // 2


def test_export_frames_bad_dataset_is_one_line(tmp_path, capsys):
    assert export_frames.main([str(tmp_path / "none"), "--out", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err


def test_visualize_png_and_rrd(tiny_dataset, tmp_path):
    png, rrd = tmp_path / "ep.png", tmp_path / "ep.rrd"
    assert visualize.main([str(tiny_dataset), "--episode", "2", "--png", str(png), "--rrd", str(rrd)]) == 0
    assert Image.open(png).size[0] > 300
    assert rrd.stat().st_size > 1000


def test_replay_sends_every_action(tiny_dataset):
    actions, fps = episode_actions(tiny_dataset, 0)
    assert actions.shape == (f.episode_length(0), 6) and fps == f.FPS
    sent = []

    class Recording(MockRobot):
        def send_action(self, action):
            sent.append(np.array(action))
            return super().send_action(action)

    robot = Recording()
    with robot:
        stats = replay(robot, actions, fps=50)
    np.testing.assert_array_equal(np.stack(sent), actions)
    assert stats.ticks == len(actions)


def test_teleoperate_runs_for_its_duration():
    robot, teleop = MockRobot(), MockTeleop()
    with robot, teleop:
        assert teleoperate(robot, teleop, fps=50, duration_s=0.2) == 10
        np.testing.assert_allclose(robot._target, teleop.get_action().positions, atol=5.0)


def test_rerun_display_logs_frames(tmp_path):
    rr = import_or_skip_native("rerun")
    rrd = tmp_path / "live.rrd"
    display = RerunDisplay("me/pick", save_path=str(rrd))
    for i in range(3):
        display({STATE: f.state(0, i), ACTION: f.action(0, i), FORCE: f.force(0, i),
                 "observation.images.front": f.rgb(0, i, "front"), depth_key("front"): f.depth(0, i)})
    rr.disconnect()
    assert rrd.stat().st_size > 1000


def test_calibrate_takes_the_record_configs():
    from rlbench_sms.tools.calibrate import main, overrides_to_flags

    assert overrides_to_flags(["robot=so101", "robot.config.port=/dev/ttyACM0", "robot.config.id=arm",
                               "robot.config.calibration_dir=/tmp/cal"]) == [
        "--port", "/dev/ttyACM0", "--id", "arm", "--role", "follower", "--variant", "so101",
        "--calibration-dir", "/tmp/cal"]
    assert "--role" in (flags := overrides_to_flags(["teleop=so100_leader", "teleop.config.port=/dev/x"]))
    assert flags[flags.index("--role") + 1] == "leader"
    assert main(["robot=so100"]) == 2                     # no port: one line, no traceback
    assert main(["robot=so100", "teleop=so100_leader"]) == 2


def test_visualize_without_a_viewer_says_what_to_do(tiny_dataset, tmp_path, monkeypatch, capsys):
    import socket
    import sys
    import time

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("DISPLAY decides only on X11/Wayland")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "WAYLAND_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                         # nothing listens on it
    t0 = time.monotonic()
    assert visualize.main([str(tiny_dataset), "--episode", "0", "--port", str(port)]) == 1
    assert time.monotonic() - t0 < 2.0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no screen" in err and "--rrd out.rrd" in err and "rerun out.rrd" in err
    assert "--png" in err
    # Asked for a PNG too: that needs no viewer, so it is drawn and only the live view is skipped.
    png = tmp_path / "ep0.png"
    assert visualize.main([str(tiny_dataset), "--episode", "0", "--port", str(port), "--png", str(png)]) == 0
    assert png.stat().st_size > 1000
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "writing only the PNG" in err and "--rrd out.rrd" in err


def test_find_ports_without_a_terminal_says_so(capsys):
    import io
    import subprocess
    import sys

    from rlbench_sms.tools import find_ports
    from rlbench_sms.tools.find_ports import PortInfo

    out = subprocess.run([sys.executable, "-m", "rlbench_sms.tools.find_ports"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""          # no prompt nobody can answer
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a terminal" in lines[0] and "Serial ports now:" in lines[0]
    assert "--list" in lines[0]
    # Input that ends at the prompt (Ctrl-D): the same line, naming the ports it saw.
    said = io.StringIO()
    ports = [PortInfo("/dev/ttyACM0", "arm"), PortInfo("/dev/ttyUSB1")]
    assert find_ports.main([], stdin=io.StringIO(""), stdout=said, lister=lambda: ports) == 1
    err = capsys.readouterr().err
    assert "the input ended" in err and "/dev/ttyACM0, /dev/ttyUSB1" in err and "\n" not in err.strip()
