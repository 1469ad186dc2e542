"""record.py robot=so100 teleop=so100_leader end to end, with both arms on pty servo-bus simulators
(the real Feetech SDK path), and a bus that goes silent mid-episode."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.validate import validate
from rlbench_sms.hardware.calibration import MotorCalibration, save_calibration
from rlbench_sms.hardware.sim.feetech_bus import FeetechBusSimulator
from rlbench_sms.hardware.so100 import MOTOR_IDS

REPO = Path(__file__).parent.parent
CALIB = {name: MotorCalibration(i, 0, 0, 1000, 3000) for name, i in MOTOR_IDS.items()}


def record_cmd(tmp_path, follower_port, leader_port, seconds):
    small = [f"cameras.{c}.config.{k}={v}" for c in ("front", "wrist", "top") for k, v in (("width", 64), ("height", 48))]
    return [sys.executable, str(REPO / "record.py"), "robot=so100", "teleop=so100_leader",
            f"robot.config.port={follower_port}", f"teleop.config.port={leader_port}",
            "robot.config.id=follower", "teleop.config.id=leader",
            f"robot.config.calibration_dir={tmp_path}", f"teleop.config.calibration_dir={tmp_path}",
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


def test_lost_bus_saves_the_episode_and_exits_nonzero(tmp_path, arms):
    follower, leader = arms
    proc = subprocess.Popen(record_cmd(tmp_path, follower.port, leader.port, 30), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "ds/meta/info.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)                        # some frames of episode 1
    follower.go_silent()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and follower.port in last
    meta = DatasetMeta.load(tmp_path / "ds")
    assert meta.info["total_episodes"] == 1 and meta.episodes[0].length > 5
    validate(tmp_path / "ds")
    assert follower.register(MOTOR_IDS["shoulder_pan"], "Torque_Enable") == 0   # torque off after the loss
