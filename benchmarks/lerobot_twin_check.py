"""Does LeRobot's own loader open a dataset recorded with the twin, with the values our reader reads?

Runs in an interpreter that has ``lerobot`` installed (never a dependency of this project), and
calls this project's interpreter for the reference values (our ``DatasetReader``):

    python record.py robot=sim camera=sim force_sensor=sim teleop=scripted sim.task=press \
        dataset.root=/tmp/twin dataset.single_task=press dataset.num_episodes=2 dataset.episode_time_s=4
    /path/to/lerobot-venv/bin/python benchmarks/lerobot_twin_check.py /tmp/twin \
        --ours .venv/bin/python [--backends torchcodec pyav] [--items 0 37 119] [--chunk 10]

For each backend and item (a global frame index) it compares LeRobot's ``dataset[i]`` with ours:
every non-video column exactly (state, action, force, tip, timing, indices), the task text, every
RGB stream (LeRobot gives float32 CHW in [0, 1]; compared as uint8 HWC, max abs difference), an
action chunk through ``delta_timestamps`` (what SmolVLA training asks for, with the padding mask
at an episode's end), and reports what it gives for the uint16 depth stream (shape, dtype, range;
LeRobot 0.4.4 has no 16-bit depth path) and whether the episode metadata extras (``sim/...``,
``timing/...``) reach ``meta.episodes`` with our values. The two interpreters exchange arrays
through an ``.npz`` file (``allow_pickle=False``) and JSON. Prints one JSON line; an exception on
LeRobot's side is reported in it (``error``, ``item_error``), not raised.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ACTION = "action"
MAX_EPISODES_CHECKED = 3    # by default: the first, a middle and the last frame of the first episodes


# ------------------------------------------------------------------ our side (this project's venv)
def dump_ours(root: str, items: list[int] | None, chunk: int, out: Path) -> None:
    """Write our reader's values for ``items`` (default: see MAX_EPISODES_CHECKED) to
    ``out``/ours.npz and ours.json."""
    import numpy as np

    from rlbench_sms.data.reader import DatasetReader

    with DatasetReader(root) as reader:
        meta = reader.meta
        if items is None:
            items = sorted({int(start + f) for start, ep in zip(reader.episode_starts,
                                                                reader.episodes[:MAX_EPISODES_CHECKED])
                            for f in (0, ep.length // 2, ep.length - 1)})
        video_keys = [k for k, spec in meta.features.items() if spec.is_video]
        columns = [k for k in meta.features if k not in video_keys]    # state, action, force, tip, timing...
        cols = reader.load_columns(columns)
        arrays: dict[str, np.ndarray] = {k: cols[k][items] for k in columns}
        tasks, frames = [], {k: [] for k in video_keys}
        chunks, pads = [], []
        for i in items:
            ep = meta.episode(int(cols["episode_index"][i]))
            start = int(reader.episode_starts[reader.episodes.index(ep)])
            f = i - start
            tasks.append(ep.tasks[0])
            for k in video_keys:
                frames[k].append(reader.frames(k, ep, [float(cols["timestamp"][i])])[0])
            # An action chunk as LeRobot builds it: clamped to the episode, is_pad past its end.
            rows = [start + min(f + d, ep.length - 1) for d in range(chunk)]
            chunks.append(cols[ACTION][rows])
            pads.append([f + d >= ep.length for d in range(chunk)])
        for k in video_keys:
            arrays[k] = np.stack(frames[k])
        arrays["action_chunk"] = np.stack(chunks)
        arrays["action_chunk_is_pad"] = np.array(pads)
        extras = {str(ep.index): dict(ep.extra) for ep in meta.episodes}   # sim/..., timing/...
    np.savez(out / "ours.npz", **arrays)
    (out / "ours.json").write_text(json.dumps({"items": items, "tasks": tasks, "columns": columns,
                                               "video_keys": video_keys, "extras": extras},
                                              default=lambda v: v.item() if hasattr(v, "item") else str(v)))


# ------------------------------------------------------------------ LeRobot's side
def check_backend(root: str, backend: str, items: list[int], chunk: int, ours: dict, ref) -> dict:
    import numpy as np
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    result: dict = {}
    try:
        ds = LeRobotDataset("local/twin", root=root, video_backend=backend)
    except Exception as error:                    # what a user of LeRobot would hit, in one line
        return {"opens": False, "error": f"{type(error).__name__}: {error}"[:500]}
    result.update(opens=True, len=len(ds), num_episodes=ds.num_episodes)
    vectors_equal = {k: True for k in ours["columns"]}
    rgb_diff: dict[str, int] = {}
    depth: dict = {}
    tasks_equal = True
    read = 0
    for n, i in enumerate(items):
        try:
            item = ds[i]
        except Exception as error:
            result["item_error"] = f"item {i}: {type(error).__name__}: {' '.join(str(error).split())}"[:300]
            break
        read += 1
        for k in vectors_equal:
            got = item[k].numpy()
            vectors_equal[k] &= bool(np.array_equal(got.reshape(ref[k][n].shape), ref[k][n]))
        tasks_equal &= item["task"] == ours["tasks"][n]
        for k in ours["video_keys"]:
            mine = ref[k][n]
            got = item[k]
            if mine.dtype == np.uint16:           # depth: what LeRobot makes of a 16-bit stream
                g = got.numpy()
                depth.setdefault("lerobot_shape", list(g.shape))
                depth.setdefault("lerobot_dtype", str(g.dtype))
                lo, hi = float(g.min()), float(g.max())
                depth["lerobot_range"] = [min(lo, depth.get("lerobot_range", [lo, hi])[0]),
                                          max(hi, depth.get("lerobot_range", [lo, hi])[1])]
                depth.setdefault("ours_shape", list(mine.shape))
                depth["ours_range_mm"] = [int(mine.min()), int(mine.max())]
                # Is it our millimetres squeezed to 8 bits (gray16 -> rgb24: mm * 255 / 65535)?
                g8 = np.rint(g[0] * 255).astype(np.int64)
                squeezed = np.rint(mine.astype(np.float64) * 255 / 65535).astype(np.int64)
                key = "max_abs_diff_vs_ours_mm_x255_div_65535"
                depth[key] = max(depth.get(key, 0), int(np.abs(g8 - squeezed).max()))
                depth["distinct_levels_lerobot_vs_ours"] = [int(np.unique(g8).size), int(np.unique(mine).size)]
                depth["channels_equal"] = bool(torch.equal(got[0], got[1]) and torch.equal(got[1], got[2])) \
                    if got.shape[0] == 3 else None
                continue
            hwc = np.rint(got.permute(1, 2, 0).numpy() * 255).astype(np.int64)   # (C,H,W) -> (H,W,C)
            if hwc.shape != mine.shape:
                rgb_diff[k] = f"shape {list(hwc.shape)} vs ours {list(mine.shape)}"
                continue
            rgb_diff[k] = max(rgb_diff.get(k, 0), int(np.abs(hwc - mine.astype(np.int64)).max()))
    if read == 0:                                 # nothing compared: no verdicts
        vectors_equal, tasks_equal = None, None
    result.update(items_read=read, vectors_equal=vectors_equal, task_equal=tasks_equal,
                  rgb_max_abs_diff=rgb_diff, depth=depth)
    # An action chunk, as SmolVLA training asks for it.
    try:
        chunked = LeRobotDataset("local/twin", root=root, video_backend=backend,
                                 delta_timestamps={ACTION: [d / ds.fps for d in range(chunk)]})
        same = all(np.array_equal(chunked[i][ACTION].numpy(), ref["action_chunk"][n])
                   and np.array_equal(chunked[i][f"{ACTION}_is_pad"].numpy(), ref["action_chunk_is_pad"][n])
                   for n, i in enumerate(items))
        result["action_chunk_equal"] = bool(same)
    except Exception as error:
        result["action_chunk_error"] = f"{type(error).__name__}: {' '.join(str(error).split())}"[:300]
    # Episode metadata extras: present in LeRobot's episodes table, with our values?
    episodes = ds.meta.episodes
    extra_keys = sorted({k for e in ours["extras"].values() for k in e})
    missing = [k for k in extra_keys if k not in episodes.column_names]
    differs = sorted({k for e, ex in ours["extras"].items() for k, v in ex.items()
                      if k not in missing and episodes[int(e)][k] != v})
    result["episode_extras"] = {"keys": len(extra_keys), "missing": missing, "differ": differs,
                                "example": {k: episodes[0][k] for k in ("sim/seed", "sim/task", "sim/success")
                                            if k in episodes.column_names}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root")
    parser.add_argument("--ours", default=str(Path(__file__).resolve().parents[1] / ".venv/bin/python"),
                        help="this project's interpreter (for our reader's reference values)")
    parser.add_argument("--backends", nargs="+", default=["torchcodec", "pyav"])
    parser.add_argument("--items", type=int, nargs="+", help="global frame indices (default: the first, "
                        "middle and last frame of the first episodes)")
    parser.add_argument("--chunk", type=int, default=10, help="action chunk length for delta_timestamps")
    parser.add_argument("--dump", metavar="DIR", help=argparse.SUPPRESS)   # our side, in our venv
    args = parser.parse_args()
    if args.dump:
        dump_ours(args.root, args.items, args.chunk, Path(args.dump))
        return

    import lerobot
    import numpy as np

    result: dict = {"lerobot": getattr(lerobot, "__version__", "?"), "root": args.root}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [args.ours, __file__, args.root, "--dump", tmp, "--chunk", str(args.chunk),
               *(["--items", *map(str, args.items)] if args.items else [])]
        out = subprocess.run(cmd, capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[1])
        if out.returncode != 0:
            sys.exit(f"our reader failed: {out.stderr.strip()[-500:]}")
        ours = json.loads((Path(tmp) / "ours.json").read_text())
        result["items"] = items = ours["items"]
        with np.load(Path(tmp) / "ours.npz", allow_pickle=False) as npz:
            ref = {k: npz[k] for k in npz.files}
    for backend in args.backends:
        try:
            result[backend] = check_backend(args.root, backend, items, args.chunk, ours, ref)
        except Exception as error:                # report, keep the other backends' results
            result[backend] = {"error": f"{type(error).__name__}: {error}"[:500],
                               "where": traceback.format_exc().strip().splitlines()[-3][:300]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
