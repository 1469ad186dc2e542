"""The scripted expert of the MuJoCo twin: a Teleop that solves the episode's task.

Each tick (:meth:`ScriptedExpert.get_action`) it reads the world through an :class:`ExpertView`
and returns the next joint target of a plan of phases, in the dataset's units (degrees, gripper
0-100), as a leader arm would. A phase's target is computed from the world's state when the phase
starts (so the plan follows the cube if it moved); the way there is a minimum-jerk profile whose
peak speed is the configured one (m/s for the grasp point, rad/s for its yaw, units/s for the
gripper, deg/s for joint-space moves), so the motion looks like a teleoperator's, and every joint
step is clipped to ``max_joint_speed_deg_s`` / fps, which keeps each command within the robot's
``max_relative_target``. The grasp point, its frame and the IK are those of
:mod:`rlbench_sms.sim.kinematics`.

Plans (heights relative to the cube at the start of the phase that reads it):

- ``pick_place``: above the cube (joint space, jaws open) -> descend -> close -> lift -> over the
  bin -> lower -> open -> retreat up.
- ``push``: close the jaws, above a point behind the cube (on the line target -> cube) -> down
  -> push, steering the cube back onto that line as it drifts, until its centre is at the
  target -> back off and up -> retreat up.
- ``press``: close the jaws, above the cube -> down to just above it -> settle, tare the wrist
  force -> descend slowly until the force reaches the episode's target -> hold it (admittance:
  the height follows the force error) -> release up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rlbench_sms.features import ACTION, SO100_JOINT_NAMES, FeatureSpec, joint_feature
from rlbench_sms.hardware.contracts import HardwareError, JointReading, Teleop
from rlbench_sms.sim.backend import load_mujoco
from rlbench_sms.sim.expert_view import DEVICE, ExpertView, expert_view
from rlbench_sms.sim.kinematics import (ArmKinematics, GraspPointConfig, IkConfig,
                                        top_down_rotation, wrap_angle)

mujoco = load_mujoco()          # MUJOCO_GL is set before MuJoCo's first import (rendering)

TASKS = ("pick_place", "push", "press")


@dataclass
class ScriptedExpertConfig:
    """Speeds, heights and tolerances of the plans (metres, seconds, radians; the gripper in
    dataset units, 0 = closed .. 100 = open). Defaults: see conf/teleop/scripted.yaml."""

    grasp: GraspPointConfig = field(default_factory=GraspPointConfig)
    ik: IkConfig = field(default_factory=IkConfig)
    # Speeds (peak of each minimum-jerk move).
    approach_speed_m_s: float = 0.12          # free-space moves of the grasp point
    descend_speed_m_s: float = 0.05           # the last centimetres to the cube, and lifting
    carry_speed_m_s: float = 0.10
    push_speed_m_s: float = 0.04
    press_speed_m_s: float = 0.005            # closing in on the target force
    yaw_speed_rad_s: float = 1.5
    gripper_speed_per_s: float = 120.0        # dataset units per second
    max_joint_speed_deg_s: float = 90.0       # per joint; / fps must stay <= max_relative_target
    # Gripper.
    gripper_open: float = 45.0
    gripper_closed: float = 0.0               # commanded past the cube: the servo squeezes it
    gripper_max_lead: float = 4.0             # the gripper command stays this near the measured jaws
    # Heights and clearances.
    approach_height_m: float = 0.05           # above the grasp / push / press start point
    grasp_depth_m: float = 0.011              # grasp point below the cube's top face
    static_jaw_clearance_m: float = 0.006     # approach shifted to the fixed-jaw side, off the cube
    lift_height_m: float = 0.06
    release_clearance_m: float = 0.015        # cube's bottom above the bin's rim when it is let go
    retreat_height_m: float = 0.05
    push_height_m: float = 0.0                # the closed jaws' centre above the cube's centre
    push_standoff_m: float = 0.02             # behind the cube's face before the push starts
    push_lead_m: float = 0.01                 # the jaws aim this far into the cube: they keep pushing
    push_tolerance_m: float = 0.003           # the cube's centre this near the goal (along the line): done
    push_lookahead_m: float = 0.012           # steer towards the line this far ahead of the cube
    push_timeout_s: float = 15.0
    finger_half_thickness_m: float = 0.012    # closed jaws' centre to their pushing face
    press_start_clearance_m: float = 0.01     # jaws above the cube's top when the press starts
    press_max_travel_m: float = 0.04          # give up descending after this far
    press_hold_s: float = 1.0
    press_admittance_m_per_n_s: float = 0.002  # height change per newton of force error per second
    # Phase ends.
    grasp_hold_s: float = 0.4                 # after closing, before lifting
    release_hold_s: float = 0.4
    settle_s: float = 0.3                     # still before the force is tared
    arrive_tolerance_m: float = 0.004         # measured grasp point this near the command: arrived
    settle_timeout_s: float = 1.0             # ...or this long after the move's end


def min_jerk(tau: float) -> float:
    """The minimum-jerk profile 0 -> 1 over tau in [0, 1]; its peak slope is 1.875."""
    t = min(max(tau, 0.0), 1.0)
    return t ** 3 * (10 - 15 * t + 6 * t * t)


MIN_JERK_PEAK = 1.875      # peak speed of min_jerk over a unit move in unit time


def cube_yaw(quat: np.ndarray) -> float:
    """The yaw (about world z) of the cube's x axis, from its quaternion w, x, y, z."""
    rot = np.empty(9)
    mujoco.mju_quat2Mat(rot, np.asarray(quat, np.float64))
    return float(np.arctan2(rot[3], rot[0]))


def nearest_equivalent(angle: float, reference: float, period: float) -> float:
    """``angle`` plus a multiple of ``period``, nearest to ``reference`` (symmetries of a cube)."""
    return reference + wrap_angle((angle - reference) * (2 * np.pi / period)) * (period / (2 * np.pi))


@dataclass
class Target:
    """Where a phase goes: the grasp point (world, m), its yaw (rad) and the gripper (0-100)."""

    position: np.ndarray
    yaw: float
    gripper: float


class _Phase:
    """One step of a plan. ``start`` once, then ``tick`` every control tick until it says done."""

    name = "phase"

    def start(self, expert: "ScriptedExpert", now: float) -> None: ...

    def tick(self, expert: "ScriptedExpert", now: float, dt: float) -> bool: ...


class _Move(_Phase):
    """A minimum-jerk move to a target computed when the phase starts; in joint space (the
    first move, from wherever the arm is) or along a straight line of the grasp point."""

    def __init__(self, name: str, target: Callable[["ScriptedExpert"], Target], speed_m_s: float,
                 hold_s: float = 0.0, joint_space: bool = False):
        self.name, self._target_of, self._speed = name, target, speed_m_s
        self._hold_s, self._joint_space = hold_s, joint_space

    def start(self, expert: "ScriptedExpert", now: float) -> None:
        c = expert.config
        self._t0, self._arrived_at = now, None
        self._target = self._target_of(expert)
        self._from = Target(expert.command.position.copy(), expert.command.yaw, expert.command.gripper)
        self._q0 = expert.joints.copy()
        grip_s = abs(self._target.gripper - self._from.gripper) / c.gripper_speed_per_s
        if self._joint_space:
            solution = expert.kinematics.solve(self._target.position, self._q0, yaw=self._target.yaw)
            self._q1 = solution.joints
            travel_s = np.abs(self._q1 - self._q0).max() / np.deg2rad(c.max_joint_speed_deg_s)
        else:
            travel_s = max(np.linalg.norm(self._target.position - self._from.position) / self._speed,
                           abs(wrap_angle(self._target.yaw - self._from.yaw)) / c.yaw_speed_rad_s)
        self._duration = MIN_JERK_PEAK * max(travel_s, grip_s)

    def tick(self, expert: "ScriptedExpert", now: float, dt: float) -> bool:
        elapsed = now - self._t0
        s = min_jerk(elapsed / self._duration) if self._duration > 0 else 1.0
        a, b = self._from, self._target
        gripper = a.gripper + s * (b.gripper - a.gripper)
        if self._joint_space:
            expert.command_joints(self._q0 + s * (self._q1 - self._q0), gripper, dt)
        else:
            expert.command_pose(a.position + s * (b.position - a.position),
                                a.yaw + s * wrap_angle(b.yaw - a.yaw), gripper, dt)
        return self._finished(expert, now, elapsed)

    def _finished(self, expert: "ScriptedExpert", now: float, elapsed: float) -> bool:
        c = expert.config
        if self._arrived_at is None and elapsed >= self._duration:
            near = expert.tracking_error() <= c.arrive_tolerance_m
            if near or elapsed >= self._duration + c.settle_timeout_s:
                self._arrived_at = now
        return self._arrived_at is not None and now - self._arrived_at >= self._hold_s


class _Press(_Phase):
    """Tare the wrist force, descend slowly until its change reaches the target, hold it."""

    name = "press"

    def __init__(self):
        self.peak_n: float | None = None     # the largest force change seen (None: not started)

    def start(self, expert: "ScriptedExpert", now: float) -> None:
        c = expert.config
        self._tare = np.asarray(expert.view.wrist_force(), np.float64).copy()
        self._target_n = float(expert.view.press_target_force())
        self._floor_z = expert.command.position[2] - c.press_max_travel_m
        self._holding_since = None
        self.peak_n = 0.0

    def tick(self, expert: "ScriptedExpert", now: float, dt: float) -> bool:
        c = expert.config
        force = float(np.linalg.norm(np.asarray(expert.view.wrist_force(), np.float64) - self._tare))
        self.peak_n = max(self.peak_n, force)
        position = expert.command.position.copy()
        step = c.press_speed_m_s * dt
        if self._holding_since is None:
            if force >= self._target_n or position[2] <= self._floor_z:
                self._holding_since = now
            else:
                position[2] -= step
        if self._holding_since is not None:
            # Admittance: too much force -> up, too little -> down, never faster than the press.
            change = c.press_admittance_m_per_n_s * (force - self._target_n) * dt
            position[2] = max(position[2] + float(np.clip(change, -step, step)), self._floor_z)
        expert.command_pose(position, expert.command.yaw, expert.command.gripper, dt)
        return self._holding_since is not None and now - self._holding_since >= c.press_hold_s


class _Push(_Phase):
    """Push the cube to the goal, steering it back onto the line it started on (pure pursuit):
    every tick the jaws' broad face turns towards a point ``push_lookahead_m`` ahead of the
    cube on that line, and the jaws aim just behind the cube's measured centre along that
    direction, pressing ``push_lead_m`` into it, moving there at most at the push speed."""

    name = "push"

    def __init__(self, line: dict):
        self._line = line

    def start(self, expert: "ScriptedExpert", now: float) -> None:
        self._t0 = now

    def tick(self, expert: "ScriptedExpert", now: float, dt: float) -> bool:
        c, line = expert.config, self._line
        centre, _, _ = expert.cube_state()
        origin, u0, length = line["origin"], line["u"], line["length"]
        along = float((centre - origin) @ u0)
        if along >= length - c.push_tolerance_m or now - self._t0 >= c.push_timeout_s:
            expert.command_pose(expert.command.position, expert.command.yaw, expert.command.gripper, dt)
            return True                          # the cube is at the goal (or time is up)
        pursuit = origin + (along + c.push_lookahead_m) * u0 - centre
        pursuit[2] = 0.0
        u = pursuit / np.linalg.norm(pursuit)
        wanted = nearest_equivalent(float(np.arctan2(u[0], -u[1])), expert.command.yaw, np.pi)
        turn = float(np.clip(wrap_angle(wanted - expert.command.yaw), -c.yaw_speed_rad_s * dt,
                             c.yaw_speed_rad_s * dt))
        yaw = expert.command.yaw + turn
        aim = centre - (line["contact"] - c.push_lead_m) * u
        aim[2] = line["height"]
        step = aim - expert.finger_offset(yaw, c.gripper_closed) - expert.command.position
        distance = float(np.linalg.norm(step))
        limit = c.push_speed_m_s * dt
        if distance > limit:
            step *= limit / distance
        line["last_u"] = u
        expert.command_pose(expert.command.position + step, yaw, c.gripper_closed, dt)
        return False


class ScriptedExpert(Teleop):
    """A Teleop whose "operator" is a script solving the twin's task from the world's state.

    ``world``: the ``sim`` config mapping (``world: ${sim}`` in conf/teleop/scripted.yaml: the
    process's shared ``SimWorld`` for it, read through
    :func:`~rlbench_sms.sim.expert_view.world_view`), a ``SimWorld``, an object with
    ``expert_view()``, or an :class:`ExpertView` itself; resolved when the expert connects.
    Its ``end_episode`` reports ``sim/expert_phase`` and ``sim/expert_done`` (and, for press,
    ``sim/expert_peak_force_n``); whether the task succeeded is the task detector's call.
    """

    def __init__(self, world: object, config: ScriptedExpertConfig | None = None):
        self.name = DEVICE
        self.config = config or ScriptedExpertConfig()
        self._world = world
        self.view: ExpertView | None = None
        self.kinematics: ArmKinematics | None = None
        self._connected = False
        self._phases: list[_Phase] | None = None

    # -- Device --------------------------------------------------------------------------------
    def connect(self) -> None:
        view = expert_view(self._world)
        try:
            self.kinematics = ArmKinematics(view.model, self.config.grasp, self.config.ik)
        except ValueError as error:                 # a name the world's model lacks
            raise HardwareError(self.name, str(error)) from None
        self.view = view
        self._connected = True
        self._phases = None

    def disconnect(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def action_feature(self) -> FeatureSpec:
        return joint_feature(ACTION, SO100_JOINT_NAMES)

    def start_episode(self, index: int) -> dict:
        """Forget the plan: the next tick plans from the (reset) world. The robot may reset the
        world after this hook, so nothing is read here."""
        self._phases = None
        return {}

    def end_episode(self) -> dict:
        """How far the plan got (the task's own success detector says whether it worked)."""
        if self._phases is None:
            return {}
        done = self._index >= len(self._phases)
        phase = "done" if done else self._phases[self._index].name
        out = {"sim/expert_phase": phase, "sim/expert_done": done}
        press = next((p for p in self._phases if isinstance(p, _Press)), None)
        if press is not None and press.peak_n is not None:
            out["sim/expert_peak_force_n"] = float(press.peak_n)
        return out

    def get_action(self) -> JointReading:
        """The next joint target (degrees, gripper 0-100), stamped with the world's time."""
        self._require_connected()
        now = float(self.view.time())
        if self._phases is None:
            self._plan(now)
        dt = max(now - self._last_time, 0.0)
        self._last_time = now
        if self._index < len(self._phases):
            phase = self._phases[self._index]
            if not self._started:
                phase.start(self, now)
                self._started = True
            if phase.tick(self, now, dt):
                self._index, self._started = self._index + 1, False
        else:
            self.command_joints(self.joints, self.command.gripper, dt)   # done: hold still
        action = self.kinematics.units.to_dataset(np.append(self.joints, 0.0))
        # The gripper leads the measured jaws by at most gripper_max_lead: squeezing a held cube
        # stays a small, max_relative_target-safe step (the servo saturates anyway).
        measured = self.kinematics.units.gripper_to_percent(self.view.joint_positions()[5])
        lead = self.config.gripper_max_lead
        action[5] = np.clip(self.command.gripper, measured - lead, measured + lead)
        return JointReading(action, now)

    # -- commanding (used by the phases) -------------------------------------------------------
    def command_joints(self, joints: np.ndarray, gripper: float, dt: float) -> None:
        """Move the commanded joints towards ``joints`` (rad), at most the joint speed limit."""
        limit = np.deg2rad(self.config.max_joint_speed_deg_s) * dt
        step = np.clip(self.kinematics.clip(joints) - self.joints, -limit, limit)
        self.joints = self.joints + step
        pose = self.kinematics.forward(self.joints)
        self.command = Target(pose.position, pose.yaw, float(gripper))

    def command_pose(self, position: np.ndarray, yaw: float, gripper: float, dt: float) -> None:
        """Aim the grasp point at ``position`` (world, m) pointing down with ``yaw``."""
        solution = self.kinematics.solve(position, self.joints, yaw=yaw)
        limit = np.deg2rad(self.config.max_joint_speed_deg_s) * dt
        self.joints = self.joints + np.clip(solution.joints - self.joints, -limit, limit)
        self.command = Target(np.asarray(position, np.float64).copy(), float(yaw), float(gripper))

    def tracking_error(self) -> float:
        """Metres between the measured grasp point and the commanded one."""
        measured = self.kinematics.forward(self.view.joint_positions())
        return float(np.linalg.norm(measured.position - self.command.position))

    # -- planning ------------------------------------------------------------------------------
    def _plan(self, now: float) -> None:
        task = self.view.task_name()
        builders = {"pick_place": self._pick_place, "push": self._push, "press": self._press}
        if task not in builders:
            raise HardwareError(self.name, f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
        measured = np.asarray(self.view.joint_positions(), np.float64)
        self.joints = self.kinematics.clip(measured)
        pose = self.kinematics.forward(self.joints)
        self.command = Target(pose.position, pose.yaw, self.kinematics.units.gripper_to_percent(measured[5]))
        self._phases = builders[task]()
        self._index, self._started, self._last_time = 0, False, now

    def neutral_yaw(self, position: np.ndarray) -> float:
        """The yaw the jaws have over ``position`` with wrist_roll at zero: the expert picks
        the cube's symmetric yaw nearest to it, so the wrist never winds far."""
        start = self.joints.copy()
        start[4] = 0.0
        solution = self.kinematics.solve(position, start, yaw=None)
        unrolled = solution.joints.copy()
        unrolled[4] = 0.0
        return self.kinematics.forward(unrolled).yaw

    def cube_state(self) -> tuple[np.ndarray, float, float]:
        """The cube's centre, yaw and half size, read now."""
        position, quat = self.view.cube_pose()
        return np.asarray(position, np.float64).copy(), cube_yaw(quat), float(self.view.cube_half_size())

    def finger_offset(self, yaw: float, opening: float) -> np.ndarray:
        """World vector from the grasp point to the pads' midpoint at ``opening``, top-down."""
        return top_down_rotation(yaw) @ self.kinematics.pad_midpoint(opening)

    def _pick_place(self) -> list[_Phase]:
        c = self.config
        grasp: dict = {}

        def above_cube(expert: ScriptedExpert) -> Target:
            centre, yaw, half = expert.cube_state()
            grasp_z = centre[2] + half - c.grasp_depth_m
            yaw = nearest_equivalent(yaw, expert.neutral_yaw(centre), np.pi / 2)
            # Off the cube on the fixed jaw's side: the fixed pad must not land on it.
            opening_dir = top_down_rotation(yaw)[:, 0]
            point = centre - c.static_jaw_clearance_m * opening_dir
            point[2] = grasp_z
            grasp.update(point=point, yaw=yaw, bottom=centre[2] - half, half=half)
            return Target(point + [0, 0, c.approach_height_m], yaw, c.gripper_open)

        def at_cube(expert: ScriptedExpert) -> Target:
            return Target(grasp["point"].copy(), grasp["yaw"], c.gripper_open)

        def closed(expert: ScriptedExpert) -> Target:
            return Target(expert.command.position.copy(), grasp["yaw"], c.gripper_closed)

        def lifted(expert: ScriptedExpert) -> Target:
            return Target(grasp["point"] + [0, 0, c.lift_height_m], grasp["yaw"], c.gripper_closed)

        def release_z(expert: ScriptedExpert) -> float:
            rim = float(np.asarray(expert.view.bin_position())[2])
            above_bottom = grasp["point"][2] - grasp["bottom"]     # grasp point over the cube's bottom
            return rim + c.release_clearance_m + above_bottom

        def over_bin(expert: ScriptedExpert) -> Target:
            bin_xy = np.asarray(expert.view.bin_position(), np.float64)[:2]
            z = max(grasp["point"][2] + c.lift_height_m, release_z(expert))
            return Target(np.array([bin_xy[0], bin_xy[1], z]), expert.command.yaw, c.gripper_closed)

        def lowered(expert: ScriptedExpert) -> Target:
            position = expert.command.position.copy()
            position[2] = release_z(expert)
            return Target(position, expert.command.yaw, c.gripper_closed)

        def opened(expert: ScriptedExpert) -> Target:
            return Target(expert.command.position.copy(), expert.command.yaw, c.gripper_open)

        def retreated(expert: ScriptedExpert) -> Target:
            return Target(expert.command.position + [0, 0, c.retreat_height_m], expert.command.yaw,
                          c.gripper_open)

        return [_Move("approach", above_cube, c.approach_speed_m_s, joint_space=True),
                _Move("descend", at_cube, c.descend_speed_m_s),
                _Move("close", closed, c.descend_speed_m_s, hold_s=c.grasp_hold_s),
                _Move("lift", lifted, c.descend_speed_m_s),
                _Move("carry", over_bin, c.carry_speed_m_s),
                _Move("lower", lowered, c.descend_speed_m_s),
                _Move("open", opened, c.descend_speed_m_s, hold_s=c.release_hold_s),
                _Move("retreat", retreated, c.approach_speed_m_s)]

    def _push(self) -> list[_Phase]:
        c = self.config
        line: dict = {}

        def behind_cube(expert: ScriptedExpert) -> Target:
            centre, _, half = expert.cube_state()
            goal = np.asarray(expert.view.push_target(), np.float64)
            direction = goal[:2] - centre[:2]
            distance = float(np.linalg.norm(direction))
            u = np.append(direction / distance if distance > 0 else np.array([1.0, 0.0]), 0.0)
            # The jaws' broad side faces the push: the grasp frame's y axis along +-u.
            yaw = nearest_equivalent(float(np.arctan2(u[0], -u[1])), expert.neutral_yaw(centre), np.pi)
            contact = half + c.finger_half_thickness_m       # jaws' centre to the cube's centre
            height = centre[2] + c.push_height_m
            start = centre - (contact + c.push_standoff_m) * u
            start[2] = height
            line.update(start=start - expert.finger_offset(yaw, c.gripper_closed), yaw=yaw, u=u,
                        last_u=u, origin=centre * [1, 1, 0], length=distance, contact=contact,
                        height=height)
            return Target(line["start"] + [0, 0, c.approach_height_m], yaw, c.gripper_closed)

        def down(expert: ScriptedExpert) -> Target:
            return Target(line["start"].copy(), line["yaw"], c.gripper_closed)

        def withdrawn(expert: ScriptedExpert) -> Target:
            # Off the cube backwards and up at once: straight back drags it along, straight up
            # tips it.
            return Target(expert.command.position - c.push_standoff_m * line["last_u"]
                          + [0, 0, c.push_standoff_m], expert.command.yaw, c.gripper_closed)

        def retreated(expert: ScriptedExpert) -> Target:
            return Target(expert.command.position + [0, 0, c.retreat_height_m], expert.command.yaw,
                          c.gripper_closed)

        return [_Move("approach", behind_cube, c.approach_speed_m_s, joint_space=True),
                _Move("descend", down, c.descend_speed_m_s),
                _Push(line),
                _Move("withdraw", withdrawn, c.descend_speed_m_s),
                _Move("retreat", retreated, c.approach_speed_m_s)]

    def _press(self) -> list[_Phase]:
        c = self.config
        top: dict = {}

        def above_cube(expert: ScriptedExpert) -> Target:
            centre, yaw, half = expert.cube_state()
            yaw = nearest_equivalent(yaw, expert.neutral_yaw(centre), np.pi / 2)
            fingers = expert.finger_offset(yaw, c.gripper_closed)
            # The closed jaws' centre over the cube's centre, just above its top face.
            point = centre + [0, 0, half + c.press_start_clearance_m] - fingers
            top.update(point=point, yaw=yaw)
            return Target(point + [0, 0, c.approach_height_m], yaw, c.gripper_closed)

        def near_top(expert: ScriptedExpert) -> Target:
            return Target(top["point"].copy(), top["yaw"], c.gripper_closed)

        def released(expert: ScriptedExpert) -> Target:
            return Target(top["point"] + [0, 0, c.retreat_height_m], top["yaw"], c.gripper_closed)

        return [_Move("approach", above_cube, c.approach_speed_m_s, joint_space=True),
                _Move("descend", near_top, c.descend_speed_m_s, hold_s=c.settle_s),
                _Press(),
                _Move("release", released, c.descend_speed_m_s)]
