"""One tick's device readings -> the observation a policy reads (numpy only: no torch here).

The recorder's tick frame holds what the devices gave, under the device's names: RGB (H, W, 3)
uint8, depth (H, W) uint16 millimetres, ``observation.state``, ``observation.force`` (C,).
A policy reads what its training items held (:mod:`rlbench_sms.data.datamodule`): frames channels
first, (3, H, W) uint8 and (1, H, W) uint16, under the policy's camera names, and a force history
of ``force_window`` readings, oldest first, with ``observation.force_is_pad`` where the episode had
not yet begun (the first reading repeated, as the DataModule clamps at the episode start).
:func:`channels_first` is the one layout change, shared with the DataModule; the dtype conversion
(uint8 -> [0, 1], mm -> m) stays in :func:`rlbench_sms.data.convert.to_model_input`, on the
policy's side.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import numpy as np

from rlbench_sms.features import FORCE, PAD_SUFFIX, STATE, channels_first, is_camera_key
from rlbench_sms.runtime.contract import PolicyContract, device_key


def blank_frame(contract: PolicyContract, rename: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """A device frame of zeros with every feature the policy reads (device names and layout): for
    a first inference before the episode (warm-up, and a check that the policy runs at all)."""
    frame: dict[str, np.ndarray] = {}
    for key, spec in contract.inputs.items():
        source = device_key(key, dict(rename or {}))
        if is_camera_key(key):
            height, width, channels = spec.shape
            depth = channels == 1
            frame[source] = np.zeros((height, width) if depth else (height, width, channels),
                                     np.uint16 if depth else np.uint8)
        else:
            frame[source] = np.zeros(spec.shape, np.bool_ if spec.dtype == "bool" else np.float32)
    return frame


class ObservationBuilder:
    """Builds the policy's observation from every tick's device frame; keeps the force history.

    Call :meth:`reset` at each episode start, and :meth:`push` on *every* tick (the force window is
    of consecutive ticks, even when the policy is asked only every n-th tick); :meth:`build` then
    gives the observation of the latest tick.
    """

    def __init__(self, contract: PolicyContract, rename: Mapping[str, str] | None = None):
        self.contract = contract
        self.rename = dict(rename or {})
        self.sources = {key: device_key(key, self.rename) for key in contract.inputs}
        self.window = max(1, int(contract.force_window))
        self._force: deque[np.ndarray] = deque(maxlen=self.window)
        self._ticks = 0
        self._latest: Mapping[str, Any] | None = None

    def reset(self) -> None:
        self._force.clear()
        self._ticks = 0
        self._latest = None

    def push(self, frame: Mapping[str, Any]) -> None:
        """Take one tick's device frame (the recorder's dict)."""
        self._latest = frame
        self._ticks += 1
        if FORCE in self.contract.inputs:
            self._force.append(np.asarray(frame[self.sources[FORCE]], dtype=np.float32))

    def build(self, task: str) -> dict[str, Any]:
        """The observation of the latest pushed tick, in the policy's keys and layout."""
        if self._latest is None:
            raise RuntimeError("ObservationBuilder.build before any push")
        frame = self._latest
        obs: dict[str, Any] = {"task": task}
        for key, source in self.sources.items():
            if key == FORCE:
                continue
            value = frame[source]
            if is_camera_key(key):
                obs[key] = channels_first(np.asarray(value))
            elif key == STATE:
                obs[key] = np.asarray(value, dtype=np.float32)
            else:
                obs[key] = np.asarray(value)
        if FORCE in self.sources:
            obs.update(self._force_window())
        return obs

    def _force_window(self) -> dict[str, np.ndarray]:
        history = list(self._force)
        if self.window == 1:
            return {FORCE: history[-1]}
        missing = self.window - len(history)
        # Before the episode had W ticks: the first reading repeated, flagged as padding (what the
        # DataModule's window clamped at the episode start gives).
        padded = [history[0]] * missing + history
        pad = np.zeros(self.window, dtype=bool)
        pad[:missing] = True
        return {FORCE: np.stack(padded).astype(np.float32), FORCE + PAD_SUFFIX: pad}


__all__ = ["ObservationBuilder", "blank_frame"]
