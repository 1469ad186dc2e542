"""Tiny random policies exported as train.py exports them, for the evaluation and serving tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from rlbench_sms.data.datamodule import modality_keys
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.policy.branches import branch_input_features, resolve_branches
from rlbench_sms.policy.smolvla import SmolVLAConfig, SmolVLAPolicy
from rlbench_sms.training.build import dataset_policy_features, feature_contract
from rlbench_sms.training.export import export_policy

CHUNK = 8
FORCE_WINDOW = 3
FORCE_SPEC = {"force": {"type": "mlp", "window": FORCE_WINDOW, "hidden_dim": 16, "n_tokens": 1}}


def make_export(directory: Path, dataset_root: Path, vlm_dir: Path, modality: str = "rgb",
                branches: Mapping[str, Any] | None = None, chunk: int = CHUNK, n_action_steps: int | None = None,
                seed: int = 0, **info: Any) -> Path:
    """A random tiny SmolVLA over ``dataset_root``'s features for ``modality``, exported to
    ``directory`` with its ``rlbench_sms.json`` (``info`` overrides sidecar entries)."""
    meta = DatasetMeta.load(dataset_root)
    keys = modality_keys(meta, modality)
    inputs, outputs = dataset_policy_features(meta, keys)
    if branches:
        inputs.update(branch_input_features(branches, meta.features))
    config = SmolVLAConfig(input_features=inputs, output_features=outputs, vlm_model_name=str(vlm_dir),
                           num_vlm_layers=4, chunk_size=chunk, n_action_steps=n_action_steps or chunk,
                           num_steps=2, device="cpu", resize_imgs_with_padding=(64, 64))
    torch.manual_seed(seed)
    policy = SmolVLAPolicy(config, dataset_stats=meta.stats,
                           branches=resolve_branches(branches, meta.features) if branches else None)
    window = (branches or {}).get("force", {}).get("window", 1) if branches else 1
    sidecar = {"modality": modality, "branches": dict(branches or {}), "features": feature_contract(meta, keys),
               "fps": meta.fps, "robot_type": meta.robot_type, "force_window": window,
               "tasks": list(meta.tasks), "dataset": {"root": str(dataset_root)}, "export": "test"}
    sidecar.update(info)
    return export_policy(policy, directory, sidecar)
