"""A resumable, rank-aware order of training frames indexed by optimiser step.

Training runs for a fixed number of steps (``max_steps``), not epochs. The frames are one endless
stream: seeded permutations of the dataset, one after another (pass ``p`` uses the seed
``(seed, p)``). Global batch ``g`` is the stream slice ``[g * B * W, (g + 1) * B * W)`` for batch
size ``B`` and ``W`` processes; rank ``r`` takes its ``[r * B, (r + 1) * B)`` sub-slice. So:

- the order depends only on (seed, dataset size, B, W), never on worker count or timing;
- resuming at global batch ``g`` (``start_batch``) continues with exactly the frames an
  uninterrupted run would have seen next;
- the ranks of a DDP run never share a frame within a global batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class StepSampler(Sampler[int]):
    """Indices for batches ``start_batch .. total_batches - 1`` of this rank.

    ``len()`` is the number of indices still to come; a DataLoader over it with ``batch_size`` (and
    ``drop_last`` irrelevant: every batch is full) yields ``total_batches - start_batch`` batches.
    """

    def __init__(self, num_frames: int, batch_size: int, total_batches: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0):
        if num_frames < 1:
            raise ValueError("cannot sample from an empty training set")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if not 0 <= start_batch <= total_batches:
            raise ValueError(f"start_batch {start_batch} is outside [0, {total_batches}]")
        self.num_frames = num_frames
        self.batch_size = batch_size
        self.total_batches = total_batches
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch

    def __len__(self) -> int:
        return (self.total_batches - self.start_batch) * self.batch_size

    def _permutation(self, index: int) -> np.ndarray:
        return np.random.default_rng([self.seed, index]).permutation(self.num_frames)

    def __iter__(self) -> Iterator[int]:
        global_batch = self.batch_size * self.world_size
        cached_pass, perm = -1, None
        for g in range(self.start_batch, self.total_batches):
            first = g * global_batch + self.rank * self.batch_size   # stream position of this batch
            for pos in range(first, first + self.batch_size):
                p, offset = divmod(pos, self.num_frames)
                if p != cached_pass:
                    cached_pass, perm = p, self._permutation(p)
                yield int(perm[offset])
