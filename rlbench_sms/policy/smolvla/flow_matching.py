"""Flow-matching maths shared by training and sampling (openpi/LeRobot conventions).

- Time: t ~ Beta(1.5, 1) * 0.999 + 0.001 (skewed toward t = 1, the noise end), float32.
- Interpolant: x_t = t * noise + (1 - t) * actions; target velocity u_t = noise - actions.
- Sampling: forward Euler from t = 1 with dt = -1 / num_steps (t = 1.0, 0.9, ..., 0.1 for 10 steps),
  x <- x + dt * v(x, t).
- Time embedding: sin | cos of t * 2 pi / period, periods geometric from min_period to max_period
  over dim / 2 frequencies, computed in float64 (float32 on MPS, which lacks float64).
- Attention masks (big_vision convention): with c = cumsum(ar) along the sequence, query i sees
  key j iff c[j] <= c[i] and both tokens are real (not padding).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch
from torch import Tensor

BETA_ALPHA, BETA_BETA = 1.5, 1.0
TIME_SCALE, TIME_OFFSET = 0.999, 0.001


def sample_noise(shape: tuple[int, ...], device: torch.device | str) -> Tensor:
    return torch.normal(mean=0.0, std=1.0, size=shape, dtype=torch.float32, device=device)


def sample_time(batch_size: int, device: torch.device | str) -> Tensor:
    """(B,) float32 flow times; Beta is sampled on CPU (no Dirichlet kernel on MPS), then moved."""
    beta = torch.distributions.Beta(torch.tensor(BETA_ALPHA, dtype=torch.float32),
                                    torch.tensor(BETA_BETA, dtype=torch.float32))
    t = beta.sample((batch_size,)).to(device)
    return (t * TIME_SCALE + TIME_OFFSET).to(dtype=torch.float32, device=device)


def interpolate(noise: Tensor, actions: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """x_t and the target velocity u_t for actions/noise (B, T, A) at times t (B,)."""
    t = t[:, None, None]
    return t * noise + (1 - t) * actions, noise - actions


def time_embedding(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """(B,) -> (B, dim) sinusoidal embedding, [sin | cos], in float64 (float32 on MPS)."""
    if dim % 2:
        raise ValueError(f"time embedding width {dim} must be even")
    if t.ndim not in (1, 2):
        raise ValueError(f"time must be (B,) or (B, T), got shape {tuple(t.shape)}")
    dtype = torch.float32 if t.device.type == "mps" else torch.float64
    arg = t[..., None] * _angular_frequencies(dim, min_period, max_period, dtype, t.device)
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


@functools.lru_cache(maxsize=16)
def _angular_frequencies(dim: int, min_period: float, max_period: float, dtype: torch.dtype,
                         device: torch.device) -> Tensor:
    """2 pi / period for the dim / 2 periods; the same every denoising step, so made once (read-only).
    Made outside inference mode, so that training can use what inference cached."""
    with torch.inference_mode(False):
        fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=device)
        period = min_period * (max_period / min_period) ** fraction
        return 1.0 / period * 2 * math.pi


def make_att_2d_masks(pad_masks: Tensor, ar_masks: Tensor) -> Tensor:
    """(B, N) validity + (B, N) autoregressive block starts -> (B, N, N) bool, [query, key]."""
    if pad_masks.ndim != 2 or ar_masks.ndim != 2:
        raise ValueError("pad and ar masks must be (B, N)")
    blocks = torch.cumsum(ar_masks, dim=1)
    visible = blocks[:, None, :] <= blocks[:, :, None]
    both_real = pad_masks[:, None, :] & pad_masks[:, :, None]
    return visible & both_real


def euler_integrate(velocity: Callable[[Tensor, Tensor], Tensor], noise: Tensor, num_steps: int) -> Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 1 (x = noise) to t = 0 in ``num_steps`` steps."""
    dt = -1.0 / num_steps
    x = noise
    batch = noise.shape[0]
    for step in range(num_steps):
        t = 1.0 + step * dt
        t_batch = torch.tensor(t, dtype=torch.float32, device=noise.device).expand(batch)
        x = x + dt * velocity(x, t_batch)
    return x
