"""LeRobot's SmolVLA checkpoint directory: read it, write it, check key coverage.

Layout (LeRobot 0.4+, ``pretrained_model/`` of a training run or a Hub repo)::

    config.json                                                  policy config (see config.py)
    model.safetensors                                            full state dict, "model.*" keys
    policy_preprocessor.json                                     steps: rename, to_batch, newline,
                                                                 tokenizer, device, normalizer
    policy_preprocessor_step_5_normalizer_processor.safetensors  stats, keys "{feature}.{stat}"
    policy_postprocessor.json                                    steps: unnormalizer, device
    policy_postprocessor_step_0_unnormalizer_processor.safetensors
    tokenizer/                                                   HEAD only (the tokenizer artifact)

State files are named ``{pipeline}_step_{index}_{registry_name}.safetensors``; we find steps by
registry name and files through each step's ``state_file``, so a pipeline with other indices
reads too. HEAD's tokenizer step may carry ``"artifacts": {"tokenizer_name": "tokenizer"}`` (a path
relative to the checkpoint); 0.4.x writes the VLM name there instead. Pre-0.4 checkpoints kept the
stats as ``normalize_inputs.buffer_<feature_with_underscores>.<stat>`` (and ``normalize_targets``,
``unnormalize_outputs``) inside ``model.safetensors``; those are read as stats.

Writing produces the 0.4.4-readable form: no HEAD-only config fields, no ``artifacts``, no tokenizer
folder (``tokenizer_name`` is the config's ``vlm_model_name``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..normalization import unflatten_stats
from .config import SmolVLAConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
NORMALIZER = "normalizer_processor"
UNNORMALIZER = "unnormalizer_processor"
TOKENIZER_STEP = "tokenizer_processor"
LEGACY_STATS_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")


class CheckpointError(RuntimeError):
    """A checkpoint directory is incomplete or does not match the model."""


class CheckpointKeyError(CheckpointError):
    """``model.safetensors`` and the model disagree: missing, unexpected or mis-shaped keys."""

    def __init__(self, path: Path, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple, tuple]]):
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{path}: the weights do not match the SmolVLA model built from its config "
                 f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape mismatches)"]
        if missing:
            lines.append("missing keys (in the model, not in the file):")
            lines += [f"  {k}" for k in missing]
        if unexpected:
            lines.append("unexpected keys (in the file, not in the model):")
            lines += [f"  {k}" for k in unexpected]
        if mismatched:
            lines.append("shape mismatches (key: file shape vs model shape):")
            lines += [f"  {k}: {tuple(f)} vs {tuple(m)}" for k, f, m in mismatched]
        super().__init__("\n".join(lines))


@dataclass
class ProcessorSpec:
    """What the processor JSONs say: normalisation and tokenisation settings, and the stats."""

    input_stats: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    output_stats: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    eps: float = 1e-8
    norm_features: dict[str, Any] | None = None       # normalizer step "features"
    output_norm_features: dict[str, Any] | None = None
    norm_map: dict[str, str] | None = None
    tokenizer_max_length: int | None = None
    padding: str | None = None
    padding_side: str = "right"
    truncation: bool = True
    task_key: str = "task"
    tokenizer_dir: Path | None = None                  # a tokenizer saved inside the checkpoint
    found_files: bool = False


def _steps(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    steps = data.get("steps")
    if not isinstance(steps, list):
        raise CheckpointError(f"{path}: no 'steps' list")
    return steps


def _find_step(steps: list[dict[str, Any]], registry_name: str) -> dict[str, Any] | None:
    hits = [s for s in steps if s.get("registry_name") == registry_name]
    return hits[0] if hits else None


def _load_state(root: Path, step: dict[str, Any] | None) -> dict[str, dict[str, Tensor]]:
    if step is None or not step.get("state_file"):
        return {}
    path = root / step["state_file"]
    if not path.is_file():
        raise CheckpointError(f"{path}: state file named by the processor JSON is missing")
    return unflatten_stats(load_file(str(path)))


def read_processors(root: Path) -> ProcessorSpec:
    spec = ProcessorSpec()
    pre, post = root / PREPROCESSOR_FILE, root / POSTPROCESSOR_FILE
    if pre.is_file():
        spec.found_files = True
        steps = _steps(pre)
        norm = _find_step(steps, NORMALIZER)
        if norm is not None:
            cfg = norm.get("config", {})
            spec.eps = float(cfg.get("eps", spec.eps))
            spec.norm_features = cfg.get("features")
            spec.norm_map = cfg.get("norm_map")
            spec.input_stats = _load_state(root, norm)
        tok = _find_step(steps, TOKENIZER_STEP)
        if tok is not None:
            cfg = tok.get("config", {})
            spec.tokenizer_max_length = cfg.get("max_length")
            spec.padding = cfg.get("padding")
            spec.padding_side = cfg.get("padding_side", "right")
            spec.truncation = bool(cfg.get("truncation", True))
            spec.task_key = cfg.get("task_key", "task")
            rel = (tok.get("artifacts") or {}).get("tokenizer_name") or cfg.get("tokenizer_name")
            if rel and not Path(rel).is_absolute() and (root / rel).is_dir():
                spec.tokenizer_dir = root / rel
    if post.is_file():
        spec.found_files = True
        unnorm = _find_step(_steps(post), UNNORMALIZER)
        if unnorm is not None:
            spec.output_norm_features = unnorm.get("config", {}).get("features")
            spec.output_stats = _load_state(root, unnorm)
    return spec


def split_legacy_stats(weights: dict[str, Tensor], config: SmolVLAConfig) -> dict[str, dict[str, Tensor]]:
    """Pop pre-0.4 in-model normalisation buffers from ``weights``; return them as stats."""
    features = {**config.input_features, **config.output_features}
    by_buffer = {"buffer_" + key.replace(".", "_"): key for key in features}
    stats: dict[str, dict[str, Tensor]] = {}
    for name in [k for k in weights if k.startswith(LEGACY_STATS_PREFIXES)]:
        _, buffer, stat = name.split(".", 2)
        key = by_buffer.get(buffer)
        if key is None:
            continue  # left in place: reported as unexpected by the strict check
        stats.setdefault(key, {})[stat] = weights.pop(name).to(torch.float32)
    return stats


def check_keys(path: Path, expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
               optional: set[str] = frozenset()) -> None:
    """Raise one :class:`CheckpointKeyError` listing every disagreement (none allowed)."""
    missing = sorted(k for k in expected if k not in found and k not in optional)
    unexpected = sorted(k for k in found if k not in expected)
    mismatched = sorted((k, tuple(found[k]), tuple(expected[k])) for k in expected
                        if k in found and tuple(found[k]) != tuple(expected[k]))
    if missing or unexpected or mismatched:
        raise CheckpointKeyError(path, missing, unexpected, mismatched)


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name.lower())


def _state_file(pipeline: str, index: int, registry: str) -> str:
    return f"{_sanitize(pipeline)}_step_{index}_{registry}.safetensors"


def write_checkpoint(root: str | Path, config: SmolVLAConfig, weights: Mapping[str, Tensor],
                     flat_stats: Mapping[str, Tensor], *, eps: float = 1e-8,
                     tokenizer_name: str | None = None) -> Path:
    """Write the LeRobot 0.4.4-readable directory; tensors keep their dtypes."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config.save(root / CONFIG_FILE, lerobot_form="0.4")
    tensors: dict[str, Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in weights.items():
        # Tied tensors (one storage under two names) are written once, as LeRobot's saver does.
        ident = (value.untyped_storage().data_ptr(), value.storage_offset())
        if value.device.type != "meta" and ident in seen:
            continue
        seen.add(ident)
        tensors[key] = value.detach().to("cpu").contiguous()
    save_file(tensors, str(root / WEIGHTS_FILE), metadata={"format": "pt"})

    features = {k: f.to_dict() for k, f in {**config.input_features, **config.output_features}.items()}
    out_features = {k: f.to_dict() for k, f in config.output_features.items()}
    norm_map = dict(config.normalization_mapping)
    stats = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in flat_stats.items()}
    pre_name, post_name = "policy_preprocessor", "policy_postprocessor"
    norm_file = _state_file(pre_name, 5, NORMALIZER)
    unnorm_file = _state_file(post_name, 0, UNNORMALIZER)
    pre = {"name": pre_name, "steps": [
        {"registry_name": "rename_observations_processor", "config": {"rename_map": {}}},
        {"registry_name": "to_batch_processor", "config": {}},
        {"registry_name": "smolvla_new_line_processor", "config": {}},
        {"registry_name": TOKENIZER_STEP, "config": {
            "max_length": config.tokenizer_max_length, "task_key": "task", "padding_side": "right",
            "padding": config.pad_language_to, "truncation": True,
            "tokenizer_name": tokenizer_name or config.vlm_model_name}},
        {"registry_name": "device_processor", "config": {"device": config.device or "cpu", "float_dtype": None}},
        {"registry_name": NORMALIZER, "config": {"eps": eps, "features": features, "norm_map": norm_map},
         "state_file": norm_file},
    ]}
    post = {"name": post_name, "steps": [
        {"registry_name": UNNORMALIZER, "config": {"eps": eps, "features": out_features, "norm_map": norm_map},
         "state_file": unnorm_file},
        {"registry_name": "device_processor", "config": {"device": "cpu", "float_dtype": None}},
    ]}
    save_file(stats, str(root / norm_file))
    save_file(stats, str(root / unnorm_file))
    (root / PREPROCESSOR_FILE).write_text(json.dumps(pre, indent=2))
    (root / POSTPROCESSOR_FILE).write_text(json.dumps(post, indent=2))
    return root
