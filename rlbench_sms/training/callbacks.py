"""Training callbacks of our own: throughput (and how much of it is spent waiting for data), and a
progress bar that counts optimiser steps."""

from __future__ import annotations

import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar


class ThroughputMonitor(pl.Callback):
    """Logs ``perf/samples_per_s`` and ``perf/data_wait_fraction`` (of wall time per step).

    The wait of a step is the time from the end of the previous step to the start of this one
    (the loader fetching and transferring the batch); the step time runs from one start to the
    next. The first ``skip`` steps (warm-up, worker start) are left out of the totals.
    """

    def __init__(self, skip: int = 5):
        self.skip = skip
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.samples = 0
        self.wait_s = 0.0
        self.total_s = 0.0
        self._last_end: float | None = None
        self._last_start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._last_end is not None and self._last_start is not None:
            self.steps += 1
            if self.steps > self.skip:
                self.wait_s += now - self._last_end
                self.total_s += now - self._last_start
                self.samples += self._last_size * trainer.world_size
        self._last_start = now
        self._last_size = int(batch["action"].shape[0])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_end = time.perf_counter()
        if self.total_s > 0:
            pl_module.log_dict(self.summary(), on_step=True, on_epoch=False)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._last_end = self._last_start = None   # validation time is not a data wait

    def summary(self) -> dict[str, float]:
        if self.total_s <= 0:
            return {}
        return {"perf/samples_per_s": self.samples / self.total_s,
                "perf/data_wait_fraction": self.wait_s / self.total_s}


class StepProgressBar(RichProgressBar):
    """Rich progress bar of optimiser steps: ``step 21/30``, not Lightning's ``Epoch 0/-2`` and
    batches of the (resumed, shortened) epoch (``21/9``).

    Training is step based (``trainer.max_steps``, one endless epoch over a step sampler), so the
    bar counts ``trainer.global_step`` of ``max_steps``, and a resumed run starts where it stopped.
    Without a step budget (``max_steps=-1``) it is Lightning's bar.
    """

    description = "step"

    def _counts_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._counts_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._counts_steps():
            return super()._get_train_description(current_epoch)
        # As wide as the validation bar's label, as Lightning pads it, so the bars do not jitter.
        return f"{self.description:{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)   # (re)creates the bar at 0
        if self._counts_steps():
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not self._counts_steps():
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()   # resumed mid-epoch: no epoch start came
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()
