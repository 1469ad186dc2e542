"""Learning-rate schedules, built as ``_partial_`` configs that receive the optimiser last."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine_decay_with_warmup(optimizer: Optimizer, *, warmup_steps: int, decay_steps: int, decay_lr: float,
                             total_steps: int | None = None) -> LambdaLR:
    """SmolVLA's schedule (LeRobot ``CosineDecayWithWarmupSchedulerConfig``), per optimiser step.

    Warmup: the factor rises linearly from 1/(W+1) at step 0 to 1 at step W. Then
    ``(1 - a) * 0.5 * (1 + cos(pi * min(step, D) / D)) + a`` with ``a = decay_lr / peak_lr``; the
    cosine uses the absolute step, as LeRobot's does. A run shorter than ``decay_steps`` scales the
    warmup by ``total_steps / decay_steps`` and decays over ``total_steps`` instead.
    """
    peak_lr = optimizer.param_groups[0]["lr"]
    if peak_lr <= 0:
        raise ValueError(f"the optimiser's learning rate must be > 0, got {peak_lr}")
    warmup, decay = int(warmup_steps), int(decay_steps)
    if total_steps is not None and 0 < total_steps < decay:
        warmup = int(warmup * total_steps / decay)
        decay = int(total_steps)
    floor = decay_lr / peak_lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(step, decay) / max(decay, 1)
        return (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)) + floor

    return LambdaLR(optimizer, factor)
