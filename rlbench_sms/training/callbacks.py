"""Training callbacks of our own: throughput and how much of it is spent waiting for data."""

from __future__ import annotations

import time

import pytorch_lightning as pl


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
