"""Feature normalisation from the statistics that travel with a checkpoint.

Same maths as LeRobot's ``NormalizerProcessorStep`` / ``UnnormalizerProcessorStep``
(``processor/normalize_processor.py``), with one deliberate difference: LeRobot silently returns a
tensor unchanged when its feature has no stats; here a feature whose mode needs stats and has none
is an error at construction, naming every missing ``{feature}.{stat}``.

Modes (``eps`` = 1e-8):

- ``MEAN_STD``:   ``(x - mean) / (std + eps)``; inverse ``x * std + mean`` (no eps on the way back)
- ``MIN_MAX``:    ``2 (x - min) / (max - min) - 1``, a zero range replaced by ``eps``;
  inverse ``(x + 1) / 2 * range + min``
- ``QUANTILES``:  as MIN_MAX with ``q01`` / ``q99``; ``QUANTILE10`` with ``q10`` / ``q90``
- ``IDENTITY``:   unchanged

Statistics are kept in float32 and, like LeRobot, cast to the dtype and device of the tensor they
are applied to. Visual stats of shape (C,) are reshaped to (C, 1, 1) to broadcast over images.
Vector stats of shape (C,) broadcast over the last axis, so a window (B, W, C) (e.g. a force
history) is normalised per channel like a single reading (B, C). Boolean tensors (validity flags
such as ``observation.tip.valid``) are never normalised.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

EPS = 1e-8

REQUIRED_STATS: dict[str, tuple[str, ...]] = {
    "IDENTITY": (),
    "MEAN_STD": ("mean", "std"),
    "MIN_MAX": ("min", "max"),
    "QUANTILES": ("q01", "q99"),
    "QUANTILE10": ("q10", "q90"),
}


class NormalizationStatsError(ValueError):
    """A feature that must be normalised has no (or incomplete) statistics."""


def flatten_stats(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Tensor]:
    """``{feature: {stat: array}}`` -> ``{"feature.stat": float32 tensor}`` (LeRobot's file keys)."""
    flat: dict[str, Tensor] = {}
    for key, sub in stats.items():
        for stat, value in sub.items():
            flat[f"{key}.{stat}"] = _to_tensor(value)
    return flat


def unflatten_stats(flat: Mapping[str, Any]) -> dict[str, dict[str, Tensor]]:
    """Inverse of :func:`flatten_stats`: the stat name is what follows the last dot."""
    nested: dict[str, dict[str, Tensor]] = {}
    for flat_key, value in flat.items():
        key, _, stat = flat_key.rpartition(".")
        if not key:
            raise NormalizationStatsError(f"stats key {flat_key!r} is not of the form 'feature.stat'")
        nested.setdefault(key, {})[stat] = _to_tensor(value)
    return nested


def _to_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=torch.float32)
    return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=torch.float32)


class Normalizer:
    """(Un)normalises the features of a policy given their types, a type->mode map and stats.

    Args:
        features: ``{key: feature}`` where ``feature.type`` is a LeRobot FeatureType string.
        norm_map: ``{FeatureType: NormalizationMode}`` strings, e.g. ``{"STATE": "MEAN_STD"}``;
            a type not listed is IDENTITY (as in LeRobot).
        stats: ``{key: {stat: array}}``; stats of features not listed are kept (so they are saved
            back unchanged) but unused.
    """

    def __init__(self, features: Mapping[str, Any], norm_map: Mapping[str, str],
                 stats: Mapping[str, Mapping[str, Any]] | None, eps: float = EPS):
        self.features = dict(features)
        self.norm_map = {str(k): str(v) for k, v in norm_map.items()}
        self.eps = float(eps)
        self.stats: dict[str, dict[str, Tensor]] = {
            k: {s: _to_tensor(v) for s, v in sub.items()} for k, sub in (stats or {}).items()
        }
        missing: list[str] = []
        for key, feature in self.features.items():
            mode = self.mode(key)
            if mode not in REQUIRED_STATS:
                raise ValueError(f"unsupported normalization mode {mode!r} for {key!r}")
            for stat in REQUIRED_STATS[mode]:
                if stat not in self.stats.get(key, {}):
                    missing.append(f"{key}.{stat}")
        if missing:
            found = sorted(f"{k}.{s}" for k, sub in self.stats.items() for s in sub)
            shown = ", ".join(found[:12]) + (", ..." if len(found) > 12 else "")
            raise NormalizationStatsError(
                f"missing normalization stats {missing} (needed by normalization_mapping "
                f"{self.norm_map}); stats found: [{shown or 'none'}]. Pass the dataset's stats "
                f"(e.g. dataset_stats=meta.stats) or set that feature type to IDENTITY.")
        # Visual stats broadcast over (C, H, W).
        for key, feature in self.features.items():
            if _type_of(feature) == "VISUAL" and key in self.stats:
                for stat, t in self.stats[key].items():
                    if t.ndim == 1:
                        self.stats[key][stat] = t.reshape(-1, 1, 1)
        self._cache: dict[tuple, Tensor] = {}

    # ------------------------------------------------------------------ API
    def mode(self, key: str) -> str:
        feature = self.features.get(key)
        if feature is None:
            return "IDENTITY"
        return self.norm_map.get(_type_of(feature), "IDENTITY")

    def normalize(self, key: str, x: Tensor) -> Tensor:
        return self._apply(key, x, inverse=False)

    def unnormalize(self, key: str, x: Tensor) -> Tensor:
        return self._apply(key, x, inverse=True)

    def normalize_batch(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A shallow copy of ``batch`` with every known feature present in it normalised."""
        out = dict(batch)
        for key in self.features:
            if key in out and isinstance(out[key], Tensor) and out[key].dtype != torch.bool:
                out[key] = self.normalize(key, out[key])
        return out

    def flat_stats(self) -> dict[str, Tensor]:
        """All stats as ``{"feature.stat": tensor}``, visual ones back in their stored shape."""
        return {k: v.contiguous() for k, v in flatten_stats(self.stats).items()}

    # ------------------------------------------------------------- internals
    def _stat(self, key: str, stat: str, like: Tensor) -> Tensor:
        cache_key = (key, stat, like.device, like.dtype)
        t = self._cache.get(cache_key)
        if t is None:
            t = self.stats[key][stat].to(device=like.device, dtype=like.dtype)
            self._cache[cache_key] = t
        return t

    def _apply(self, key: str, x: Tensor, inverse: bool) -> Tensor:
        mode = self.mode(key)
        if mode == "IDENTITY" or x.dtype == torch.bool:
            return x
        self._check_channels(key, x, REQUIRED_STATS[mode][0])
        if mode == "MEAN_STD":
            mean, std = self._stat(key, "mean", x), self._stat(key, "std", x)
            if inverse:
                return x * std + mean
            return (x - mean) / (std + self.eps)
        lo_name, hi_name = REQUIRED_STATS[mode]
        lo, hi = self._stat(key, lo_name, x), self._stat(key, hi_name, x)
        span = hi - lo
        span = torch.where(span == 0, torch.tensor(self.eps, device=x.device, dtype=x.dtype), span)
        if mode == "MIN_MAX":
            if inverse:
                return (x + 1) / 2 * span + lo
            return 2 * (x - lo) / span - 1
        # QUANTILES / QUANTILE10
        if inverse:
            return (x + 1.0) * span / 2.0 + lo
        return 2.0 * (x - lo) / span - 1.0


    def _check_channels(self, key: str, x: Tensor, stat: str) -> None:
        """A vector stat (C,) must match the last axis of ``x`` (B, C) / (B, W, C): broadcasting
        would otherwise hide a wrong feature width (C = 1 silently, else with a vague error)."""
        t = self.stats[key][stat]
        if t.ndim == 1 and t.numel() > 1 and (x.ndim == 0 or x.shape[-1] != t.numel()):
            raise ValueError(f"{key}: stats have {t.numel()} channels but the tensor has shape {tuple(x.shape)} "
                             f"(channels last expected)")


def _type_of(feature: Any) -> str:
    if isinstance(feature, Mapping):
        return str(feature["type"])
    return str(feature.type)
