"""Export the trained policy as a self-contained directory, for the best and the last model.

``<run>/policy/best`` and ``<run>/policy/last`` each hold LeRobot's SmolVLA layout (config.json,
model.safetensors, processor JSONs with the normalisation stats; ``branches.json`` when a sensor
branch is on) plus ``rlbench_sms.json``: the modality, the feature contract (the dataset features
the policy reads, with shapes, names and units), the dataset and the training step and metrics.
Loading it with ``SmolVLAPolicy.from_pretrained`` (offline, like every load here) or ``evaluate.py``
needs nothing else.

A directory is written next to its final name and renamed into place, so an interrupted export
never leaves a half-written policy where the previous one was.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_only

SIDECAR_FILE = "rlbench_sms.json"
SIDECAR_FORMAT = 1


def read_export_info(directory: str | Path) -> dict[str, Any]:
    """The ``rlbench_sms.json`` of an exported policy (modality, features, dataset, training)."""
    path = Path(directory) / SIDECAR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {directory} is not a policy exported by train.py")
    return json.loads(path.read_text())


def export_policy(policy, directory: str | Path, info: Mapping[str, Any]) -> Path:
    """Write ``policy`` and its sidecar to ``directory`` atomically (replacing what was there)."""
    final = Path(directory)
    staging = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(staging, ignore_errors=True)
    policy.save_pretrained(staging)
    (staging / SIDECAR_FILE).write_text(json.dumps({"format": SIDECAR_FORMAT, **info}, indent=2, default=str))
    old = final.with_name(f".old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


class ExportPolicy(pl.Callback):
    """Exports ``best`` (lowest ``monitor`` so far, checked after every validation) and ``last``
    (at the end of training) under ``dirpath``. Rank 0 only."""

    def __init__(self, dirpath: str | Path, monitor: str = "val/loss", mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.dirpath = Path(dirpath)
        self.monitor = monitor
        self.mode = mode
        self.best_score: float | None = None
        self.best_step: int | None = None

    def _better(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return score < self.best_score if self.mode == "min" else score > self.best_score

    def _info(self, trainer: pl.Trainer, pl_module, which: str) -> dict[str, Any]:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        return {**getattr(pl_module, "export_info", {}), "export": which, "global_step": trainer.global_step,
                "epoch": trainer.current_epoch, "metrics": metrics, "monitor": self.monitor}

    @rank_zero_only
    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if self._better(score):
            self.best_score, self.best_step = score, trainer.global_step
            export_policy(pl_module.policy, self.dirpath / "best", self._info(trainer, pl_module, "best"))

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        export_policy(pl_module.policy, self.dirpath / "last", self._info(trainer, pl_module, "last"))

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")
