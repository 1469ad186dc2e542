"""Export an episode's video frames as images: RGB to 8-bit PNG, depth to 16-bit PNG (millimetres,
exact: the PNG holds the same uint16 values the dataset stores).

    python -m rlbench_sms.tools.export_frames ROOT --episode 0 --out frames/ [--key observation.images.front]
        [--every 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import Progress

from rlbench_sms.cli import doc_description
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.reader import DatasetReader


def export_frames(root: str | Path, episode: int, out: str | Path, keys: list[str] | None = None,
                  every: int = 1, show_progress: bool = True) -> list[Path]:
    """Write ``out/<camera>/frame_XXXXXX.png`` for the episode's frames; returns the files."""
    out = Path(out)
    written: list[Path] = []
    with DatasetReader(root, episodes=[episode]) as reader:
        ep = reader.episodes[0]
        keys = keys or reader.meta.video_keys
        indices = np.arange(0, ep.length, every)
        with Progress(disable=not show_progress, transient=True) as progress:
            bar = progress.add_task("export", total=len(keys) * len(indices))
            for key in keys:
                folder = out / key.removeprefix("observation.images.")
                folder.mkdir(parents=True, exist_ok=True)
                for i in indices:
                    frame = reader.frames(key, ep, [i / reader.meta.fps])[0]
                    path = folder / f"frame_{i:06d}.png"
                    # uint16 depth -> 16-bit greyscale PNG ("I;16"), RGB -> 8-bit RGB
                    Image.fromarray(frame).save(path)
                    written.append(path)
                    progress.advance(bar)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlbench_sms.tools.export_frames", description=doc_description(__doc__))
    parser.add_argument("root", type=Path, help="dataset folder (contains meta/info.json)")
    parser.add_argument("--episode", type=int, default=0, help="episode index (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="folder the PNGs go to, one sub-folder per camera")
    parser.add_argument("--key", action="append", help="a video feature (default: all)")
    parser.add_argument("--every", type=int, default=1, help="export every n-th frame")
    args = parser.parse_args(argv)
    try:
        files = export_frames(args.root, args.episode, args.out, args.key, args.every)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{len(files)} frames written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
