"""A small procedural robot cell: the renderer behind the bundled sample dataset.

A seeded numpy ray caster of a tabletop where an SO-100-like arm (a chain of boxes) pushes a red
cube onto a green target and then presses on it. Depth carries the cube's height above the table
and force carries the contacts (sliding the cube, pressing on it), so a multi-sensor policy has
something to learn from both. It renders the sample dataset offline in seconds; the MuJoCo twin
(``rlbench_sms.sim``) is the physically faithful version.

Frames and units: world in metres, origin at the arm's base on the table top, x forward, y left,
z up. Cameras follow OpenCV (x right, y down, z forward). Rays are built with camera-frame z = 1,
so a ray's hit parameter t *is* the z depth that a depth camera reports.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from rlbench_sms.features import CameraIntrinsics

# Arm geometry (m): base column, upper arm, forearm, wrist-flex axis to the jaw tips.
BASE_H, UPPER, FORE, HAND = 0.11, 0.14, 0.15, 0.10
TIP_R = 0.012   # contact sphere at the jaw tips
CUBE = 0.04     # cube edge
# Contact springs (N/m) and the force (N) at which the cube slides (mu * m * g ~ 0.6 * 0.25 * 9.81).
K_SIDE, K_TOP, K_TABLE, F_SLIDE = 1500.0, 2000.0, 5000.0, 1.5
FOLLOW = 0.6                 # per-step fraction of the command the servos catch up (state lags action)
ENCODER_DEG = 360.0 / 4096   # STS3215 resolution
EDGE_INV_DEPTH = 0.05   # 1/m: second difference of inverse depth that counts as an object edge
FORCE_NOISE, TORQUE_NOISE, TARE_FRAMES = 0.03, 0.002, 5   # N, N·m, frames averaged by the tare
# Shading: a directional light (unit vector towards it), ambient + Lambert, table shadows.
LIGHT = (np.array([-0.35, 0.45, 1.0]) / np.linalg.norm([-0.35, 0.45, 1.0])).astype(np.float32)
AMBIENT, DIFFUSE, SHADOW = 0.38, 0.62, 0.55
# Table texture: a TEX_N x TEX_N grid of TEX_RES (m) cells from (TEX_X0, TEX_Y0), nearest lookup.
TEX_X0, TEX_Y0, TEX_RES, TEX_N = -0.6, -1.2, 0.002, 1200
WOOD, TARGET, WALL = (0.72, 0.57, 0.41), (0.25, 0.62, 0.3), (0.62, 0.66, 0.7)
FRONT_EYE = np.array([0.62, 0.3, 0.48])   # front camera position (m)
RED, ARM, DARK, JAW = (0.85, 0.12, 0.1), (0.93, 0.9, 0.8), (0.25, 0.25, 0.28), (0.32, 0.32, 0.35)


@dataclass
class SceneConfig:
    height: int = 240
    width: int = 320
    fps: int = 30
    episode_seconds: float = 3.0
    image_noise_std: float = 2.0   # camera noise, in 8-bit levels
    depth_noise_mm: float = 1.5    # depth noise at 0.7 m, growing with distance squared
    task: str = "push the red cube onto the green target"


@dataclass
class SampleEpisode:
    task: str
    state: np.ndarray    # (T, 6) float32: 5 joints (deg) + gripper 0-100, SO100_JOINT_NAMES
    action: np.ndarray   # (T, 6) float32: commanded joints, leading the state by ~1-2 steps
    # (T, 6) float32, FORCE_TORQUE_NAMES: fx fy fz (N), tx ty tz (N·m) that the world applies to
    # the tool, about the wrist, in a frame with x along the arm's horizontal reach and z up; tared.
    force: np.ndarray
    images: dict[str, np.ndarray]   # "front", "wrist": (T, H, W, 3) uint8
    depth: dict[str, np.ndarray]    # "front": (T, H, W) uint16 mm aligned to the front image, 0 = invalid
    intrinsics: dict[str, CameraIntrinsics]
    # Ground truth: cube centre in the front camera frame (m), e.g. for observation.tip.position.
    object_position: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))


class _Box(NamedTuple):
    center: np.ndarray   # (3,) world
    axes: np.ndarray     # (3, 3) columns: the box's local x, y, z in world
    half: np.ndarray     # (3,) half extents
    color: np.ndarray    # (3,) RGB in [0, 1]

    def corners(self) -> np.ndarray:
        signs = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], np.float32)
        return self.center + (signs * self.half) @ self.axes.T   # (8, 3)


def _f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _box(a: np.ndarray, b: np.ndarray, side: np.ndarray, half_side: float, half_thick: float, color) -> _Box:
    """A link from point a to point b; ``side`` (roughly perpendicular) fixes its roll."""
    x = _unit(b - a)
    y = _unit(side - (side @ x) * x)
    axes = np.stack([x, y, np.cross(x, y)], axis=1)
    return _Box(_f32((a + b) / 2), _f32(axes), _f32([np.linalg.norm(b - a) / 2, half_side, half_thick]), _f32(color))


# The arm's base column (static; the shoulder pans on top of it).
BASE = _Box(_f32([0, 0, BASE_H / 2]), np.eye(3, dtype=np.float32), _f32([0.04, 0.04, BASE_H / 2]), _f32(DARK))


def _look_at(eye, target, up) -> np.ndarray:
    """Camera-to-world rotation (columns: camera x right, y down, z forward in world)."""
    f = _unit(np.asarray(target, float) - eye)
    r = _unit(np.cross(f, up))
    return _f32(np.stack([r, np.cross(f, r), f], axis=1))


def _grid(intr: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Normalised pixel-centre coordinates: x (1, W), y (H, 1)."""
    u = (np.arange(intr.width, dtype=np.float32) + 0.5 - intr.ppx) / intr.fx
    v = (np.arange(intr.height, dtype=np.float32) + 0.5 - intr.ppy) / intr.fy
    return u[None, :], v[:, None]


class _Camera:
    """A pinhole camera; geometry is kept per component ((H, W) arrays), which numpy does fastest."""

    def __init__(self, intr: CameraIntrinsics, eye, rot: np.ndarray, grid=None):
        self.intr, self.eye, self.rot = intr, _f32(eye), _f32(rot)
        gx, gy = grid if grid is not None else _grid(intr)
        # World ray directions with camera z = 1, so that the hit parameter is the z depth.
        self.rays = tuple(gx * self.rot[j, 0] + gy * self.rot[j, 1] + self.rot[j, 2] for j in range(3))

    def to_camera(self, pts: np.ndarray) -> np.ndarray:
        return (pts - self.eye) @ self.rot

    def rect(self, pts: np.ndarray):
        """Image rectangle (row slice, column slice) covering world points, None if off-image."""
        pc, k = self.to_camera(pts), self.intr
        if np.all(pc[:, 2] < 0.01):   # all behind the camera
            return None
        if np.any(pc[:, 2] < 0.01):   # straddling the camera plane: test every pixel
            return slice(None), slice(None)
        u, v = pc[:, 0] / pc[:, 2] * k.fx + k.ppx, pc[:, 1] / pc[:, 2] * k.fy + k.ppy
        c0, c1 = max(int(u.min()) - 1, 0), min(int(u.max()) + 2, k.width)
        r0, r1 = max(int(v.min()) - 1, 0), min(int(v.max()) + 2, k.height)
        return (slice(r0, r1), slice(c0, c1)) if r0 < r1 and c0 < c1 else None


def _hit_box(origin, dirs, box: _Box, shade: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Slab test of rays (3 components each, arrays or scalars): hit parameter (inf on a miss)
    and, if ``shade``, the Lambert term of the face hit (the slab entered last, facing the ray)."""
    rel = [origin[j] - box.center[j] for j in range(3)]
    lam = None
    with np.errstate(divide="ignore", invalid="ignore"):   # rays parallel to a slab: inf, nan -> miss
        for i in range(3):
            ax = box.axes[:, i]
            o = rel[0] * ax[0] + rel[1] * ax[1] + rel[2] * ax[2]   # in the box frame
            inv = 1 / (dirs[0] * ax[0] + dirs[1] * ax[1] + dirs[2] * ax[2])
            a, b = (-box.half[i] - o) * inv, (box.half[i] - o) * inv
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            if shade:   # entering through the -axis face when the ray runs along +axis
                cos = float(LIGHT @ ax)
                lam_i = np.where(inv > 0, max(-cos, 0.0), max(cos, 0.0))
                lam = lam_i if i == 0 else np.where(lo > t_near, lam_i, lam)
            t_near, t_far = (lo, hi) if i == 0 else (np.maximum(t_near, lo), np.minimum(t_far, hi))
        return np.where((t_near <= t_far) & (t_far > 0), np.maximum(t_near, 0), np.inf), lam


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """(n, n) values in [0, 1]: a (cells+1)² random lattice, bilinearly interpolated."""
    lattice = rng.random((cells + 1, cells + 1)).astype(np.float32)
    c = np.arange(n, dtype=np.float32) * (cells / n)
    i, f = c.astype(int), (c - c.astype(int))
    rows = lattice[i] * (1 - f)[:, None] + lattice[i + 1] * f[:, None]   # (n, cells + 1)
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


@functools.lru_cache(maxsize=1)
def _wood() -> np.ndarray:
    """Table brightness on a TEX_N x TEX_N grid of TEX_RES cells, flattened: grain along y, knots.
    One table for every episode (it is the same cell), made once per process."""
    x = TEX_X0 + TEX_RES * np.arange(TEX_N, dtype=np.float32)[:, None]
    noise = _smooth_noise(np.random.default_rng(0), TEX_N, int(TEX_N * TEX_RES / 0.01))   # ~1 cm features
    grain = 1 + 0.04 * np.sin(2 * np.pi * (25 * x + 0.6 * noise)) + 0.08 * (noise - 0.5)
    wood = (grain * (AMBIENT + DIFFUSE * LIGHT[2])).reshape(-1).astype(np.float32)
    wood.flags.writeable = False
    return wood


def _table(cam: _Camera, wood: np.ndarray, target: np.ndarray, push: np.ndarray):
    """What a camera sees of the table top z = 0: colour (3, H, W), depth (inf off it), hit x, y,
    and where the table is seen (the only surface that receives shadows).

    Colour is channel-first while rendering: numpy is several times faster on contiguous planes
    than on a trailing axis of 3."""
    dx, dy, dz = cam.rays
    target, push = _f32(target), _f32(push)
    hit = dz < -1e-6
    t = np.where(hit, -cam.eye[2] / np.where(hit, dz, -1), np.inf).astype(np.float32)
    t0 = np.where(hit, t, 0)
    x, y = cam.eye[0] + t0 * dx, cam.eye[1] + t0 * dy
    ix = np.clip(((x - TEX_X0) * (1 / TEX_RES)).astype(np.int32), 0, TEX_N - 1)
    iy = np.clip(((y - TEX_Y0) * (1 / TEX_RES)).astype(np.int32), 0, TEX_N - 1)
    u, v = (x - target[0]) * push[0] + (y - target[1]) * push[1], (y - target[1]) * push[0] - (x - target[0]) * push[1]
    on_target = (np.abs(u) < CUBE / 2 + 0.012) & (np.abs(v) < CUBE / 2 + 0.012)   # a green square
    light = np.take(wood, ix * TEX_N + iy)
    rgb = np.stack([light * np.where(on_target, tc, wc) for tc, wc in zip(_f32(TARGET), _f32(WOOD))])
    if not hit.all():
        rgb[:, ~hit] = _f32(WALL)[:, None]
    return rgb, t, (x, y), hit


def _render(cam: _Camera, boxes: list[_Box], scene, casters=None) -> tuple[np.ndarray, np.ndarray]:
    """Colour (3, H, W) in [0, 1] and z depth (m, inf = nothing) of the boxes drawn over ``scene``
    (a :func:`_table` result, possibly with static boxes already drawn); ``casters`` (default:
    all the boxes) cast shadows on the table."""
    rgb, depth, (tx, ty), on_table = scene[0].copy(), scene[1].copy(), scene[2], scene[3]
    for box in boxes if casters is None else casters:   # does the ray towards the light hit the box?
        corners = box.corners()
        r = cam.rect(corners - LIGHT * (corners[:, 2:] / LIGHT[2]))   # the box's shadow footprint
        if r is not None:
            t, _ = _hit_box((tx[r], ty[r], 0.0), LIGHT, box, shade=False)
            dark, view = np.isfinite(t) & on_table[r], rgb[(slice(None), *r)]
            np.multiply(view, np.float32(SHADOW), out=view, where=dark)
    for box in boxes:
        r = cam.rect(box.corners())
        if r is not None:
            t, lam = _hit_box(cam.eye, tuple(c[r] for c in cam.rays), box)
            front = t < depth[r]
            depth[r][front] = t[front]
            shade, view = AMBIENT + DIFFUSE * lam, rgb[(slice(None), *r)]
            for c in range(3):
                np.copyto(view[c], box.color[c] * shade, where=front)
    return rgb, depth


def _fk(q: np.ndarray) -> tuple[np.ndarray, ...]:
    """World points (T, 3) of shoulder, elbow, wrist and jaw tips from joints (T, >=4) in degrees."""
    pan = np.radians(q[:, 0])
    e1 = np.radians(90 - q[:, 1])   # link elevations above horizontal in the arm's plane
    e2, e3 = e1 - np.radians(q[:, 2]), e1 - np.radians(q[:, 2] + q[:, 3])
    planar = [np.stack([np.zeros_like(pan), np.full_like(pan, BASE_H)], -1)]
    for length, e in ((UPPER, e1), (FORE, e2), (HAND, e3)):
        planar.append(planar[-1] + length * np.stack([np.cos(e), np.sin(e)], -1))
    radial = np.stack([np.cos(pan), np.sin(pan), np.zeros_like(pan)], -1)
    return tuple(p[:, :1] * radial + p[:, 1:] * np.array([0.0, 0.0, 1.0]) for p in planar)


def _ik(tip: np.ndarray) -> np.ndarray:
    """Joints (T, 4) in degrees putting the jaw tips at ``tip`` (T, 3) with the tool pointing down."""
    pan, r = np.arctan2(tip[:, 1], tip[:, 0]), np.hypot(tip[:, 0], tip[:, 1])
    wz = tip[:, 2] + HAND   # wrist point, straight above the tip
    dist = np.clip(np.hypot(r, wz - BASE_H), abs(UPPER - FORE) + 1e-3, UPPER + FORE - 1e-3)
    e1 = np.arctan2(wz - BASE_H, r) + np.arccos((UPPER**2 + dist**2 - FORE**2) / (2 * UPPER * dist))
    e2 = np.arctan2(wz - BASE_H - UPPER * np.sin(e1), r - UPPER * np.cos(e1))
    return np.degrees(np.stack([pan, np.pi / 2 - e1, e1 - e2, e2 + np.pi / 2], -1))


def _min_jerk(times: np.ndarray, keys: np.ndarray, n: int) -> np.ndarray:
    """Minimum-jerk interpolation through keyframes ``keys`` (K, D) at ``times`` (K,), sampled at 0..n-1."""
    t = np.arange(n, dtype=float)
    k = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 2)
    tau = np.clip((t - times[k]) / np.maximum(times[k + 1] - times[k], 1e-9), 0, 1)[:, None]
    return keys[k] + (10 * tau**3 - 15 * tau**4 + 6 * tau**5) * (keys[k + 1] - keys[k])


def _arm_boxes(q: np.ndarray, p0, p1, p2, p3) -> tuple[list[_Box], np.ndarray, np.ndarray]:
    """Boxes of one arm pose (joints q (6,), FK points (3,)), plus the tool axis and jaw direction."""
    pan, roll = np.radians(q[0]), np.radians(q[4])
    axis, side = _unit(p3 - p2), np.array([-np.sin(pan), np.cos(pan), 0.0])
    side = side * np.cos(roll) + np.cross(axis, side) * np.sin(roll)   # the wrist roll turns the jaws
    gap = 0.006 + 0.035 * q[5] / 100   # jaw half-opening (m)
    jaw0 = p3 - 0.045 * axis
    boxes = [_box(p0, p1, side, 0.022, 0.02, ARM), _box(p1, p2, side, 0.02, 0.018, ARM),
             _box(p2, p3 - 0.04 * axis, side, 0.028, 0.016, DARK)]
    boxes += [_box(jaw0 + s * gap * side, p3 + s * gap * side, side, 0.004, 0.01, JAW) for s in (-1, 1)]
    return boxes, axis, side


def _script(rng: np.random.Generator, n: int):
    """A seeded task and its scripted demonstration: commanded and measured joints (n, 6)."""
    # A cube within reach, pushed 4-6 cm (roughly away from the base) onto the target.
    r0, a0 = rng.uniform(0.17, 0.22), rng.uniform(-0.45, 0.45)
    cube0 = np.array([r0 * np.cos(a0), r0 * np.sin(a0)])
    push_a = a0 + rng.uniform(-0.6, 0.6)
    push = np.array([np.cos(push_a), np.sin(push_a)])
    target = cube0 + rng.uniform(0.04, 0.06) * push
    # Tip keyframes: home, above the push start, down, push, back off and up, over the cube,
    # press into its top, hold, retreat. Phase durations jitter by seed.
    press, start = rng.uniform(0.004, 0.008), cube0 - push * (CUBE / 2 + TIP_R + 0.02)
    end = target - push * (CUBE / 2 + TIP_R - F_SLIDE / K_SIDE)   # leaves the cube centre on the target
    home = 0.13 * np.array([np.cos(a0 / 2), np.sin(a0 / 2)])
    xy = [home, home, start, start, end, end - 0.015 * push, target, target, target, target]
    z = [0.17, 0.17, 0.09, CUBE / 2, CUBE / 2, CUBE + 0.03, CUBE + TIP_R + 0.03,
         CUBE + TIP_R - press, CUBE + TIP_R - press, 0.13]
    keys = np.array([[*p, h] for p, h in zip(xy, z)])
    dur = np.array([0.07, 0.14, 0.09, 0.2, 0.07, 0.09, 0.08, 0.1, 0.16]) * rng.uniform(0.75, 1.25, 9)
    times = np.concatenate([[0], np.cumsum(dur / dur.sum())]) * (n - 1)
    grip = np.array([rng.uniform(30, 60)] * 2 + [rng.uniform(0, 8)] * 7 + [rng.uniform(20, 50)])
    roll = rng.uniform(-10, 10) + rng.uniform(-5, 5, len(keys))
    action = np.concatenate([_ik(_min_jerk(times, keys, n)), _min_jerk(times, np.stack([roll, grip], 1), n)], 1)
    # The servos follow the command with a lag and report quantised positions.
    state = np.empty_like(action)
    state[0] = action[0]
    for t in range(1, n):
        state[t] = state[t - 1] + FOLLOW * (action[t - 1] - state[t - 1])
    state[:, :5] = np.round(state[:, :5] / ENCODER_DEG) * ENCODER_DEG
    state[:, 5] = np.clip(state[:, 5], 0, 100)
    return action, state, cube0, push, target


def _contacts(rng: np.random.Generator, tips: np.ndarray, wrists: np.ndarray, pan_deg: np.ndarray,
              cube: np.ndarray, push: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cube positions (n, 2) and the tared wrist wrench (n, 6) along the actual tip path (n, 3)."""
    n, perp = len(tips), np.array([-push[1], push[0]])
    cubes, wrench, slide_pen = np.empty((n, 2)), np.zeros((n, 6)), F_SLIDE / K_SIDE
    for t, (tip, wrist) in enumerate(zip(tips, wrists)):
        u, v, z = (tip[:2] - cube) @ push, (tip[:2] - cube) @ perp, tip[2]
        f = np.zeros(3)   # force of the world on the tool (N)
        if z < CUBE and abs(v) < CUBE / 2 + TIP_R / 2 and -CUBE / 2 - TIP_R < u < 0:   # on its face
            pen = u + TIP_R + CUBE / 2   # the cube slides once the spring force reaches F_SLIDE
            cube = cube + max(pen - slide_pen, 0) * push
            f[:2] = -K_SIDE * min(pen, slide_pen) * (1 + 0.1 * rng.standard_normal()) * push
        u, v = (tip[:2] - cube) @ push, (tip[:2] - cube) @ perp
        if max(abs(u), abs(v)) < CUBE / 2 and z - TIP_R < CUBE:   # pressing on its top
            f[2] = K_TOP * (CUBE - z + TIP_R)
        elif z < TIP_R:                                           # touching the table
            f[2] = K_TABLE * (TIP_R - z)
        cubes[t], wrench[t] = cube, np.concatenate([f, np.cross(tip - wrist, f)])   # torque at the wrist
    # Into the sensor frame (x along the arm's reach, z up), with bias and noise, then tared.
    c, s = np.cos(np.radians(pan_deg)), np.sin(np.radians(pan_deg))
    for i in (0, 3):   # rotate (x, y) by -pan, for the force and the torque
        x, y = wrench[:, i].copy(), wrench[:, i + 1].copy()
        wrench[:, i], wrench[:, i + 1] = c * x + s * y, c * y - s * x
    scale = np.array([FORCE_NOISE] * 3 + [TORQUE_NOISE] * 3)
    wrench += scale * (10 * rng.standard_normal(6) + rng.standard_normal((n, 6)))
    return cubes, wrench - wrench[:TARE_FRAMES].mean(0)


def render_episode(seed: int, config: SceneConfig = SceneConfig()) -> SampleEpisode:
    cfg, rng = config, np.random.default_rng(seed)
    n, h, w = max(int(round(cfg.fps * cfg.episode_seconds)), 2), cfg.height, cfg.width
    action, state, cube0, push, target = _script(rng, n)
    fk = _fk(state)
    cubes, wrench = _contacts(rng, fk[3], fk[2], state[:, 0], cube0, push)

    # Cameras: a fixed oblique RGB-D camera 0.68 m from the workspace, 35 degrees down, and one
    # on the gripper. The front background (table, static base column) is rendered once.
    front_k = CameraIntrinsics(w, h, 1.0 * w, 1.0 * w, w / 2, h / 2)
    wrist_k = CameraIntrinsics(w, h, 0.55 * w, 0.55 * w, w / 2, h / 2)
    front = _Camera(front_k, FRONT_EYE, _look_at(FRONT_EYE, [0.14, 0.0, 0.1], [0, 0, 1]))
    wood, wrist_grid = _wood(), _grid(wrist_k)
    table = _table(front, wood, target, push)
    front_scene = (*_render(front, [BASE], table), table[2])
    front_scene += (table[3] & (front_scene[1] == table[1]),)
    cube_axes = _f32([[push[0], -push[1], 0], [push[1], push[0], 0], [0, 0, 1]])
    bank = rng.standard_normal(2 * h * w * 3 + 1, dtype=np.float32)   # noise, sliced at random offsets

    def noise(shape) -> np.ndarray:
        size = int(np.prod(shape))
        offset = rng.integers(0, bank.size - size)
        return bank[offset: offset + size].reshape(shape)

    def to_uint8(rgb):   # (3, H, W) in [0, 1], a fresh buffer -> (H, W, 3) uint8
        rgb *= 255
        rgb += cfg.image_noise_std * noise(rgb.shape)
        return np.clip(rgb, 0, 255, out=rgb).astype(np.uint8).transpose(1, 2, 0)

    rgb_f, rgb_w = np.empty((2, n, h, w, 3), np.uint8)
    depth_f = np.empty((n, h, w), np.uint16)
    for t in range(n):
        boxes, axis, side = _arm_boxes(state[t], *(p[t] for p in fk))
        cube_box = _Box(_f32([*cubes[t], CUBE / 2]), cube_axes, _f32([CUBE / 2] * 3), _f32(RED))
        rgb, z = _render(front, boxes + [cube_box], front_scene)
        rgb_f[t], depth_f[t] = to_uint8(rgb), _depth_sensor(z, rng, cfg.depth_noise_mm, noise)
        # The wrist camera sits on the gripper body behind the tool axis, pitched 45 degrees
        # forward: the jaws in the lower half of the image, the table ahead of them above.
        # It does not see the links behind it; only the cube casts shadows in its view (cheaper).
        ahead = np.cross(axis, side)
        eye = fk[2][t] + 0.03 * axis - 0.045 * ahead
        cam = _Camera(wrist_k, eye, _look_at(eye, eye + axis + ahead, ahead), wrist_grid)
        wrist_rgb, _ = _render(cam, [BASE, *boxes[3:], cube_box], _table(cam, wood, target, push), [cube_box])
        rgb_w[t] = to_uint8(wrist_rgb)

    cube_world = _f32(np.concatenate([cubes, np.full((n, 1), CUBE / 2)], 1))
    return SampleEpisode(
        task=cfg.task, state=_f32(state), action=_f32(action), force=_f32(wrench),
        images={"front": rgb_f, "wrist": rgb_w}, depth={"front": depth_f},
        intrinsics={"front": front_k, "wrist": wrist_k}, object_position=_f32(front.to_camera(cube_world)))


def _depth_sensor(z_m: np.ndarray, rng: np.random.Generator, noise_mm: float, noise) -> np.ndarray:
    """Metres (inf = no return) to uint16 mm like a stereo sensor: noise ~ z², holes at edges and blobs."""
    valid = np.isfinite(z_m)
    inv = np.where(valid, 1 / np.where(valid, z_m, 1), 0)   # 1/m; linear across a plane, unlike z
    edge = np.zeros(z_m.shape, bool)   # depth discontinuities, where stereo matching fails
    for axis in (0, 1):
        kink = np.abs(np.diff(inv, 2, axis=axis)) > EDGE_INV_DEPTH
        for start in range(3):   # mark the pixels on both sides of the step
            window = [slice(None), slice(None)]
            window[axis] = slice(start, start + kink.shape[axis])
            edge[tuple(window)] |= kink
    valid &= ~(edge & (noise(z_m.shape) > 0))   # ragged: about half the edge pixels
    rows, cols = np.ogrid[: z_m.shape[0], : z_m.shape[1]]
    for _ in range(rng.integers(0, 3)):   # a few dropout blobs (specular spots, texture-less patches)
        cy, cx, ry, rx = rng.uniform(0, 1, 4) * [z_m.shape[0], z_m.shape[1], 0.04 * z_m.shape[1], 0.06 * z_m.shape[1]]
        valid &= ((rows - cy) / (ry + 1)) ** 2 + ((cols - cx) / (rx + 1)) ** 2 > 1
    mm = np.where(valid, z_m, 0) * 1000
    mm += noise_mm * (mm / 700) ** 2 * noise(mm.shape)
    return np.where(valid, np.clip(np.rint(mm), 1, 65535), 0).astype(np.uint16)
