"""Training-time image augmentation in plain torch ops (no torchvision), off by default.

Applied on the training device to float images (B, 3, H, W) in [0, 1] after the batch transfer:

- colour jitter: per-sample brightness (multiply), contrast (blend with the image mean) and
  saturation (blend with grey) factors drawn uniformly from ``1 +- strength``;
- a small random shift: pad by ``max_shift`` pixels (edge replicate) and crop back at a random
  offset, the usual "random shift" regulariser of visuomotor policies.

Depth maps (``..._depth``, metres) only get the shift (the same one as no other camera: each
camera is shifted independently); their values are never jittered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rlbench_sms.features import is_camera_key, is_depth_key

# ITU-R BT.601 luma weights, for the grey image that saturation blends towards.
LUMA = (0.299, 0.587, 0.114)


@dataclass
class ImageAugment:
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    max_shift: int = 4          # pixels, at the stored resolution

    def __call__(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        out = dict(batch)
        for key, value in batch.items():
            if not (is_camera_key(key) and isinstance(value, Tensor) and value.is_floating_point()
                    and value.ndim == 4):
                continue
            if not is_depth_key(key):
                value = self.jitter(value, generator)
            out[key] = self.shift(value, generator)
        return out

    def _uniform(self, n: int, strength: float, like: Tensor, generator) -> Tensor:
        u = torch.rand(n, 1, 1, 1, generator=generator).to(like)
        return 1 + strength * (2 * u - 1)

    def jitter(self, img: Tensor, generator=None) -> Tensor:
        n = img.shape[0]
        img = img * self._uniform(n, self.brightness, img, generator)
        mean = img.mean(dim=(1, 2, 3), keepdim=True)
        img = (img - mean) * self._uniform(n, self.contrast, img, generator) + mean
        weights = torch.tensor(LUMA, dtype=img.dtype, device=img.device).view(1, 3, 1, 1)
        grey = (img * weights).sum(dim=1, keepdim=True)
        img = (img - grey) * self._uniform(n, self.saturation, img, generator) + grey
        return img.clamp(0.0, 1.0)

    def shift(self, img: Tensor, generator=None) -> Tensor:
        if self.max_shift <= 0:
            return img
        n, _, h, w = img.shape
        s = self.max_shift
        padded = F.pad(img, (s, s, s, s), mode="replicate")                # (B, C, H + 2s, W + 2s)
        offsets = torch.randint(0, 2 * s + 1, (n, 2), generator=generator)
        return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])
