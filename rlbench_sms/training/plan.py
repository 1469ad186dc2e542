"""Check a training config against itself and the dataset before any heavy work starts.

A modality preset switches the policy branches on *and* names the data to load
(``dataset.modality``). Everything that can disagree is checked here, and the first problem ends
the run with one :class:`ConfigError` line naming the config key: an unknown modality part, a
branch removed from (or added on) the command line without its data, a dataset that is missing or
lacks a feature the modality needs, impossible trainer settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlbench_sms.data.datamodule import MODALITY_PARTS, modality_keys
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.metadata import DatasetMeta

# Modality part -> the policy branch group that consumes it. "rgb" needs no branch: the cameras
# are SmolVLA's own input.
BRANCH_OF_PART = {"depth": "depth", "force": "force", "tip": "tip"}


class ConfigError(ValueError):
    """A training config that cannot work; the message is one line naming the key."""


@dataclass
class TrainPlan:
    """What the checks established: the dataset, the keys to load, the branch settings."""

    meta: DatasetMeta
    modality: str
    parts: list[str]
    keys: list[str]
    branches: dict[str, dict[str, Any]]


def parse_modality(modality: Any) -> list[str]:
    if not isinstance(modality, str) or not modality:
        raise ConfigError(f"dataset.modality: expected a string like 'rgb+depth', got {modality!r}")
    parts = modality.split("+")
    for part in parts:
        if part not in MODALITY_PARTS:
            raise ConfigError(f"dataset.modality={modality!r}: unknown part {part!r} "
                              f"(parts: {', '.join(MODALITY_PARTS)})")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"dataset.modality={modality!r}: a part is repeated")
    if "rgb" not in parts:
        raise ConfigError(f"dataset.modality={modality!r}: SmolVLA needs the cameras; include 'rgb'")
    return parts


def branch_settings(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """``policy.branch`` as plain dicts, leaving out the branches that are off (null)."""
    node = OmegaConf.select(cfg, "policy.branch", default=None)
    if node is None:
        return {}
    raw = OmegaConf.to_container(node, resolve=True)
    return {name: dict(spec) for name, spec in raw.items() if spec is not None}


def check_branches(parts: list[str], branches: dict[str, dict[str, Any]], modality: str) -> None:
    for name in branches:
        if name not in BRANCH_OF_PART.values():
            raise ConfigError(f"policy.branch.{name}: unknown branch (branches: {', '.join(BRANCH_OF_PART)})")
    for part, branch in BRANCH_OF_PART.items():
        if part in parts and branch not in branches:
            raise ConfigError(
                f"policy.branch.{branch}: modality {modality!r} loads {part} data but the {branch} branch is off "
                f"(null); pick one, e.g. policy/branch/{branch}=<type>, or use a modality without {part}")
        if part not in parts and branch in branches:
            kind = branches[branch].get("type", "?")
            raise ConfigError(
                f"policy.branch.{branch}: the {branch} branch is on ({kind}) but modality {modality!r} does not "
                f"load {part} data; use a modality preset with {part} (e.g. modality=rgb+{part})")


def check_trainer(cfg: DictConfig) -> None:
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=None)
    if not isinstance(max_steps, int) or max_steps <= 0:
        raise ConfigError(f"trainer.max_steps: training is step based; expected a positive int, got {max_steps!r}")
    batch = OmegaConf.select(cfg, "data.batch_size", default=None)
    if not isinstance(batch, int) or batch <= 0:
        raise ConfigError(f"data.batch_size: expected a positive int, got {batch!r}")


def check_policy_paths(cfg: DictConfig) -> None:
    pretrained = OmegaConf.select(cfg, "policy.pretrained_path", default=None)
    if pretrained is not None and not (Path(pretrained) / "config.json").is_file():
        raise ConfigError(f"policy.pretrained_path={pretrained!r}: no SmolVLA checkpoint there (config.json "
                          f"missing); download one with `hf download lerobot/smolvla_base --local-dir <dir>`")
    vlm = OmegaConf.select(cfg, "policy.vlm_path", default=None)
    if vlm is None:
        raise ConfigError("policy.vlm_path: must name a local SmolVLM directory")
    if not OmegaConf.select(cfg, "policy.build_tiny_vlm", default=False) and not (Path(vlm) / "config.json").is_file():
        raise ConfigError(f"policy.vlm_path={vlm!r}: no SmolVLM directory there (config.json missing); download it "
                          f"once with `hf download HuggingFaceTB/SmolVLM2-500M-Video-Instruct --local-dir {vlm}`")


def plan_training(cfg: DictConfig) -> TrainPlan:
    """Run every check (cheap: reads only the dataset's metadata); return what training needs."""
    modality = OmegaConf.select(cfg, "dataset.modality", default=None)
    parts = parse_modality(modality)
    branches = branch_settings(cfg)
    check_branches(parts, branches, modality)
    check_trainer(cfg)
    check_policy_paths(cfg)
    root = OmegaConf.select(cfg, "dataset.root", default=None)
    if root is None:
        raise ConfigError("dataset.root: missing; point it at a LeRobot dataset folder")
    try:
        meta = DatasetMeta.load(root)
        keys = modality_keys(meta, modality)
    except DatasetError as e:
        raise ConfigError(f"dataset.root: {e}") from None
    except FileNotFoundError as e:
        raise ConfigError(f"dataset.root: {e}") from None
    return TrainPlan(meta=meta, modality=modality, parts=parts, keys=keys, branches=branches)
