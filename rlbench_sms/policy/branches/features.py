"""Which policy input features the branches add, given the dataset's features.

The policy's ``config.input_features`` is its input contract (saved in ``config.json``) and decides
normalisation: a feature of type STATE is normalised MEAN_STD with the stats that travel in the
checkpoint's normalizer file (missing stats are an error), VISUAL is a camera, ENV is passed
through unchanged.

| branch            | key                          | policy feature                              |
|-------------------|------------------------------|---------------------------------------------|
| depth ``as_image``| ``observation.images.*_depth``| VISUAL (3, H, W): a camera                  |
| depth ``cnn``     | ``observation.images.*_depth``| ENV (1, H, W): metres, not normalised       |
| force (any)       | ``observation.force``        | STATE (C,): MEAN_STD per channel            |
| tip ``token``     | ``observation.tip.position`` | STATE (3,): MEAN_STD per axis               |
| tip ``text``      | ``observation.tip.position`` | ENV (3,): metres, written as text           |
| tip (any)         | ``observation.tip.valid``    | ENV (1,): bool, never normalised            |
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from rlbench_sms.features import FORCE, TIP_POSITION, TIP_VALID, FeatureSpec, is_depth_key

from ..smolvla.config import PolicyFeature
from .config import BranchesConfig, DepthAsImage, TipToken, parse_branches


def _need(features: Mapping[str, FeatureSpec], key: str, kind: str) -> FeatureSpec:
    if key not in features:
        raise ValueError(f"branches.{kind}: the dataset has no feature {key!r} "
                         f"(it has: {', '.join(sorted(features))})")
    return features[key]


def resolve_branches(branches, dataset_features: Mapping[str, FeatureSpec]) -> BranchesConfig:
    """``parse_branches`` + depth ``keys: None`` replaced by every depth stream of the dataset
    (in the dataset's feature order) + a check that every key a branch reads exists."""
    cfg = parse_branches(branches)
    if cfg.depth is not None:
        keys = cfg.depth.keys
        if keys is None:
            keys = tuple(k for k, f in dataset_features.items() if is_depth_key(k) and f.is_media)
            if not keys:
                raise ValueError("branches.depth: the dataset has no depth stream (observation.images.<cam>_depth)")
            cfg = cfg.replace(depth=dataclasses.replace(cfg.depth, keys=keys))
        for key in keys:
            _need(dataset_features, key, "depth")
    if cfg.force is not None:
        _need(dataset_features, FORCE, "force")
    if cfg.tip is not None:
        _need(dataset_features, TIP_POSITION, "tip")
        _need(dataset_features, TIP_VALID, "tip")
    return cfg


def branch_input_features(branches, dataset_features: Mapping[str, FeatureSpec]) -> dict[str, PolicyFeature]:
    """The policy input features the branches read, to merge into ``config.input_features``.

    Depth features come in ``keys`` order, which is their camera order for ``as_image``: merge
    them after the RGB cameras to put the depth views last in the prefix.
    """
    cfg = resolve_branches(branches, dataset_features)
    out: dict[str, PolicyFeature] = {}
    if cfg.depth is not None:
        for key in cfg.depth.keys:
            height, width = dataset_features[key].shape[:2]     # dataset shape (H, W, 1)
            if isinstance(cfg.depth, DepthAsImage):
                out[key] = PolicyFeature("VISUAL", (3, height, width))
            else:
                out[key] = PolicyFeature("ENV", (1, height, width))
    if cfg.force is not None:
        out[FORCE] = PolicyFeature("STATE", tuple(dataset_features[FORCE].shape))
    if cfg.tip is not None:
        out[TIP_POSITION] = PolicyFeature("STATE" if isinstance(cfg.tip, TipToken) else "ENV",
                                          tuple(dataset_features[TIP_POSITION].shape))
        out[TIP_VALID] = PolicyFeature("ENV", tuple(dataset_features[TIP_VALID].shape))
    return out
