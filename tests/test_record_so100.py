"""record.py robot=so100 teleop=so100_leader end to end, with both arms on pty servo-bus simulators
(the real Feetech SDK path), and a bus that goes silent mid-episode."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from optional_deps import import_or_skip_native
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.validate import validate
from rlbench_sms.hardware.calibration import MotorCalibration, save_calibration
from rlbench_sms.hardware.sim.feetech_bus import INST_SYNC_WRITE, FeetechBusSimulator
from rlbench_sms.hardware.so100 import MOTOR_IDS

REPO = Path(__file__).parent.parent
CALIB = {name: MotorCalibration(i, 0, 0, 1000, 3000) for name, i in MOTOR_IDS.items()}


def record_cmd(tmp_path, follower_port, leader_port, seconds):
    small = [f"cameras.{c}.config.{k}={v}" for c in ("front", "wrist", "top") for k, v in (("width", 64), ("height", 48))]
    return [sys.executable, str(REPO / "record.py"), "robot=so100", "teleop=so100_leader",
            f"robot.config.port={follower_port}", f"teleop.config.port={leader_port}",
            "robot.config.id=follower", "teleop.config.id=leader",
            f"robot.config.calibration_dir={tmp_path}", f"teleop.config.calibration_dir={tmp_path}",
            "robot.config.latency_timer_ms=100", "teleop.config.latency_timer_ms=100",
            "dataset.single_task=pick", "dataset.num_episodes=2", f"dataset.episode_time_s={seconds}",
            "dataset.reset_time_s=0", f"dataset.root={tmp_path / 'ds'}", f"paths.output_dir={tmp_path / 'out'}",
            "dataset.video.vcodec=h264", "dataset.video.crf=23", "dataset.video.preset=ultrafast", *small]


@pytest.fixture
def arms(tmp_path):
    save_calibration(tmp_path / "follower.json", CALIB)
    save_calibration(tmp_path / "leader.json", CALIB)
    with FeetechBusSimulator(speed_ticks_per_s=50_000) as follower, FeetechBusSimulator() as leader:
        yield follower, leader


def test_record_with_so100_arms_on_simulated_buses(tmp_path, arms):
    follower, leader = arms
    leader.set_present_position(MOTOR_IDS["elbow_flex"], 2500)
    out = subprocess.run(record_cmd(tmp_path, follower.port, leader.port, 0.5), capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = validate(tmp_path / "ds")
    assert summary.episodes == 2 and summary.robot_type == "so100_follower"
    # The leader's elbow position became the follower's goal (ticks written on the follower bus).
    assert abs(follower.register(MOTOR_IDS["elbow_flex"], "Goal_Position") - 2500) <= 1


def wait_until(condition, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if ``proc`` exits first or the
    timeout passes (generous: on a loaded machine record.py's start-up alone takes many seconds)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"record.py exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s} s")
        time.sleep(0.05)


def test_lost_bus_saves_the_episode_and_exits_nonzero(tmp_path, arms):
    follower, leader = arms
    ticks_before_loss = 10
    proc = subprocess.Popen(record_cmd(tmp_path, follower.port, leader.port, 30), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        # The dataset is created once every device is connected (the arm's set-up writes are done);
        # from then on each control tick sends the follower one SYNC_WRITE of Goal_Position and
        # then stores its frame, so counting those writes counts recorded frames, at any load.
        wait_until(lambda: (tmp_path / "ds/meta/info.json").exists(), proc, 240, "dataset")
        ticked = follower.instruction_counts[INST_SYNC_WRITE] + ticks_before_loss
        wait_until(lambda: follower.wait_for_packets(ticked, 0.5, INST_SYNC_WRITE), proc, 120,
                   f"{ticks_before_loss} control ticks")
        follower.go_silent()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and follower.port in last
    meta = DatasetMeta.load(tmp_path / "ds")
    # The frames of the ticks before the loss are kept (the tick in flight may be lost).
    assert meta.info["total_episodes"] == 1 and meta.episodes[0].length >= ticks_before_loss - 1
    validate(tmp_path / "ds")
    assert follower.register(MOTOR_IDS["shoulder_pan"], "Torque_Enable") == 0   # torque off after the loss


def test_full_rig_so100_realsense_serial_force(tmp_path, arms):
    """The README's main recording command, with every device on its wire-protocol simulator:
    two SO-100 arms on pty servo buses, a RealSense software device (depth units 0.1 mm, as a
    D405) and a serial force sensor on a pty."""
    import_or_skip_native("pyrealsense2")
    import numpy as np

    from rlbench_sms.data.reader import DatasetReader
    from rlbench_sms.data.writer import DatasetWriter
    from rlbench_sms.features import FORCE, depth_key
    from rlbench_sms.hardware.force_sensor import SerialForceSensor, SerialForceSensorConfig
    from rlbench_sms.hardware.realsense import RealSenseCamera, RealSenseCameraConfig
    from rlbench_sms.hardware.sim.force_sensor import ForceSensorSimulator
    from rlbench_sms.hardware.sim.realsense import SoftwareRealSenseSource
    from rlbench_sms.hardware.so100 import SO100Follower, SO100FollowerConfig, SO100Leader, SO100LeaderConfig
    from rlbench_sms.runtime.keyboard import TerminalKeys
    from rlbench_sms.runtime.recorder import Recorder, RecordingConfig, recording_features

    follower_bus, leader_bus = arms
    fps = 15
    with ForceSensorSimulator(protocol="binary", rate_hz=200) as force_sim:
        force_sim.set_value([1.0, 2.0, 3.0, 0.1, 0.2, 0.3])
        robot = SO100Follower(SO100FollowerConfig(port=follower_bus.port, id="follower", calibration_dir=str(tmp_path),
                                                  latency_timer_ms=100))
        teleop = SO100Leader(SO100LeaderConfig(port=leader_bus.port, id="leader", calibration_dir=str(tmp_path),
                                               latency_timer_ms=100))
        source = SoftwareRealSenseSource(depth_units_m=0.0001, autoplay=True)
        camera = RealSenseCamera(RealSenseCameraConfig(serial_number="sim", width=64, height=48, fps=fps,
                                                       warmup_s=0.2), source=source)
        force = SerialForceSensor(SerialForceSensorConfig(port=force_sim.port, protocol="binary", rate_hz=200,
                                                          tare_samples=10))
        devices = [robot, teleop, camera, force]
        for d in devices:
            d.connect()
        try:
            cams = {"front": camera}
            writer = DatasetWriter.create(tmp_path / "rig", fps, recording_features(robot, cams, force),
                                          robot_type=robot.robot_type)
            config = RecordingConfig(single_task="pick", fps=fps, num_episodes=1, episode_time_s=1.0,
                                     reset_time_s=0)
            with writer:
                Recorder(robot, teleop, cams, force, writer, config,
                         keys=TerminalKeys(stream=open("/dev/null"))).run()
        finally:
            for d in devices:
                d.disconnect()
    summary = validate(tmp_path / "rig")
    assert summary.frames == fps
    with DatasetReader(tmp_path / "rig") as r:
        spec = r.meta.features[depth_key("front")]
        assert spec.info["intrinsics"]["width"] == 64 and spec.info["aligned_to"] == "observation.images.front"
        depth = r.frames(depth_key("front"), r.episodes[0], [7 / fps])[0]
        valid = depth[depth > 0]
        # the synthetic scene: a box face at 0.5 m in front of a plane at 0.8 m, in millimetres
        assert set(np.unique(valid)) <= set(range(495, 506)) | set(range(795, 806))
        assert (np.abs(valid.astype(int) - 500) <= 5).any() and (np.abs(valid.astype(int) - 800) <= 5).any()
        force_values = r.load_columns([FORCE])[FORCE]
        assert np.abs(force_values).max() < 0.2      # tared at the episode start
