"""Branch specs: the plain dict a Hydra config (or ``branches.json``) gives, read into dataclasses.

A spec has up to three kinds, each absent or ``None`` when off::

    {"depth": {"type": "cnn", "keys": ["observation.images.front_depth"], "max_depth_m": 1.5},
     "force": {"type": "mlp", "window": 10},
     "tip":   {"type": "text", "decimals": 2}}

Types per kind (fields and defaults are the dataclasses below):

- depth ``as_image``: each depth stream becomes one more camera of the VLM (no parameters);
  depth ``cnn``: a small conv encoder gives ``grid[0] * grid[1]`` prefix tokens per stream.
- force ``mlp``: the normalised force window -> MLP -> ``n_tokens`` prefix tokens;
  force ``state``: the normalised current force is appended to the state vector (no parameters).
- tip ``text``: the object position is written into the task string (no parameters);
  tip ``token``: Fourier features of the normalised position -> MLP -> one prefix token.

Depth ``keys`` may be ``None`` (every depth stream of the dataset): :func:`resolve_branches` fills
them from the dataset's features before a policy is built. Every error is a ``ValueError`` whose
one-line message names the offending key.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

KINDS = ("depth", "force", "tip")
# The checkpoint sidecar: written next to LeRobot's config.json only when a branch is on.
BRANCHES_FILE = "branches.json"
FORMAT_VERSION = 1


def _is_sequence(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


@dataclass(frozen=True)
class BranchSpec:
    """Base of every branch type: ``kind`` (depth / force / tip) and ``type`` name the branch."""

    kind: ClassVar[str] = ""
    type: ClassVar[str] = ""
    has_parameters: ClassVar[bool] = False

    @property
    def where(self) -> str:
        return f"branches.{self.kind} (type {self.type!r})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    # -- validation helpers --------------------------------------------------------------------
    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            values = value if isinstance(value, tuple) else (value,)
            if not values or any(v <= 0 for v in values):
                raise ValueError(f"{self.where}: field {name!r} must be > 0, got {value!r}")

    def _pair(self, name: str) -> None:
        if len(getattr(self, name)) != 2:
            raise ValueError(f"{self.where}: field {name!r} must have 2 entries, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class DepthSpec(BranchSpec):
    """Shared by both depth types. Depth arrives as float metres, 0 = invalid."""

    kind: ClassVar[str] = "depth"
    keys: tuple[str, ...] | None = None   # depth feature keys, in prefix order; None = all of the dataset
    max_depth_m: float = 1.5              # depths are clipped to [0, max_depth_m] then divided by it

    def __post_init__(self):
        from rlbench_sms.features import is_depth_key

        if isinstance(self.keys, str):
            raise ValueError(f"{self.where}: field 'keys' must be a list of keys, got the string {self.keys!r}")
        if self.keys is not None:
            if not self.keys:
                raise ValueError(f"{self.where}: field 'keys' is empty (leave it null for every depth stream)")
            bad = [k for k in self.keys if not is_depth_key(k)]
            if bad:
                raise ValueError(f"{self.where}: field 'keys' has {bad[0]!r}, not a depth key "
                                 f"(observation.images.<cam>_depth)")
            if len(set(self.keys)) != len(self.keys):
                raise ValueError(f"{self.where}: field 'keys' lists a key twice: {list(self.keys)}")
        self._positive("max_depth_m")


@dataclass(frozen=True)
class DepthAsImage(DepthSpec):
    """Depth shown to the VLM as an extra grey camera (no parameters)."""

    type: ClassVar[str] = "as_image"


@dataclass(frozen=True)
class DepthCNN(DepthSpec):
    """A small conv encoder per depth stream (weights shared between streams)."""

    type: ClassVar[str] = "cnn"
    has_parameters: ClassVar[bool] = True
    input_size: tuple[int, int] = (96, 128)   # (height, width) the depth is resized to, pixels
    channels: tuple[int, ...] = (16, 32, 64)  # one stride-2 conv + GroupNorm + SiLU per entry
    norm_groups: int = 8                      # GroupNorm groups (must divide every channel count)
    grid: tuple[int, int] = (2, 4)            # (rows, cols) adaptive-pool grid: one token per cell

    def __post_init__(self):
        super().__post_init__()
        self._pair("input_size")
        self._pair("grid")
        self._positive("input_size", "channels", "norm_groups", "grid")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"{self.where}: field 'norm_groups' ({self.norm_groups}) must divide every "
                             f"entry of 'channels', not {bad[0]}")

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class ForceSpec(BranchSpec):
    kind: ClassVar[str] = "force"
    window: int = 1          # force steps the data module loads (oldest first, current last)

    def __post_init__(self):
        self._positive("window")


@dataclass(frozen=True)
class ForceMLP(ForceSpec):
    """Normalised force window -> MLP -> ``n_tokens`` prefix tokens."""

    type: ClassVar[str] = "mlp"
    has_parameters: ClassVar[bool] = True
    hidden_dim: int = 256
    n_tokens: int = 1

    def __post_init__(self):
        super().__post_init__()
        self._positive("hidden_dim", "n_tokens")


@dataclass(frozen=True)
class ForceState(ForceSpec):
    """The normalised current force appended to the normalised state (no parameters)."""

    type: ClassVar[str] = "state"


@dataclass(frozen=True)
class TipText(BranchSpec):
    """The object position written into the task string (no parameters)."""

    kind: ClassVar[str] = "tip"
    type: ClassVar[str] = "text"
    decimals: int = 2        # digits after the point of each coordinate, in metres

    def __post_init__(self):
        if self.decimals < 0:
            raise ValueError(f"{self.where}: field 'decimals' must be >= 0, got {self.decimals!r}")


@dataclass(frozen=True)
class TipToken(BranchSpec):
    """Fourier features of the normalised position -> MLP -> one token, masked when invalid."""

    kind: ClassVar[str] = "tip"
    type: ClassVar[str] = "token"
    has_parameters: ClassVar[bool] = True
    n_freqs: int = 6         # octaves: frequencies pi * 2**k / scale, k = 0 .. n_freqs - 1
    scale: float = 4.0       # in normalised (std) units: the lowest frequency's half period
    hidden_dim: int = 128

    def __post_init__(self):
        self._positive("n_freqs", "scale", "hidden_dim")


BRANCH_TYPES: dict[str, dict[str, type[BranchSpec]]] = {
    "depth": {"as_image": DepthAsImage, "cnn": DepthCNN},
    "force": {"mlp": ForceMLP, "state": ForceState},
    "tip": {"text": TipText, "token": TipToken},
}


@dataclass(frozen=True)
class BranchesConfig:
    """The three branch slots; ``None`` = off."""

    depth: DepthSpec | None = None
    force: ForceSpec | None = None
    tip: TipText | TipToken | None = None

    @property
    def active(self) -> dict[str, BranchSpec]:
        """The branches that are on, by kind, in prefix order (depth, force, tip)."""
        return {k: getattr(self, k) for k in KINDS if getattr(self, k) is not None}

    @property
    def any_on(self) -> bool:
        return bool(self.active)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able spec of the branches that are on (``parse_branches`` reads it back)."""
        return {kind: spec.to_dict() for kind, spec in self.active.items()}

    def replace(self, **changes: Any) -> "BranchesConfig":
        return dataclasses.replace(self, **changes)


def _convert(where: str, name: str, value: Any, default: Any) -> Any:
    """Coerce one field value to the type of its default (lists -> tuples)."""
    if value is None:
        if default is None:
            return None
        raise ValueError(f"{where}: field {name!r} must not be null")
    try:
        if isinstance(default, tuple) or (default is None and _is_sequence(value)):
            if not _is_sequence(value):
                raise TypeError
            item = type(default[0]) if default else str
            return tuple(item(v) for v in value)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: field {name!r} has a bad value {value!r}") from None
    return value


def _parse_one(kind: str, raw: Any) -> BranchSpec:
    if isinstance(raw, BranchSpec):
        if raw.kind != kind:
            raise ValueError(f"branches.{kind}: got a {raw.kind} branch ({type(raw).__name__})")
        return raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"branches.{kind}: expected a mapping with a 'type', got {raw!r}")
    types = BRANCH_TYPES[kind]
    type_name = raw.get("type")
    if type_name not in types:
        raise ValueError(f"branches.{kind}.type: unknown type {type_name!r} (use one of {', '.join(types)})")
    cls = types[type_name]
    where = f"branches.{kind} (type {type_name!r})"
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k != "type" and k not in fields]
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(fields)})")
    kwargs = {k: _convert(where, k, v, fields[k]) for k, v in raw.items() if k != "type"}
    return cls(**kwargs)


def parse_branches(spec: Mapping[str, Any] | BranchesConfig | None) -> BranchesConfig:
    """Read a branch spec (dict / OmegaConf mapping / ``None``) into a :class:`BranchesConfig`."""
    if spec is None:
        return BranchesConfig()
    if isinstance(spec, BranchesConfig):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"branches: expected a mapping of {', '.join(KINDS)}, got {spec!r}")
    unknown = [k for k in spec if k not in KINDS]
    if unknown:
        raise ValueError(f"branches: unknown branch {unknown[0]!r} (use {', '.join(KINDS)})")
    return BranchesConfig(**{k: _parse_one(k, v) for k, v in spec.items() if v is not None})


def write_branches_file(directory: str | Path, branches: BranchesConfig) -> Path:
    """``{"format_version": 1, "branches": spec}`` into ``directory/branches.json``."""
    path = Path(directory) / BRANCHES_FILE
    path.write_text(json.dumps({"format_version": FORMAT_VERSION, "branches": branches.to_dict()}, indent=2))
    return path


def read_branches_file(directory: str | Path) -> BranchesConfig | None:
    """The branches of a checkpoint directory; ``None`` when it has no ``branches.json``."""
    path = Path(directory) / BRANCHES_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r} is not supported (this code reads {FORMAT_VERSION})")
    return parse_branches(data.get("branches"))
