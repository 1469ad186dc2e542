"""Training frames from a LeRobot dataset: a torch ``Dataset`` and a ``LightningDataModule``.

Each item is one frame with LeRobot-style ``delta_timestamps`` already applied:

- ``action`` (T, A) float32: the next ``chunk_size`` actions, ``action_is_pad`` (T,) bool where the
  chunk runs past the episode end (the last action is repeated there, as LeRobot does);
- ``observation.force`` (W, C) float32 with ``observation.force_is_pad`` (W,) when a force history
  of ``force_window`` > 1 steps is asked for (oldest first, clamped at the episode start), else (C,);
- cameras as uint8 (3, H, W) and depth as uint16 (1, H, W) millimetres: compact between worker
  processes and over the bus. The loaders yield them so; on the training device
  :meth:`FrameDataModule.on_after_batch_transfer` (called by the Lightning Trainer) turns them into
  float32 [0, 1] images and float32 metres (0 = invalid) with
  :func:`rlbench_sms.data.convert.to_model_input`, the function the policy also applies to
  whatever it is given (so a raw item predicts the same actions as a converted one);
- ``observation.state`` and other vectors float32, ``task`` str, and the bookkeeping indices.

Only the features asked for are read: unused parquet columns are never loaded and unused videos
never opened. Video decoders open lazily in each worker; the cameras of one item decode in
parallel threads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from rlbench_sms.data.convert import to_model_input
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DEFAULT_TOLERANCE_S, DatasetReader
from rlbench_sms.data.sampler import StepSampler
from rlbench_sms.features import (ACTION, EPISODE_INDEX, FORCE, FRAME_INDEX, INDEX, PAD_SUFFIX, STATE,
                                  TASK_INDEX, TIMESTAMP, TIP_POSITION, TIP_VALID, channels_first,
                                  is_depth_key)

MODALITY_PARTS = ("rgb", "depth", "force", "tip")


def modality_keys(meta: DatasetMeta, modality: str) -> list[str]:
    """Dataset keys a modality string like ``rgb+depth+force`` needs (state always included).

    ``rgb``: every RGB camera; ``depth``: every depth stream; ``force``: ``observation.force``;
    ``tip``: the tip position and its validity flag. A part the dataset lacks is an error.
    """
    parts = [p for p in modality.split("+") if p]
    unknown = [p for p in parts if p not in MODALITY_PARTS]
    if unknown or not parts:
        raise ValueError(f"modality {modality!r}: unknown part {unknown[0] if unknown else '(empty)'!r}; "
                         f"use parts of {'+'.join(MODALITY_PARTS)}")
    keys = [STATE]
    cameras = [k for k in meta.camera_keys]
    wanted = {
        "rgb": [k for k in cameras if not is_depth_key(k)],
        "depth": [k for k in cameras if is_depth_key(k)],
        "force": [FORCE] if FORCE in meta.features else [],
        "tip": [k for k in (TIP_POSITION, TIP_VALID) if k in meta.features],
    }
    for part in parts:
        if not wanted[part]:
            raise DatasetError(meta.root, part, f"modality {modality!r} needs {part} data, the dataset has none")
        keys += wanted[part]
    return list(dict.fromkeys(keys))


class FrameDataset(Dataset):
    """Frames of some episodes of a dataset, with action chunks and an optional force window."""

    def __init__(self, root: str | Path, keys: Sequence[str], episodes: Sequence[int] | None = None,
                 chunk_size: int = 50, force_window: int = 1,
                 tolerance_s: float = DEFAULT_TOLERANCE_S, decode_threads: int | None = None):
        self.reader = DatasetReader(root, episodes=episodes, tolerance_s=tolerance_s)
        meta = self.reader.meta
        self.keys = list(dict.fromkeys(keys))
        for key in self.keys:
            meta.feature(key)   # raises a DatasetError naming the key when absent
        if chunk_size < 1 or force_window < 1:
            raise ValueError(f"chunk_size ({chunk_size}) and force_window ({force_window}) must be >= 1")
        self.chunk_size = chunk_size
        self.force_window = force_window
        self.fps = meta.fps
        self.video_keys = [k for k in self.keys if meta.features[k].is_video]
        vector_keys = [k for k in self.keys if k not in self.video_keys]
        columns = self.reader.load_columns(
            list(dict.fromkeys(vector_keys + [ACTION, TIMESTAMP, FRAME_INDEX, EPISODE_INDEX, INDEX, TASK_INDEX])))
        self.columns = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in columns.items()}
        self.vector_keys = vector_keys
        lengths = np.array([ep.length for ep in self.reader.episodes], dtype=np.int64)
        # Per row: the episode position in self.reader.episodes and that episode's row range.
        self.row_episode = np.repeat(np.arange(len(lengths)), lengths)
        self.ep_start = np.asarray(self.reader.episode_starts, dtype=np.int64)
        self.ep_end = self.ep_start + lengths
        self.tasks = list(meta.tasks)
        self.decode_threads = decode_threads if decode_threads is not None else max(1, len(self.video_keys))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = -1

    def __len__(self) -> int:
        return self.reader.num_frames

    def _window(self, row: int, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows at ``row + offsets`` clamped to the row's episode, and which were outside it."""
        e = self.row_episode[row]
        wanted = row + offsets
        clamped = np.clip(wanted, self.ep_start[e], self.ep_end[e] - 1)
        return clamped, wanted != clamped

    def __getitem__(self, row: int) -> dict[str, Any]:
        row = int(row)
        if not 0 <= row < len(self):
            raise IndexError(row)
        c = self.columns
        item: dict[str, Any] = {}
        for key in self.vector_keys:
            if key == FORCE and self.force_window > 1:
                rows, pad = self._window(row, np.arange(1 - self.force_window, 1))
                item[key] = torch.from_numpy(c[key][rows].astype(np.float32))
                item[key + PAD_SUFFIX] = torch.from_numpy(pad)
            else:
                item[key] = torch.as_tensor(np.asarray(c[key][row]))
        rows, pad = self._window(row, np.arange(self.chunk_size))
        item[ACTION] = torch.from_numpy(c[ACTION][rows].astype(np.float32))
        item[ACTION + PAD_SUFFIX] = torch.from_numpy(pad)
        if self.video_keys:
            item.update(self._decode(row))
        for key in (TIMESTAMP, FRAME_INDEX, EPISODE_INDEX, INDEX, TASK_INDEX):
            item[key] = torch.as_tensor(c[key][row])
        item["task"] = self.tasks[int(c[TASK_INDEX][row])]
        return item

    def _decode(self, row: int) -> dict[str, torch.Tensor]:
        episode = self.reader.episodes[self.row_episode[row]]
        ts = [float(self.columns[TIMESTAMP][row])]

        def one(key: str) -> torch.Tensor:
            # (H, W) depth / (H, W, 3) RGB -> (C, H, W): the layout change inference shares.
            return torch.from_numpy(channels_first(self.reader.frames(key, episode, ts)[0]))

        # In DataLoader workers the workers already spread items over the cores; a pool per worker
        # would only oversubscribe them (measured: 294 vs 280 samples/s with 2 workers).
        in_worker = torch.utils.data.get_worker_info() is not None
        if len(self.video_keys) == 1 or self.decode_threads <= 1 or in_worker:
            return {k: one(k) for k in self.video_keys}
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.decode_threads, thread_name_prefix="decode")
            self._pool_pid = os.getpid()
        return dict(zip(self.video_keys, self._pool.map(one, self.video_keys)))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pool"] = None
        return state


def split_episodes(episodes: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Episode-level split: whole episodes go to train or val, chosen by a seeded shuffle."""
    episodes = sorted(int(e) for e in episodes)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = int(round(len(episodes) * val_fraction))
    if val_fraction > 0 and len(episodes) > 1:
        n_val = max(1, n_val)
    n_val = min(n_val, len(episodes) - 1)
    order = np.random.default_rng(seed).permutation(len(episodes))
    val = sorted(episodes[i] for i in order[:n_val])
    train = sorted(episodes[i] for i in order[n_val:])
    return train, val


def _seed_worker(worker_id: int) -> None:
    # Each worker gets torch's per-worker seed; numpy and random follow it so any randomness in
    # loading is reproducible for a given seed and worker count.
    import random

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class FrameDataModule(pl.LightningDataModule):
    """Train/val frames of one dataset, split by episode.

    Args:
        root: dataset folder.
        keys: features to load (e.g. from :func:`modality_keys`); ``action`` is always loaded.
        chunk_size: future actions per item (SmolVLA: 50).
        force_window: past force steps per item (1 = the current reading only).
        val_fraction: share of episodes held out; ``split_seed`` picks them.
        seed: seeds the shuffling of training frames (the same seed gives the same batches).
        total_steps: optimiser steps of the run (the trainer's ``max_steps``). When set, training
            frames come from a :class:`StepSampler`: an order fixed by the seed, split over DDP
            ranks, that a run resumed from a checkpoint continues exactly where it stopped.
    """

    def __init__(self, root: str | Path, keys: Sequence[str], chunk_size: int = 50,
                 force_window: int = 1, val_fraction: float = 0.1, split_seed: int = 0,
                 batch_size: int = 8, num_workers: int = 0, seed: int = 0,
                 tolerance_s: float = DEFAULT_TOLERANCE_S, pin_memory: bool = False,
                 persistent_workers: bool = True, prefetch_factor: int = 2,
                 total_steps: int | None = None):
        super().__init__()
        self.root = Path(root)
        self.keys = list(keys)
        self.chunk_size = chunk_size
        self.force_window = force_window
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.tolerance_s = tolerance_s
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.prefetch_factor = prefetch_factor if num_workers > 0 else None
        self.total_steps = total_steps
        self.train_set: FrameDataset | None = None
        self.val_set: FrameDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        meta = DatasetMeta.load(self.root)
        self.train_episodes, self.val_episodes = split_episodes(
            [ep.index for ep in meta.episodes], self.val_fraction, self.split_seed)
        kwargs = dict(keys=self.keys, chunk_size=self.chunk_size, force_window=self.force_window,
                      tolerance_s=self.tolerance_s)
        self.train_set = FrameDataset(self.root, episodes=self.train_episodes, **kwargs)
        if self.val_episodes:
            self.val_set = FrameDataset(self.root, episodes=self.val_episodes, **kwargs)

    def _loader(self, dataset: Dataset, shuffle: bool, sampler: StepSampler | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle and sampler is None,
                          sampler=sampler, num_workers=self.num_workers, generator=generator,
                          worker_init_fn=_seed_worker, pin_memory=self.pin_memory,
                          persistent_workers=self.persistent_workers,
                          prefetch_factor=self.prefetch_factor, drop_last=shuffle and sampler is None)

    def _distribution(self) -> tuple[int, int, int]:
        """(rank, world size, batches this rank already trained on) from the attached trainer."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1, 0
        # Restored from the checkpoint before the loaders are built, so a resumed run starts
        # at the batch after the last one it trained on.
        done = trainer.global_step * trainer.accumulate_grad_batches
        return trainer.global_rank, trainer.world_size, done

    def train_dataloader(self) -> DataLoader:
        self.setup()
        if self.total_steps is None:
            return self._loader(self.train_set, shuffle=True)
        rank, world, done = self._distribution()
        accumulate = getattr(getattr(self, "trainer", None), "accumulate_grad_batches", 1) or 1
        sampler = StepSampler(len(self.train_set), self.batch_size, self.total_steps * accumulate,
                              seed=self.seed, rank=rank, world_size=world, start_batch=done)
        return self._loader(self.train_set, shuffle=True, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_set is None:
            return []
        rank, world, _ = self._distribution()
        if world == 1:
            return self._loader(self.val_set, shuffle=False)
        # Each DDP rank validates its own share of the frames (metrics are averaged across ranks).
        return self._loader(torch.utils.data.Subset(self.val_set, range(rank, len(self.val_set), world)),
                            shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 images / uint16 depth -> float32 on the training device (the policy's conversion)."""
        return to_model_input(batch)
