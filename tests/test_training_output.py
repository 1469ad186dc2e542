"""What a training run shows its user: the step progress bar (resumed runs too), the end-of-run
report with whole paths, the torch.compile notice."""

from __future__ import annotations

import io
import logging

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from rlbench_sms.training.callbacks import StepProgressBar
from rlbench_sms.training.module import SmolVLAModule
from rlbench_sms.training.report import print_report


class _Regression(pl.LightningModule):
    """The smallest trainable module: one linear layer on random data."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(64, 2, generator=gen), torch.randn(64, 1, generator=gen)),
                          batch_size=4)


class _BarProbe(pl.Callback):
    """Records the training bar (description, completed, total) after every training batch."""

    def __init__(self, bar: StepProgressBar):
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        task = next(t for t in self.bar.progress.tasks if t.id == self.bar.train_progress_bar_id)
        self.seen.append((task.description.strip(), task.completed, task.total))


def _fit(tmp_path, max_steps: int, ckpt_path=None) -> list[tuple[str, float, float]]:
    bar = StepProgressBar(leave=True)
    probe = _BarProbe(bar)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=-1, callbacks=[bar, probe, checkpoint],
                         logger=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(_Regression(), ckpt_path=ckpt_path)
    return probe.seen


def test_progress_bar_counts_steps_of_max_steps_across_a_resume(tmp_path):
    assert _fit(tmp_path, max_steps=3)[-1] == ("step", 3, 3)
    # Resumed mid-epoch at step 3 of 7: the bar goes on from 3 (not "Epoch 0/-2", 1/4 batches).
    resumed = _fit(tmp_path / "resumed", max_steps=7, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    assert resumed == [("step", step, 7) for step in (4, 5, 6, 7)]


def test_report_prints_paths_whole_after_the_table():
    deep = "/" + "/".join(["a-very-long-sweep-folder-name,modality=rgb+depth+force,seed=2"] * 3)
    record = {"modality": "rgb+force", "seed": 0, "global_step": 5, "run_dir": deep,
              "metrics": {"train/loss": 0.5, "val/loss": 0.25}, "export_dir": f"{deep}/policy/best",
              "last_checkpoint": f"{deep}/checkpoints/last.ckpt"}
    out = io.StringIO()
    print_report(record, file=out)
    lines = out.getvalue().splitlines()
    for label, path in (("run folder", deep), ("exported policy", f"{deep}/policy/best"),
                        ("resume from", f"{deep}/checkpoints/last.ckpt"), ("metrics", f"{deep}/csv/metrics.csv")):
        assert any(line.startswith(f"{label}:") and line.split(":", 1)[1].strip() == path for line in lines), label
    assert any("val/loss" in line and "0.2500" in line for line in lines)


def test_compile_says_the_first_steps_are_slow_before_compiling(caplog):
    events = []

    class _Compiled(torch.nn.Module):
        def compile(self, *args, **kwargs):   # records the moment torch.compile would wrap it
            events.append(("compile", "torch.compile" in caplog.text))

    policy = torch.nn.Module()
    policy.model = torch.nn.Module()
    policy.model.vlm_with_expert = _Compiled()
    module = SmolVLAModule(policy, optimizer=torch.optim.AdamW, compile=True)
    with caplog.at_level(logging.INFO, logger="rlbench_sms.training.module"):
        module.setup("fit")
        module.setup("validate")   # compiled once
    assert events == [("compile", True)]
    assert "slow" in caplog.text and caplog.text.count("torch.compile") == 1
