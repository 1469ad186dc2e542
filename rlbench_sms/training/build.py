"""Build the policy and the LightningModule from the config and the dataset's metadata.

The policy's input contract comes from the dataset: its RGB cameras (VISUAL, in dataset order),
``observation.state`` and ``action`` shapes, plus what the branches read. Normalisation stats are
the dataset's (they then travel with every exported checkpoint).

Starting points:

- ``policy.pretrained_path`` (e.g. ``smolvla_base``): the checkpoint's config, with the dataset's
  features and ``policy.config`` on top; every base weight is loaded strictly (a missing,
  unexpected or mis-shaped key fails with the full list), new branch weights start random.
- otherwise from scratch: the VLM from ``policy.vlm_path`` (its pretrained weights when
  ``policy.config.load_vlm_weights``), the expert and heads random.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.features import ACTION, STATE, is_depth_key
from rlbench_sms.policy.branches import branch_input_features, resolve_branches
from rlbench_sms.policy.smolvla import SmolVLAConfig, SmolVLAPolicy, build_tiny_vlm
from rlbench_sms.policy.smolvla.checkpoint import WEIGHTS_FILE, check_keys
from rlbench_sms.policy.smolvla.config import PolicyFeature
from rlbench_sms.training.module import SmolVLAModule
from rlbench_sms.training.plan import TrainPlan

log = logging.getLogger(__name__)
BRANCH_PREFIX = "branches."


def ensure_tiny_vlm(path: str | Path) -> Path:
    """Write the tiny random VLM at ``path`` once. Built beside it and renamed into place, so
    concurrent processes (DDP ranks, parallel sweep jobs) never see a half-written directory."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    staging = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    build_tiny_vlm(staging)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(path)
    except OSError:   # another process won the race: use its copy
        shutil.rmtree(staging, ignore_errors=True)
    return path


def dataset_policy_features(meta: DatasetMeta, keys: list[str]) -> tuple[dict[str, PolicyFeature],
                                                                         dict[str, PolicyFeature]]:
    """(input_features, output_features) for the RGB cameras and state among ``keys``."""
    inputs: dict[str, PolicyFeature] = {}
    for key in keys:
        spec = meta.features[key]
        if spec.is_media and not is_depth_key(key):
            height, width, channels = spec.shape          # dataset (H, W, C) -> policy (C, H, W)
            inputs[key] = PolicyFeature("VISUAL", (channels, height, width))
    inputs[STATE] = PolicyFeature("STATE", tuple(meta.features[STATE].shape))
    outputs = {ACTION: PolicyFeature("ACTION", tuple(meta.features[ACTION].shape))}
    return inputs, outputs


def policy_config(cfg: DictConfig, plan: TrainPlan) -> SmolVLAConfig:
    """The SmolVLAConfig: pretrained (if any) < dataset features < ``policy.config``."""
    fields: dict[str, Any] = OmegaConf.to_container(cfg.policy.config, resolve=True)
    inputs, outputs = dataset_policy_features(plan.meta, plan.keys)
    inputs.update(branch_input_features(plan.branches, plan.meta.features))
    fields.update(input_features=inputs, output_features=outputs, vlm_model_name=str(cfg.policy.vlm_path))
    pretrained = cfg.policy.get("pretrained_path")
    if pretrained:
        base = SmolVLAConfig.load(Path(pretrained) / "config.json")
        fields["load_vlm_weights"] = False    # every VLM weight comes from the checkpoint
        return base.replace(**fields)
    return SmolVLAConfig(**fields)


def load_pretrained_weights(policy: SmolVLAPolicy, checkpoint_dir: str | Path) -> None:
    """Copy a SmolVLA checkpoint's weights into ``policy``: all base keys strictly, branches new."""
    from safetensors.torch import load_file

    path = Path(checkpoint_dir) / WEIGHTS_FILE
    weights = load_file(str(path))
    own = policy.state_dict()
    base = {k: tuple(v.shape) for k, v in own.items() if not k.startswith(BRANCH_PREFIX)}
    found = {k: tuple(v.shape) for k, v in weights.items()
             if not k.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs."))}
    check_keys(path, base, {k: s for k, s in found.items() if not k.startswith(BRANCH_PREFIX)})
    # Branch weights of a checkpoint trained with the same branches are reused when they fit.
    for key, shape in found.items():
        if key.startswith(BRANCH_PREFIX) and key in own and tuple(own[key].shape) == shape:
            base[key] = shape
    missing = policy.load_state_dict({k: weights[k] for k in base}, strict=False)
    if missing.unexpected_keys:
        raise RuntimeError(f"unexpected keys while loading {path}: {missing.unexpected_keys}")


def build_policy(cfg: DictConfig, plan: TrainPlan) -> SmolVLAPolicy:
    if cfg.policy.get("build_tiny_vlm"):
        ensure_tiny_vlm(cfg.policy.vlm_path)
    config = policy_config(cfg, plan)
    branches = resolve_branches(plan.branches, plan.meta.features)
    policy = SmolVLAPolicy(config, vlm_path=cfg.policy.vlm_path, dataset_stats=plan.meta.stats, branches=branches)
    if cfg.policy.get("pretrained_path"):
        load_pretrained_weights(policy, cfg.policy.pretrained_path)
        log.info("loaded pretrained SmolVLA weights from %s", cfg.policy.pretrained_path)
    return policy


def feature_contract(meta: DatasetMeta, keys: list[str]) -> dict[str, Any]:
    """The dataset features the policy reads and writes (with shapes, names, units, intrinsics)."""
    return {key: meta.features[key].to_info() for key in [*keys, ACTION] if key in meta.features}


# The task texts an export names (evaluate.py's default task is the first); a dataset of per-episode
# variants (the twin's press forces) has many, and the sidecar stays small.
MAX_EXPORTED_TASKS = 100


def export_info(cfg: DictConfig, plan: TrainPlan, branches) -> dict[str, Any]:
    return {
        "modality": plan.modality,
        "branches": branches.to_dict(),
        "features": feature_contract(plan.meta, plan.keys),
        "fps": plan.meta.fps,
        "robot_type": plan.meta.robot_type,
        "dataset": {"root": str(Path(plan.meta.root).resolve()), "repo_id": cfg.dataset.get("repo_id"),
                    "episodes": len(plan.meta.episodes)},
        "force_window": OmegaConf.select(cfg, "data.force_window", default=1),
        "tasks": list(plan.meta.tasks)[:MAX_EXPORTED_TASKS],
        "seed": cfg.seed,
        "pretrained_path": cfg.policy.get("pretrained_path"),
    }


def build_module(cfg: DictConfig, plan: TrainPlan) -> SmolVLAModule:
    policy = build_policy(cfg, plan)
    augment = None
    if cfg.get("augment") is not None and cfg.augment.get("enabled"):
        augment_cfg = OmegaConf.to_container(cfg.augment, resolve=True)
        augment_cfg.pop("enabled")
        augment = instantiate(augment_cfg)
    scheduler = instantiate(cfg.policy.scheduler) if cfg.policy.get("scheduler") is not None else None
    return SmolVLAModule(
        policy, optimizer=instantiate(cfg.policy.optimizer), scheduler=scheduler, augment=augment,
        compile=bool(cfg.get("compile", False)), val_sample_batches=int(cfg.get("val_sample_batches", 2)),
        seed=int(cfg.seed), export_info=export_info(cfg, plan, resolve_branches(plan.branches, plan.meta.features)))
