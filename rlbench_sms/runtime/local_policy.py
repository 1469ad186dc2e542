"""The policy in this process: a SmolVLA directory behind :class:`~rlbench_sms.runtime.inference.InferencePolicy`.

Built from the directory alone: an export of ``train.py`` (``rlbench_sms.json``, ``branches.json``,
processor files with the normalisation stats, which are loaded, never recomputed) or a LeRobot
SmolVLA checkpoint. The observation goes through the model's own entry, which converts stored
dtypes with :func:`rlbench_sms.data.convert.to_model_input` exactly as training did.

The flow-matching sampler starts from Gaussian noise. :meth:`LocalPolicy.reset` seeds it, so that
an episode of the twin (seeded too) is the same episode on every run and machine.

A process that runs a policy keeps freed heap memory for the next call
(:func:`rlbench_sms.runtime.heap.retain_freed_memory`): every chunk allocates the same tensors, and
page-faulting them in afresh each time cost ~9 ms of a tiny policy's 50 ms CPU chunk.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from rlbench_sms.runtime.contract import PolicyContract, load_contract
from rlbench_sms.runtime.heap import retain_freed_memory
from rlbench_sms.runtime.inference import ActionChunk, InferenceError

log = logging.getLogger(__name__)

MS_PER_S = 1000.0


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; or a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"inference.device={name!r}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"inference.device={name!r}: this machine has no CUDA GPU (use cpu or auto)")
    return device


class LocalPolicy:
    """A SmolVLA policy directory, run here (``device``: ``auto``, ``cpu``, ``cuda:0`` ...)."""

    def __init__(self, policy_path: str | Path, device: str = "auto", vlm_path: str | Path | None = None,
                 num_threads: int | None = None, retain_memory: bool = True):
        """``retain_memory``: keep this process's freed heap memory for the next call (process-wide,
        see :mod:`rlbench_sms.runtime.heap`)."""
        self.path = Path(policy_path)
        if retain_memory:
            retain_freed_memory()
        self.contract: PolicyContract = load_contract(self.path)
        if num_threads:
            torch.set_num_threads(int(num_threads))
        from rlbench_sms.policy.smolvla import SmolVLAPolicy

        self.device = pick_device(device)
        # Our SmolVLA's loader, not transformers': it reads the directory and the local VLM only (its
        # transformers loads all pass local_files_only=True), so nothing is ever downloaded here.
        self.policy = SmolVLAPolicy.from_pretrained(self.path, vlm_path=vlm_path, device=self.device)
        config = self.policy.config
        self._noise_shape = (1, config.chunk_size, config.max_action_dim)
        self._generator = torch.Generator(device="cpu")
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(int(seed))

    @torch.inference_mode()
    def infer(self, observation: Mapping[str, Any], generator: torch.Generator | None = None) -> ActionChunk:
        """One chunk for ``observation``. ``generator``: the sampling noise's source (a CPU
        generator) instead of this policy's own, which :meth:`reset` seeds; a server gives each
        client session its own, so that one client's reset never changes another's episode."""
        start = time.perf_counter()
        # Drawn on the CPU from the episode's generator, so a seed gives the same noise on any device.
        noise = torch.randn(self._noise_shape, generator=self._generator if generator is None else generator)
        try:
            actions = self.policy.predict_action_chunk(dict(observation), noise=noise)
        except (ValueError, KeyError, RuntimeError) as error:
            raise InferenceError(f"{self.path}: inference failed: {type(error).__name__}: {error}") from error
        chunk = actions[0].float().cpu().numpy().astype(np.float32)          # (T, A), robot units
        return ActionChunk(chunk, {"infer": (time.perf_counter() - start) * MS_PER_S})

    def close(self) -> None:
        self.policy = None


__all__ = ["LocalPolicy", "pick_device"]
