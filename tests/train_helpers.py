"""Compose the real training config for tests: tiny SmolVLA, small sample, a few steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).parent.parent
CONF = REPO / "conf"


def small_run_overrides(dataset: Path, models: Path, run_dir: Path | None = None, steps: int = 2,
                        num_workers: int = 0) -> list[str]:
    """Overrides that make ``experiment=demo`` small and quiet enough for a test."""
    out = [f"dataset.root={dataset}", f"paths.models_dir={models}", f"trainer.max_steps={steps}",
           f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=1", "data.batch_size=2",
           f"data.num_workers={num_workers}", "callbacks.progress_bar=null", "val_sample_batches=1",
           "policy.config.chunk_size=5", "policy.config.n_action_steps=5", "policy.config.num_steps=2"]
    if run_dir is not None:
        out.append(f"run_dir={run_dir}")
    return out


def sweep_overrides(dataset: Path, models: Path, steps: int = 2, num_workers: int = 0) -> list[str]:
    """``small_run_overrides`` for ``-m`` runs, kept out of the sweep sub-folder names."""
    fixed = small_run_overrides(dataset, models, None, steps, num_workers)
    keys = ",".join(item.split("=", 1)[0] for item in fixed)
    return [*fixed, f"hydra.job.config.override_dirname.exclude_keys=[{keys},experiment]"]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


def run_train_script(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HYDRA_FULL_ERROR="0", PYTHONWARNINGS="ignore")
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
