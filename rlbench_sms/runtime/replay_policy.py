"""A policy that serves recorded actions as chunks: the scripted expert's, to measure what the
inference modes cost in the twin independently of what a model has learnt (numpy only).

Episode ``i`` of an evaluation (``reset(seed=i)``) replays episode ``i`` of the dataset. Its place
in the recording is the observation's ``timestep`` (set by the policy runner): in sync mode the
actions executed so far, so a runner that stood still while waiting goes on from where the arm
stopped; in async mode the tick, so the actions for ticks that passed during the latency are dropped,
as a model's would be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.features import ACTION, STATE
from rlbench_sms.runtime.contract import PolicyContract
from rlbench_sms.runtime.inference import ActionChunk, InferenceError
from rlbench_sms.runtime.policy_runner import TIMESTEP_KEY

class ReplayPolicy:
    """Serves ``chunk_size`` recorded actions from where the runner is along the recorded episode."""

    def __init__(self, dataset_root: str | Path, chunk_size: int = 50, n_action_steps: int | None = None,
                 episode: int | None = None):
        """``episode``: always replay this one (a policy server does not pass the runner's episode
        seeds on); None: the one ``reset(seed)`` names."""
        self.root = Path(dataset_root)
        meta = DatasetMeta.load(self.root)
        with DatasetReader(self.root) as reader:
            columns = reader.load_columns([STATE, ACTION, "episode_index"])
        episodes = columns["episode_index"]
        self.actions = {int(e): columns[ACTION][episodes == e].astype(np.float32) for e in np.unique(episodes)}
        self.contract = PolicyContract({STATE: meta.features[STATE]}, meta.features[ACTION], meta.fps, chunk_size,
                                       n_action_steps or chunk_size, modality="replay", source="replay",
                                       image_size=None, extra={"tasks": list(meta.tasks)})
        self.fixed_episode = episode
        self.episode = min(self.actions)
        if episode is not None:
            self.reset(episode)

    def reset(self, seed: int | None = None) -> None:
        episode = int(self.fixed_episode if self.fixed_episode is not None else seed or 0)
        if episode not in self.actions:
            raise InferenceError(f"{self.root}: no recorded episode {episode} to replay "
                                 f"(it has {len(self.actions)})")
        self.episode = episode

    def infer(self, observation: Mapping[str, Any]) -> ActionChunk:
        if TIMESTEP_KEY not in observation:
            raise InferenceError(f"a replay needs the observation's {TIMESTEP_KEY!r} (the policy runner sets it)")
        actions = self.actions[self.episode]
        chunk = self.contract.chunk_size
        step = int(observation[TIMESTEP_KEY])
        picked = actions[step: step + chunk]
        if len(picked) < chunk:       # past the recording's end: hold its last action
            picked = np.concatenate([picked, np.repeat(actions[-1:], chunk - len(picked), axis=0)])
        return ActionChunk(picked.copy(), {"infer": 0.0})

    def close(self) -> None:
        pass


__all__ = ["ReplayPolicy"]
