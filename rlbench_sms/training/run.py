"""``train.py``: check the config, build data + policy + trainer from it, fit, export, report.

Kept out of the entry script so that it is importable and testable. Every run folder gets a
``run.json`` (status, overrides, metrics, where the policy went) that the sweep summary reads. In a
multirun a failing run is recorded as failed and the sweep goes on (it exits 1 after its summary:
``SweepSummaryCallback``); a single run fails with one line on stderr and exit code 1 (2 for a
config error caught before any heavy work).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlbench_sms.cli import EXIT_CONFIG, error_line, hydra_runtime, run_checked
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.training.plan import ConfigError, TrainPlan, plan_training

log = logging.getLogger(__name__)
RUN_FILE = "run.json"


def _is_rank_zero() -> bool:
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def write_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".tmp-{RUN_FILE}"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(run_dir / RUN_FILE)


def instantiate_group(node: DictConfig | None) -> list[Any]:
    """Instantiate every non-null entry of a ``{name: {_target_: ...}}`` group (callbacks, loggers)."""
    from hydra.utils import instantiate

    if node is None:
        return []
    return [instantiate(spec) for spec in node.values() if spec is not None and "_target_" in spec]


def build_loggers(cfg: DictConfig) -> list[Any]:
    from rlbench_sms.training.loggers import resolve_wandb_mode

    node = OmegaConf.select(cfg, "logger")
    if node is not None and node.get("wandb") is not None:
        node = resolve_wandb_mode(node)
    return instantiate_group(node)


def build_trainer(cfg: DictConfig, callbacks: list[Any], loggers: list[Any]):
    from hydra.utils import instantiate

    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    interval = trainer_cfg.get("val_check_interval")
    max_steps = trainer_cfg["max_steps"] * trainer_cfg.get("accumulate_grad_batches", 1)
    if isinstance(interval, int) and interval > max_steps:
        trainer_cfg["val_check_interval"] = max_steps   # Lightning refuses an interval past the end
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers or False)


def fit(cfg: DictConfig, plan: TrainPlan) -> dict[str, Any]:
    """The heavy part: data, policy, trainer, ``fit``; returns the final metrics and paths."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    from rlbench_sms.training.build import build_module
    from rlbench_sms.training.start_method import restore_standard_start_method

    restore_standard_start_method()   # DataLoader workers must start inside a joblib sweep job too
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, keys=plan.keys)
    module = build_module(cfg, plan)
    callbacks = instantiate_group(cfg.get("callbacks"))
    trainer = build_trainer(cfg, callbacks, build_loggers(cfg))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result: dict[str, Any] = {"metrics": metrics, "global_step": trainer.global_step}
    from rlbench_sms.training.export import ExportPolicy

    for cb in callbacks:
        if isinstance(cb, ExportPolicy):
            result["export_dir"] = str(cb.dirpath / "best") if cb.best_score is not None else str(cb.dirpath / "last")
            result["metrics"][f"best/{cb.monitor}"] = cb.best_score
        # The metric-free checkpoint is the latest state (conf/callbacks: last_checkpoint).
        if type(cb).__name__ == "ModelCheckpoint" and cb.monitor is None and cb.best_model_path:
            result["last_checkpoint"] = cb.best_model_path
    return result


def train(cfg: DictConfig) -> float:
    """Run one training job from a composed ``conf/train.yaml``; returns ``optimized_metric``.

    Raises :class:`ConfigError` / :class:`DatasetError` (one line) in a single run; in a multirun
    every failure is recorded in ``run.json`` and NaN is returned so the sweep continues.
    """
    overrides, multirun, launcher = hydra_runtime()
    run_dir = Path(cfg.run_dir)
    record: dict[str, Any] = {
        "status": "running", "overrides": overrides, "modality": OmegaConf.select(cfg, "dataset.modality"),
        "seed": cfg.get("seed"), "experiment": _experiment_name(overrides), "metrics": {}, "error": None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "run_dir": str(run_dir.resolve())}
    start = time.monotonic()
    rank_zero = _is_rank_zero()
    try:
        if multirun and OmegaConf.select(cfg, "trainer.strategy") in ("ddp", "fsdp") and \
                launcher.endswith("BasicLauncher"):
            raise ConfigError("trainer.strategy: a local `-m` sweep with DDP/FSDP relaunches the whole sweep on "
                              "every rank; sweep with one process per run or use hydra/launcher=submitit_slurm")
        plan = plan_training(cfg)
        if rank_zero:
            write_run_record(run_dir, record)
        record.update(fit(cfg, plan))
        record["status"] = "completed"
    except Exception as e:
        record["status"] = "failed"
        record["error"] = _one_line(e)
        if not multirun:
            raise
        log.error("run failed (the sweep goes on): %s\n%s", record["error"], traceback.format_exc())
    finally:
        record["duration_s"] = round(time.monotonic() - start, 2)
        if rank_zero:
            write_run_record(run_dir, record)
    value = record["metrics"].get(cfg.get("optimized_metric"), math.nan)
    if record["status"] == "completed" and rank_zero:
        from rlbench_sms.training.report import print_report

        print_report(record)
    return float(value) if value is not None else math.nan


def _experiment_name(overrides: list[str]) -> str | None:
    for item in overrides:
        if item.startswith("experiment="):
            return item.split("=", 1)[1]
    return None


def _one_line(e: BaseException) -> str:
    return error_line(e)      # the root cause, Hydra's instantiation wrappers left out


def main(cfg: DictConfig) -> int:
    """Entry for ``train.py``: 0 ok, 2 config/dataset error or missing setting (one line), 1
    training failure (one line with the root cause, see :func:`rlbench_sms.cli.run_checked`)."""
    def run() -> int:
        try:
            train(cfg)
        except (ConfigError, DatasetError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_CONFIG
        return 0

    return run_checked(run, cfg, "training failed")


def entry(cfg: DictConfig) -> float | None:
    """What ``train.py`` calls: in a multirun return the metric to the sweeper (failures are
    recorded, not raised); in a single run exit non-zero on failure."""
    _, multirun, _ = hydra_runtime()
    if multirun:
        return train(cfg)
    code = main(cfg)
    if code:
        sys.exit(code)
    return None
