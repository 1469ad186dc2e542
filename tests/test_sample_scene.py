"""The procedural robot cell behind the sample dataset: deterministic, plausible, informative."""

from __future__ import annotations

import numpy as np
import pytest

from rlbench_sms.data.sample_scene import SampleEpisode, SceneConfig, render_episode
from rlbench_sms.features import FORCE_TORQUE_NAMES, SO100_JOINT_NAMES, CameraIntrinsics

SMALL = SceneConfig(height=48, width=64, episode_seconds=2.0)
TINY = SceneConfig(height=24, width=32, episode_seconds=0.5)


@pytest.fixture(scope="module")
def episode() -> SampleEpisode:
    return render_episode(3, SMALL)


def test_deterministic_per_seed():
    first, again, other = render_episode(3, TINY), render_episode(3, TINY), render_episode(4, TINY)
    for a, b in [(first.state, again.state), (first.action, again.action), (first.force, again.force),
                 (first.images["front"], again.images["front"]), (first.images["wrist"], again.images["wrist"]),
                 (first.depth["front"], again.depth["front"]), (first.object_position, again.object_position)]:
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(other.state, first.state)
    assert not np.array_equal(other.images["front"], first.images["front"])


def test_shapes_and_dtypes(episode):
    n = 60
    assert episode.task == SMALL.task
    for arr in (episode.state, episode.action):
        assert arr.shape == (n, len(SO100_JOINT_NAMES)) and arr.dtype == np.float32
    assert episode.force.shape == (n, len(FORCE_TORQUE_NAMES)) and episode.force.dtype == np.float32
    assert set(episode.images) == {"front", "wrist"}
    for img in episode.images.values():
        assert img.shape == (n, 48, 64, 3) and img.dtype == np.uint8
    assert episode.depth["front"].shape == (n, 48, 64) and episode.depth["front"].dtype == np.uint16
    k = episode.intrinsics["front"]
    assert isinstance(k, CameraIntrinsics) and (k.width, k.height) == (64, 48)
    assert episode.object_position.shape == (n, 3)


def test_depth_is_plausible(episode):
    depth = episode.depth["front"]
    valid = depth > 0
    assert valid.mean() > 0.8
    assert (~valid).any()   # holes at edges and dropout blobs, like a real sensor
    assert depth[valid].min() >= 200 and depth[valid].max() <= 2000


@pytest.mark.parametrize("seed", [0, 1])
def test_depth_sees_the_cube(seed):
    ep = render_episode(seed, SceneConfig(height=96, width=128, episode_seconds=0.1))
    k = ep.intrinsics["front"]
    x, y, z = ep.object_position[0]   # cube centre in the front camera frame at the start
    u, v = int(x / z * k.fx + k.ppx), int(y / z * k.fy + k.ppy)
    depth = ep.depth["front"][0].astype(float)
    centre = depth[v - 1: v + 2, u - 1: u + 2]
    rows, cols = np.ogrid[: depth.shape[0], : depth.shape[1]]
    ring = depth[(np.hypot(rows - v, cols - u) > 6) & (np.hypot(rows - v, cols - u) < 9)]
    cube_mm, table_mm = np.median(centre[centre > 0]), np.median(ring[ring > 0])
    assert abs(cube_mm - z * 1000) < 40          # the cube's surface, near its centre's depth
    assert table_mm - cube_mm > 15               # and clearly in front of the table around it
    # The RGB agrees: the cube is red.
    r, g, b = ep.images["front"][0, v, u].astype(int)
    assert r > g + 60 and r > b + 60


def test_force_rises_with_contact(episode):
    force = episode.force
    fxyz = np.linalg.norm(force[:, :3], axis=1)
    assert fxyz[:5].max() < 0.3            # free motion at the start, tared
    assert abs(force[:5].mean(0)).max() < 0.1
    assert fxyz.max() > 5.0                # pressing on the cube
    assert np.hypot(force[:, 0], force[:, 1]).max() > 0.8   # sliding it sideways
    assert (fxyz > 1.0).sum() >= 5         # contact lasts, it is not a noise spike


def test_cube_is_pushed(episode):
    moved = np.linalg.norm(episode.object_position[-1] - episode.object_position[0])
    assert 0.03 < moved < 0.08


def test_joints_plausible_and_action_leads(episode):
    for arr in (episode.state, episode.action):
        assert np.all(np.abs(arr[:, :5]) < 180)
        assert arr[:, 5].min() >= 0 and arr[:, 5].max() <= 100
    assert np.ptp(episode.state[:, :4], axis=0).min() > 5   # the arm actually moves
    # The state follows the command: it matches the action best one or more steps later.
    err = [np.abs(episode.state[lag:] - episode.action[: len(episode.action) - lag]).mean() for lag in range(4)]
    assert int(np.argmin(err)) >= 1


def test_cameras_differ(episode):
    front, wrist = (episode.images[c].astype(float) for c in ("front", "wrist"))
    assert np.abs(front - wrist).mean() > 10
    assert front.std() > 5 and wrist.std() > 5
