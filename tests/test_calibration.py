"""Calibration files (LeRobot layout), validation, normalisation, and the calibrate/find_ports
tools driven by scripted input against the pty servo-bus simulator."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from rlbench_sms.hardware.calibration import (CalibrationError, MotorCalibration, Normalizer, NormMode,
                                              lerobot_calibration_root, load_calibration,
                                              save_calibration)
from rlbench_sms.hardware.sim.feetech_bus import INST_SYNC_READ, FeetechBusSimulator
from rlbench_sms.hardware.so100 import MOTOR_IDS, calibration_path, so100_norm_modes
from rlbench_sms.tools import calibrate, find_ports
from rlbench_sms.tools.find_ports import PortInfo


# The simulated bus answers from a thread of the test process: on a loaded 2-core machine it can miss
# a few reply windows in a row, which a real bus does not; a long latency timer and more retries.
PATIENT_BUS = ("--latency-timer-ms", "100", "--retries", "10")


def so100_calibration(**changes) -> dict[str, MotorCalibration]:
    calib = {name: MotorCalibration(i, 0, 10 * i - 30, 1000 + i, 3000 - i) for name, i in MOTOR_IDS.items()}
    calib["wrist_roll"] = MotorCalibration(5, 0, 0, 0, 4095)
    calib.update(changes)
    return calib


def test_round_trip_and_lerobot_layout(tmp_path):
    path = save_calibration(tmp_path / "robots" / "so_follower" / "arm.json", so100_calibration())
    assert load_calibration(path, MOTOR_IDS) == so100_calibration()
    text = path.read_text()
    # LeRobot's draccus dump: one object per motor, fields in this order, indent 4.
    assert text.startswith('{\n    "shoulder_pan": {\n        "id": 1,\n        "drive_mode": 0,\n'
                           '        "homing_offset": -20,\n        "range_min": 1001,\n'
                           '        "range_max": 2999\n    },')
    assert list(json.loads(text)) == list(MOTOR_IDS)


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("mutate, motor, words", [
    (lambda d: d.pop("elbow_flex"), "elbow_flex", "missing"),
    (lambda d: d["wrist_flex"].update(range_min=3000, range_max=1000), "wrist_flex", "range_min 3000 >= range_max 1000"),
    (lambda d: d["gripper"].update(range_max=5000), "gripper", "range_max 5000 outside [0, 4095]"),
    (lambda d: d["gripper"].update(range_min=-1), "gripper", "range_min -1 outside"),
    (lambda d: d["shoulder_lift"].update(homing_offset=3000), "shoulder_lift", "homing_offset 3000 outside"),
    (lambda d: d["shoulder_pan"].update(drive_mode=2), "shoulder_pan", "drive_mode 2"),
    (lambda d: d["shoulder_pan"].update(id=4), "shoulder_pan", "id 4 but"),
    (lambda d: d["shoulder_pan"].update(range_min="1000"), "shoulder_pan", "must be an integer"),
    (lambda d: d["elbow_flex"].pop("homing_offset"), "elbow_flex", "missing 'homing_offset'"),
    (lambda d: d.update(tail={"id": 7}), "tail", "not a motor of this arm"),
])
def test_validation_errors_name_file_and_motor(tmp_path, mutate, motor, words):
    data = json.loads(json.dumps({n: vars(c) for n, c in so100_calibration().items()}))
    mutate(data)
    path = _write(tmp_path / "bad.json", data)
    with pytest.raises(CalibrationError) as info:
        load_calibration(path, MOTOR_IDS)
    message = str(info.value)
    assert str(path) in message and repr(motor) in message and words in message
    assert "\n" not in message


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match="unreadable"):
        load_calibration(bad)
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration(tmp_path / "nope.json")


def _normalizer(**changes):
    return Normalizer(so100_calibration(**changes), so100_norm_modes())


def test_degrees_mode_matches_lerobot_formula():
    norm = _normalizer(elbow_flex=MotorCalibration(3, 0, 0, 1000, 3000))
    assert norm.motor_to_units("elbow_flex", 2000) == 0.0
    assert norm.motor_to_units("elbow_flex", 3000) == pytest.approx(1000 * 360 / 4095)
    assert norm.motor_to_units("elbow_flex", 4000) == pytest.approx(2000 * 360 / 4095)   # not clamped
    # ticks -> degrees -> ticks is exact over the range; LeRobot's int() truncation is within 1 tick
    for raw in range(1000, 3001, 7):
        deg = norm.motor_to_units("elbow_flex", raw)
        assert norm.motor_to_raw("elbow_flex", deg) == raw
        assert abs(int(deg * 4095 / 360 + 2000) - raw) <= 1
    # degrees -> ticks -> degrees within half a tick
    for deg in np.linspace(-80, 80, 33):
        back = norm.motor_to_units("elbow_flex", norm.motor_to_raw("elbow_flex", deg))
        assert abs(back - deg) <= 360 / 4095 / 2 + 1e-9
    # drive_mode does not apply to degrees (as in LeRobot)
    inverted = _normalizer(elbow_flex=MotorCalibration(3, 1, 0, 1000, 3000))
    assert inverted.motor_to_units("elbow_flex", 2500) == norm.motor_to_units("elbow_flex", 2500)


def test_gripper_range_0_100_and_drive_mode_inversion():
    norm = _normalizer(gripper=MotorCalibration(6, 0, 0, 2000, 3000))
    assert [norm.motor_to_units("gripper", r) for r in (2000, 2500, 3000, 1500, 3500)] == [0, 50, 100, 0, 100]
    assert norm.motor_to_raw("gripper", 25.0) == 2250
    assert norm.motor_to_raw("gripper", 150.0) == 3000                         # clamped
    inverted = _normalizer(gripper=MotorCalibration(6, 1, 0, 2000, 3000))
    assert inverted.motor_to_units("gripper", 2000) == 100
    assert inverted.motor_to_units("gripper", 2250) == 75
    assert inverted.motor_to_raw("gripper", 75.0) == 2250
    for raw in range(2000, 3001, 13):
        for n in (norm, inverted):
            assert n.motor_to_raw("gripper", n.motor_to_units("gripper", raw)) == raw


def test_range_m100_100_mode_with_drive_mode():
    calib = so100_calibration(shoulder_pan=MotorCalibration(1, 1, 0, 1000, 3000))
    norm = Normalizer(calib, so100_norm_modes(use_degrees=False))
    assert norm.modes["shoulder_pan"] is NormMode.RANGE_M100_100 and norm.modes["gripper"] is NormMode.RANGE_0_100
    assert norm.motor_to_units("shoulder_pan", 1000) == 100            # negated by drive_mode
    assert norm.motor_to_units("shoulder_pan", 1500) == 50
    assert norm.motor_to_raw("shoulder_pan", 50.0) == 1500
    assert norm.motor_to_units("shoulder_lift", 1002) == -100


def test_vector_conversion_and_limits():
    norm = _normalizer()
    raw = {name: 2000 for name in MOTOR_IDS}
    units = norm.to_units(raw)
    assert units.dtype == np.float32 and units.shape == (6,)
    assert norm.to_raw(units) == raw
    low, high = norm.unit_limits()
    assert low[5] == 0 and high[5] == 100
    assert high[4] == pytest.approx(2047.5 * 360 / 4095) and low[4] == pytest.approx(-high[4])
    with pytest.raises(ValueError, match="expected 6 values"):
        norm.to_raw([1, 2, 3])


def test_calibration_location_follows_lerobot(monkeypatch, tmp_path):
    for var in ("HF_LEROBOT_CALIBRATION", "HF_LEROBOT_HOME", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert lerobot_calibration_root() == tmp_path / ".cache/huggingface/lerobot/calibration"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert lerobot_calibration_root() == tmp_path / "hf/lerobot/calibration"
    monkeypatch.setenv("HF_LEROBOT_CALIBRATION", str(tmp_path / "cal"))
    assert calibration_path("follower", "arm") == tmp_path / "cal/robots/so_follower/arm.json"
    assert calibration_path("leader", "arm") == tmp_path / "cal/teleoperators/so_leader/arm.json"
    legacy = save_calibration(tmp_path / "cal/robots/so101_follower/old.json", so100_calibration())
    assert calibration_path("follower", "old", variant="so101") == legacy     # LeRobot v0.3 folder
    assert calibration_path("follower", "arm", str(tmp_path / "mine")) == tmp_path / "mine/arm.json"


# --- the calibrate tool ----------------------------------------------------------------------

class ScriptedInput:
    """A stdin whose n-th line runs the n-th step first (the user moving the arm)."""

    def __init__(self, *steps):
        self.steps = list(steps)

    def readline(self) -> str:
        if not self.steps:
            return ""
        self.steps.pop(0)()
        return "\n"


# Physical encoder angles of the "middle" pose, and the per-joint ranges swept around it.
MIDDLE = {1: 3000, 2: 100, 3: 2047, 4: 1500, 5: 2500, 6: 1900}
SWEEP = {1: (1500, 2600), 2: (1200, 3000), 3: (900, 3100), 4: (1700, 2300), 6: (2000, 3400)}


def _sweep(sim, sweep):
    def step():
        for motor_id, (low, high) in sweep.items():
            for target in (low, high):
                sim.set_present_position(motor_id, target)
                seen = sim.instruction_counts[INST_SYNC_READ]
                assert sim.wait_for_packets(seen + 2, instruction=INST_SYNC_READ)   # polled twice
            sim.set_present_position(motor_id, (low + high) // 2)
    return step


def test_calibrate_tool_end_to_end(tmp_path):
    with FeetechBusSimulator() as sim:
        def middle():
            for motor_id, ticks in MIDDLE.items():
                sim.set_actual_position(motor_id, ticks)

        out = io.StringIO()
        code = calibrate.main([*PATIENT_BUS, "--port", sim.port, "--id", "arm", "--role", "follower",
                               "--calibration-dir", str(tmp_path), "--poll-s", "0.005"],
                              stdin=ScriptedInput(middle, _sweep(sim, SWEEP)), stdout=out)
        assert code == 0, out.getvalue()
        calib = load_calibration(tmp_path / "arm.json", MOTOR_IDS)
        for name, motor_id in MOTOR_IDS.items():
            c = calib[name]
            assert c.id == motor_id and c.drive_mode == 0
            assert c.homing_offset == MIDDLE[motor_id] - 2047       # middle pose now reads 2047
            assert (c.range_min, c.range_max) == SWEEP.get(motor_id, (0, 4095))
            # written to the motors too
            assert sim.register(motor_id, "Homing_Offset") == c.homing_offset
            assert sim.register(motor_id, "Min_Position_Limit") == c.range_min
            assert sim.register(motor_id, "Max_Position_Limit") == c.range_max
            assert sim.register(motor_id, "Torque_Enable") == 0
        assert "Calibration saved to" in out.getvalue()

        # Recalibrating keeps the previous file as a backup.
        code = calibrate.main([*PATIENT_BUS, "--port", sim.port, "--id", "arm", "--role", "follower",
                               "--calibration-dir", str(tmp_path), "--poll-s", "0.005"],
                              stdin=ScriptedInput(middle, _sweep(sim, SWEEP)), stdout=io.StringIO())
        assert code == 0 and (tmp_path / "arm.json.bak").is_file()


def test_calibrate_tool_refuses_a_joint_that_did_not_move(tmp_path, capsys):
    with FeetechBusSimulator() as sim:
        partial = {k: v for k, v in SWEEP.items() if k != 3}
        code = calibrate.main([*PATIENT_BUS, "--port", sim.port, "--id", "arm", "--role", "leader",
                               "--calibration-dir", str(tmp_path), "--poll-s", "0.005"],
                              stdin=ScriptedInput(lambda: None, _sweep(sim, partial)), stdout=io.StringIO())
    assert code == 1
    assert "['elbow_flex'] did not move" in capsys.readouterr().err
    assert not (tmp_path / "arm.json").exists()


def test_calibrate_tool_reports_a_missing_port(tmp_path, capsys):
    code = calibrate.main(["--port", str(tmp_path / "ttyACM9"), "--id", "arm", "--role", "follower",
                           "--calibration-dir", str(tmp_path)], stdin=ScriptedInput(), stdout=io.StringIO())
    assert code == 1 and "does not exist" in capsys.readouterr().err


# --- find_ports ------------------------------------------------------------------------------

def test_find_ports_diff_mode():
    ports = [PortInfo("/dev/ttyACM0", "USB Single Serial"), PortInfo("/dev/ttyACM1", "USB Single Serial")]
    listings = iter([ports, ports[:1]])
    out = io.StringIO()
    assert find_ports.main([], stdin=io.StringIO("\n"), stdout=out, lister=lambda: next(listings)) == 0
    assert "The arm's port is /dev/ttyACM1" in out.getvalue()
    listings = iter([ports, ports])
    out = io.StringIO()
    assert find_ports.main([], stdin=io.StringIO("\n"), stdout=out, lister=lambda: next(listings)) == 1
    assert "No port disappeared" in out.getvalue()
    out = io.StringIO()
    assert find_ports.main(["--list"], stdout=out, lister=lambda: ports) == 0
    assert "/dev/ttyACM0  (USB Single Serial)" in out.getvalue()
    assert isinstance(find_ports.list_ports(), list)          # the real lister runs
