"""Dataset and device tools: export_frames, visualize, replay, teleoperate, the rerun display."""

import numpy as np
from PIL import Image

import dataset_factory as f
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
    rrd = tmp_path / "live.rrd"
    display = RerunDisplay("me/pick", save_path=str(rrd))
    for i in range(3):
        display({STATE: f.state(0, i), ACTION: f.action(0, i), FORCE: f.force(0, i),
                 "observation.images.front": f.rgb(0, i, "front"), depth_key("front"): f.depth(0, i)})
    import rerun as rr

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
    assert main(["robot=so100"]) == 1                     # no port: one line, no traceback
    assert main(["robot=so100", "teleop=so100_leader"]) == 1
