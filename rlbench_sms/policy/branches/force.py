"""Force branches: the normalised force as prefix tokens (MLP) or as extra state entries.

Force is ``observation.force`` (B, C) or a window (B, W, C), oldest first, current last, in N and
N·m (tared per episode), normalised MEAN_STD per channel by the policy's normaliser before it
reaches this module. ``observation.force_is_pad`` (B, W) bool marks window steps before the
episode start.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import ForceMLP

FORCE_IS_PAD = "observation.force_is_pad"


def force_window(force: Tensor, is_pad: Tensor | None, window: int) -> tuple[Tensor, Tensor]:
    """(B, C) or (B, W, C) -> ((B, W, C) with padded steps zeroed, (B, W) bool validity)."""
    if force.ndim == 2:
        force = force[:, None, :]                                     # (B, C) -> (B, 1, C)
    if force.ndim != 3 or force.shape[1] != window:
        raise ValueError(f"observation.force: expected (B, {window}, C)" + (" or (B, C)" if window == 1 else "")
                         + f" for a force window of {window}, got shape {tuple(force.shape)}")
    if is_pad is None:
        valid = torch.ones(force.shape[:2], dtype=torch.bool, device=force.device)
    else:
        valid = ~is_pad.to(device=force.device, dtype=torch.bool).reshape(force.shape[:2])
    # where, not a product: a padded step may hold NaN
    return torch.where(valid[..., None], force, torch.zeros((), dtype=force.dtype, device=force.device)), valid


def append_force_to_state(state: Tensor, force: Tensor, is_pad: Tensor | None, max_state_dim: int) -> Tensor:
    """(B, S) (or (B, T, S), last step) normalised state + the current normalised force (B, C)
    -> (B, S + C), to be zero-padded to ``max_state_dim`` like the state alone."""
    if state.ndim > 2:
        state = state[:, -1, :]
    if force.ndim == 3:
        pad = None if is_pad is None else is_pad[:, -1:]
        force, _ = force_window(force[:, -1:], pad, 1)
        force = force[:, 0]                                           # (B, 1, C) -> (B, C)
    if state.shape[-1] + force.shape[-1] > max_state_dim:
        raise ValueError(f"branches.force (type 'state'): state ({state.shape[-1]}) + force ({force.shape[-1]}) "
                         f"entries exceed max_state_dim ({max_state_dim})")
    return torch.cat([state, force.to(state.dtype)], dim=-1)


class ForceEncoder(nn.Module):
    """Normalised force window (B, W, C) -> (B, n_tokens, width) prefix tokens.

    Input: the window flattened (padded steps zeroed) followed by the W validity flags, so a
    zeroed pad is told apart from a reading at the dataset mean. Two hidden SiLU layers. Like the
    depth tokens, the output is not scaled by sqrt(width) (see DepthEncoder).
    """

    def __init__(self, spec: ForceMLP, channels: int, width: int):
        super().__init__()
        self.spec, self.width = spec, width
        n_in = spec.window * channels + spec.window
        self.mlp = nn.Sequential(nn.Linear(n_in, spec.hidden_dim), nn.SiLU(),
                                 nn.Linear(spec.hidden_dim, spec.hidden_dim), nn.SiLU(),
                                 nn.Linear(spec.hidden_dim, spec.n_tokens * width))

    def forward(self, force: Tensor, is_pad: Tensor | None) -> Tensor:
        x, valid = force_window(force, is_pad, self.spec.window)      # (B, W, C), (B, W)
        dtype = self.mlp[0].weight.dtype
        x = torch.cat([x.flatten(1), valid.to(x.dtype)], dim=1)       # (B, W * C + W)
        out = self.mlp(x.to(dtype))                                    # (B, n_tokens * width)
        return out.reshape(x.shape[0], self.spec.n_tokens, self.width)  # (B, n_tokens, width)
