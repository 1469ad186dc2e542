"""Write LeRobot v3.0 datasets, crash-safely, episode by episode.

Commit protocol (why a SIGKILL at any moment loses at most the open episode):

1. While an episode records, its videos are encoded in background threads into temporary files
   (``.tmp-*``) that no reader looks at; vectors are buffered in memory.
2. ``save_episode`` writes, each to a temporary name, fsynced, then atomically renamed:
   the data parquet (the current file rewritten with the new rows appended), each video
   (concatenated by stream copy onto the current file, or a new file), the episodes metadata
   parquet, ``tasks.parquet`` and ``stats.json``.
3. ``info.json`` is written last: it is the commit point. Readers ignore episode rows beyond its
   ``total_episodes``, and rows/frames appended to shared files past the committed episodes are
   unreachable through metadata, so every earlier episode reads exactly as before.

Reopening for append (:meth:`DatasetWriter.open`) reports and removes what an interrupted write
left: temporary files, uncommitted episode rows, data rows and trailing video frames. As LeRobot
does on resume, new episodes then go to new files.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rlbench_sms.data import layout
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.metadata import DatasetMeta, read_json, read_parquet
from rlbench_sms.data.stats import (aggregate_stats, downsample_for_stats, flatten_episode_stats,
                                    image_stats, sample_indices, stats_to_json, vector_stats)
from rlbench_sms.data.video import (DepthEncoderConfig, VideoEncoder, VideoEncoderConfig,
                                    concatenate_videos, probe_video, truncate_video)
from rlbench_sms.features import (EPISODE_INDEX, FRAME_INDEX, INDEX, TASK_INDEX, TIMESTAMP,
                                  FeatureSpec, default_frame_features)

log = logging.getLogger(__name__)

ENCODER_QUEUE_SECONDS = 2.0   # frames buffered per camera before add_frame blocks (never drops)


def arrow_type(spec: FeatureSpec) -> pa.DataType:
    """Parquet type LeRobot (via HF datasets) uses: shape (1,) -> scalar, (n,) -> fixed list."""
    scalar = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(),
              "int32": pa.int32(), "bool": pa.bool_(), "string": pa.string()}[spec.dtype]
    if tuple(spec.shape) in ((), (1,)):
        return scalar
    if len(spec.shape) == 1:
        return pa.list_(scalar, spec.shape[0])
    t = scalar
    for n in reversed(spec.shape):
        t = pa.list_(t, n)
    return t


class _StreamEncoder:
    """Encodes one camera's frames in a background thread so the caller's loop keeps its rate.

    The queue blocks when full rather than dropping frames: a video with fewer frames than rows
    is a broken dataset (LeRobot's streaming encoder drops; we refuse to).
    """

    def __init__(self, path: Path, fps: int, config: VideoEncoderConfig | DepthEncoderConfig):
        self.path = path
        self._encoder = VideoEncoder(path, fps, config)
        self._queue: queue.Queue = queue.Queue(maxsize=max(2, int(ENCODER_QUEUE_SECONDS * fps)))
        self._error: BaseException | None = None
        self.info: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, name=f"encode-{path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ended = False           # the end-of-stream None was taken: draining for another would hang
        try:
            while (frame := self._queue.get()) is not None:
                if self._error is None:
                    self._encoder.add(frame)
            ended = True
            self.info = self._encoder.close()   # raises on no frames (an abort before the first)
        except BaseException as e:  # surfaced to the caller at put()/finish()
            self._error = e
            while not ended and self._queue.get() is not None:
                pass

    def put(self, frame: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(frame)

    def finish(self) -> dict[str, Any]:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self.info is not None
        return self.info

    def abort(self) -> None:
        self._error = self._error or RuntimeError("aborted")
        self._queue.put(None)
        self._thread.join()
        self.path.unlink(missing_ok=True)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()


@dataclass
class RecoveryReport:
    """What reopening a dataset found and removed (left by an interrupted write)."""

    removed_files: list[Path] = field(default_factory=list)
    dropped_episode_rows: list[int] = field(default_factory=list)
    truncated_files: list[Path] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.removed_files or self.dropped_episode_rows or self.truncated_files)

    def summary(self) -> str:
        if self.clean:
            return "no leftovers"
        parts = []
        if self.dropped_episode_rows:
            parts.append(f"unfinished episode(s) {self.dropped_episode_rows} discarded")
        if self.removed_files:
            parts.append(f"{len(self.removed_files)} leftover file(s) removed")
        if self.truncated_files:
            parts.append(f"{len(self.truncated_files)} file(s) trimmed to the last saved episode")
        return "; ".join(parts)


@dataclass
class _OpenFile:
    """The file new episodes of one kind are currently appended to."""

    number: int                 # chunk_index * chunks_size + file_index
    path: Path
    episodes: int = 0
    table: pa.Table | None = None   # data files: the rows written so far (rewritten whole)
    rows: list[dict] = field(default_factory=list)   # episodes metadata files


class DatasetWriter:
    """Append episodes to a v3.0 dataset. Use :meth:`create` or :meth:`open`, then
    ``add_frame`` … ``save_episode`` per episode, and ``close`` (or a ``with`` block)."""

    def __init__(self, root: Path, info: dict[str, Any], features: dict[str, FeatureSpec],
                 tasks: list[str], episode_stats: list[dict], next_file: dict[str, int],
                 video_config: VideoEncoderConfig, depth_config: DepthEncoderConfig):
        self.root = root
        self.info = info
        self.features = features
        self.tasks = tasks
        self._episode_stats = episode_stats
        self.video_config = video_config
        self.depth_config = depth_config
        self._next_file = dict(next_file)   # per kind ("data", "episodes", "videos/<key>")
        self._data_file: _OpenFile | None = None
        self._episodes_file: _OpenFile | None = None
        self._video_files: dict[str, _OpenFile] = {}
        self._buffer: dict[str, list] = {}
        self._stat_frames: dict[str, list[np.ndarray]] = {}
        self._encoders: dict[str, _StreamEncoder] = {}
        self._episode_tasks: list[str] = []
        self._closed = False
        self.user_keys = [k for k in features if k not in {f.key for f in default_frame_features()}]
        self.video_keys = [k for k, f in features.items() if f.is_video]

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, fps: int, features: Sequence[FeatureSpec],
               robot_type: str | None = None, video_config: VideoEncoderConfig | None = None,
               depth_config: DepthEncoderConfig | None = None,
               chunks_size: int = layout.DEFAULT_CHUNKS_SIZE,
               data_files_size_in_mb: int = layout.DEFAULT_DATA_FILE_SIZE_MB,
               video_files_size_in_mb: int = layout.DEFAULT_VIDEO_FILE_SIZE_MB) -> "DatasetWriter":
        """Start a new dataset at ``root`` (which must not exist or be empty)."""
        root = Path(root)
        if root.exists():
            # A create() killed before its first info.json leaves only temporary files: reuse.
            for tmp in layout.find_leftovers(root):
                tmp.unlink()
            if any(p.is_file() for p in root.rglob("*")):
                raise DatasetError(root, None, "already exists and is not empty "
                                               "(open it with dataset.resume=true to append)")
        if int(fps) != fps or fps <= 0:
            raise DatasetError(root, "fps", f"must be a positive integer, got {fps}")
        all_features: dict[str, FeatureSpec] = {}
        for spec in list(features) + default_frame_features():
            if spec.key in all_features:
                raise DatasetError(root, spec.key, "feature given twice")
            all_features[spec.key] = spec
        for spec in all_features.values():
            if spec.dtype not in ("video", "float32", "float64", "int64", "int32", "bool"):
                raise DatasetError(root, spec.key, f"dtype {spec.dtype!r} cannot be written "
                                                   "(cameras are video, vectors numeric or bool)")
        root.mkdir(parents=True, exist_ok=True)
        has_video = any(f.is_video for f in all_features.values())
        info = {
            "codebase_version": layout.V30,
            "fps": int(fps),
            "features": {k: f.to_info() for k, f in all_features.items()},
            "total_episodes": 0,
            "total_frames": 0,
            "total_tasks": 0,
            "chunks_size": int(chunks_size),
            "data_files_size_in_mb": int(data_files_size_in_mb),
            "video_files_size_in_mb": int(video_files_size_in_mb),
            "data_path": layout.DATA_PATH,
            "video_path": layout.VIDEO_PATH if has_video else None,
            "robot_type": robot_type,
            "splits": {},
        }
        writer = cls(root, info, all_features, [], [], {}, video_config or VideoEncoderConfig(),
                     depth_config or DepthEncoderConfig())
        layout.atomic_write_json(root / layout.INFO_PATH, info)
        return writer

    @classmethod
    def open(cls, root: str | Path, video_config: VideoEncoderConfig | None = None,
             depth_config: DepthEncoderConfig | None = None) -> tuple["DatasetWriter", RecoveryReport]:
        """Reopen ``root`` to append episodes; leftovers of an unfinished episode are removed and
        reported. New episodes go to new files (earlier files are never rewritten)."""
        root = Path(root)
        report = recover(root)
        meta = DatasetMeta.load(root)
        if meta.version != layout.V30:
            raise DatasetError(root / layout.INFO_PATH, "codebase_version",
                               f"can only append to {layout.V30} datasets, this is {meta.version}")
        chunks = int(meta.info.get("chunks_size", layout.DEFAULT_CHUNKS_SIZE))
        next_file: dict[str, int] = {}

        def bump(kind: str, chunk: int, fidx: int) -> None:
            next_file[kind] = max(next_file.get(kind, 0), layout.file_number(chunk, fidx, chunks) + 1)

        for ep in meta.episodes:
            bump("data", ep.data_chunk_index, ep.data_file_index)
            for key, span in ep.videos.items():
                bump(f"videos/{key}", span.chunk_index, span.file_index)
        for path in (root / layout.EPISODES_DIR).glob("chunk-*/file-*.parquet"):
            bump("episodes", int(path.parent.name[len("chunk-"):]), int(path.stem[len("file-"):]))
        stats = [dict(ep.stats) for ep in meta.episodes if ep.stats]
        writer = cls(root, dict(meta.info), dict(meta.features), list(meta.tasks), stats,
                     next_file, video_config or VideoEncoderConfig(),
                     depth_config or DepthEncoderConfig())
        return writer, report

    # -- properties ---------------------------------------------------------------------------
    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def num_episodes(self) -> int:
        return int(self.info["total_episodes"])

    @property
    def episode_length(self) -> int:
        """Frames added to the open episode so far."""
        return len(self._buffer.get(FRAME_INDEX, []))

    @property
    def encoder_backlog(self) -> int:
        """Frames waiting to be encoded, over all cameras."""
        return sum(e.backlog for e in self._encoders.values())

    # -- recording ----------------------------------------------------------------------------
    def add_frame(self, frame: Mapping[str, Any], task: str) -> None:
        """Add one frame of the open episode: every user feature, plus the task string.

        Cameras: RGB (H, W, 3) uint8; depth (H, W) or (H, W, 1) uint16 mm. Vectors: array-likes of
        the feature's shape. ``timestamp`` is frame_index / fps, as LeRobot stores it.
        """
        self._check_open()
        missing = [k for k in self.user_keys if k not in frame]
        if missing:
            raise DatasetError(self.root, missing[0], "missing from frame")
        extra = [k for k in frame if k not in self.features]
        if extra:
            raise DatasetError(self.root, extra[0], "not a feature of this dataset")
        if not task:
            raise DatasetError(self.root, "task", "empty task string")
        i = self.episode_length
        values: dict[str, Any] = {}
        for key in self.user_keys:
            spec = self.features[key]
            if spec.is_video:
                values[key] = self._check_image(key, spec, frame[key])
            else:
                arr = np.asarray(frame[key], dtype=spec.dtype)
                if arr.shape != tuple(spec.shape) and not (spec.shape == (1,) and arr.shape == ()):
                    raise DatasetError(self.root, key, f"shape {list(arr.shape)} != {list(spec.shape)}")
                values[key] = arr.reshape(spec.shape)
        # All checks passed: only now touch the episode state, so a bad frame changes nothing.
        for key, value in values.items():
            spec = self.features[key]
            if spec.is_video:
                self._encoder(key, spec).put(value)
                # A copy, not a strided view: a view would keep every full frame alive all episode.
                small = np.array(downsample_for_stats(value), copy=True)
                self._stat_frames.setdefault(key, []).append(small)
            else:
                self._buffer.setdefault(key, []).append(value)
        self._buffer.setdefault(FRAME_INDEX, []).append(i)
        self._buffer.setdefault(TIMESTAMP, []).append(np.float32(i / self.fps))
        self._episode_tasks.append(task)

    def _check_image(self, key: str, spec: FeatureSpec, image: Any) -> np.ndarray:
        arr = np.asarray(image)
        h, w, c = spec.shape
        if spec.is_depth:
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[..., 0]
            if arr.shape != (h, w) or arr.dtype != np.uint16:
                raise DatasetError(self.root, key, f"depth must be uint16 millimetres ({h}, {w}), "
                                                   f"got {arr.dtype} {list(arr.shape)}")
        elif arr.shape != (h, w, c) or arr.dtype != np.uint8:
            raise DatasetError(self.root, key, f"image must be uint8 ({h}, {w}, {c}), "
                                               f"got {arr.dtype} {list(arr.shape)}")
        return np.ascontiguousarray(arr)

    def _encoder(self, key: str, spec: FeatureSpec) -> _StreamEncoder:
        enc = self._encoders.get(key)
        if enc is None:
            target = self._video_target(key)
            config = self.depth_config if spec.is_depth else self.video_config
            enc = _StreamEncoder(layout.tmp_path_for(target.path, suffix=".mp4"), self.fps, config)
            self._encoders[key] = enc
        return enc

    def clear_episode(self) -> None:
        """Discard the open episode (re-record)."""
        for enc in self._encoders.values():
            enc.abort()
        self._encoders.clear()
        self._buffer.clear()
        self._stat_frames.clear()
        self._episode_tasks.clear()

    def save_episode(self, extra: Mapping[str, Any] | None = None,
                     attachments: Mapping[str, pa.Table] | None = None) -> int:
        """Commit the open episode; returns its index. ``extra`` scalars (e.g. loop timing) are
        stored as columns of the episode's metadata row; ``attachments`` are side tables saved as
        ``raw/<name>/chunk-*/episode-*.parquet`` (e.g. a sensor's raw high-rate stream).

        If saving fails part-way (a full disk, a bad encode), the episode is discarded, nothing
        committed changes, and later episodes go to fresh files, so the half-written tail of the
        current files is never referenced (reopening the dataset trims it).
        """
        self._check_open()
        length = self.episode_length
        if length == 0:
            raise DatasetError(self.root, "episode", "no frames to save")
        try:
            self._commit_episode(length, extra or {}, attachments or {})
        except BaseException:
            self.clear_episode()
            self._data_file = self._episodes_file = None
            self._video_files.clear()
            try:    # trim what the failed save appended to shared files; best effort
                recover(self.root)
            except Exception as cleanup_error:
                log.warning("%s: could not clean up after the failed save (%s); reopening the "
                            "dataset will", self.root, cleanup_error)
            raise
        self.clear_episode()
        return self.num_episodes - 1

    def _commit_episode(self, length: int, extra: Mapping[str, Any],
                        attachments: Mapping[str, pa.Table]) -> None:
        ep = self.num_episodes
        start = int(self.info["total_frames"])
        tasks = list(self.tasks)
        tasks += [t for t in dict.fromkeys(self._episode_tasks) if t not in tasks]
        index_of = {t: i for i, t in enumerate(tasks)}
        task_ids = [index_of[t] for t in self._episode_tasks]
        columns = self._episode_columns(ep, start, task_ids)
        encoded = {k: (e.path, e.finish()) for k, e in self._encoders.items()}
        self._encoders.clear()
        stats = self._episode_stats_of(columns)
        row: dict[str, Any] = {
            "episode_index": ep,
            "tasks": list(dict.fromkeys(self._episode_tasks)),
            "length": length,
        }
        chunk, fidx = self._append_data(columns, length)
        row.update({"data/chunk_index": chunk, "data/file_index": fidx,
                    "dataset_from_index": start, "dataset_to_index": start + length})
        features = self.info["features"]
        for key, (tmp, video_info) in encoded.items():
            n = probe_video(tmp).num_frames
            if n != length:
                raise DatasetError(tmp, key, f"encoded {n} frames for {length} rows")
            chunk, fidx, t0 = self._append_video(key, tmp)
            row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": fidx,
                        f"videos/{key}/from_timestamp": t0,
                        f"videos/{key}/to_timestamp": t0 + length / self.fps})
            if not features[key].get("info", {}).get("video.codec"):
                # As LeRobot: the stream facts of the first episode describe the feature.
                features[key]["info"] = {**(features[key].get("info") or {}), **video_info}
        row.update(flatten_episode_stats(stats))
        for k, v in extra.items():
            if k in row:
                raise DatasetError(self.root, k, "extra episode metadata collides with a standard column")
            row[k] = v
        for name, table in attachments.items():
            path = self.root / layout.ATTACHMENT_PATH.format(
                name=name, chunk_index=ep // int(self.info["chunks_size"]), episode_index=ep)
            layout.atomic_write(path, lambda tmp, t=table: pq.write_table(t, tmp))
        self._append_episode_row(row)
        if tasks != self.tasks:
            self._write_tasks(tasks)
        episode_stats = self._episode_stats + [stats]
        layout.atomic_write_json(self.root / layout.STATS_PATH,
                                 stats_to_json(aggregate_stats(episode_stats)))
        info = dict(self.info, total_episodes=ep + 1, total_frames=start + length,
                    total_tasks=len(tasks), splits={"train": f"0:{ep + 1}"})
        layout.atomic_write_json(self.root / layout.INFO_PATH, info)   # the commit point
        self.info, self.tasks, self._episode_stats = info, tasks, episode_stats

    # -- pieces of save_episode ---------------------------------------------------------------
    def _episode_columns(self, ep: int, start: int, task_ids: list[int]) -> dict[str, np.ndarray]:
        length = self.episode_length
        cols = {k: np.stack(v) for k, v in self._buffer.items()}
        cols[FRAME_INDEX] = np.asarray(cols[FRAME_INDEX], dtype=np.int64)
        cols[TIMESTAMP] = np.asarray(cols[TIMESTAMP], dtype=np.float32)
        cols[EPISODE_INDEX] = np.full(length, ep, dtype=np.int64)
        cols[INDEX] = np.arange(start, start + length, dtype=np.int64)
        cols[TASK_INDEX] = np.asarray(task_ids, dtype=np.int64)
        return cols

    def _episode_stats_of(self, columns: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        stats = {k: vector_stats(np.asarray(v).reshape(len(v), -1)) for k, v in columns.items()}
        length = self.episode_length
        for key, frames in self._stat_frames.items():
            picked = np.stack([frames[i] for i in sample_indices(length)])
            stats[key] = image_stats(picked, is_depth=self.features[key].is_depth)
        return stats

    def _new_file(self, kind: str, template: str, **fmt: Any) -> tuple[int, Path]:
        number = self._next_file.get(kind, 0)
        self._next_file[kind] = number + 1
        chunk, fidx = layout.chunk_and_file(number, int(self.info["chunks_size"]))
        return number, self.root / template.format(chunk_index=chunk, file_index=fidx, **fmt)

    def _location(self, number: int) -> tuple[int, int]:
        return layout.chunk_and_file(number, int(self.info["chunks_size"]))

    def _append_data(self, columns: Mapping[str, np.ndarray], length: int) -> tuple[int, int]:
        schema = pa.schema([(k, arrow_type(self.features[k])) for k in self.features
                            if not self.features[k].is_video])
        arrays = []
        for name in schema.names:
            values, arrow = columns[name], schema.field(name).type
            if pa.types.is_fixed_size_list(arrow):
                arrays.append(pa.array(values.reshape(length, -1).tolist(), type=arrow))
            else:   # shape (1,) features are scalar columns, as in LeRobot
                arrays.append(pa.array(values.reshape(length), type=arrow))
        new = pa.Table.from_arrays(arrays, schema=schema)
        limit = int(self.info["data_files_size_in_mb"]) * 1024 * 1024
        f = self._data_file
        if f is None or (f.table is not None and f.table.nbytes + new.nbytes > limit):
            number, path = self._new_file("data", self.info["data_path"])
            f = self._data_file = _OpenFile(number, path, table=None)
        table = new if f.table is None else pa.concat_tables([f.table, new])
        layout.atomic_write(f.path, lambda tmp: pq.write_table(table, tmp, compression="snappy"))
        f.table = table
        f.episodes += 1
        return self._location(f.number)

    def _video_target(self, key: str) -> _OpenFile:
        f = self._video_files.get(key)
        limit = int(self.info["video_files_size_in_mb"]) * 1024 * 1024
        if f is None or (f.path.exists() and f.path.stat().st_size > limit):
            number, path = self._new_file(f"videos/{key}", self.info["video_path"], video_key=key)
            f = self._video_files[key] = _OpenFile(number, path)
        return f

    def _append_video(self, key: str, episode_tmp: Path) -> tuple[int, int, float]:
        f = self._video_target(key)
        if f.episodes == 0:
            f.path.parent.mkdir(parents=True, exist_ok=True)
            layout.commit_file(episode_tmp, f.path)
            t0 = 0.0
        else:
            # Stream copy into a temporary file renamed over the old one (atomic).
            t0 = concatenate_videos([f.path, episode_tmp], f.path)[1]
            episode_tmp.unlink(missing_ok=True)
        f.episodes += 1
        chunk, fidx = self._location(f.number)
        return chunk, fidx, float(t0)

    def _append_episode_row(self, row: dict[str, Any]) -> None:
        f = self._episodes_file
        if f is None:
            number, path = self._new_file("episodes", layout.EPISODES_PATH)
            f = self._episodes_file = _OpenFile(number, path)
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = self._location(f.number)
        rows = f.rows + [row]
        table = pa.Table.from_pylist(rows)
        layout.atomic_write(f.path, lambda tmp: pq.write_table(table, tmp))
        f.rows = rows

    def _write_tasks(self, tasks: list[str]) -> None:
        # LeRobot writes tasks with pandas: the task string is the index, task_index a column.
        df = pd.DataFrame({"task_index": np.arange(len(tasks), dtype=np.int64)},
                          index=pd.Index(tasks, name="task"))
        layout.atomic_write(self.root / layout.TASKS_PATH, lambda tmp: df.to_parquet(tmp))

    # -- lifecycle ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise DatasetError(self.root, None, "writer is closed")

    def close(self) -> None:
        """Discard an unsaved open episode and release encoders. Saved episodes are on disk."""
        if self._closed:
            return
        if self.episode_length:
            log.warning("%s: discarding %d unsaved frame(s) of the open episode", self.root,
                        self.episode_length)
        self.clear_episode()
        self._closed = True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def recover(root: str | Path) -> RecoveryReport:
    """Remove what an interrupted write left in ``root`` and return what was removed.

    Keeps every committed episode (those ``info.json`` counts) exactly as it was: temporary files
    are deleted, uncommitted episode metadata rows dropped, data rows and trailing video frames
    past the committed episodes trimmed, and files no committed episode uses deleted.
    """
    root = Path(root)
    report = RecoveryReport()
    for tmp in layout.find_leftovers(root):
        tmp.unlink(missing_ok=True)
        report.removed_files.append(tmp)
    meta_info = (root / layout.INFO_PATH)
    if not meta_info.is_file():
        raise DatasetError(meta_info, None, "info.json not found: not a dataset")
    info = read_json(meta_info, "info.json")
    total = int(info.get("total_episodes", 0))
    # Episode metadata rows beyond the commit point.
    ep_files = sorted((root / layout.EPISODES_DIR).glob("chunk-*/file-*.parquet"))
    for path in ep_files:
        table = read_parquet(path)
        keep = [i for i, e in enumerate(table["episode_index"].to_pylist()) if e < total]
        dropped = [e for e in table["episode_index"].to_pylist() if e >= total]
        if not dropped:
            continue
        report.dropped_episode_rows.extend(dropped)
        if keep:
            sub = table.take(pa.array(keep))
            layout.atomic_write(path, lambda tmp: pq.write_table(sub, tmp))
            report.truncated_files.append(path)
        else:
            path.unlink()
            report.removed_files.append(path)
    if total == 0:
        for sub in ("data", "videos", "raw"):
            for path in sorted((root / sub).rglob("*")) if (root / sub).exists() else []:
                if path.is_file():
                    path.unlink()
                    report.removed_files.append(path)
        return report
    for path in sorted((root / "raw").rglob("episode-*.parquet")) if (root / "raw").exists() else []:
        if int(path.stem[len("episode-"):]) >= total:
            path.unlink()
            report.removed_files.append(path)
    meta = DatasetMeta.load(root)
    episodes_in: dict[Path, set[int]] = {}
    for ep in meta.episodes:
        episodes_in.setdefault(ep.data_path, set()).add(ep.index)
    for path in sorted((root / "data").rglob("*.parquet")):
        if path not in episodes_in:
            path.unlink()
            report.removed_files.append(path)
            continue
        # Keep exactly the rows of the committed episodes this file holds: rows of an episode
        # whose save failed (and was redone in another file) would otherwise duplicate it.
        table = read_parquet(path)
        keep = np.isin(np.asarray(table[EPISODE_INDEX].to_numpy()), sorted(episodes_in[path]))
        if not keep.all():
            sub = table.filter(pa.array(keep))
            layout.atomic_write(path, lambda tmp: pq.write_table(sub, tmp, compression="snappy"))
            report.truncated_files.append(path)
    fps = meta.fps
    ends: dict[Path, float] = {}
    for ep in meta.episodes:
        for span in ep.videos.values():
            ends[span.path] = max(ends.get(span.path, 0.0), span.to_timestamp)
    for path in sorted((root / "videos").rglob("*.mp4")) if (root / "videos").exists() else []:
        if path not in ends:
            path.unlink()
            report.removed_files.append(path)
            continue
        frames = round(ends[path] * fps)
        if probe_video(path).num_frames > frames:
            layout.atomic_write(path, lambda tmp: truncate_video(path, frames, tmp))
            report.truncated_files.append(path)
    if not report.clean:
        # stats.json may include the discarded episode: rebuild it from the committed ones.
        per_ep = [ep.stats for ep in meta.episodes if ep.stats]
        if per_ep:
            layout.atomic_write_json(root / layout.STATS_PATH, stats_to_json(aggregate_stats(per_ep)))
        log.warning("%s: recovered from an interrupted write: %s", root, report.summary())
    for d in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if d.name != "meta" and not any(d.iterdir()):
            shutil.rmtree(d, ignore_errors=True)
    return report
