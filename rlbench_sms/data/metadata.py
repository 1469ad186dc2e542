"""Dataset metadata of LeRobot v3.0 and v2.1, read into one version-independent description.

Episodes are always located through metadata (never by globbing data files), so files that an
interrupted writer left behind are invisible to readers. ``info.json`` is the commit point: an
episode row beyond ``total_episodes`` belongs to an unfinished write and is ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rlbench_sms.data import layout
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.stats import aggregate_stats, stats_from_json, unflatten_episode_stats
from rlbench_sms.features import DEFAULT_FEATURE_KEYS, FeatureSpec

REQUIRED_INFO_KEYS = ("codebase_version", "fps", "features")
EPISODE_BASE_COLUMNS = ("episode_index", "tasks", "length")


@dataclass(frozen=True)
class VideoSpan:
    """Where one episode of one camera lives: a file and a time window inside it (seconds)."""

    path: Path
    from_timestamp: float
    to_timestamp: float
    chunk_index: int = 0
    file_index: int = 0


@dataclass(frozen=True)
class EpisodeRecord:
    """One episode: its rows ``[from_index, to_index)`` in ``data_path`` and its video spans."""

    index: int
    length: int
    tasks: tuple[str, ...]
    data_path: Path
    from_index: int
    to_index: int
    videos: Mapping[str, VideoSpan]
    data_chunk_index: int = 0
    data_file_index: int = 0
    stats: Mapping[str, Mapping[str, np.ndarray]] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DatasetError(path, None, f"{what} not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(path, None, f"not valid JSON ({e})") from None


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(path, None, f"{what} not found")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DatasetError(path, f"line {n}", f"not valid JSON ({e})") from None
    return rows


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Read a parquet file; a missing, truncated or corrupt file becomes a one-line DatasetError."""
    if not path.is_file():
        raise DatasetError(path, None, "parquet file not found")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
        missing = [c for c in columns or [] if c not in _parquet_columns(path)]
        if missing:
            raise DatasetError(path, missing[0], "column missing") from None
        raise DatasetError(path, None, f"unreadable parquet ({str(e).splitlines()[0]})") from None


def _parquet_columns(path: Path) -> list[str]:
    try:
        return pq.read_schema(path).names
    except Exception:
        return []


class DatasetMeta:
    """Everything about a dataset except its frames: info, features, tasks, episodes, stats."""

    def __init__(self, root: Path, info: dict[str, Any], features: dict[str, FeatureSpec],
                 tasks: list[str], episodes: list[EpisodeRecord],
                 stats: dict[str, dict[str, np.ndarray]]):
        self.root = root
        self.info = info
        self.features = features
        self.tasks = tasks
        self.episodes = episodes
        self.stats = stats

    # -- derived properties -------------------------------------------------------------------
    @property
    def version(self) -> str:
        return str(self.info["codebase_version"])

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    @property
    def total_frames(self) -> int:
        return sum(ep.length for ep in self.episodes)

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_video]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.is_media]

    @property
    def data_keys(self) -> list[str]:
        """Features stored as parquet columns (everything but video)."""
        return [k for k, f in self.features.items() if not f.is_video]

    def feature(self, key: str) -> FeatureSpec:
        if key not in self.features:
            raise DatasetError(self.root / layout.INFO_PATH, key,
                               f"feature not in dataset (has: {', '.join(sorted(self.features))})")
        return self.features[key]

    def episode(self, index: int) -> EpisodeRecord:
        for ep in self.episodes:
            if ep.index == index:
                return ep
        raise DatasetError(self.root, f"episode {index}", "no such episode")

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> "DatasetMeta":
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(root, None, "dataset folder not found")
        info_path = root / layout.INFO_PATH
        info = read_json(info_path, "info.json")
        if not isinstance(info, dict):
            raise DatasetError(info_path, None, "expected a JSON object")
        for key in REQUIRED_INFO_KEYS:
            if key not in info:
                raise DatasetError(info_path, key, "required key missing")
        version = info["codebase_version"]
        if version not in layout.SUPPORTED_VERSIONS:
            raise DatasetError(info_path, "codebase_version",
                               f"unsupported version {version!r} (supported: {', '.join(layout.SUPPORTED_VERSIONS)})")
        features = parse_features(info_path, info["features"])
        if version == layout.V30 and int(info.get("total_episodes", -1)) == 0:
            tasks, episodes = [], []   # created, nothing saved yet: no tasks or episode files
        elif version == layout.V30:
            tasks = _load_tasks_v30(root)
            episodes = _load_episodes_v30(root, info, features)
        else:
            tasks = _load_tasks_v21(root)
            episodes = _load_episodes_v21(root, info, features)
        stats = _load_stats(root, episodes)
        return cls(root, info, features, tasks, episodes, stats)


def parse_features(info_path: Path, raw: Any) -> dict[str, FeatureSpec]:
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(info_path, "features", "expected a non-empty object")
    features = {}
    for key, entry in raw.items():
        try:
            spec = FeatureSpec.from_info(key, entry)
        except (KeyError, TypeError, ValueError, AttributeError):
            raise DatasetError(info_path, f"features.{key}", "malformed entry (needs dtype and shape)") from None
        if spec.dtype not in ("float32", "float64", "int64", "int32", "bool", "string", "video", "image"):
            raise DatasetError(info_path, f"features.{key}.dtype", f"unknown dtype {spec.dtype!r}")
        features[key] = spec
    return features


# -- v3.0 ---------------------------------------------------------------------------------------
def _load_tasks_v30(root: Path) -> list[str]:
    path = root / layout.TASKS_PATH
    df = read_parquet(path).to_pandas()
    if "task_index" not in df.columns:
        raise DatasetError(path, "task_index", "column missing")
    if "task" in df.columns:
        names = df["task"].tolist()
    else:  # LeRobot stores the task string as the pandas index
        names = [str(t) for t in df.index]
    tasks: list[str | None] = [None] * len(df)
    for name, idx in zip(names, df["task_index"].tolist()):
        if not 0 <= int(idx) < len(df):
            raise DatasetError(path, "task_index", f"index {idx} out of range 0..{len(df) - 1}")
        tasks[int(idx)] = str(name)
    return [t or "" for t in tasks]


def _load_episodes_v30(root: Path, info: dict, features: dict[str, FeatureSpec]) -> list[EpisodeRecord]:
    info_path = root / layout.INFO_PATH
    files = sorted((root / layout.EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    if not files:
        raise DatasetError(root / layout.EPISODES_DIR, None, "no episode metadata files")
    total = info.get("total_episodes")
    data_tpl = info.get("data_path") or layout.DATA_PATH
    video_tpl = info.get("video_path") or layout.VIDEO_PATH
    video_keys = [k for k, f in features.items() if f.is_video]
    records: dict[int, EpisodeRecord] = {}
    for path in files:
        rows = read_parquet(path).to_pylist()
        for row in rows:
            for col in EPISODE_BASE_COLUMNS + ("dataset_from_index", "dataset_to_index",
                                               "data/chunk_index", "data/file_index"):
                if col not in row:
                    raise DatasetError(path, col, "column missing")
            ep = int(row["episode_index"])
            if total is not None and ep >= int(total):
                continue  # written after the last commit of info.json: not part of the dataset
            videos = {}
            for key in video_keys:
                cols = [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
                missing = [c for c in cols if c not in row]
                if missing:
                    raise DatasetError(path, missing[0], "column missing")
                chunk, fidx = int(row[cols[0]]), int(row[cols[1]])
                videos[key] = VideoSpan(root / video_tpl.format(video_key=key, chunk_index=chunk, file_index=fidx),
                                        float(row[cols[2]]), float(row[cols[3]]), chunk, fidx)
            chunk, fidx = int(row["data/chunk_index"]), int(row["data/file_index"])
            stats = unflatten_episode_stats(row) or None
            extra = {k: v for k, v in row.items()
                     if not k.startswith(("stats/", "videos/", "data/", "meta/"))
                     and k not in EPISODE_BASE_COLUMNS + ("dataset_from_index", "dataset_to_index")}
            records[ep] = EpisodeRecord(
                index=ep, length=int(row["length"]), tasks=tuple(row["tasks"] or ()),
                data_path=root / data_tpl.format(chunk_index=chunk, file_index=fidx),
                from_index=int(row["dataset_from_index"]), to_index=int(row["dataset_to_index"]),
                videos=videos, data_chunk_index=chunk, data_file_index=fidx, stats=stats, extra=extra)
    episodes = [records[k] for k in sorted(records)]
    _check_episode_count(info_path, info, episodes)
    return episodes


def _check_episode_count(info_path: Path, info: dict, episodes: list[EpisodeRecord]) -> None:
    total = info.get("total_episodes")
    if total is not None and len(episodes) != int(total):
        raise DatasetError(info_path, "total_episodes",
                           f"says {total} but episode metadata lists {len(episodes)}")
    for ep in episodes:
        if ep.to_index - ep.from_index != ep.length:
            raise DatasetError(info_path.parent, f"episode {ep.index}",
                               f"length {ep.length} != dataset_to_index - dataset_from_index "
                               f"({ep.to_index} - {ep.from_index})")


# -- v2.1 ---------------------------------------------------------------------------------------
def _load_tasks_v21(root: Path) -> list[str]:
    path = root / layout.V21_TASKS_PATH
    rows = read_jsonl(path, "tasks.jsonl")
    tasks: list[str] = [""] * len(rows)
    for row in rows:
        try:
            idx, task = int(row["task_index"]), str(row["task"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(path, "task_index", "each line needs task_index and task") from None
        if not 0 <= idx < len(rows):
            raise DatasetError(path, "task_index", f"index {idx} out of range")
        tasks[idx] = task
    return tasks


def _load_episodes_v21(root: Path, info: dict, features: dict[str, FeatureSpec]) -> list[EpisodeRecord]:
    info_path = root / layout.INFO_PATH
    path = root / layout.V21_EPISODES_PATH
    rows = sorted(read_jsonl(path, "episodes.jsonl"), key=lambda r: int(r.get("episode_index", -1)))
    stats_path = root / layout.V21_EPISODES_STATS_PATH
    ep_stats = {}
    if stats_path.is_file():
        for row in read_jsonl(stats_path, "episodes_stats.jsonl"):
            ep_stats[int(row["episode_index"])] = stats_from_json(row["stats"])
    chunks_size = int(info.get("chunks_size", layout.DEFAULT_CHUNKS_SIZE))
    fps = float(info["fps"])
    data_tpl = info.get("data_path") or layout.V21_DATA_PATH
    video_tpl = info.get("video_path") or layout.V21_VIDEO_PATH
    video_keys = [k for k, f in features.items() if f.is_video]
    episodes, start = [], 0
    for row in rows:
        try:
            ep, length = int(row["episode_index"]), int(row["length"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(path, "episode_index", "each line needs episode_index and length") from None
        chunk = ep // chunks_size
        videos = {key: VideoSpan(root / video_tpl.format(episode_chunk=chunk, video_key=key, episode_index=ep),
                                 0.0, length / fps, chunk, ep)
                  for key in video_keys}
        episodes.append(EpisodeRecord(
            index=ep, length=length, tasks=tuple(row.get("tasks") or ()),
            data_path=root / data_tpl.format(episode_chunk=chunk, episode_index=ep),
            from_index=start, to_index=start + length, videos=videos, data_chunk_index=chunk,
            data_file_index=ep, stats=ep_stats.get(ep)))
        start += length
    _check_episode_count(info_path, info, episodes)
    return episodes


# -- stats --------------------------------------------------------------------------------------
def _load_stats(root: Path, episodes: list[EpisodeRecord]) -> dict[str, dict[str, np.ndarray]]:
    """Aggregated stats: ``meta/stats.json`` when it agrees with the committed episodes, else
    re-aggregated from per-episode stats (v2.1 has none; an interrupted write may be ahead)."""
    path = root / layout.STATS_PATH
    per_episode = [ep.stats for ep in episodes if ep.stats]
    total = sum(ep.length for ep in episodes)
    if path.is_file():
        stats = stats_from_json(read_json(path, "stats.json"))
        counts = [int(np.asarray(s["count"]).reshape(-1)[0]) for k, s in stats.items()
                  if k in DEFAULT_FEATURE_KEYS and "count" in s]
        if not counts or counts[0] == total or len(per_episode) != len(episodes):
            return stats
    return aggregate_stats(per_episode) if per_episode else {}
