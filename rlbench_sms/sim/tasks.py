"""The twin's tasks: where each episode puts the objects (the layout), by name.

A task is registered under the name ``sim.task`` selects (``pick_place``, ...). At every reset
:meth:`SimWorld.reset <rlbench_sms.sim.world.SimWorld.reset>` restores the cell, randomises its
appearance, puts the arm at home and then calls the task's :meth:`Task.place` with its own
random stream and its settings (``sim.tasks.<name>`` in conf/sim/default.yaml); the task moves
the objects it uses (cube: free joint; bin, target: mocap bodies) and parks the others out of
sight. What it returns is the episode's variant: stored as ``sim/<key>`` episode metadata, and
optionally the episode's task text (e.g. a target force named in the instruction).

Whether an episode succeeded is :mod:`rlbench_sms.sim.success`'s call (one detector per task,
its thresholds under ``sim.tasks.<name>.success``, a key :func:`placement_settings` leaves out).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rlbench_sms.sim.config import SimConfigError, build_settings

if TYPE_CHECKING:
    from rlbench_sms.sim.world import SimWorld

# Scene names the tasks use (cell.xml).
CUBE_BODY = "cube"
BIN_BODY = "bin"
TARGET_BODY = "target"

MetadataValue = bool | int | float | str
SUCCESS_KEY = "success"            # sim.tasks.<name>.success: the detector's thresholds, not placement


@dataclass(frozen=True)
class Layout:
    """An episode's variant: ``params`` (scalars, stored as ``sim/<key>``) and, when the task
    phrases its own instruction, ``instruction`` (else the dataset's ``single_task`` is used)."""

    params: Mapping[str, MetadataValue] = field(default_factory=dict)
    instruction: str | None = None


class Task(abc.ABC):
    """A task's placement of the objects at reset."""

    name: str = ""

    @abc.abstractmethod
    def place(self, world: "SimWorld", rng: np.random.Generator, settings: Mapping[str, Any]) -> Layout:
        """Put the objects for a new episode (the arm is at home; the cube, at its place in
        cell.xml, has its randomised size ``world.cube_size_m``); return the variant."""


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` under ``task.name`` (a later registration of the same name replaces it)."""
    if not task.name:
        raise ValueError(f"{type(task).__name__}: a task needs a name")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise SimConfigError(f"sim.task={name!r}: unknown task (known: {', '.join(sorted(TASKS))})") from None


def placement_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A task's settings without its success thresholds (those are the detector's)."""
    return {k: v for k, v in dict(settings).items() if k != SUCCESS_KEY}


def uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return float(rng.uniform(low, high))


def yaw_quat(yaw_rad: float) -> np.ndarray:
    """(w, x, y, z) of a rotation by ``yaw_rad`` about world z."""
    return np.array([np.cos(yaw_rad / 2), 0.0, 0.0, np.sin(yaw_rad / 2)])


# ---------------------------------------------------------------------------------- pick_place
@dataclass(frozen=True)
class PickPlaceSettings:
    """Regions on the table (world frame, metres: x forward from the arm's base, y to its left)."""

    cube_x: tuple[float, float] = (0.17, 0.27)
    cube_y: tuple[float, float] = (-0.12, 0.12)
    cube_yaw_deg: tuple[float, float] = (-45.0, 45.0)     # a cube repeats every 90 degrees
    bin_x: tuple[float, float] = (0.15, 0.27)
    bin_y: tuple[float, float] = (-0.20, 0.20)
    min_separation_m: float = 0.13     # cube centre to bin centre: the cube clears the bin's walls
    max_tries: int = 200               # rejection sampling of the bin position


class PickPlace(Task):
    """A cube somewhere on the table, the open bin elsewhere within reach; the target is parked."""

    name = "pick_place"

    def place(self, world: "SimWorld", rng: np.random.Generator, settings: Mapping[str, Any]) -> Layout:
        s = build_settings(PickPlaceSettings, placement_settings(settings), f"sim.tasks.{self.name}")
        cube_xy = np.array([uniform(rng, s.cube_x), uniform(rng, s.cube_y)])
        yaw = np.deg2rad(uniform(rng, s.cube_yaw_deg))
        for _ in range(s.max_tries):
            bin_xy = np.array([uniform(rng, s.bin_x), uniform(rng, s.bin_y)])
            if np.linalg.norm(bin_xy - cube_xy) >= s.min_separation_m:
                break
        else:
            raise SimConfigError(f"sim.tasks.{self.name}: no bin position {s.min_separation_m} m from "
                                 f"the cube in {s.max_tries} tries (widen bin_x/bin_y)")
        half = world.cube_size_m / 2
        world.set_free_body_pose(CUBE_BODY, [cube_xy[0], cube_xy[1], half], yaw_quat(yaw))
        world.set_mocap_pose(BIN_BODY, [bin_xy[0], bin_xy[1], 0.0])
        world.park(TARGET_BODY)
        return Layout({"cube_x": float(cube_xy[0]), "cube_y": float(cube_xy[1]),
                       "cube_yaw_deg": float(np.rad2deg(yaw)),
                       "bin_x": float(bin_xy[0]), "bin_y": float(bin_xy[1])})


register_task(PickPlace())


def inside(xy: np.ndarray, x: tuple[float, float], y: tuple[float, float]) -> bool:
    return bool(x[0] <= xy[0] <= x[1] and y[0] <= xy[1] <= y[1])


# ---------------------------------------------------------------------------------- push
@dataclass(frozen=True)
class PushSettings:
    """The cube, the target marker and the room behind the cube that a push starts from (world
    frame, metres). Every one of those points lies in the reachable region ``reach_x``/``reach_y``."""

    cube_x: tuple[float, float] = (0.17, 0.25)
    cube_y: tuple[float, float] = (-0.10, 0.10)
    cube_yaw_deg: tuple[float, float] = (-45.0, 45.0)
    distance_m: tuple[float, float] = (0.06, 0.11)     # cube centre to target centre
    reach_x: tuple[float, float] = (0.13, 0.29)
    reach_y: tuple[float, float] = (-0.15, 0.15)
    approach_room_m: float = 0.05      # behind the cube (away from the target): where the jaws start
    max_tries: int = 200               # rejection sampling of the target


class Push(Task):
    """A cube on the table and a flat target marker a few centimetres away in a random direction,
    such that the push (from behind the cube to the target) stays within reach; the bin is parked."""

    name = "push"

    def place(self, world: "SimWorld", rng: np.random.Generator, settings: Mapping[str, Any]) -> Layout:
        s = build_settings(PushSettings, placement_settings(settings), f"sim.tasks.{self.name}")
        for _ in range(s.max_tries):
            cube_xy = np.array([uniform(rng, s.cube_x), uniform(rng, s.cube_y)])
            heading = rng.uniform(-np.pi, np.pi)
            u = np.array([np.cos(heading), np.sin(heading)])
            target_xy = cube_xy + uniform(rng, s.distance_m) * u
            start_xy = cube_xy - s.approach_room_m * u
            if inside(target_xy, s.reach_x, s.reach_y) and inside(start_xy, s.reach_x, s.reach_y):
                break
        else:
            raise SimConfigError(f"sim.tasks.{self.name}: no target within reach in {s.max_tries} "
                                 "tries (widen reach_x/reach_y or shorten distance_m)")
        yaw = np.deg2rad(uniform(rng, s.cube_yaw_deg))
        world.set_free_body_pose(CUBE_BODY, [cube_xy[0], cube_xy[1], world.cube_size_m / 2], yaw_quat(yaw))
        world.set_mocap_pose(TARGET_BODY, [target_xy[0], target_xy[1], 0.0])
        world.park(BIN_BODY)
        return Layout({"cube_x": float(cube_xy[0]), "cube_y": float(cube_xy[1]),
                       "cube_yaw_deg": float(np.rad2deg(yaw)),
                       "target_x": float(target_xy[0]), "target_y": float(target_xy[1])})


register_task(Push())


# ---------------------------------------------------------------------------------- press
@dataclass(frozen=True)
class PressSettings:
    """Where the cube lies (metres) and the force to press it with: uniform in ``force_n``,
    rounded to ``force_step_n`` so that the instruction names it exactly."""

    cube_x: tuple[float, float] = (0.20, 0.22)       # a small patch: see conf/sim/default.yaml
    cube_y: tuple[float, float] = (-0.02, 0.02)
    cube_yaw_deg: tuple[float, float] = (-15.0, 15.0)
    force_n: tuple[float, float] = (2.0, 8.0)
    force_step_n: float = 0.5
    instruction: str = "press the red cube down with {force_n:g} N"   # str.format(force_n=...)

    def __post_init__(self) -> None:
        if not 0 < self.force_n[0] <= self.force_n[1]:
            raise ValueError(f"force_n: need 0 < low <= high, got {list(self.force_n)}")
        if self.force_step_n <= 0:
            raise ValueError(f"force_step_n: must be positive, got {self.force_step_n}")
        try:
            self.instruction.format(force_n=1.0)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"instruction: {self.instruction!r} is not a template of {{force_n}} "
                             f"({error})") from None


class Press(Task):
    """A cube on the table, to be pressed down with a force named in the episode's instruction
    (``target_force_n`` in the layout, which the scripted expert reads); bin and target parked."""

    name = "press"

    def place(self, world: "SimWorld", rng: np.random.Generator, settings: Mapping[str, Any]) -> Layout:
        s = build_settings(PressSettings, placement_settings(settings), f"sim.tasks.{self.name}")
        cube_xy = np.array([uniform(rng, s.cube_x), uniform(rng, s.cube_y)])
        yaw = np.deg2rad(uniform(rng, s.cube_yaw_deg))
        # The multiples of force_step_n within force_n (a hair of slack for float rounding).
        low = np.ceil(s.force_n[0] / s.force_step_n - 1e-9)
        high = np.floor(s.force_n[1] / s.force_step_n + 1e-9)
        if high < low:
            raise SimConfigError(f"sim.tasks.{self.name}: no multiple of force_step_n={s.force_step_n} "
                                 f"in force_n={list(s.force_n)}")
        force = float(rng.integers(int(low), int(high) + 1) * s.force_step_n)
        world.set_free_body_pose(CUBE_BODY, [cube_xy[0], cube_xy[1], world.cube_size_m / 2], yaw_quat(yaw))
        world.park(BIN_BODY)
        world.park(TARGET_BODY)
        return Layout({"cube_x": float(cube_xy[0]), "cube_y": float(cube_xy[1]),
                       "cube_yaw_deg": float(np.rad2deg(yaw)), "target_force_n": force},
                      instruction=s.instruction.format(force_n=force))


register_task(Press())
