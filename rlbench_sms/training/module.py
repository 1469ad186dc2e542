"""The LightningModule that trains a SmolVLA policy (with or without sensor branches).

Randomness is explicit: the flow-matching noise and time of every micro-batch (and any image
augmentation) come from a generator seeded by (run seed, optimiser step, micro-batch, rank), and
validation uses fixed seeds. So a run resumed from a Lightning checkpoint reproduces the
uninterrupted run, and ``val/loss`` of two evaluations differs only because the weights did.

Metrics: ``train/loss`` (flow-matching loss, LeRobot's reduction), ``val/loss`` (the same on the
validation episodes) and ``val/action_mse`` (mean squared error, in robot units (deg, gripper
0-100), between the sampled 50-action chunk and the recorded actions, pads excluded).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from rlbench_sms.features import ACTION
from rlbench_sms.policy.smolvla import SmolVLAPolicy
from rlbench_sms.policy.smolvla.flow_matching import BETA_ALPHA, TIME_OFFSET, TIME_SCALE
from rlbench_sms.training.augment import ImageAugment

log = logging.getLogger(__name__)
ACTION_IS_PAD = "action_is_pad"
VAL_STREAM = 1   # generator stream ids, so training and validation never share random numbers
TRAIN_STREAM = 0


def step_generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of non-negative ints (collision-free via SeedSequence)."""
    seed = int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def flow_noise_and_time(batch_size: int, chunk_size: int, max_action_dim: int,
                        generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Noise (B, T, max_action_dim) ~ N(0, 1) and times (B,) ~ Beta(1.5, 1) * 0.999 + 0.001.

    The same distributions as SmolVLA's own sampler; Beta(a, 1) is drawn as U ** (1 / a) (its
    inverse CDF) because torch's Beta sampler takes no generator.
    """
    noise = torch.randn(batch_size, chunk_size, max_action_dim, generator=generator)
    u = torch.rand(batch_size, generator=generator)
    time = u.pow(1.0 / BETA_ALPHA) * TIME_SCALE + TIME_OFFSET
    return noise, time


class SmolVLAModule(pl.LightningModule):
    """Trains ``policy`` with flow matching.

    Args:
        policy: the policy to train; its frozen parts (SmolVLA's defaults: vision encoder, or the
            whole VLM with ``train_expert_only``) stay frozen and in eval mode.
        optimizer: a partial taking the trainable parameters (``torch.optim.AdamW`` ``_partial_``).
        scheduler: a partial taking the optimiser; stepped every optimiser step. ``None``: constant.
        augment: image augmentation applied to training batches, or ``None``.
        compile: ``torch.compile`` the VLM + expert forward (state-dict keys are unchanged).
        val_sample_batches: validation batches on which a whole chunk is sampled for
            ``val/action_mse`` (10 denoising steps each, so it is capped).
        seed: the run seed (noise, time, augmentation streams).
        export_info: what the exported policy directory records besides the weights (modality,
            feature contract, dataset); see :mod:`rlbench_sms.training.export`.
    """

    def __init__(self, policy: SmolVLAPolicy, optimizer: Callable, scheduler: Callable | None = None,
                 augment: ImageAugment | None = None, compile: bool = False, val_sample_batches: int = 2,
                 seed: int = 0, export_info: Mapping[str, Any] | None = None):
        super().__init__()
        self.policy = policy
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.augment = augment
        self.compile_model = compile
        self.val_sample_batches = val_sample_batches
        self.seed = seed
        self.export_info = dict(export_info or {})

    def setup(self, stage: str) -> None:
        if self.compile_model and not getattr(self, "_compiled", False):
            # torch.compile is lazy: it compiles at the first forward of each kind (training, then
            # validation and sampling), which is silent and takes minutes; say so before it starts.
            if self.global_rank == 0:
                log.info("compile=true: torch.compile compiles the VLM + expert during the first training "
                         "and validation steps; those are slow (minutes), the following ones fast")
            # In place: the parameter names (and so checkpoints and exports) stay the same.
            self.policy.model.vlm_with_expert.compile()
            self._compiled = True

    # ------------------------------------------------------------------ steps
    def _flow_inputs(self, batch: Mapping[str, Any], stream: int, *ids: int) -> tuple[Tensor, Tensor]:
        cfg = self.policy.config
        batch_size = batch[ACTION].shape[0]
        gen = step_generator(self.seed, stream, self.global_rank, *ids)
        noise, time = flow_noise_and_time(batch_size, cfg.chunk_size, cfg.max_action_dim, gen)
        return noise.to(self.device), time.to(self.device)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        micro = batch_idx % max(1, self.trainer.accumulate_grad_batches)
        if self.augment is not None:
            gen = step_generator(self.seed, TRAIN_STREAM, self.global_rank, self.global_step, micro, 1)
            batch = self.augment(batch, gen)
        noise, time = self._flow_inputs(batch, TRAIN_STREAM, self.global_step, micro)
        loss, _ = self.policy.compute_loss(batch, noise=noise, time=time)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch[ACTION].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        batch_size = batch[ACTION].shape[0]
        noise, time = self._flow_inputs(batch, VAL_STREAM, batch_idx)
        loss, _ = self.policy.compute_loss(batch, noise=noise, time=time)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch_size)
        if batch_idx < self.val_sample_batches:
            self.log("val/action_mse", self.action_mse(batch, noise), sync_dist=True, batch_size=batch_size)

    def action_mse(self, batch: Mapping[str, Any], noise: Tensor) -> Tensor:
        """MSE in robot units between a sampled chunk and the recorded actions (pads excluded)."""
        predicted = self.policy.predict_action_chunk(batch, noise=noise)      # (B, T, A) robot units
        target = batch[ACTION].to(predicted)
        err = (predicted - target).pow(2)
        valid = ~batch[ACTION_IS_PAD].bool() if ACTION_IS_PAD in batch else torch.ones(err.shape[:2], dtype=torch.bool)
        valid = valid.to(err.device).unsqueeze(-1).expand_as(err)
        return err[valid].mean() if valid.any() else err.new_zeros(())

    # -------------------------------------------------------------- optimiser
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            raise ValueError("the policy has no trainable parameters (check freeze_vision_encoder / "
                             "train_expert_only and the branches)")
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
