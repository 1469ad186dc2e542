"""The twin's tasks: where each episode puts the objects (the layout), by name.

A task is registered under the name ``sim.task`` selects (``pick_place``, ...). At every reset
:meth:`SimWorld.reset <rlbench_sms.sim.world.SimWorld.reset>` restores the cell, randomises its
appearance, puts the arm at home and then calls the task's :meth:`Task.place` with its own
random stream and its settings (``sim.tasks.<name>`` in conf/sim/default.yaml); the task moves
the objects it uses (cube: free joint; bin, target: mocap bodies) and parks the others out of
sight. What it returns is the episode's variant: stored as ``sim/<key>`` episode metadata, and
optionally the episode's task text (e.g. a target force named in the instruction).

Success detection belongs here too (one detector per task, reading the world's state) and is
added with the tasks that need it; nothing here judges an episode yet.
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
        s = build_settings(PickPlaceSettings, dict(settings), f"sim.tasks.{self.name}")
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
