"""SmolVLA configuration: LeRobot's ``config.json`` field names, defaults and file form.

The dataclass mirrors LeRobot's ``SmolVLAConfig`` (plus the generic ``PreTrainedConfig`` fields that
LeRobot serialises into the same file) so that a LeRobot checkpoint's ``config.json`` reads here and
ours reads in LeRobot. Reading accepts both the 0.4.x form and HEAD's (HEAD adds
``pretrained_revision``); a field we do not know is ignored with a warning. Writing emits the
0.4.4 form by default (draccus in 0.4.x rejects unknown keys, so HEAD-only fields are omitted).

The VLM architecture is *not* part of this file: LeRobot reads it from ``vlm_model_name`` at
construction time, and so do we (``vlm_model_name`` may be a local directory).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

POLICY_TYPE = "smolvla"

# LeRobot FeatureType / NormalizationMode values (strings in config.json).
FEATURE_TYPES = ("STATE", "VISUAL", "ENV", "ACTION", "REWARD", "LANGUAGE")
NORMALIZATION_MODES = ("MIN_MAX", "MEAN_STD", "IDENTITY", "QUANTILES", "QUANTILE10")

# Fields LeRobot HEAD writes that 0.4.4 refuses (checked against the v0.4.4 tag).
HEAD_ONLY_FIELDS = ("pretrained_revision",)

DEFAULT_VLM = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"


@dataclass(frozen=True)
class PolicyFeature:
    """One policy input/output as LeRobot's config lists it: a type tag and a shape.

    Images are (C, H, W); vectors are (n,).
    """

    type: str
    shape: tuple[int, ...]

    def __post_init__(self):
        if self.type not in FEATURE_TYPES:
            raise ValueError(f"feature type {self.type!r} is not one of {FEATURE_TYPES}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PolicyFeature":
        return cls(type=str(d["type"]), shape=tuple(d["shape"]))


def _default_norm_map() -> dict[str, str]:
    return {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}


@dataclass
class SmolVLAConfig:
    """LeRobot ``SmolVLAConfig`` (registered type ``"smolvla"``); field order = draccus' order."""

    # --- generic PreTrainedConfig fields (serialised first, in this order) ---
    n_obs_steps: int = 1
    input_features: dict[str, PolicyFeature] = field(default_factory=dict)
    output_features: dict[str, PolicyFeature] = field(default_factory=dict)
    device: str | None = None
    use_amp: bool = False
    use_peft: bool = False
    push_to_hub: bool = True
    repo_id: str | None = None
    private: bool | None = None
    tags: list[str] | None = None
    license: str | None = None
    pretrained_path: str | None = None
    pretrained_revision: str | None = None  # HEAD only; never written in the 0.4 form

    # --- SmolVLA fields ---
    chunk_size: int = 50
    n_action_steps: int = 50
    normalization_mapping: dict[str, str] = field(default_factory=_default_norm_map)
    max_state_dim: int = 32
    max_action_dim: int = 32
    resize_imgs_with_padding: tuple[int, int] | None = (512, 512)  # (width, height)
    empty_cameras: int = 0
    adapt_to_pi_aloha: bool = False
    use_delta_joint_actions_aloha: bool = False
    tokenizer_max_length: int = 48
    num_steps: int = 10
    use_cache: bool = True
    freeze_vision_encoder: bool = True
    train_expert_only: bool = True
    train_state_proj: bool = True
    optimizer_lr: float = 1e-4
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 1e-10
    optimizer_grad_clip_norm: float = 10
    scheduler_warmup_steps: int = 1_000
    scheduler_decay_steps: int = 30_000
    scheduler_decay_lr: float = 2.5e-6
    vlm_model_name: str = DEFAULT_VLM
    load_vlm_weights: bool = False
    add_image_special_tokens: bool = False
    attention_mode: str = "cross_attn"
    prefix_length: int = -1
    pad_language_to: str = "longest"
    num_expert_layers: int = -1
    num_vlm_layers: int = 16
    self_attn_every_n_layers: int = 2
    expert_width_multiplier: float = 0.75
    min_period: float = 4e-3
    max_period: float = 4.0
    rtc_config: dict[str, Any] | None = None
    compile_model: bool = False
    compile_mode: str = "max-autotune"

    def __post_init__(self):
        self.input_features = {k: _as_feature(v) for k, v in (self.input_features or {}).items()}
        self.output_features = {k: _as_feature(v) for k, v in (self.output_features or {}).items()}
        self.normalization_mapping = {str(k): str(v) for k, v in self.normalization_mapping.items()}
        for ftype, mode in self.normalization_mapping.items():
            if mode not in NORMALIZATION_MODES:
                raise ValueError(f"normalization_mapping[{ftype!r}] = {mode!r} is not one of {NORMALIZATION_MODES}")
        if self.resize_imgs_with_padding is not None:
            self.resize_imgs_with_padding = tuple(int(v) for v in self.resize_imgs_with_padding)
        self.optimizer_betas = tuple(float(b) for b in self.optimizer_betas)
        if self.n_action_steps > self.chunk_size:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) must be <= chunk_size ({self.chunk_size})")
        if self.use_delta_joint_actions_aloha:
            raise NotImplementedError("use_delta_joint_actions_aloha is not implemented (nor is it in LeRobot)")
        if self.pad_language_to not in ("longest", "max_length"):
            raise ValueError(f"pad_language_to must be 'longest' or 'max_length', got {self.pad_language_to!r}")
        # LeRobot's validate_features(): empty cameras become declared (3, 480, 640) image features.
        for i in range(self.empty_cameras):
            key = f"observation.images.empty_camera_{i}"
            self.input_features.setdefault(key, PolicyFeature("VISUAL", (3, 480, 640)))

    # ----------------------------------------------------------------- views
    @property
    def type(self) -> str:
        return POLICY_TYPE

    @property
    def image_features(self) -> dict[str, PolicyFeature]:
        """Camera features in config order (= the order their tokens enter the prefix)."""
        return {k: f for k, f in self.input_features.items() if f.type == "VISUAL"}

    @property
    def robot_state_feature(self) -> PolicyFeature | None:
        f = self.input_features.get("observation.state")
        return f if f is not None and f.type == "STATE" else None

    @property
    def action_feature(self) -> PolicyFeature:
        f = self.output_features.get("action")
        if f is None or f.type != "ACTION":
            raise ValueError("config.output_features has no 'action' feature of type ACTION")
        return f

    @property
    def action_dim(self) -> int:
        return self.action_feature.shape[0]

    @property
    def observation_delta_indices(self) -> list[int]:
        return [0]

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    # ------------------------------------------------------------- file form
    def to_dict(self, lerobot_form: str = "0.4") -> dict[str, Any]:
        """The ``config.json`` content, ``type`` first then fields in declaration order.

        ``lerobot_form="0.4"`` omits HEAD-only fields so LeRobot 0.4.4 can read it; ``"head"``
        keeps them.
        """
        if lerobot_form not in ("0.4", "head"):
            raise ValueError(f"lerobot_form must be '0.4' or 'head', got {lerobot_form!r}")
        out: dict[str, Any] = {"type": POLICY_TYPE}
        for f in dataclasses.fields(self):
            if lerobot_form == "0.4" and f.name in HEAD_ONLY_FIELDS:
                continue
            value = getattr(self, f.name)
            if f.name in ("input_features", "output_features"):
                value = {k: v.to_dict() for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SmolVLAConfig":
        """Parse a ``config.json`` mapping; unknown fields are ignored with one warning."""
        data = dict(data)
        ptype = data.pop("type", POLICY_TYPE)
        if ptype != POLICY_TYPE:
            raise ValueError(f"config.json has type {ptype!r}; this loader reads {POLICY_TYPE!r} policies only")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in known)
        if unknown:
            logger.warning("SmolVLA config: ignoring unknown field(s) %s", ", ".join(unknown))
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("input_features", "output_features"):
            if kwargs.get(key) is None:
                kwargs[key] = {}
        return cls(**kwargs)

    def save(self, path: str | Path, lerobot_form: str = "0.4") -> None:
        Path(path).write_text(json.dumps(self.to_dict(lerobot_form), indent=4))

    @classmethod
    def load(cls, path: str | Path) -> "SmolVLAConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> "SmolVLAConfig":
        return dataclasses.replace(self, **changes)


def _as_feature(value: Any) -> PolicyFeature:
    if isinstance(value, PolicyFeature):
        return value
    if isinstance(value, Mapping):
        return PolicyFeature.from_dict(value)
    raise TypeError(f"cannot read a policy feature from {value!r}")


def expert_intermediate_size(hidden: int, ffn_multiplier: int = 4, multiple_of: int = 256) -> int:
    """MLP width of the action expert: 2/3 * hidden, times 4, rounded up to a multiple of 256.

    For the real expert width 720 this gives 480 * 4 = 1920 -> 2048.
    """
    width = int(2 * hidden / 3)
    width = int(ffn_multiplier * width)
    return multiple_of * (-(-width // multiple_of))
