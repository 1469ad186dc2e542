"""The simulated SO-101 cell: one MuJoCo model and state, shared by the sim devices.

Time: the world advances only in :meth:`SimWorld.tick`, exactly one control period (1/fps) of
``substeps`` equal physics steps; :attr:`SimWorld.time` is ``ticks / fps`` seconds and never goes
back (a reset starts a new episode at the current time, so every reading of a run is on one
monotonic axis, like the wall clock it replaces). :class:`SimClock` is the loop's clock
(``runtime.clock.Clock``): its ``sleep_until`` ticks the world up to the deadline, and with
``sim.realtime`` also waits for the wall clock, so a person can watch at the real speed.

Determinism: :meth:`SimWorld.reset` derives everything random from its seed (separate streams for
the appearance and the task's layout), restores the model fields the previous episode changed,
and settles the objects with a fixed number of physics steps; the same seed gives the same
frames, joints and forces on every run.

Readings are taken at the end of a tick (``mj_forward`` after the substeps), so joints, images
and the force value all describe the state at ``time``. The wrist force/torque sensor is also
sampled at every physics step (``tick`` collects them): :meth:`drain_force_record` hands them
out, stamped with the time of the state they were computed from, each with the wrench the
sensor's tool (the gripper's subtree) takes to hold up against gravity in that state
(:meth:`ft_tool_load`); :meth:`ft_tick_mean` is their mean over the last tick.

Servo goals (``sim.physics.ramp_servo_goals``): a command sent between two ticks is not a step
of the position servos' goal but a ramp over the next tick, from the previous command (reached
at the tick's start) to the new one (at its end). The arm's servos are stiff (the package's
kp ~ 1000 N.m/rad saturates their 3.35 N.m at a 0.2 degree error) and ring at ~30 Hz, the control
rate: stepping their goals every tick kicks them to full torque each time, the joints shake at
~15 deg/s rms and the wrist reads 1-2.5 N of that shaking while the arm moves. A real
STS3215 does not jump either: its acceleration-limited profile spreads a goal change over tens
of milliseconds.

Units here are MuJoCo's: radians, metres, newtons. The devices (:mod:`rlbench_sms.sim.devices`)
convert to the dataset's degrees and gripper 0-100.
"""

from __future__ import annotations

import collections
import threading
import time as wall_time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from rlbench_sms.features import SO100_MOTORS
from rlbench_sms.sim.backend import load_mujoco
from rlbench_sms.sim.config import SimConfig, canonical_json, parse_sim_config
from rlbench_sms.sim.render import CameraRenderer, clip_planes
from rlbench_sms.sim.scene import (FRONT_CAMERA, FT_FORCE_SENSOR, FT_SITE, FT_TORQUE_SENSOR,
                                   build_model)
from rlbench_sms.sim.tasks import CUBE_BODY, Layout, get_task

ARM_JOINTS = SO100_MOTORS          # joint and actuator names in the MJCF, in the dataset's order
CUBE_GEOM = "cube_geom"
# A deadline within this fraction of a tick counts as reached: ticks / fps and the loop's
# anchor + k / fps differ by float rounding only.
_DEADLINE_TOLERANCE_TICKS = 1e-6


class ForceSamples(NamedTuple):
    """Physics-rate samples of the wrist force/torque sensor (see :meth:`SimWorld.drain_force_record`)."""

    times: np.ndarray         # (N,) s, on the world's clock: the state each sample was computed from
    wrench: np.ndarray        # (N, 6) fx, fy, fz (N), tx, ty, tz (N.m), site frame, untared
    tool_load: np.ndarray     # (N, 6) the tool's gravity wrench in that state (ft_tool_load)


class SimClock:
    """The world's simulated time as a ``Clock``: ``sleep_until(t)`` ticks the world until
    ``now() >= t``; with ``realtime`` it also keeps the simulated time from running ahead of the
    wall clock (a loop that falls behind is re-anchored, not made to catch up)."""

    time_base = "sim"

    def __init__(self, world: "SimWorld", realtime: bool = False):
        self._world = world
        self.realtime = realtime
        self._anchor: tuple[float, float] | None = None      # (simulated, wall) seconds

    def now(self) -> float:
        return self._world.time

    def sleep_until(self, t: float) -> None:
        world = self._world
        tolerance = _DEADLINE_TOLERANCE_TICKS * world.period_s
        while world.time < t - tolerance:
            if self.realtime and self._anchor is None:
                self._anchor = (world.time, wall_time.monotonic())
            world.tick()
            if self.realtime:
                self._pace()

    def _pace(self) -> None:
        """Sleep until the wall clock has caught up with the simulated time since the anchor."""
        now_wall = wall_time.monotonic()
        sim = self._world.time
        due = self._anchor[1] + (sim - self._anchor[0])
        if due > now_wall:
            wall_time.sleep(due - now_wall)
        elif now_wall - due > self._world.period_s:           # behind by a tick: don't burst
            self._anchor = (sim, now_wall)


class SimWorld:
    """The MuJoCo twin of the cell (see the module docstring). Build it through
    :func:`shared_world` so that the sim devices of one process share it."""

    def __init__(self, config: Mapping[str, Any] | SimConfig):
        self.config: SimConfig = parse_sim_config(config)
        self.period_s = self.config.period_s            # refuses an unset fps, before any work
        self._mujoco = mujoco = load_mujoco()
        self.model = build_model(self.config)
        self.data = mujoco.MjData(self.model)
        self.fps = float(self.config.fps)
        self.substeps = self.config.substeps()
        self.timestep_s = float(self.model.opt.timestep)
        m = self.model
        obj = mujoco.mjtObj
        joints = [self._name_id(obj.mjOBJ_JOINT, n) for n in ARM_JOINTS]
        self._qpos_adr = m.jnt_qposadr[joints].copy()
        self._dof_adr = m.jnt_dofadr[joints].copy()
        self._actuators = np.array([self._name_id(obj.mjOBJ_ACTUATOR, n) for n in ARM_JOINTS])
        self.arm_joint_range = m.jnt_range[joints].copy()           # (6, 2) rad
        self.arm_ctrl_range = m.actuator_ctrlrange[self._actuators].copy()
        self._cube_geom = self._name_id(obj.mjOBJ_GEOM, CUBE_GEOM)
        self._cube_body = self._name_id(obj.mjOBJ_BODY, CUBE_BODY)
        self._front_camera = self._name_id(obj.mjOBJ_CAMERA, FRONT_CAMERA)
        self.ft_site = self._name_id(obj.mjOBJ_SITE, FT_SITE)
        force, torque = (self._name_id(obj.mjOBJ_SENSOR, n) for n in (FT_FORCE_SENSOR, FT_TORQUE_SENSOR))
        self._ft_slices = (slice(m.sensor_adr[force], m.sensor_adr[force] + 3),
                           slice(m.sensor_adr[torque], m.sensor_adr[torque] + 3))
        self._ft_index = np.r_[self._ft_slices[0], self._ft_slices[1]]       # into sensordata
        # The sensor's tool: every body below the site (the gripper and its moving jaw), with
        # the masses as compiled (a "configured tool load": later edits of body_mass, e.g. a
        # test's payload, are loads the sensor should see, not part of the tool).
        self._tool_bodies = self._subtree(int(m.site_bodyid[self.ft_site]))
        self._tool_masses = m.body_mass[self._tool_bodies].copy()
        self.tool_mass_kg = float(self._tool_masses.sum())
        self.home_qpos = self._home_radians()
        # What reset() randomises, as compiled: each episode starts from these.
        self._nominal = {
            "geom_size": m.geom_size[self._cube_geom].copy(),
            "geom_rgba": m.geom_rgba[self._cube_geom].copy(),
            "light_diffuse": m.light_diffuse.copy(),
            "light_dir": m.light_dir.copy(),
            "cam_pos": m.cam_pos[self._front_camera].copy(),
            "cam_quat": m.cam_quat[self._front_camera].copy(),
        }
        self.cube_size_m = float(2 * self._nominal["geom_size"][0])
        self._ticks = 0
        self._state_id = 0
        # (time, wrench (6,), tool load (6,)) per physics step since the last drain.
        self._force_samples: collections.deque[tuple[float, np.ndarray, np.ndarray]] = collections.deque(
            maxlen=int(self.config.physics.force_buffer_samples))
        self._ft_mean: tuple[np.ndarray, np.ndarray] | None = None     # the last tick's (see ft_tick_mean)
        self._ft_mean_state = -1
        self.ramp_servo_goals = bool(self.config.physics.ramp_servo_goals)
        self._goal_start = np.zeros(len(ARM_JOINTS))     # the servo goals at the next tick's start
        self.force_samples_dropped = 0
        self._renderers: dict[tuple[int, int], CameraRenderer] = {}
        self._reset_listeners: list[Callable[["SimWorld"], None]] = []
        self.clock = SimClock(self, realtime=bool(self.config.realtime))
        self.task: str = self.config.task
        self.seed: int = int(self.config.seed)
        self.layout: Layout = Layout()
        self.appearance: dict[str, float] = {}
        self.reset(self.seed, self.task)

    # -- names ----------------------------------------------------------------------------------
    def _name_id(self, kind, name: str) -> int:
        index = self._mujoco.mj_name2id(self.model, kind, name)
        if index < 0:
            raise ValueError(f"MuJoCo twin: the scene has no {str(kind).split('_')[-1].lower()} {name!r}")
        return int(index)

    def _subtree(self, root: int) -> np.ndarray:
        """Body ids of ``root`` and all its descendants."""
        parents = self.model.body_parentid
        inside = [root]
        for body in range(root + 1, self.model.nbody):          # MuJoCo lists parents before children
            if int(parents[body]) in inside:
                inside.append(body)
        return np.array(inside)

    def body_id(self, name: str) -> int:
        return self._name_id(self._mujoco.mjtObj.mjOBJ_BODY, name)

    def camera_id(self, name: str) -> int:
        return self._name_id(self._mujoco.mjtObj.mjOBJ_CAMERA, name)

    # -- time -----------------------------------------------------------------------------------
    @property
    def time(self) -> float:
        """Simulated seconds since the world was built (monotonic: resets do not rewind it)."""
        return self._ticks / self.fps

    @property
    def ticks(self) -> int:
        return self._ticks

    @property
    def state_id(self) -> int:
        """Changes whenever the state does (tick, reset, a pose set): a cache key for renders."""
        return self._state_id

    def tick(self) -> None:
        """Advance exactly one control period: ``substeps`` physics steps, sampling the wrist
        force/torque at every step. The servos' goals are the commanded ctrl held over the tick,
        or (``ramp_servo_goals``) a linear ramp from the previous command to it."""
        mujoco, m, d = self._mujoco, self.model, self.data
        n = self.substeps
        base = self._ticks * n
        rate = self.fps * n
        goal = d.ctrl[self._actuators].copy()
        start = self._goal_start if self.ramp_servo_goals else goal
        goals = start + np.outer(np.arange(n) / n, goal - start)       # (n, actuators) per substep
        # Rows 0..n-1: the states the substeps' sensors were computed on (mj_step computes
        # sensors and kinematics on the state before it integrates: stamp that state); row n:
        # the tick's end.
        wrench = np.empty((n + 1, 6))
        poses = np.empty((n + 1, len(self._tool_bodies) + 4, 3))        # site R (3 rows), site p, COMs
        sensors, site = d.sensordata, self.ft_site
        xmat, xpos, xipos = d.site_xmat, d.site_xpos, d.xipos

        def sample(row: int) -> None:
            wrench[row] = sensors[self._ft_index]
            poses[row, :3] = xmat[site].reshape(3, 3)
            poses[row, 3] = xpos[site]
            poses[row, 4:] = xipos[self._tool_bodies]

        for k in range(n):
            d.ctrl[self._actuators] = goals[k]
            mujoco.mj_step(m, d)
            sample(k)
        d.ctrl[self._actuators] = goal             # the command stays what was sent
        self._ticks += 1
        mujoco.mj_forward(m, d)                    # positions, images and sensors at the new time
        sample(n)
        self._goal_start = goal
        self._state_id += 1
        load = self._tool_loads(poses)
        for k in range(n):
            if len(self._force_samples) == self._force_samples.maxlen:
                self.force_samples_dropped += 1
            self._force_samples.append(((base + k) / rate, wrench[k], load[k]))
        # The tick's window (time - 1/fps, time]: row 0 is the previous tick's end state.
        self._ft_mean = (wrench[1:].mean(axis=0), load[1:].mean(axis=0))
        self._ft_mean_state = self._state_id

    # -- episodes -------------------------------------------------------------------------------
    def add_reset_listener(self, callback: Callable[["SimWorld"], None]) -> None:
        """Call ``callback(world)`` after every :meth:`reset` (the force sensor re-tares there)."""
        if callback not in self._reset_listeners:
            self._reset_listeners.append(callback)

    def remove_reset_listener(self, callback: Callable[["SimWorld"], None]) -> None:
        if callback in self._reset_listeners:
            self._reset_listeners.remove(callback)

    def reset(self, seed: int, task: str | None = None) -> dict[str, Any]:
        """Start a new episode of ``task`` (default ``sim.task``) laid out from ``seed``; returns
        the variant (the task's layout parameters and the appearance), scalar values by name."""
        mujoco, m, d = self._mujoco, self.model, self.data
        task = task or self.config.task
        spec = get_task(task)
        appearance_seed, layout_seed = np.random.SeedSequence(int(seed)).spawn(2)
        mujoco.mj_resetData(m, d)
        self._restore_nominal()
        self.appearance = self._randomize_appearance(np.random.default_rng(appearance_seed))
        d.qpos[self._qpos_adr] = self.home_qpos
        d.ctrl[self._actuators] = self.home_qpos
        self._goal_start = self.arm_ctrl()
        mujoco.mj_forward(m, d)
        self.layout = spec.place(self, np.random.default_rng(layout_seed),
                                 dict(self.config.tasks.get(task, {})))
        mujoco.mj_forward(m, d)
        for _ in range(round(self.config.physics.settle_s / self.timestep_s)):
            mujoco.mj_step(m, d)
        mujoco.mj_forward(m, d)
        self._force_samples.clear()
        self.task, self.seed = task, int(seed)
        self._state_id += 1
        for callback in list(self._reset_listeners):
            callback(self)
        return {**self.layout.params, **self.appearance}

    def _restore_nominal(self) -> None:
        m, nominal = self.model, self._nominal
        m.light_diffuse[:] = nominal["light_diffuse"]
        m.light_dir[:] = nominal["light_dir"]
        m.cam_pos[self._front_camera] = nominal["cam_pos"]
        m.cam_quat[self._front_camera] = nominal["cam_quat"]
        m.geom_rgba[self._cube_geom] = nominal["geom_rgba"]
        self._set_cube_size(float(2 * nominal["geom_size"][0]))

    def _set_cube_size(self, edge_m: float) -> None:
        """Resize the cube: collision box, bounding volumes and its inertia (solid, uniform)."""
        m, g, b = self.model, self._cube_geom, self._cube_body
        half = edge_m / 2
        mass = self.config.randomization.cube_density_kg_m3 * edge_m ** 3
        m.geom_size[g] = [half, half, half]
        m.geom_rbound[g] = np.sqrt(3.0) * half
        m.geom_aabb[g] = [0.0, 0.0, 0.0, half, half, half]
        m.body_mass[b] = mass
        m.body_inertia[b] = mass * edge_m ** 2 / 6.0
        self.cube_size_m = edge_m

    def _randomize_appearance(self, rng: np.random.Generator) -> dict[str, float]:
        """Cube size, mass and colour; light intensity and direction; the front camera's pose."""
        r, m, mujoco = self.config.randomization, self.model, self._mujoco
        edge = float(rng.uniform(*r.cube_size_m))
        self._set_cube_size(edge)
        rgb = np.clip(np.asarray(r.cube_rgb) + rng.uniform(-r.cube_rgb_jitter, r.cube_rgb_jitter, 3), 0, 1)
        m.geom_rgba[self._cube_geom, :3] = rgb
        scales = rng.uniform(*r.light_scale, m.nlight)
        m.light_diffuse[:] = self._nominal["light_diffuse"] * scales[:, None]
        directions = self._nominal["light_dir"] + rng.uniform(-r.light_dir_jitter, r.light_dir_jitter,
                                                               (m.nlight, 3))
        m.light_dir[:] = directions / np.linalg.norm(directions, axis=1, keepdims=True)
        offset = rng.uniform(-r.camera_pos_jitter_m, r.camera_pos_jitter_m, 3)
        m.cam_pos[self._front_camera] = self._nominal["cam_pos"] + offset
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        angle = np.deg2rad(rng.uniform(-r.camera_rot_jitter_deg, r.camera_rot_jitter_deg))
        turn = np.empty(4)
        mujoco.mju_axisAngle2Quat(turn, axis, angle)
        quat = np.empty(4)
        mujoco.mju_mulQuat(quat, self._nominal["cam_quat"], turn)
        m.cam_quat[self._front_camera] = quat
        return {"cube_size_m": edge, "cube_r": float(rgb[0]), "cube_g": float(rgb[1]),
                "cube_b": float(rgb[2]), "light_scale": float(scales.mean()),
                "front_camera_dx_m": float(offset[0]), "front_camera_dy_m": float(offset[1]),
                "front_camera_dz_m": float(offset[2]), "front_camera_turn_deg": float(np.rad2deg(angle))}

    def _home_radians(self) -> np.ndarray:
        home = self.config.home
        q = np.deg2rad([home[n] for n in ARM_JOINTS])
        low, high = self.arm_joint_range[-1]
        q[-1] = low + home[ARM_JOINTS[-1]] / 100.0 * (high - low)       # gripper: 0-100 of its range
        return np.clip(q, self.arm_joint_range[:, 0], self.arm_joint_range[:, 1])

    # -- the arm --------------------------------------------------------------------------------
    def arm_qpos(self) -> np.ndarray:
        """(6,) joint positions in radians (ARM_JOINTS order)."""
        return self.data.qpos[self._qpos_adr].copy()

    def arm_qvel(self) -> np.ndarray:
        return self.data.qvel[self._dof_adr].copy()

    def arm_ctrl(self) -> np.ndarray:
        """(6,) position-actuator targets in radians."""
        return self.data.ctrl[self._actuators].copy()

    def set_arm_ctrl(self, radians: np.ndarray) -> None:
        """Position targets (radians), held until the next call; clipped to the ctrl ranges."""
        q = np.asarray(radians, np.float64).reshape(len(ARM_JOINTS))
        self.data.ctrl[self._actuators] = np.clip(q, self.arm_ctrl_range[:, 0], self.arm_ctrl_range[:, 1])

    def set_arm_qpos(self, radians: np.ndarray, hold: bool = True) -> None:
        """Teleport the arm (zero velocity); with ``hold`` the actuators target the same pose."""
        q = np.asarray(radians, np.float64).reshape(len(ARM_JOINTS))
        self.data.qpos[self._qpos_adr] = q
        self.data.qvel[self._dof_adr] = 0.0
        if hold:
            self.set_arm_ctrl(q)
            self._goal_start = self.arm_ctrl()     # held there: no ramp from the old goal
        self._mujoco.mj_forward(self.model, self.data)
        self._state_id += 1

    # -- objects --------------------------------------------------------------------------------
    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) m and orientation (w, x, y, z) of body ``name``, now."""
        b = self.body_id(name)
        return self.data.xpos[b].copy(), self.data.xquat[b].copy()

    def site_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and rotation matrix (3, 3) of site ``name``, now."""
        s = self._name_id(self._mujoco.mjtObj.mjOBJ_SITE, name)
        return self.data.site_xpos[s].copy(), self.data.site_xmat[s].reshape(3, 3).copy()

    def set_free_body_pose(self, name: str, pos, quat=(1.0, 0.0, 0.0, 0.0)) -> None:
        """Put a body with a free joint at ``pos``/``quat`` (world), at rest."""
        b = self.body_id(name)
        joint = int(self.model.body_jntadr[b])
        if joint < 0 or self.model.jnt_type[joint] != self._mujoco.mjtJoint.mjJNT_FREE:
            raise ValueError(f"MuJoCo twin: body {name!r} has no free joint")
        adr, dof = int(self.model.jnt_qposadr[joint]), int(self.model.jnt_dofadr[joint])
        q = np.asarray(quat, np.float64)
        self.data.qpos[adr:adr + 7] = [*np.asarray(pos, np.float64), *(q / np.linalg.norm(q))]
        self.data.qvel[dof:dof + 6] = 0.0
        self._mujoco.mj_forward(self.model, self.data)
        self._state_id += 1

    def set_mocap_pose(self, name: str, pos, quat=(1.0, 0.0, 0.0, 0.0)) -> None:
        """Move a mocap body (``bin``, ``target``) to ``pos``/``quat`` (world)."""
        mocap = int(self.model.body_mocapid[self.body_id(name)])
        if mocap < 0:
            raise ValueError(f"MuJoCo twin: body {name!r} is not a mocap body")
        q = np.asarray(quat, np.float64)
        self.data.mocap_pos[mocap] = pos
        self.data.mocap_quat[mocap] = q / np.linalg.norm(q)
        self._mujoco.mj_forward(self.model, self.data)
        self._state_id += 1

    def park(self, name: str) -> None:
        """Move a mocap body the task does not use out of sight (``sim.park_position``)."""
        self.set_mocap_pose(name, self.config.park_position)

    def in_contact(self, body_a: str, body_b: str) -> bool:
        """Whether any geom of ``body_a`` touches any geom of ``body_b`` now."""
        a, b = self.body_id(body_a), self.body_id(body_b)
        d, geom_body = self.data, self.model.geom_bodyid
        for i in range(d.ncon):
            pair = {int(geom_body[d.contact.geom1[i]]), int(geom_body[d.contact.geom2[i]])}
            if pair == {a, b}:
                return True
        return False

    # -- the wrist force/torque sensor ----------------------------------------------------------
    def ft_wrench(self) -> np.ndarray:
        """(6,) fx, fy, fz (N), tx, ty, tz (N.m) at ``ft_site``, in its frame, now (untared)."""
        force, torque = self._ft_slices
        return np.concatenate([self.data.sensordata[force], self.data.sensordata[torque]])

    def ft_tool_load(self) -> np.ndarray:
        """(6,) what :meth:`ft_wrench` reads, now, from the tool's weight alone: the force and
        the torque about ``ft_site`` with which the wrist holds up the tool (every body below
        the site, masses as compiled) against gravity, in the site frame. A tool hanging free
        and still reads this; subtracting it is a sensor's gravity (tool) compensation."""
        return self._tool_loads(self._sensor_pose()[None])[0]

    def _sensor_pose(self) -> np.ndarray:
        """(4 + tool bodies, 3): the site's rotation matrix (3 rows), its position, then the tool
        bodies' centres of mass, world frame, in the current kinematics (the layout ``tick``
        fills row by row)."""
        d = self.data
        return np.concatenate([d.site_xmat[self.ft_site].reshape(3, 3), d.site_xpos[self.ft_site][None],
                               d.xipos[self._tool_bodies]])

    def _tool_loads(self, poses: np.ndarray) -> np.ndarray:
        """(N, 6) the tool's gravity wrench (ft_tool_load) for N stacked :meth:`_sensor_pose`."""
        rotation, site = poses[:, :3], poses[:, 3]                      # (N, 3, 3), (N, 3)
        centre = np.einsum("b,nbi->ni", self._tool_masses, poses[:, 4:]) / self.tool_mass_kg
        hold = -self.tool_mass_kg * self.model.opt.gravity                # (3,) N, world frame
        torque = np.cross(centre - site, hold)                          # (N, 3) about the site
        # World -> site frame: v_site = R^T v_world (R, the site's xmat, maps site to world).
        return np.concatenate([np.einsum("nij,i->nj", rotation, hold),
                               np.einsum("nij,ni->nj", rotation, torque)], axis=1)

    def ft_tick_mean(self) -> tuple[np.ndarray, np.ndarray]:
        """The (6,) wrench and (6,) tool load averaged over the physics samples of the last tick:
        the ``substeps`` states in (time - 1/fps, time]. When the state did not come from a tick
        (after a reset, a pose set), the instantaneous :meth:`ft_wrench` and :meth:`ft_tool_load`."""
        if self._ft_mean is None or self._ft_mean_state != self._state_id:
            return self.ft_wrench(), self.ft_tool_load()
        return self._ft_mean[0].copy(), self._ft_mean[1].copy()

    def drain_force_record(self) -> ForceSamples:
        """Every physics-rate F/T sample since the previous drain (or the last reset): times on
        the world's clock, wrenches (untared) and the tool's gravity wrench in each sample's state."""
        taken = list(self._force_samples)
        self._force_samples.clear()
        if not taken:
            return ForceSamples(np.zeros(0), np.zeros((0, 6)), np.zeros((0, 6)))
        return ForceSamples(np.array([t for t, _, _ in taken]), np.stack([w for _, w, _ in taken]),
                            np.stack([g for _, _, g in taken]))

    def drain_force_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """Every physics-rate F/T sample since the previous drain (or the last reset): times (N,)
        on the world's clock and values (N, 6), untared (:meth:`drain_force_record` without the
        tool loads)."""
        record = self.drain_force_record()
        return record.times, record.wrench

    # -- rendering ------------------------------------------------------------------------------
    def render(self, camera_name: str, width: int, height: int,
               depth: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Camera ``camera_name`` now: RGB (H, W, 3) uint8 and, with ``depth``, planar depth
        (H, W) float64 metres from the same draw (``inf`` where nothing is hit before the far
        plane)."""
        key = (int(width), int(height))
        renderer = self._renderers.get(key)
        if renderer is None:
            renderer = self._renderers[key] = CameraRenderer(self.model, *key)
        return renderer.render(self.data, self.camera_id(camera_name), depth)

    def clip_planes(self) -> tuple[float, float]:
        """Near and far clipping planes (metres)."""
        return clip_planes(self.model)

    def close(self) -> None:
        """Free the renderers' GL contexts (the world stays usable; renderers are remade)."""
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


# ---------------------------------------------------------------------------------- sharing
_WORLDS: dict[str, SimWorld] = {}
_WORLDS_LOCK = threading.Lock()


def shared_world(config: Mapping[str, Any]) -> SimWorld:
    """The process's :class:`SimWorld` for ``config`` (the ``sim`` node), built on first use and
    then shared: every sim device given the same settings gets the same world."""
    key = canonical_json(config)
    with _WORLDS_LOCK:
        world = _WORLDS.get(key)
        if world is None:
            world = _WORLDS[key] = SimWorld(config)
        return world


def forget_shared_worlds() -> None:
    """Close and drop every shared world (tests; a new call to :func:`shared_world` rebuilds)."""
    with _WORLDS_LOCK:
        for world in _WORLDS.values():
            world.close()
        _WORLDS.clear()
