"""The twin's configuration: the ``sim`` node of the primary config (``conf/sim/default.yaml``).

Parsed into dataclasses so that a misspelt or missing key is one line naming it (``sim.cameras.
front.fovy``: unknown key) instead of a silent default. Task settings (``sim.tasks.<task>``) stay
plain mappings: each task in :mod:`rlbench_sms.sim.tasks` reads its own.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlbench_sms.features import SO100_MOTORS
from rlbench_sms.sim.assets import VisualMeshConfig


class SimConfigError(ValueError):
    """A bad ``sim`` setting: the message is one line naming the key."""


@dataclass(frozen=True)
class CameraPose:
    """A pinhole camera looking from ``pos`` at ``look_at`` (metres, in its parent's frame: the
    world for ``front``, the arm's ``gripper`` body for ``wrist``); ``up`` picks the image's up
    direction; ``fovy_deg`` is the vertical field of view."""

    pos: tuple[float, float, float]
    look_at: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    fovy_deg: float = 42.5


@dataclass(frozen=True)
class CamerasConfig:
    front: CameraPose
    wrist: CameraPose
    near_m: float = 0.01           # clipping planes; depth at or beyond far_m is stored as 0
    far_m: float = 3.0


@dataclass(frozen=True)
class PhysicsConfig:
    max_timestep_s: float = 0.002      # a tick is ceil((1/fps) / this) equal substeps
    settle_s: float = 0.3              # physics run at reset so objects come to rest (no clock time)
    force_buffer_samples: int = 100_000   # raw F/T samples kept between two reads (older dropped)
    ramp_servo_goals: bool = True      # a command ramps the servos' goals over the next tick (world.py)


@dataclass(frozen=True)
class RandomizationConfig:
    """Domain randomisation at every reset (uniform in each range; jitters are +- the value)."""

    cube_size_m: tuple[float, float] = (0.022, 0.030)       # edge length
    cube_density_kg_m3: float = 600.0                       # wood
    cube_rgb: tuple[float, float, float] = (0.85, 0.10, 0.10)
    cube_rgb_jitter: float = 0.08
    light_scale: tuple[float, float] = (0.8, 1.2)           # multiplies each light's diffuse
    light_dir_jitter: float = 0.3                           # added to each light's unit direction
    camera_pos_jitter_m: float = 0.01                       # the front camera's position
    camera_rot_jitter_deg: float = 1.5                      # ...and its orientation


@dataclass(frozen=True)
class SimConfig:
    task: str
    seed: int
    fps: float | None                          # None (replay's fps=null): the world refuses to build
    width: int
    height: int
    wrist_width: int
    wrist_height: int
    cache_dir: str
    cameras: CamerasConfig
    home: Mapping[str, float]                  # joint -> degrees (gripper: 0-100)
    realtime: bool = False
    park_position: tuple[float, float, float] = (0.0, 0.0, -1.5)
    physics: PhysicsConfig = field(default_factory=PhysicsConfig)
    visual_meshes: VisualMeshConfig = field(default_factory=VisualMeshConfig)
    randomization: RandomizationConfig = field(default_factory=RandomizationConfig)
    tasks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def period_s(self) -> float:
        if self.fps is None:
            raise SimConfigError("sim.fps: unset (fps=null): the twin needs the control rate, e.g. fps=30 "
                                 "(for replay: the dataset's fps)")
        return 1.0 / self.fps

    def substeps(self) -> int:
        """Physics steps per tick: the fewest that keep the timestep <= max_timestep_s."""
        return max(1, math.ceil(self.period_s / self.physics.max_timestep_s - 1e-9))


def canonical_json(config: Any) -> str:
    """The config as sorted JSON: equal settings give equal strings (the shared-world cache key)."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return json.dumps(plain(config), sort_keys=True, separators=(",", ":"))


def plain(config: Any) -> Any:
    """A DictConfig/ListConfig (resolved) or mapping as plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(config, (DictConfig, ListConfig)):
            return OmegaConf.to_container(config, resolve=True)
    except ImportError:                # pragma: no cover - omegaconf is a core dependency
        pass
    if isinstance(config, Mapping):
        return {str(k): plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [plain(v) for v in config]
    return config


def build_settings(cls, values: Any, where: str):
    """``cls`` from a mapping; unknown or missing keys and wrong shapes are one line."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise SimConfigError(f"{where}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise SimConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SimConfigError(f"{where}.{name}: missing")
            continue
        kwargs[name] = _convert(f.type, values[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise SimConfigError(f"{where}: {error}") from None


_NESTED = {"CameraPose": CameraPose, "CamerasConfig": CamerasConfig, "PhysicsConfig": PhysicsConfig,
           "RandomizationConfig": RandomizationConfig, "VisualMeshConfig": VisualMeshConfig}


def _convert(annotation: str, value: Any, where: str) -> Any:
    kind = str(annotation)
    if kind.endswith(" | None"):
        if value is None:
            return None
        kind = kind[: -len(" | None")]
    if kind in _NESTED:
        return build_settings(_NESTED[kind], value, where)
    if kind.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise SimConfigError(f"{where}: expected a list of numbers, got {value!r}")
        arity = kind.count("float")
        try:
            numbers = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise SimConfigError(f"{where}: expected numbers, got {value!r}") from None
        if len(numbers) != arity:
            raise SimConfigError(f"{where}: expected {arity} numbers, got {len(numbers)}")
        return numbers
    if kind in ("float", "int", "bool", "str"):
        if kind == "bool" and not isinstance(value, bool):
            raise SimConfigError(f"{where}: expected true or false, got {value!r}")
        try:
            return {"float": float, "int": int, "bool": bool, "str": str}[kind](value)
        except (TypeError, ValueError):
            raise SimConfigError(f"{where}: expected a {kind}, got {value!r}") from None
    return plain(value)


def parse_sim_config(config: Any) -> SimConfig:
    """A :class:`SimConfig` from the ``sim`` node (DictConfig or mapping), checked."""
    if isinstance(config, SimConfig):
        return config
    cfg = build_settings(SimConfig, plain(config), "sim")
    if cfg.fps is not None and cfg.fps <= 0:
        raise SimConfigError(f"sim.fps: must be positive, got {cfg.fps}")
    for key in ("width", "height", "wrist_width", "wrist_height"):
        if getattr(cfg, key) <= 0:
            raise SimConfigError(f"sim.{key}: must be a positive number of pixels")
    home = dict(cfg.home)
    if sorted(home) != sorted(SO100_MOTORS):
        raise SimConfigError(f"sim.home: give every joint {list(SO100_MOTORS)} exactly, got {sorted(home)}")
    if not 0 < cfg.cameras.near_m < cfg.cameras.far_m:
        raise SimConfigError("sim.cameras: need 0 < near_m < far_m")
    return dataclasses.replace(cfg, home={k: float(home[k]) for k in SO100_MOTORS},
                               tasks=dict(cfg.tasks or {}))
