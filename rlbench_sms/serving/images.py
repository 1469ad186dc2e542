"""The client's image resize: send each RGB frame at the size the policy would resize it to.

SmolVLA fits every image into ``image_size`` = (width, height) keeping its aspect ratio, then
pads (:func:`rlbench_sms.policy.smolvla.preprocess.resize_with_pad`). Resizing on the robot side
to that same fitted size, with the same bilinear filter (torch's ``align_corners=False``, no
antialias), sends fewer bytes and leaves the server's resize an identity. The one difference from
resizing on the server is the rounding of the resized frame back to uint8 (at most half a grey
level). Frames already at or below the fitted size are sent as they are (the server upsamples).
numpy only: the robot side has no torch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from rlbench_sms.features import image_key
from rlbench_sms.runtime.contract import PolicyContract

def fitted_size(height: int, width: int, image_size: Sequence[int]) -> tuple[int, int]:
    """(height, width) of a (height, width) frame fitted into ``image_size`` = (width, height),
    computed exactly as ``resize_with_pad`` does (same float expression, same truncation)."""
    target_w, target_h = int(image_size[0]), int(image_size[1])
    if (height, width) == (target_h, target_w):
        return height, width
    scale = max(width / target_w, height / target_h)
    return int(height / scale), int(width / scale)


def _taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lower, upper) and the upper weight for each output pixel: the half-pixel
    mapping of bilinear interpolation with ``align_corners=False`` (negative sources clamp to 0)."""
    scale = size_in / size_out
    source = np.maximum((np.arange(size_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lower = np.minimum(source.astype(np.int64), size_in - 1)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, (source - lower).astype(np.float32)


class FrameResizer:
    """Bilinear resize of (C, H, W) uint8 frames of one size to (C, height, width), separable
    (rows, then columns), with its work buffers kept between calls: fresh multi-megabyte
    temporaries on every call cost more in page faults than the arithmetic. Not thread-safe (a
    client uses its own under its lock)."""

    def __init__(self, channels: int, h: int, w: int, height: int, width: int):
        self.shape_in, self.shape_out = (channels, h, w), (channels, height, width)
        self.top, self.bottom, wy = _taps(h, height)
        self.left, self.right, self.wx = _taps(w, width)
        self.wy = wy[None, :, None]
        self._rows_u8 = np.empty((channels, height, w), np.uint8)
        self._rows = np.empty((channels, height, w), np.float32)
        self._lower = np.empty((channels, height, w), np.float32)
        self._out = np.empty(self.shape_out, np.float32)
        self._step = np.empty(self.shape_out, np.float32)
        self._result = np.empty(self.shape_out, np.uint8)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The resized frame: this resizer's own array, overwritten by its next call."""
        rows, lower, out, step = self._rows, self._lower, self._out, self._step
        # Only the source rows that are read are converted to float.
        np.take(image, self.top, axis=1, out=self._rows_u8)
        rows[...] = self._rows_u8
        np.take(image, self.bottom, axis=1, out=self._rows_u8)
        lower[...] = self._rows_u8
        lower -= rows
        lower *= self.wy
        rows += lower                                                # (C, height, W)
        np.take(rows, self.left, axis=2, out=out)
        np.take(rows, self.right, axis=2, out=step)
        step -= out
        step *= self.wx
        out += step                                                  # (C, height, width)
        # A convex mix of 0..255 stays in range: +0.5 and truncation round to the nearest grey level.
        out += 0.5
        np.copyto(self._result, out, casting="unsafe")
        return self._result


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) uint8 -> (C, height, width) uint8 (a one-off :class:`FrameResizer`)."""
    if image.shape[1:] == (height, width):
        return image
    return FrameResizer(image.shape[0], image.shape[1], image.shape[2], height, width)(image).copy()


class ImageShrinker:
    """Shrinks each RGB frame a policy reads to its fitted size (depth and everything else
    untouched), with one :class:`FrameResizer` per camera and frame size it meets. The frames it
    returns are its own buffers, valid until its next call (the client encodes them at once)."""

    def __init__(self, contract: PolicyContract, image_size: Sequence[int] | None):
        self.keys = [image_key(camera) for camera in contract.cameras]
        self.image_size = tuple(image_size) if image_size else None
        self._resizers: dict[tuple[str, tuple[int, ...]], FrameResizer] = {}

    def __call__(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(observation)
        if self.image_size is None:
            return out
        for key in self.keys:
            frame = out.get(key)
            if not (isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.dtype == np.uint8):
                continue
            height, width = fitted_size(frame.shape[1], frame.shape[2], self.image_size)
            if height < frame.shape[1] or width < frame.shape[2]:
                shape = (*frame.shape, height, width)
                resizer = self._resizers.get((key, shape))
                if resizer is None:
                    resizer = self._resizers[(key, shape)] = FrameResizer(*shape)
                out[key] = resizer(frame)
        return out


def shrink_images(observation: Mapping[str, Any], contract: PolicyContract,
                  image_size: Sequence[int] | None) -> dict[str, Any]:
    """``observation`` with each RGB frame the policy reads shrunk to its fitted size (a one-off
    :class:`ImageShrinker`: the frames are fresh arrays)."""
    return ImageShrinker(contract, image_size)(observation)


__all__ = ["fitted_size", "FrameResizer", "ImageShrinker", "resize_bilinear", "shrink_images"]
