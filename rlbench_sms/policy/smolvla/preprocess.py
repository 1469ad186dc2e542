"""SmolVLA input preparation: images, state/action padding and task tokenisation.

Matches LeRobot's ``SmolVLAPolicy.prepare_images/prepare_state/prepare_action`` and its
preprocessor's newline + tokenizer steps:

- An image (B, 3, H, W) in [0, 1] (a 5-D (B, T, 3, H, W) input uses its last step) is resized
  keeping its aspect ratio so it fits ``resize_imgs_with_padding`` = (width, height) (512 x 512):
  scale = max(W / 512, H / 512), new size (int(H / scale), int(W / scale)), bilinear,
  ``align_corners=False``, no antialias; then zero-padded on the **left and top** only (openpi pads
  centred; SmolVLA does not); then mapped to [-1, 1] by ``x * 2 - 1`` (the padding becomes -1).
  A 480x640 frame becomes 384x512 with 128 padded rows on top.
- State and actions are zero-padded on the last axis to 32 (never truncated).
- The task gets a trailing ``"\\n"`` (unless it already ends with one) and is tokenised with the
  VLM's tokenizer: ``max_length=48, truncation=True, padding=pad_language_to ("longest"),
  padding_side="right"``, and the tokenizer's own special-token behaviour. The SmolVLM2 tokenizer
  is a byte-level BPE ``PreTrainedTokenizerFast`` without a template post-processor, so it adds
  no BOS/EOS (its ``bos_token`` ``<|im_start|>`` is only used by the chat template); it pads with
  ``<|im_end|>`` and its ``truncation_side`` is ``"left"``. Nothing here adds or strips special
  tokens itself: whatever tokenizer comes with the VLM (or the checkpoint) decides, exactly as in
  LeRobot.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LANG_TOKENS = "observation.language.tokens"
LANG_MASK = "observation.language.attention_mask"


def fitted_size(cur_h: int, cur_w: int, height: int, width: int) -> tuple[int, int]:
    """(h, w) of a (cur_h, cur_w) image fitted into (height, width) keeping its aspect ratio."""
    scale = max(cur_w / width, cur_h / height)
    return int(cur_h / scale), int(cur_w / scale)


def _bilinear(img: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (``align_corners=False``, no antialias) resize of (B, C, H, W) to ``size``.

    On the CPU each (H, W) plane is resized as a one-channel image: torch's per-plane kernel, the
    one it runs for any channel count when it has more than one thread. With one thread it would
    send a 3-channel frame through a channels-last kernel and two layout copies instead, 3x slower
    and up to 1 ulp (1.2e-7) apart; this way the values are the same at any thread count. Other
    devices get the plain call.
    """
    if img.device.type != "cpu":
        return F.interpolate(img, size=size, mode="bilinear", align_corners=False)
    batch, channels, height, width = img.shape
    planes = img.reshape(batch * channels, 1, height, width)
    return F.interpolate(planes, size=size, mode="bilinear", align_corners=False).view(batch, channels, *size)


def resize_with_pad(img: Tensor, height: int, width: int, pad_value: float = 0.0) -> Tensor:
    """Fit (B, C, h, w) into (height, width) keeping aspect ratio; pad left/top with ``pad_value``."""
    if img.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(img.shape)}")
    cur_h, cur_w = img.shape[-2:]
    if (cur_h, cur_w) == (height, width):
        return img
    new_h, new_w = fitted_size(cur_h, cur_w, height, width)
    resized = F.interpolate(img, size=(new_h, new_w), mode="bilinear", align_corners=False)
    pad_top, pad_left = max(0, height - new_h), max(0, width - new_w)
    # F.pad order: (left, right, top, bottom) of the last two dims.
    return F.pad(resized, (pad_left, 0, pad_top, 0), value=pad_value)


def prepare_image(img: Tensor, resize_wh: Sequence[int] | None) -> Tensor:
    """One camera: last time step, resize+pad, then [0, 1] -> [-1, 1].

    The same values as ``resize_with_pad(img, h, w, 0.0) * 2 - 1`` in one output buffer: the
    padding is written as -1 (= 0 * 2 - 1) and the resized image is mapped straight into its
    region, instead of padding a copy and mapping the whole padded frame twice.
    """
    if img.ndim == 5:  # (B, T, C, H, W): the policy sees the current frame
        img = img[:, -1]
    if resize_wh is None or tuple(img.shape[-2:]) == (resize_wh[1], resize_wh[0]):
        return img * 2.0 - 1.0
    if img.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(img.shape)}")
    width, height = resize_wh
    new_h, new_w = fitted_size(img.shape[-2], img.shape[-1], height, width)
    resized = _bilinear(img, (new_h, new_w))
    # int() truncation keeps the fitted size within (height, width): the padding is what is left.
    out = torch.full((*img.shape[:2], height, width), -1.0, dtype=resized.dtype, device=resized.device)
    region = out[..., height - new_h:, width - new_w:]
    torch.mul(resized, 2.0, out=region)
    region.sub_(1.0)
    return out


def prepare_images(batch: dict[str, Any], camera_keys: Sequence[str], resize_wh: Sequence[int] | None,
                   empty_cameras: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """Images and per-image validity masks (B,) bool, in ``camera_keys`` order.

    Cameras present in the batch come first; then, for up to ``empty_cameras`` missing ones, an
    all -1 image with mask False (LeRobot's filler for absent views). ``{key}_padding_mask`` in
    the batch, when present, is the per-sample validity of that camera.
    """
    present = [k for k in camera_keys if k in batch]
    missing = [k for k in camera_keys if k not in batch]
    if not present:
        raise ValueError(f"none of the policy's cameras {list(camera_keys)} is in the batch "
                         f"(keys: {sorted(batch)})")
    images, masks = [], []
    for key in present:
        img = prepare_image(batch[key], resize_wh)
        mask_key = f"{key}_padding_mask"
        if mask_key in batch:
            mask = torch.as_tensor(batch[mask_key], device=img.device).bool()
        else:
            mask = torch.ones(img.shape[0], dtype=torch.bool, device=img.device)
        images.append(img)
        masks.append(mask)
    for _ in missing[:empty_cameras]:
        images.append(torch.full_like(images[-1], -1.0))
        masks.append(torch.zeros_like(masks[-1]))
    return images, masks


def pad_last_dim(x: Tensor, size: int) -> Tensor:
    """Zero-pad the last axis up to ``size``; a longer vector is returned unchanged."""
    if x.shape[-1] >= size:
        return x
    return F.pad(x, (0, size - x.shape[-1]))


def prepare_state(state: Tensor, max_state_dim: int) -> Tensor:
    """(B, S) or (B, T, S) -> (B, max_state_dim), last time step."""
    if state.ndim > 2:
        state = state[:, -1, :]
    return pad_last_dim(state, max_state_dim)


def with_newline(tasks: str | Sequence[str]) -> list[str]:
    """LeRobot's newline step: every task string ends with exactly the ``"\\n"`` it adds."""
    if isinstance(tasks, str):
        tasks = [tasks]
    return [t if t.endswith("\n") else f"{t}\n" for t in tasks]


def tokenize_tasks(tokenizer: Any, tasks: str | Sequence[str], max_length: int, padding: str,
                   device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Token ids (B, L) int64 and attention mask (B, L) bool for ``task + "\\n"``.

    ``padding`` is ``"longest"`` (L = longest task in the batch, <= max_length) or
    ``"max_length"`` (L = max_length); padding goes on the right.
    """
    enc = tokenizer(with_newline(tasks), max_length=max_length, truncation=True, padding=padding,
                    padding_side="right", return_tensors="pt")
    ids = enc["input_ids"]
    mask = enc["attention_mask"].to(dtype=torch.bool)
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask
