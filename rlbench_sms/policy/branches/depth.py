"""Depth branches: depth as an extra VLM camera, or a small conv encoder giving prefix tokens.

Depth arrives as float metres (B, 1, H, W), 0 = invalid (no return), aligned to its colour
camera; a 5-D (B, T, 1, H, W) input uses its last (current) step, as cameras do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import DepthCNN


def _current(depth: Tensor) -> Tensor:
    if depth.ndim == 5:                       # (B, T, 1, H, W): the current frame
        depth = depth[:, -1]
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W) metres, got shape {tuple(depth.shape)}")
    return depth


def scaled_depth(depth: Tensor, max_depth_m: float) -> Tensor:
    """Metres -> [0, 1]: clipped to [0, max_depth_m] then divided by it; invalid (0, NaN) -> 0."""
    depth = torch.nan_to_num(depth.float(), nan=0.0, posinf=0.0, neginf=0.0)
    return depth.clamp(0.0, max_depth_m) / max_depth_m


def depth_as_image(depth: Tensor, max_depth_m: float) -> Tensor:
    """(B, 1, H, W) metres -> (B, 3, H, W) grey image in [0, 1] (near = dark, invalid = black).

    It then goes through the same resize/pad and [-1, 1] mapping as every camera.
    """
    x = scaled_depth(_current(depth), max_depth_m)
    return x.expand(-1, 3, -1, -1)            # (B, 1, H, W) -> (B, 3, H, W), a view


class DepthEncoder(nn.Module):
    """(B, 1, H, W) metres -> (B, rows * cols, width) prefix tokens.

    Input channels: depth / max_depth_m in [0, 1] and the validity mask (depth > 0), so that
    "no return" is not confused with "very near". Both are area-resized to ``input_size``
    (the validity channel becomes the valid fraction of each cell), then each of ``channels``
    is a 3x3 stride-2 conv + GroupNorm + SiLU, then an adaptive average pool to the ``grid`` and
    a linear map of each cell to the VLM width, row-major.

    The tokens are not multiplied by sqrt(width) as image and language embeddings are: that
    factor brings the VLM's small-std embedding tables (std ~0.02) to O(1) values, and a freshly
    initialised linear on GroupNorm-ed features already outputs O(1) values.
    """

    def __init__(self, spec: DepthCNN, width: int):
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        c_in = 2                              # scaled depth, validity
        for c_out in spec.channels:
            layers += [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1),
                       nn.GroupNorm(spec.norm_groups, c_out), nn.SiLU()]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(tuple(spec.grid))
        self.proj = nn.Linear(c_in, width)

    def forward(self, depth: Tensor) -> Tensor:
        depth = _current(depth)
        dtype = self.proj.weight.dtype
        x = torch.cat([scaled_depth(depth, self.spec.max_depth_m), (depth > 0).float()], dim=1)  # (B, 2, H, W)
        x = F.interpolate(x, size=tuple(self.spec.input_size), mode="area").to(dtype)
        x = self.pool(self.conv(x))                                   # (B, C, rows, cols)
        x = x.flatten(2).transpose(1, 2)                              # (B, rows * cols, C)
        return self.proj(x)                                           # (B, rows * cols, width)
