"""The twin's object "tip" from ground truth: where the cube is, seen from a camera.

``observation.tip.position`` is the object's centre in the camera's frame, metres, OpenCV's
convention (x right, y down, z forward along the optical axis), so that the stored intrinsics
project it: ``u = fx * x / z + ppx``, ``v = fy * y / z + ppy`` (pixels, the image spanning
``[0, width) x [0, height)``). ``observation.tip.valid`` says whether the camera sees it: in front
of the near plane, inside the image, and (with ``line_of_sight``) with nothing drawn between the
camera and the centre. On real data an object detector writes the same two keys; in the twin the
geometry is known, so this "sensor" reads it: a recording with ``tip=sim`` carries the features
the ``*+tip`` training presets load, at no annotation cost.

The camera's pose is read from the world at every tick, so the front camera's per-episode jitter
(``sim.randomization``) is in the numbers as it is in the images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlbench_sms.features import TIP_POSITION, TIP_VALID, FeatureSpec, tip_features
from rlbench_sms.hardware.contracts import HardwareError, Sensor, SensorReading
from rlbench_sms.sim.backend import load_mujoco
from rlbench_sms.sim.devices import SimCamera, SimCameraConfig, _make_config, _SimDevice

# MuJoCo's camera frame looks along -z with y up; OpenCV's looks along +z with y down.
MUJOCO_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


@dataclass
class SimTipConfig:
    camera: str = "front"             # the scene's camera whose frame the position is in
    body: str = "cube"                # the tracked object (its body's origin: the cube's centre)
    width: int = 640                  # that camera's image, pixels (as recorded: the in-view test)
    height: int = 480
    line_of_sight: bool = True        # valid only when no drawn geom hides the object's centre


class SimTip(_SimDevice, Sensor):
    """Ground-truth object position in a camera's frame (see the module docstring)."""

    def __init__(self, world: Mapping | Any, config: SimTipConfig | Mapping | None = None, **given):
        self.config = _make_config(SimTipConfig, config, given)
        self.name = f"sim tip ({self.config.body!r} seen by {self.config.camera!r})"
        self._setup_world(world)
        c = self.config
        # The same pinhole model as the recorded camera's stored intrinsics.
        self.intrinsics = SimCamera(self.sim_config, SimCameraConfig(
            camera=c.camera, width=int(c.width), height=int(c.height))).intrinsics
        self._mujoco = None

    def features(self) -> list[FeatureSpec]:
        return tip_features()

    def connect(self) -> None:
        world = self._open_world()
        self._mujoco = load_mujoco()
        try:
            self._camera_id = world.camera_id(self.config.camera)
            self._body_id = world.body_id(self.config.body)
        except ValueError as error:                # a name the scene lacks
            self.world = None
            raise HardwareError(self.name, str(error)) from None
        # The geom groups the cameras draw: what can hide the object in an image.
        self._drawn_groups = np.asarray(self._mujoco.MjvOption().geomgroup, np.uint8)
        self._hit = np.zeros(1, np.int32)

    def disconnect(self) -> None:
        self.world = None

    def position(self) -> np.ndarray:
        """(3,) float64: the object's centre in the camera's OpenCV frame, metres, now."""
        world = self._require_world()
        d = world.data
        origin = d.cam_xpos[self._camera_id]
        rotation = d.cam_xmat[self._camera_id].reshape(3, 3)     # columns: camera axes in world
        return MUJOCO_TO_OPENCV @ (rotation.T @ (d.xpos[self._body_id] - origin))

    def visible(self, position: np.ndarray) -> bool:
        """Whether the camera sees the object's centre at ``position`` (camera frame, m)."""
        world = self.world
        near, _ = world.clip_planes()
        x, y, z = position
        if z <= near:
            return False
        k = self.intrinsics
        u, v = k.fx * x / z + k.ppx, k.fy * y / z + k.ppy
        if not (0.0 <= u < k.width and 0.0 <= v < k.height):
            return False
        if not self.config.line_of_sight:
            return True
        d, m = world.data, world.model
        origin = d.cam_xpos[self._camera_id].copy()
        towards = d.xpos[self._body_id] - origin
        distance = self._mujoco.mj_ray(m, d, origin, towards, self._drawn_groups, 1, -1, self._hit)
        # The first drawn surface on the way to the centre is the object's own (its centre is
        # inside it, so the ray meets it at a fraction < 1 of the way).
        return distance >= 0 and self._hit[0] >= 0 and int(m.geom_bodyid[self._hit[0]]) == self._body_id

    def read(self) -> SensorReading:
        world = self._require_world()
        position = self.position()
        return SensorReading({TIP_POSITION: position.astype(np.float32),
                              TIP_VALID: np.array([self.visible(position)])}, world.time)
