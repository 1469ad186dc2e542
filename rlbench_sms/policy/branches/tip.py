"""Tip branches: the detected object position as task text, or as one masked prefix token.

``observation.tip.position`` (B, 3) is in metres in the camera frame (x right, y down, z forward
for the usual optical frame); ``observation.tip.valid`` (B, 1) bool says whether the detector saw
the object this frame. An invalid position may hold anything (zeros, NaN): it is never used.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .config import TipToken

NOT_VISIBLE = " object not visible"


def _coordinate(value: float, decimals: int) -> str:
    rounded = round(float(value), decimals) or 0.0     # -0.0 -> 0.0, so "-0.00" is never written
    return f"{rounded:.{decimals}f}"


def tip_phrase(position: Sequence[float], valid: bool, decimals: int) -> str:
    """``" object at x=0.12 y=-0.05 z=0.41 m"`` (metres, camera frame) or ``" object not visible"``."""
    if not valid:
        return NOT_VISIBLE
    x, y, z = (_coordinate(v, decimals) for v in position)
    return f" object at x={x} y={y} z={z} m"


def valid_flags(valid: Tensor, batch: int) -> Tensor:
    """(B, 1) or (B,) -> (B,) bool."""
    return valid.to(torch.bool).reshape(batch)


def tip_text(tasks: Sequence[str], position: Tensor, valid: Tensor, decimals: int) -> list[str]:
    """Append the tip phrase to each task, before the trailing newline LeRobot's step adds (a task
    that already ends with one keeps exactly one, after the phrase)."""
    batch = position.shape[0]
    if len(tasks) != batch:
        raise ValueError(f"tip text: {len(tasks)} task strings for a batch of {batch} tip positions")
    flags = valid_flags(valid, batch).tolist()
    positions = position.detach().to("cpu", torch.float64).tolist()
    out = []
    for task, pos, ok in zip(tasks, positions, flags):
        body = task[:-1] if task.endswith("\n") else task
        out.append(body + tip_phrase(pos, ok, decimals))
    return out


class TipEncoder(nn.Module):
    """Normalised position (B, 3) -> (B, 1, width): [x, sin(f_k x), cos(f_k x)] -> MLP.

    ``f_k = pi * 2**k / scale`` for k < n_freqs, in normalised (std) units. The position of an
    invalid tip is replaced by 0 before encoding (it may be NaN) and its token is masked out of
    attention by the caller. The output is not scaled by sqrt(width) (see DepthEncoder).
    """

    def __init__(self, spec: TipToken, width: int):
        super().__init__()
        self.spec = spec
        n_in = 3 * (1 + 2 * spec.n_freqs)
        self.mlp = nn.Sequential(nn.Linear(n_in, spec.hidden_dim), nn.SiLU(), nn.Linear(spec.hidden_dim, width))

    def fourier(self, position: Tensor) -> Tensor:
        k = torch.arange(self.spec.n_freqs, device=position.device, dtype=torch.float32)
        freqs = math.pi * 2.0 ** k / self.spec.scale                      # (F,)
        angles = position.float()[..., None] * freqs                      # (B, 3, F)
        return torch.cat([position.float(), angles.sin().flatten(1), angles.cos().flatten(1)], dim=1)  # (B, 3 + 6F)

    def forward(self, position: Tensor, valid: Tensor) -> Tensor:
        flags = valid_flags(valid, position.shape[0])
        position = torch.where(flags[:, None], position, torch.zeros((), dtype=position.dtype, device=position.device))
        out = self.mlp(self.fourier(position).to(self.mlp[0].weight.dtype))   # (B, width)
        return out[:, None, :]                                                 # (B, 1, width)
