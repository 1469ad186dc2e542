"""Check a LeRobot dataset (ours or LeRobot's, v3.0 or v2.1) and print a summary.

    python -m rlbench_sms.data.validate ROOT [--quiet]

Exits 0 when every check passes; otherwise prints one line naming the file and the field of the
first problem and exits 1. Checks: metadata parses; every episode's parquet rows exist with the
shapes info.json declares and timestamps at frame_index / fps; each camera's video holds exactly
one frame per row inside the episode's time window, at the expected times; video size matches
the feature; depth streams decode to 16-bit; stats exist for every numeric feature.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlbench_sms.cli import doc_description
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.video import frame_times, probe_video
from rlbench_sms.features import FRAME_INDEX, INDEX, TASK_INDEX, TIMESTAMP

DEPTH_PIX_FMTS = ("gray16le", "gray12le")   # ours (FFV1, exact mm) and LeRobot's (12-bit codes)


@dataclass
class Summary:
    """What a validated dataset holds (printed by the CLI, returned to callers)."""

    root: Path
    version: str
    fps: int
    robot_type: str | None
    episodes: int
    frames: int
    tasks: list[str]
    features: dict[str, str] = field(default_factory=dict)   # key -> "dtype shape [codec]"
    bytes_on_disk: int = 0

    def render(self) -> str:
        lines = [
            f"dataset   {self.root}",
            f"format    LeRobot {self.version}, {self.fps} fps, robot {self.robot_type or '-'}",
            f"content   {self.episodes} episodes, {self.frames} frames "
            f"({self.frames / max(self.fps, 1):.1f} s), {self.bytes_on_disk / 1e6:.1f} MB on disk",
            f"tasks     {len(self.tasks)}: " + "; ".join(repr(t) for t in self.tasks[:5])
            + (" ..." if len(self.tasks) > 5 else ""),
            "features",
        ]
        width = max(len(k) for k in self.features) if self.features else 0
        lines += [f"  {k:<{width}}  {v}" for k, v in self.features.items()]
        return "\n".join(lines)


def validate(root: str | Path, tolerance_s: float = 1e-4) -> Summary:
    """Run every check; raise :class:`DatasetError` at the first problem."""
    reader = DatasetReader(root, tolerance_s=tolerance_s)
    meta = reader.meta
    _check_rows(reader)
    _check_videos(meta, tolerance_s)
    _check_stats(meta)
    reader.close()
    return _summarize(meta)


def _check_rows(reader: DatasetReader) -> None:
    meta = reader.meta
    keys = [k for k in meta.data_keys if meta.features[k].dtype != "string"]
    cols = reader.load_columns(keys)   # also checks row counts per episode and shapes
    if TIMESTAMP in cols and FRAME_INDEX in cols:
        expected = cols[FRAME_INDEX] / meta.fps
        bad = np.flatnonzero(np.abs(cols[TIMESTAMP] - expected) > 1e-4)
        if bad.size:
            ep = _episode_at(reader, int(bad[0]))
            raise DatasetError(ep.data_path, TIMESTAMP,
                               f"episode {ep.index} frame {int(cols[FRAME_INDEX][bad[0]])}: timestamp "
                               f"{float(cols[TIMESTAMP][bad[0]]):.6f} s is not frame_index / fps")
    for ep, start in zip(reader.episodes, reader.episode_starts):
        if FRAME_INDEX in cols:
            fi = cols[FRAME_INDEX][start:start + ep.length]
            if not np.array_equal(fi, np.arange(ep.length)):
                raise DatasetError(ep.data_path, FRAME_INDEX,
                                   f"episode {ep.index}: frame_index is not 0..{ep.length - 1}")
        if INDEX in cols and meta.version != "v2.1":
            idx = cols[INDEX][start:start + ep.length]
            if not np.array_equal(idx, np.arange(ep.from_index, ep.to_index)):
                raise DatasetError(ep.data_path, INDEX, f"episode {ep.index}: index is not "
                                                        f"{ep.from_index}..{ep.to_index - 1}")
    if TASK_INDEX in cols and cols[TASK_INDEX].size:
        bad_task = int(cols[TASK_INDEX].max())
        if bad_task >= len(meta.tasks) or int(cols[TASK_INDEX].min()) < 0:
            raise DatasetError(reader.episodes[0].data_path, TASK_INDEX,
                               f"task_index {bad_task} not in tasks (has {len(meta.tasks)})")


def _episode_at(reader: DatasetReader, row: int):
    i = int(np.searchsorted(reader.episode_starts, row, side="right")) - 1
    return reader.episodes[i]


def _check_videos(meta: DatasetMeta, tolerance_s: float) -> None:
    times_cache: dict[Path, np.ndarray] = {}
    checked_files: set[Path] = set()
    for key in meta.video_keys:
        spec = meta.features[key]
        h, w = spec.shape[0], spec.shape[1]
        for ep in meta.episodes:
            span = ep.videos[key]
            if span.path not in times_cache:
                probe = probe_video(span.path)
                if (probe.height, probe.width) != (h, w):
                    raise DatasetError(span.path, key, f"video is {probe.width}x{probe.height}, "
                                                       f"info.json says {w}x{h}")
                if spec.is_depth and probe.pix_fmt not in DEPTH_PIX_FMTS:
                    raise DatasetError(span.path, key, f"depth stored as {probe.pix_fmt}, not 16-bit "
                                                       f"({' or '.join(DEPTH_PIX_FMTS)}): values are lost")
                times_cache[span.path] = frame_times(span.path)
            times = times_cache[span.path]
            lo, hi = span.from_timestamp - tolerance_s, span.to_timestamp - tolerance_s
            inside = times[(times >= lo) & (times < hi)]
            if len(inside) != ep.length:
                raise DatasetError(span.path, key, f"episode {ep.index}: {len(inside)} video frames in "
                                                   f"[{span.from_timestamp:.4f}, {span.to_timestamp:.4f}) s, "
                                                   f"parquet has {ep.length} rows")
            expected = span.from_timestamp + np.arange(ep.length) / meta.fps
            off = np.abs(inside - expected)
            if off.size and off.max() > tolerance_s:
                i = int(off.argmax())
                raise DatasetError(span.path, key, f"episode {ep.index} frame {i}: at {inside[i]:.6f} s, "
                                                   f"expected {expected[i]:.6f} s")
            if spec.is_depth and span.path not in checked_files:
                _check_depth_decodes(meta, key, ep)
            checked_files.add(span.path)


def _check_depth_decodes(meta: DatasetMeta, key: str, ep) -> None:
    with DatasetReader(meta.root, episodes=[ep.index]) as reader:
        frame = reader.frames(key, reader.episodes[0], [0.0])
    if frame.dtype != np.uint16:
        raise DatasetError(ep.videos[key].path, key, f"depth decodes to {frame.dtype}, not uint16")


def _check_stats(meta: DatasetMeta) -> None:
    if not meta.episodes:
        return   # created but nothing saved yet: no statistics to have
    for key, spec in meta.features.items():
        if spec.dtype == "string":
            continue
        stats = meta.stats.get(key)
        if not stats:
            raise DatasetError(meta.root / "meta", key, "no statistics for this feature")
        for stat in ("mean", "std", "min", "max", "count"):
            if stat not in stats:
                raise DatasetError(meta.root / "meta", f"{key}.{stat}", "statistic missing")


def _summarize(meta: DatasetMeta) -> Summary:
    summary = Summary(meta.root, meta.version, meta.fps, meta.robot_type, len(meta.episodes),
                      meta.total_frames, list(meta.tasks))
    for key, spec in meta.features.items():
        desc = f"{spec.dtype:<8} {list(spec.shape)}"
        if spec.is_video:
            info = spec.info
            desc += f"  {info.get('video.codec', '?')} {info.get('video.pix_fmt', '')}"
            if spec.is_depth:
                desc += f"  depth in {info.get('depth_unit', 'mm')}"
        elif spec.names:
            names = spec.names if isinstance(spec.names, list) else list(spec.names)
            desc += "  " + ",".join(str(n) for n in names[:8]) + ("..." if len(names) > 8 else "")
        summary.features[key] = desc
    summary.bytes_on_disk = sum(p.stat().st_size for p in meta.root.rglob("*") if p.is_file())
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlbench_sms.data.validate", description=doc_description(__doc__))
    parser.add_argument("root", type=Path, help="dataset folder (contains meta/info.json)")
    parser.add_argument("--tolerance-s", type=float, default=1e-4, help="video timestamp tolerance")
    parser.add_argument("--quiet", action="store_true", help="print only problems")
    args = parser.parse_args(argv)
    try:
        summary = validate(args.root, args.tolerance_s)
    except DatasetError as e:
        print(f"invalid dataset: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(summary.render())
        print("valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
