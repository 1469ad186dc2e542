"""The one inference interface every mode implements (openpi's ``infer(obs) -> dict`` idea).

``infer`` takes one observation as :class:`~rlbench_sms.runtime.observation.ObservationBuilder`
gives it (uint8 (3, H, W) images, uint16 (1, H, W) depth in millimetres, float32 state and force
window, the task text) and returns an :class:`ActionChunk`: actions in robot units (degrees,
gripper 0-100) and where the time went. :class:`~rlbench_sms.runtime.local_policy.LocalPolicy`
runs the model in this process; the serving client sends the observation to a server that runs a
``LocalPolicy``. The action queue, chunk merging and latency handling are not here: they are the
runtime's (:mod:`rlbench_sms.runtime.policy_runner`). Nothing in this module imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import numpy as np

from rlbench_sms.runtime.contract import PolicyContract


class InferenceError(RuntimeError):
    """The policy could not give a chunk for an observation (one line, naming why)."""


class PolicyUnavailable(InferenceError):
    """No chunk *for now* (a remote server away, reconnecting): the runner holds the arm still and
    asks again on a later tick, instead of failing the episode."""


@dataclass
class ActionChunk:
    """``actions`` (T, A) float32 in robot units, the first one meant for the tick the observation
    was taken at; ``timing_ms`` names where the time went (``infer``; a remote one adds ``decode``,
    ``encode`` on the server and ``round_trip`` on the client)."""

    actions: np.ndarray
    timing_ms: dict[str, float] = field(default_factory=dict)


class InferencePolicy(Protocol):
    """A policy behind the one interface: local, remote or anything else that gives chunks."""

    contract: PolicyContract

    def infer(self, observation: Mapping[str, Any]) -> ActionChunk:
        """One action chunk for ``observation``; raises :class:`PolicyUnavailable` when none can be
        had right now (ask again later) and :class:`InferenceError` when it cannot."""

    def reset(self, seed: int | None = None) -> None:
        """A new episode starts (``seed``: the sampling noise's, for a reproducible episode)."""

    def close(self) -> None:
        """Free what the policy holds (a model, a connection)."""


__all__ = ["ActionChunk", "InferencePolicy", "InferenceError", "PolicyUnavailable"]
