"""Stored / device form -> model input: the one conversion training and inference share.

Frames travel compact (uint8 RGB, uint16 depth millimetres) from the dataset reader, between
DataLoader worker processes and from the devices; the policy computes on floats. This module is the
only place that turns one into the other. :class:`~rlbench_sms.data.datamodule.FrameDataModule`
calls :func:`to_model_input` on the training device after the batch transfer, and
``SmolVLAPolicy`` calls it again at the entry of every computation (``compute_loss``,
``predict_action_chunk``, ``select_action``), so a raw dataset item, a converted batch and a device
observation give the same model input. It is idempotent: what it already converted passes
through unchanged, only re-checked.

Camera keys (``observation.images.<cam>``, see :mod:`rlbench_sms.features`):

| key                   | accepted                               | model input                          |
|-----------------------|----------------------------------------|--------------------------------------|
| ``<cam>`` (RGB)       | uint8 0-255, or float in [0, 1]        | float32 [0, 1] (a float keeps its dtype) |
| ``<cam>_depth``       | uint16 millimetres, or float metres    | float32 metres, 0 = invalid kept     |

Layout is channels first: (3, H, W) / (1, H, W) for one frame, (B, C, H, W) for a batch, or
(B, T, C, H, W) for a history. Anything else is refused with one line naming the key
(:class:`ModelInputError`): another dtype (int32, uint16 RGB, uint8 depth, bool), a float image
outside [0, 1] or not finite, a negative float depth, a float depth beyond what uint16 millimetres
can hold (65.535 m: that depth is millimetres passed as float), or a channel-last frame.
Non-finite float depth (NaN / inf) is accepted: it means no return, as 0 does.

Other keys pass through; numpy arrays become tensors. A single observation (``observation.state``
1-D) gains a batch axis of 1 on every tensor and a ``task`` string becomes a one-element list, so
that one frame and a batch take the same path. Validation costs one device sync per call.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from rlbench_sms.features import STATE, is_camera_key, is_depth_key

METRES_PER_MM = 1e-3
# Stored RGB is 8-bit: 255 is full intensity.
RGB_MAX = float(np.iinfo(np.uint8).max)


def mm_to_metres(depth_mm: Tensor) -> Tensor:
    """uint16 millimetres -> float32 metres; 0 stays 0 (= invalid)."""
    # In place on the fresh float copy: one pass over the frame fewer, the same values.
    return depth_mm.to(torch.float32).mul_(METRES_PER_MM)


# Farthest depth uint16 millimetres can hold (65.535 m, as the float32 the conversion gives). A float
# depth map beyond it cannot have come from the stored form; a real scene in millimetres is always
# beyond it (sensors see no closer than a few centimetres), so this catches millimetres passed as
# float and stays idempotent.
MAX_DEPTH_M = float(mm_to_metres(torch.tensor(np.iinfo(np.uint16).max, dtype=torch.int32)))
# Per-camera side keys that share the camera prefix but are flags, not frames.
CAMERA_FLAG_SUFFIXES = ("_padding_mask", "_is_pad")
RGB_CHANNELS, DEPTH_CHANNELS = 3, 1
FRAME_NDIMS = (3, 4, 5)     # (C, H, W), (B, C, H, W), (B, T, C, H, W)


class ModelInputError(ValueError):
    """An input the policy must not compute on; the one-line message names the key."""


def is_frame_key(key: str) -> bool:
    """An RGB or depth frame key (not a camera's padding flag)."""
    return is_camera_key(key) and not key.endswith(CAMERA_FLAG_SUFFIXES)


def _range(values: Tensor) -> Tensor:
    """(min, max) as a float32 (2,) tensor on the values' device (NaN propagates)."""
    lo, hi = torch.aminmax(values.detach().float())
    return torch.stack([lo, hi])


def _check_layout(key: str, value: Tensor) -> None:
    channels = DEPTH_CHANNELS if is_depth_key(key) else RGB_CHANNELS
    if value.ndim not in FRAME_NDIMS or value.shape[-3] != channels:
        kind = "depth" if is_depth_key(key) else "RGB"
        hint = ", channels last? move them first" if value.ndim >= 3 and value.shape[-1] == channels else ""
        raise ModelInputError(f"{key}: {kind} frame of shape {tuple(value.shape)}; expected ({channels}, H, W), "
                              f"(B, {channels}, H, W) or (B, T, {channels}, H, W){hint}")


def _convert_rgb(key: str, value: Tensor) -> tuple[Tensor, Tensor | None]:
    if value.dtype == torch.uint8:
        # In place on the fresh float copy: one pass over the frame fewer, the same values.
        return value.to(torch.float32).div_(RGB_MAX), None
    if value.is_floating_point():
        return value, (_range(value) if value.numel() else None)
    raise ModelInputError(f"{key}: {str(value.dtype).removeprefix('torch.')} image; "
                          f"expected uint8 (0-255) or float in [0, 1]")


def _convert_depth(key: str, value: Tensor) -> tuple[Tensor, Tensor | None]:
    if value.dtype == torch.uint16:
        return mm_to_metres(value), None
    if value.is_floating_point():
        if not value.numel():
            return value, None
        finite = torch.where(torch.isfinite(value), value, torch.zeros((), dtype=value.dtype, device=value.device))
        return value, _range(finite)
    raise ModelInputError(f"{key}: {str(value.dtype).removeprefix('torch.')} depth; "
                          f"expected uint16 millimetres or float metres")


def _refuse_out_of_range(key: str, lo: float, hi: float) -> None:
    if is_depth_key(key):
        if lo < 0:
            raise ModelInputError(f"{key}: float depth down to {lo:g} m; depth cannot be negative")
        if hi > MAX_DEPTH_M:
            raise ModelInputError(f"{key}: float depth up to {hi:g} m, beyond the {MAX_DEPTH_M:g} m uint16 "
                                  f"millimetres can hold: millimetres as float? pass uint16 mm or float metres")
    elif not (0.0 <= lo and hi <= 1.0):       # also false for NaN
        raise ModelInputError(f"{key}: float image with values in [{lo:g}, {hi:g}], not in [0, 1]; "
                              f"pass uint8 (0-255) or float in [0, 1]")


def add_batch_axis(batch: dict[str, Any]) -> dict[str, Any]:
    """A single observation (``observation.state`` 1-D) -> a batch of one; a batch unchanged."""
    state = batch.get(STATE)
    if not (isinstance(state, Tensor) and state.ndim == 1):
        return batch
    out = {k: (v.unsqueeze(0) if isinstance(v, Tensor) else v) for k, v in batch.items()}
    if isinstance(out.get("task"), str):
        out["task"] = [out["task"]]
    return out


def to_model_input(batch: Mapping[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """A batch or single observation as the model computes on it (see the module docstring).

    ``device``: where tensors go first (before conversion, so uint8 / uint16 cross the bus);
    ``None`` leaves them where they are. Returns a new dict; ``batch`` is not modified. Raises
    :class:`ModelInputError` (a ``ValueError``) with one line naming the key for a frame of the
    wrong dtype, range or layout.
    """
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, Tensor) and device is not None:
            value = value.to(device)
        out[key] = value
    ranges: dict[str, Tensor] = {}
    for key, value in out.items():
        if not (is_frame_key(key) and isinstance(value, Tensor)):
            continue
        _check_layout(key, value)
        convert = _convert_depth if is_depth_key(key) else _convert_rgb
        out[key], value_range = convert(key, value)
        if value_range is not None:
            ranges[key] = value_range
    if ranges:
        # One transfer for all the float frames' ranges: one sync per call, not one per camera.
        first = next(iter(ranges.values()))
        found = torch.stack([r.to(first.device) for r in ranges.values()]).tolist()
        for key, (lo, hi) in zip(ranges, found):
            _refuse_out_of_range(key, lo, hi)
    return add_batch_axis(out)


__all__ = ["to_model_input", "add_batch_axis", "is_frame_key", "mm_to_metres", "ModelInputError", "METRES_PER_MM",
           "MAX_DEPTH_M"]
