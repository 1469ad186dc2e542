"""Look at an episode: a rerun recording (cameras, depth as a depth image, joints and force as
time series) and a static PNG summary (camera strip + signal plots).

    python -m rlbench_sms.tools.visualize ROOT --episode 0 [--png episode.png] [--rrd episode.rrd]

Without ``--rrd`` the recording goes to a rerun viewer (one already running on ``--port``, else
one spawned); with it, the recording is saved to open later (``rerun episode.rrd``). On a machine
with no screen and no viewer it stops at once with one line saying what to do instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from rlbench_sms.cli import doc_description
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.features import ACTION, FORCE, STATE
from rlbench_sms.runtime.viewer import DEFAULT_PORT, NoViewer, find_viewer

SIGNALS = (STATE, ACTION, FORCE)


def episode_png(root: str | Path, episode: int, path: str | Path, moments: int = 3) -> Path:
    """Cameras at ``moments`` evenly spaced times (depth in mm, invalid masked) above plots of
    the joints, commands and force over the episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with DatasetReader(root, episodes=[episode]) as reader:
        meta, ep = reader.meta, reader.episodes[0]
        cams = meta.video_keys
        signals = [k for k in SIGNALS if k in meta.features]
        cols = reader.load_columns(signals + ["timestamp"])
        times = np.linspace(0, ep.length - 1, moments).round() / meta.fps
        rows = len(cams) + len(signals)
        fig = plt.figure(figsize=(4 * moments, 2.8 * rows))
        grid = fig.add_gridspec(rows, moments)
        for r, key in enumerate(cams):
            for c, (frame, t) in enumerate(zip(reader.frames(key, ep, times), times)):
                ax = fig.add_subplot(grid[r, c])
                if frame.ndim == 2:
                    im = ax.imshow(np.ma.masked_equal(frame, 0), cmap="turbo")
                    fig.colorbar(im, ax=ax, shrink=0.8, label="mm")
                else:
                    ax.imshow(frame)
                ax.set_title(f"{key.removeprefix('observation.images.')}  t={t:.2f} s", fontsize=9)
                ax.axis("off")
        for r, key in enumerate(signals, start=len(cams)):
            ax = fig.add_subplot(grid[r, :])
            names = meta.features[key].names or [str(i) for i in range(cols[key].shape[1])]
            for i, name in enumerate(names):
                ax.plot(cols["timestamp"], cols[key][:, i], label=str(name))
            ax.set_ylabel(key.split(".")[-1])
            ax.legend(fontsize=7, ncol=6, loc="upper right")
        fig.suptitle(f"{Path(root).name}  episode {episode}  ({ep.length} frames, task: {ep.tasks[0] if ep.tasks else '-'})")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
        plt.close(fig)
    return path


def log_to_rerun(root: str | Path, episode: int, rrd: str | Path | None = None, url: str | None = None) -> None:
    """Log every frame of the episode to rerun on the dataset's timeline (seconds): saved to
    ``rrd``, else streamed to the viewer at ``url``, else to one :func:`find_viewer` reaches
    (raises :class:`NoViewer` when there is none)."""
    import rerun as rr

    if rrd is None and url is None:
        url = find_viewer()
    rr.init(f"rlbench_sms-{Path(root).name}-episode-{episode}", spawn=False)
    if rrd is not None:
        rr.save(str(rrd))
    else:
        rr.connect_grpc(url)
    with DatasetReader(root, episodes=[episode]) as reader:
        meta, ep = reader.meta, reader.episodes[0]
        signals = [k for k in SIGNALS if k in meta.features]
        cols = reader.load_columns(signals + ["timestamp"])
        ts = cols["timestamp"]
        for key in meta.video_keys:
            frames = reader.frames(key, ep, ts)
            name = key.removeprefix("observation.images.")
            for t, frame in zip(ts, frames):
                rr.set_time("time", duration=float(t))
                rr.log(f"cameras/{name}", rr.DepthImage(frame, meter=1000.0) if frame.ndim == 2 else rr.Image(frame))
        for key in signals:
            for t, row in zip(ts, cols[key]):
                rr.set_time("time", duration=float(t))
                rr.log(key.replace(".", "/"), rr.Scalars(np.asarray(row, dtype=np.float64)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlbench_sms.tools.visualize", description=doc_description(__doc__))
    parser.add_argument("root", type=Path)
    parser.add_argument("--episode", type=int, default=0)
    parser.add_argument("--png", type=Path, help="write the static summary here")
    parser.add_argument("--rrd", type=Path, help="save the rerun recording here instead of spawning a viewer")
    parser.add_argument("--no-rerun", action="store_true", help="only the PNG")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="a running viewer's port (default %(default)s)")
    args = parser.parse_args(argv)
    url = None
    use_rerun = not args.no_rerun
    if use_rerun and args.rrd is None:
        try:            # before any work: on a machine with no viewer, say so at once
            url = find_viewer(args.port)
        except NoViewer as why:
            advice = (f"save the recording with --rrd out.rrd and open it with `rerun out.rrd` on a "
                      f"machine with a display")
            if args.png is None:
                print(f"error: no rerun viewer - {why}. Instead, {advice}, or draw a summary with "
                      f"--png out.png --no-rerun", file=sys.stderr)
                return 1
            # The PNG was asked for and needs no viewer: draw it, skip only the live view.
            print(f"no rerun viewer - {why}; writing only the PNG ({advice})", file=sys.stderr)
            use_rerun = False
    try:
        if args.png:
            print(f"summary: {episode_png(args.root, args.episode, args.png)}")
        if use_rerun:
            log_to_rerun(args.root, args.episode, args.rrd, url)
            if args.rrd:
                print(f"rerun recording: {args.rrd} (open with `rerun {args.rrd}`)")
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
