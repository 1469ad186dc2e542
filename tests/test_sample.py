"""The bundled sample (what `make demo` builds): the twin's scripted expert recorded by record.py's
own path, a valid v3.0 dataset where the arm, depth, force and the tip carry information, built
atomically."""

import numpy as np
import pytest

from optional_deps import require_mujoco_rendering
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.sample import SampleConfig, build_sample, main
from rlbench_sms.data.validate import validate
from rlbench_sms.features import (ACTION, FORCE, STATE, TIP_POSITION, TIP_VALID, depth_key, image_key,
                                  tip_features)

pytest.importorskip("mujoco")
FPS = 30


@pytest.fixture(scope="module")
def sim_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("sim_cache"))


def pixel(intrinsics: dict, position: np.ndarray) -> tuple[int, int]:
    """Where the stored intrinsics put a camera-frame point (OpenCV: x right, y down, z forward)."""
    x, y, z = position
    return int(intrinsics["fx"] * x / z + intrinsics["ppx"]), int(intrinsics["fy"] * y / z + intrinsics["ppy"])


def test_small_sample_is_valid_and_informative(small_sample):
    summary = validate(small_sample)
    assert summary.episodes == 4 and summary.frames == 4 * FPS
    meta = DatasetMeta.load(small_sample)
    # The twin's recording: its expert on pick_place, episode i laid out from seed i.
    assert [e.extra["sim/seed"] for e in meta.episodes] == [0, 1, 2, 3]
    assert all(e.extra["sim/task"] == "pick_place" for e in meta.episodes)
    assert meta.tasks == ["put the red cube in the bin"]
    for spec in tip_features():                     # the old sample's keys and dtypes
        assert (meta.features[spec.key].dtype, tuple(meta.features[spec.key].shape)) == (spec.dtype, spec.shape)
    depth_spec = meta.features[depth_key("front")]
    intrinsics = depth_spec.info["intrinsics"]
    assert intrinsics["width"] == 64 and depth_spec.info["aligned_to"] == image_key("front")
    with DatasetReader(small_sample) as r:
        columns = r.load_columns([STATE, ACTION, FORCE, TIP_POSITION, TIP_VALID])
        ep = r.episodes[0]
        times = [0.0, 0.9]
        front = r.frames(image_key("front"), ep, times)
        wrist = r.frames(image_key("wrist"), ep, times)
        depth = r.frames(depth_key("front"), ep, times)
    first = slice(0, FPS)
    for key in (STATE, ACTION):                     # the arm moves in the approach
        assert np.ptp(columns[key][first, :4], axis=0).max() > 10, key
    # Tared, then the arm's accelerations show: tens of mN (the gripper's own weight is
    # compensated, so tilting the wrist alone reads ~0).
    assert np.abs(columns[FORCE]).max() > 0.005
    assert np.abs(columns[FORCE][0]).max() < 1e-4
    assert columns[TIP_VALID].all()                 # the cube is in view while the arm approaches
    assert depth.dtype == np.uint16 and (depth > 0).mean() > 0.8
    assert not np.array_equal(depth[0], depth[1])   # the scene moves in depth
    assert np.abs(front.astype(int) - wrist.astype(int)).mean() > 10
    # The tip is where the images show the cube: a red pixel, at the tip's depth (the front face
    # is nearer than the centre by at most half the cube's diagonal).
    tip = columns[TIP_POSITION][0]
    u, v = pixel(intrinsics, tip)
    r_, g_, b_ = front[0].reshape(48, 64, 3)[v, u].astype(int)
    assert r_ > g_ + 60 and r_ > b_ + 60
    cube_mm = float(depth[0].reshape(48, 64)[v, u])
    assert 0 < tip[2] * 1000 - cube_mm < 0.03 * 1000


def test_full_episode_grasps_and_the_tip_follows_the_cube(tmp_path, sim_cache):
    """One whole episode (tiny images): the expert succeeds, the grasp shows in the force, the
    tip moves with the cube and is not valid while the jaws hide it."""
    require_mujoco_rendering()
    config = SampleConfig(height=24, width=32, cache_dir=sim_cache)
    root = build_sample(tmp_path / "sample", episodes=1, config=config, seed=3, show_progress=False)
    meta = DatasetMeta.load(root)
    assert meta.episodes[0].extra["sim/seed"] == 3 and meta.episodes[0].extra["sim/success"] is True
    with DatasetReader(root) as r:
        columns = r.load_columns([FORCE, TIP_POSITION, TIP_VALID])
    assert len(columns[FORCE]) == round(config.episode_seconds * FPS)
    assert np.linalg.norm(columns[FORCE][:, :3], axis=1).max() > 0.5       # holding and moving the cube
    tip, valid = columns[TIP_POSITION], columns[TIP_VALID].reshape(-1)
    assert np.linalg.norm(tip[-1] - tip[0]) > 0.1                          # carried into the bin
    assert valid[0] and not valid.all()


def test_same_seed_same_sample(tmp_path, sim_cache, small_sample):
    config = SampleConfig(height=48, width=64, episode_seconds=1.0, cache_dir=sim_cache)
    again = build_sample(tmp_path / "again", episodes=1, config=config, show_progress=False)
    keys = [STATE, ACTION, FORCE, TIP_POSITION, TIP_VALID]
    with DatasetReader(small_sample) as a, DatasetReader(again) as b:
        first, second = a.load_columns(keys), b.load_columns(keys)
        depth = [r.frames(depth_key("front"), r.episodes[0], [0.5])[0] for r in (a, b)]
    for key in keys:
        np.testing.assert_array_equal(first[key][:FPS], second[key], err_msg=key)
    np.testing.assert_array_equal(*depth)


def test_sample_refuses_to_overwrite_without_flag(tmp_path, capsys, sim_cache):
    config = SampleConfig(height=24, width=32, episode_seconds=0.2, cache_dir=sim_cache)
    root = build_sample(tmp_path / "sample", episodes=1, config=config, show_progress=False)
    with pytest.raises(FileExistsError):
        build_sample(root, episodes=1, config=config, show_progress=False)
    assert main([str(root)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert not (tmp_path / "sample.building").exists()
