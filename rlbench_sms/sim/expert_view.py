"""What the scripted expert may read from the world, and that view over the twin's cell.

The expert (:mod:`rlbench_sms.sim.expert`) is written against :class:`ExpertView` only, so it
never depends on how the world is built. :class:`SceneView` implements it over the twin's
``MjModel``/``MjData`` by the names in ``rlbench_sms/sim/cell.xml`` and ``scene.py``; what only
the world knows (its clock, the episode's task and press force) it asks through callables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from rlbench_sms.features import SO100_MOTORS
from rlbench_sms.hardware.contracts import HardwareError
from rlbench_sms.sim.backend import load_mujoco

mujoco = load_mujoco()          # MUJOCO_GL is set before MuJoCo's first import (rendering)

DEVICE = "scripted expert"


@runtime_checkable
class ExpertView(Protocol):
    """What the expert reads from the world; nothing else. World frame, metres, radians,
    newtons; values for the current episode (after the world's reset)."""

    model: mujoco.MjModel      # the world's model (the expert keeps its own MjData for the IK)

    def time(self) -> float:
        """Simulated seconds (the stamp of the expert's readings)."""

    def task_name(self) -> str:
        """The episode's task: ``pick_place``, ``push`` or ``press``."""

    def joint_positions(self) -> np.ndarray:
        """(6,) measured joint radians of the arm, SO100_MOTORS order (qpos, not the targets)."""

    def cube_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """The cube's centre (3,) and orientation quaternion (4,) w, x, y, z."""

    def cube_half_size(self) -> float:
        """Half the cube's edge."""

    def bin_position(self) -> np.ndarray:
        """(3,) the centre of the bin's opening: x, y of its centre, z of its rim (pick_place)."""

    def push_target(self) -> np.ndarray:
        """(3,) where the cube's centre should end on the table; z is ignored (push)."""

    def press_target_force(self) -> float:
        """The force to press the cube with (press)."""

    def wrist_force(self) -> np.ndarray:
        """(3,) the wrist F/T sensor's force, any fixed frame of the gripper, tared or not: the
        expert tares it itself just before contact and uses the magnitude of the change."""


@dataclass(frozen=True)
class SceneNames:
    """Names in the twin's cell model (rlbench_sms/sim/cell.xml and scene.py) that
    :class:`SceneView` reads."""

    cube_body: str = "cube"
    cube_geom: str = "cube_geom"          # a box: its size[0] is the half edge
    bin_body: str = "bin"                 # origin = the floor's centre; the rim = its geoms' top
    target_body: str = "target"           # the push goal
    force_sensor: str = "ft_force"        # MuJoCo force sensor at the wrist (3 values)
    press_force_param: str = "target_force_n"   # the press episode's target force, in its layout
    prefix: str = ""                      # of the arm's joint names
    joints: tuple[str, ...] = SO100_MOTORS


class SceneView:
    """An :class:`ExpertView` over the twin's ``MjModel``/``MjData`` (read only): the cell's
    bodies by name, plus three callables for what only the world knows (its clock and the
    episode's task and press force). A world wires it as
    ``SceneView(world.model, world.data, lambda: world.time, lambda: task, lambda: force)``."""

    def __init__(self, model, data, time: Callable[[], float], task_name: Callable[[], str],
                 press_target_force: Callable[[], float], names: SceneNames | None = None):
        self.model, self._data = model, data
        self._time, self._task, self._force = time, task_name, press_target_force
        n = names or SceneNames()

        def find(kind, name: str) -> int:
            index = mujoco.mj_name2id(model, kind, name)
            if index < 0:
                raise HardwareError(DEVICE, f"the world's model has no {kind.name[6:].lower()} "
                                    f"named {name!r}")
            return index

        obj = mujoco.mjtObj
        self._qpos = [int(model.jnt_qposadr[find(obj.mjOBJ_JOINT, n.prefix + j)]) for j in n.joints]
        self._cube = find(obj.mjOBJ_BODY, n.cube_body)
        self._cube_geom = find(obj.mjOBJ_GEOM, n.cube_geom)
        self._bin = find(obj.mjOBJ_BODY, n.bin_body)
        self._target = find(obj.mjOBJ_BODY, n.target_body)
        sensor = find(obj.mjOBJ_SENSOR, n.force_sensor)
        self._force_adr = slice(int(model.sensor_adr[sensor]), int(model.sensor_adr[sensor]) + 3)
        bin_geoms = np.flatnonzero(model.geom_bodyid == self._bin)
        # The rim above the bin's origin: the highest top face of its (axis-aligned box) geoms.
        self._rim_m = float(max(model.geom_pos[g][2] + model.geom_size[g][2] for g in bin_geoms))

    def time(self) -> float:
        return float(self._time())

    def task_name(self) -> str:
        return str(self._task())

    def joint_positions(self) -> np.ndarray:
        return self._data.qpos[self._qpos].copy()

    def cube_pose(self) -> tuple[np.ndarray, np.ndarray]:
        return self._data.xpos[self._cube].copy(), self._data.xquat[self._cube].copy()

    def cube_half_size(self) -> float:
        return float(self.model.geom_size[self._cube_geom][0])

    def bin_position(self) -> np.ndarray:
        return self._data.xpos[self._bin] + [0.0, 0.0, self._rim_m]

    def push_target(self) -> np.ndarray:
        return self._data.xpos[self._target].copy()

    def press_target_force(self) -> float:
        return float(self._force())

    def wrist_force(self) -> np.ndarray:
        return self._data.sensordata[self._force_adr].copy()


_VIEW_METHODS = ("time", "task_name", "joint_positions", "cube_pose", "cube_half_size",
                 "bin_position", "push_target", "press_target_force", "wrist_force")


# The SimWorld attributes world_view() reads (rlbench_sms/sim/world.py).
_WORLD_ATTRIBUTES = ("model", "data", "time", "task", "layout")


def world_view(world, names: SceneNames | None = None) -> SceneView:
    """The :class:`SceneView` of the twin's ``SimWorld``: its model and data, its ``time``, the
    episode's ``task`` and, for ``press``, the target force from the episode's layout
    (``world.layout.params[names.press_force_param]``)."""
    n = names or SceneNames()

    def press_force() -> float:
        params = world.layout.params
        if n.press_force_param not in params:
            raise HardwareError(DEVICE, f"the {world.task} episode's layout has no "
                                f"{n.press_force_param!r} (its keys: {', '.join(sorted(params))})")
        return float(params[n.press_force_param])

    return SceneView(world.model, world.data, lambda: world.time, lambda: world.task, press_force, n)


def expert_view(world: object) -> ExpertView:
    """The :class:`ExpertView` of ``world``: the ``sim`` config (a mapping: the process's shared
    ``SimWorld`` for it), a world with ``expert_view()``, a ``SimWorld``, or a view itself. One
    readable error when what it gets lacks part of the interface."""
    if isinstance(world, Mapping):
        from rlbench_sms.sim.world import shared_world     # the twin's world, built once per config
        world = shared_world(world)
    if hasattr(world, "expert_view"):
        view = world.expert_view()
    elif all(hasattr(world, name) for name in _WORLD_ATTRIBUTES) and not hasattr(world, "task_name"):
        view = world_view(world)
    else:
        view = world
    missing = [name for name in ("model",) + _VIEW_METHODS if not hasattr(view, name)]
    if missing:
        raise HardwareError(DEVICE, f"{type(view).__name__} is not an ExpertView: it lacks "
                            f"{', '.join(missing)}")
    return view
