"""Where things live in a LeRobot dataset (v3.0 and v2.1), and crash-safe file replacement.

Templates follow LeRobot's ``datasets/utils.py`` so that paths we write are the paths it reads.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

V30 = "v3.0"
V21 = "v2.1"
SUPPORTED_VERSIONS = (V30, V21)

INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
# Ours, ignored by LeRobot: per-episode side tables such as a force sensor's raw stream (which
# runs faster than the control loop and so does not fit the frame rows).
ATTACHMENT_PATH = "raw/{name}/chunk-{chunk_index:03d}/episode-{episode_index:06d}.parquet"

# v2.1: one parquet and one mp4 per episode, jsonl metadata.
V21_EPISODES_PATH = "meta/episodes.jsonl"
V21_EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"
V21_TASKS_PATH = "meta/tasks.jsonl"
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"

DEFAULT_CHUNKS_SIZE = 1000          # files per chunk directory
DEFAULT_DATA_FILE_SIZE_MB = 100
DEFAULT_VIDEO_FILE_SIZE_MB = 200

# Files being written carry this prefix until they are complete, fsynced and renamed into place;
# a reader never globs them and a writer reopening the dataset deletes them.
TMP_PREFIX = ".tmp-"


def chunk_and_file(file_number: int, chunks_size: int = DEFAULT_CHUNKS_SIZE) -> tuple[int, int]:
    """The n-th file of a kind (0-based) lives at (chunk_index, file_index)."""
    return divmod(file_number, chunks_size)


def file_number(chunk_index: int, file_index: int, chunks_size: int = DEFAULT_CHUNKS_SIZE) -> int:
    return chunk_index * chunks_size + file_index


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX: the directory entry itself must be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_path_for(final: Path, suffix: str = "") -> Path:
    """A unique temporary sibling of ``final`` (same directory, so the rename is atomic).

    ``suffix`` keeps an extension that a library picks the file format by (``.mp4``).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=TMP_PREFIX + final.name + ".", suffix=suffix, dir=final.parent)
    os.close(fd)
    return Path(name)


def commit_file(tmp: Path, final: Path) -> None:
    """fsync ``tmp``, atomically rename it over ``final`` and sync the directory."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def atomic_write(final: Path, write: Callable[[Path], Any]) -> Any:
    """Run ``write(tmp)`` then commit ``tmp`` to ``final``; on any error the old ``final`` stays."""
    tmp = tmp_path_for(final, suffix=final.suffix)
    try:
        result = write(tmp)
        commit_file(tmp, final)
        return result
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(final: Path, data: bytes) -> None:
    atomic_write(final, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(final: Path, obj: Any) -> None:
    atomic_write_bytes(final, (json.dumps(obj, indent=4, ensure_ascii=False) + "\n").encode())


def find_leftovers(root: Path) -> list[Path]:
    """Temporary files an interrupted writer left behind."""
    return sorted(p for p in root.rglob(TMP_PREFIX + "*") if p.is_file())
