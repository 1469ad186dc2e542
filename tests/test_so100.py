"""SO-100/SO-101 follower and leader against the pty servo-bus simulator."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rlbench_sms.features import ACTION, SO100_JOINT_NAMES, STATE
from rlbench_sms.hardware.calibration import CalibrationError, MotorCalibration, save_calibration
from rlbench_sms.hardware.contracts import DeviceNotConnectedError, HardwareError, Robot, Teleop
from rlbench_sms.hardware.feetech import BusCommunicationError
from rlbench_sms.hardware.sim.feetech_bus import FeetechBusSimulator
from rlbench_sms.hardware.so100 import (MOTOR_IDS, SO100Follower, SO100FollowerConfig, SO100Leader,
                                        SO100LeaderConfig, parse_max_relative_target)

SIM_LATENCY_MS = 100.0   # see tests/test_feetech.py: the simulator may miss 34 ms on a loaded CI box

TICK_DEG = 360 / 4095
# Present-position ticks: body joints 1000..3000 (mid 2000 = 0 deg), wrist_roll full turn,
# gripper 2000..3000 (0..100).
CALIB = {name: MotorCalibration(i, 0, -50 + 10 * i, 1000, 3000) for name, i in MOTOR_IDS.items()}
CALIB["wrist_roll"] = MotorCalibration(5, 0, -10, 0, 4095)
CALIB["gripper"] = MotorCalibration(6, 0, 0, 2000, 3000)


def deg(ticks: float, mid: float = 2000) -> float:
    return (ticks - mid) * TICK_DEG


@pytest.fixture
def cal_dir(tmp_path):
    save_calibration(tmp_path / "arm.json", CALIB)
    return str(tmp_path)


@pytest.fixture
def sim():
    with FeetechBusSimulator(speed_ticks_per_s=50_000) as simulator:
        yield simulator


@pytest.fixture
def follower(sim, cal_dir):
    robot = SO100Follower(SO100FollowerConfig(port=sim.port, id="arm", calibration_dir=cal_dir, latency_timer_ms=SIM_LATENCY_MS))
    robot.connect()
    yield robot
    robot.disconnect()


def test_features_without_hardware():
    robot = SO100Follower(port="/dev/ttyACM0")
    assert robot.state_feature().key == STATE and robot.action_feature().key == ACTION
    assert robot.state_feature().shape == (6,) and robot.state_feature().names == list(SO100_JOINT_NAMES)
    assert robot.state_feature().dtype == "float32"
    leader = SO100Leader(port="/dev/ttyACM1")
    assert leader.action_feature().names == list(SO100_JOINT_NAMES)
    assert isinstance(robot, Robot) and isinstance(leader, Teleop)
    assert not robot.is_connected
    with pytest.raises(DeviceNotConnectedError):
        robot.read_joints()
    robot.disconnect()                                    # harmless when not connected


def test_config_fields_and_validation():
    with pytest.raises(TypeError):
        SO100FollowerConfig()                             # port is required
    with pytest.raises(ValueError, match="port is required"):
        SO100FollowerConfig(port="???")
    with pytest.raises(ValueError, match="variant"):
        SO100FollowerConfig(port="/dev/x", variant="so102")
    robot = SO100Follower({"port": "/dev/x", "variant": "so101", "id": "a"})   # a mapping (Hydra)
    assert robot.robot_type == "so101_follower" and robot.config.id == "a"
    assert SO100Leader(port="/dev/x").robot_type == "so100_leader"
    with pytest.raises(TypeError):
        SO100Follower(SO100FollowerConfig(port="/dev/x"), port="/dev/y")


def test_max_relative_target_parsing():
    assert parse_max_relative_target(None) is None
    assert parse_max_relative_target(5).tolist() == [5.0] * 6             # an int is fine here
    per_joint = {f"{m}.pos" if i % 2 else m: float(i + 1) for i, m in enumerate(MOTOR_IDS)}
    assert parse_max_relative_target(per_joint).tolist() == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="missing \\['gripper'\\]"):
        parse_max_relative_target({m: 1.0 for m in list(MOTOR_IDS)[:5]})
    with pytest.raises(ValueError, match="unknown \\['elbow'\\]"):
        parse_max_relative_target({**{m: 1.0 for m in MOTOR_IDS}, "elbow": 1.0})
    with pytest.raises(TypeError):
        parse_max_relative_target("10")
    with pytest.raises(TypeError):
        parse_max_relative_target(True)
    with pytest.raises(ValueError, match="positive"):
        parse_max_relative_target(-1.0)
    with pytest.raises(ValueError):
        SO100FollowerConfig(port="/dev/x", max_relative_target={"gripper": 1.0})


def test_hydra_instantiate_with_plain_fields(sim, cal_dir):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"_target_": "rlbench_sms.hardware.so100.SO100Follower",
                            "config": {"_target_": "rlbench_sms.hardware.so100.SO100FollowerConfig",
                                       "port": sim.port, "id": "arm", "calibration_dir": cal_dir,
                                       "max_relative_target": {m: 10 for m in MOTOR_IDS}}})
    robot = instantiate(cfg)
    assert robot.config.port == sim.port and robot._limits.max_relative.tolist() == [10.0] * 6
    assert OmegaConf.is_missing(OmegaConf.structured(SO100FollowerConfig), "port")   # required


def test_missing_calibration_names_the_command(tmp_path):
    robot = SO100Follower(port="/dev/ttyACM0", id="nope", calibration_dir=str(tmp_path))
    with pytest.raises(CalibrationError) as info:
        robot.connect()
    message = str(info.value)
    assert str(tmp_path / "nope.json") in message
    assert "python -m rlbench_sms.tools.calibrate --port /dev/ttyACM0 --id nope --role follower" in message
    assert not robot.is_connected


def test_connect_writes_calibration_and_configures(sim, follower):
    for name, c in CALIB.items():
        i = c.id
        assert sim.register(i, "Homing_Offset") == c.homing_offset
        assert sim.register(i, "Min_Position_Limit") == c.range_min
        assert sim.register(i, "Max_Position_Limit") == c.range_max
        assert sim.register(i, "Torque_Enable") == 1 and sim.register(i, "Lock") == 1
        assert sim.register(i, "Return_Delay_Time") == 0 and sim.register(i, "P_Coefficient") == 16
        assert sim.register(i, "D_Coefficient") == 32 and sim.register(i, "Operating_Mode") == 0
        assert sim.register(i, "Goal_Position") == sim.register(i, "Present_Position")   # no jump
    assert sim.register(6, "Max_Torque_Limit") == 500 and sim.register(6, "Overload_Torque") == 25
    assert sim.register(1, "Max_Torque_Limit") == 1000
    with pytest.raises(HardwareError, match="already connected"):
        follower.connect()


def test_reconnect_does_not_rewrite_eeprom(sim, cal_dir):
    with SO100Follower(port=sim.port, id="arm", calibration_dir=cal_dir, latency_timer_ms=SIM_LATENCY_MS):
        pass
    sim.received.clear()
    with SO100Follower(port=sim.port, id="arm", calibration_dir=cal_dir, latency_timer_ms=SIM_LATENCY_MS):
        pass
    written = {packet[5] for packet in sim.received if packet[4] == 0x03}      # WRITE addresses
    assert written == {40, 55}          # only Torque_Enable and Lock: no EEPROM rewritten


def test_read_joints_units_and_timestamp(sim, follower):
    follower.bus.disable_torque()                          # so the joints can be moved by hand
    sim.set_present_position(1, 2500)
    sim.set_present_position(5, 1024)
    sim.set_present_position(6, 2250)
    before = time.monotonic()
    reading = follower.read_joints()
    assert before <= reading.timestamp <= time.monotonic()
    assert reading.positions.dtype == np.float32 and reading.positions.shape == (6,)
    assert reading.positions[0] == pytest.approx(deg(2500), abs=1e-4)
    assert reading.positions[4] == pytest.approx(deg(1024, 2047.5), abs=1e-4)
    assert reading.positions[5] == pytest.approx(25.0)


def test_send_action_moves_the_follower(sim, follower):
    target = np.array([10.0, -20.0, 30.0, -40.0, 90.0, 60.0], np.float32)
    sent = follower.send_action(target)
    np.testing.assert_allclose(sent, target)
    assert sent.dtype == np.float32
    assert sim.wait_for_packets(sim.packets_received)
    time.sleep(0.01)
    assert sim.register(1, "Goal_Position") == round(2000 + 10 / TICK_DEG)
    assert sim.register(6, "Goal_Position") == 2600
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:                     # the simulated servos move there
        if np.allclose(follower.read_joints().positions, target, atol=TICK_DEG):
            break
        time.sleep(0.01)
    np.testing.assert_allclose(follower.read_joints().positions, target, atol=TICK_DEG)


def test_send_action_clips_to_the_calibrated_range(sim, follower):
    sent = follower.send_action(np.array([500.0, 0, 0, 0, 0, 150.0]))
    assert sent[0] == pytest.approx(deg(3000)) and sent[5] == 100.0
    with pytest.raises(ValueError, match="non-finite"):
        follower.send_action(np.array([np.nan, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="6 values"):
        follower.send_action(np.zeros(5))


def test_max_relative_target_clips_each_step(sim, cal_dir):
    with SO100Follower(port=sim.port, id="arm", calibration_dir=cal_dir, latency_timer_ms=SIM_LATENCY_MS,
                       max_relative_target={**{m: 5.0 for m in MOTOR_IDS}, "gripper": 10.0}) as robot:
        present = robot.read_joints().positions.astype(np.float64)
        sent = robot.send_action(present + np.array([30, -30, 2, 0, 100, 50]))
        np.testing.assert_allclose(sent - present, [5, -5, 2, 0, 5, 10], atol=1e-4)
        assert robot.clipped_steps == 1
    with SO100Follower(port=sim.port, id="arm", calibration_dir=cal_dir, latency_timer_ms=SIM_LATENCY_MS, max_relative_target=1.5) as robot:
        present = robot.read_joints().positions.astype(np.float64)
        sent = robot.send_action(present - 20)
        np.testing.assert_allclose(sent - present, [-1.5] * 5 + [-1.5], atol=1e-4)


def torque_goes_off(sim, timeout_s: float = 5.0) -> bool:
    """Whether every motor's torque is off within ``timeout_s``: the torque-off writes cross the
    pty and the simulator's thread, which a loaded machine delays by more than any fixed sleep."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(sim.register(i, "Torque_Enable") == 0 for i in range(1, 7)):
            return True
        time.sleep(0.01)
    return False


def test_comm_loss_in_send_action_disables_torque_and_reraises(sim, cal_dir):
    robot = SO100Follower(port=sim.port, id="arm", calibration_dir=cal_dir, latency_timer_ms=SIM_LATENCY_MS, max_relative_target=10.0,
                          retries=2)
    robot.connect()
    assert all(sim.register(i, "Torque_Enable") == 1 for i in range(1, 7))
    sim.go_silent()                                        # status packets lost from now on
    start = time.monotonic()
    with pytest.raises(BusCommunicationError) as info:
        robot.send_action(np.zeros(6))
    assert info.value.attempts == 3 and sim.port in str(info.value)
    assert sim.wait_for_packets(sim.packets_received)
    assert torque_goes_off(sim)
    robot.disconnect()                                     # quick: no acknowledged writes on a dead bus
    assert time.monotonic() - start < 3.0
    assert not robot.is_connected


def test_comm_loss_in_read_joints_disables_torque(sim, follower):
    sim.go_silent()
    with pytest.raises(BusCommunicationError):
        follower.read_joints()
    assert torque_goes_off(sim)


def test_disconnect_disables_torque(sim, cal_dir):
    with SO100Follower(port=sim.port, id="arm", calibration_dir=cal_dir, latency_timer_ms=SIM_LATENCY_MS):
        assert sim.register(3, "Torque_Enable") == 1
    assert all(sim.register(i, "Torque_Enable") == 0 for i in range(1, 7))
    with SO100Follower(port=sim.port, id="arm", calibration_dir=cal_dir, latency_timer_ms=SIM_LATENCY_MS,
                       disable_torque_on_disconnect=False):
        pass
    assert all(sim.register(i, "Torque_Enable") == 1 for i in range(1, 7))


def test_dropped_packets_during_teleop_are_retried(sim, follower):
    sim.drop_rate = 0.05
    for _ in range(20):
        follower.read_joints()
    assert follower.bus.retry_count > 0


def test_leader_to_follower_teleop_step(cal_dir):
    with FeetechBusSimulator() as leader_sim, FeetechBusSimulator(speed_ticks_per_s=50_000) as follower_sim:
        leader = SO100Leader(SO100LeaderConfig(port=leader_sim.port, id="arm", calibration_dir=cal_dir, latency_timer_ms=SIM_LATENCY_MS))
        follower = SO100Follower(port=follower_sim.port, id="arm", calibration_dir=cal_dir, latency_timer_ms=SIM_LATENCY_MS)
        with leader, follower:
            assert all(leader_sim.register(i, "Torque_Enable") == 0 for i in range(1, 7))
            hand = {1: 1500, 2: 2600, 3: 1200, 4: 2900, 5: 300, 6: 2750}
            for motor_id, ticks in hand.items():
                leader_sim.set_present_position(motor_id, ticks)
            action = leader.get_action()
            assert action.positions[5] == pytest.approx(75.0)
            sent = follower.send_action(action.positions)
            np.testing.assert_allclose(sent, action.positions)
            assert follower_sim.wait_for_packets(follower_sim.packets_received)
            time.sleep(0.01)
            # same calibration on both arms: the follower's goals are the leader's ticks
            assert {i: follower_sim.register(i, "Goal_Position") for i in hand} == hand
        assert not leader.is_connected and not follower.is_connected
