"""Build the bundled sample dataset: the MuJoCo twin's scripted expert, recorded as ``record.py`` does.

    python -m rlbench_sms.data.sample data/sample [--episodes 8] [--seed 0] [--overwrite]

It is ``python record.py robot=sim camera=sim force_sensor=sim tip=sim teleop=scripted
sim.task=pick_place dataset.single_task="put the red cube in the bin"`` at a smaller image size:
the same devices, recorder and writer, so the sample has exactly the schema of a twin recording
(and of a real SO-100 + RealSense + force-sensor one): two RGB cameras (``front``, ``wrist``),
depth aligned to ``front`` (uint16 mm, FFV1, intrinsics stored), the tared 6-axis wrist force
with its raw stream, joint state and action, per-reading timing, and the object "tip" (the cube's
centre in the ``front`` camera's frame, from the twin's ground truth: :mod:`rlbench_sms.sim.tip`;
a detector writes the same keys on real data). Episode ``i`` is laid out from ``seed + i``.
The dataset is recorded into a sibling folder and moved into place only when complete.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from rlbench_sms.cli import CONF_DIR, doc_description

# What record.py is given: the twin's devices, its ground-truth tip and its scripted expert.
RECORD_CHOICES = ("robot=sim", "camera=sim", "force_sensor=sim", "tip=sim", "teleop=scripted")


@dataclass
class SampleConfig:
    """What the sample records; everything else is conf/record.yaml's and conf/sim/default.yaml's."""

    width: int = 320                  # both cameras (front RGB + depth, wrist RGB), pixels
    height: int = 240
    episode_seconds: float = 15.0     # the expert puts the cube in the bin in 12.5-14.5 s, then holds
    task: str = "pick_place"          # sim.task
    instruction: str = "put the red cube in the bin"   # dataset.single_task
    cache_dir: str | None = None      # sim.cache_dir for the decimated meshes; None: the sim config's


class SampleError(RuntimeError):
    """The recording of the sample failed (the recorder has already said why, in one line)."""


def record_config(root: str | Path, episodes: int, config: SampleConfig, seed: int):
    """The composed ``conf/record.yaml`` that records the sample into ``root``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("record", overrides=list(RECORD_CHOICES))
    # Values set on the composed tree, not as override strings: paths and task text need no quoting.
    with open_dict(cfg):
        cfg.sim.update(task=config.task, seed=int(seed), width=int(config.width), height=int(config.height),
                       wrist_width=int(config.width), wrist_height=int(config.height))
        if config.cache_dir is not None:
            cfg.sim.cache_dir = str(config.cache_dir)
        cfg.dataset.update(root=str(root), single_task=config.instruction, num_episodes=int(episodes),
                           episode_time_s=float(config.episode_seconds), reset_time_s=0.0, resume=False)
    return cfg


def build_sample(root: str | Path, episodes: int = 8, config: SampleConfig | None = None,
                 seed: int = 0, overwrite: bool = False, show_progress: bool = True) -> Path:
    """Record ``episodes`` episodes of the twin's expert and write them as a v3.0 dataset at
    ``root``; the recorder's status lines go to stderr with ``show_progress``."""
    from rlbench_sms.runtime.keyboard import TerminalKeys
    from rlbench_sms.runtime.record_app import record
    from rlbench_sms.runtime.recorder import StatusLine

    root = Path(root)
    config = config or SampleConfig()
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists (pass overwrite=True / --overwrite to rebuild it)")
    staging = root.with_name(root.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    cfg = record_config(staging, episodes, config, seed)
    status = StatusLine(float(cfg.recording.status_interval_s), stream=None if show_progress else io.StringIO())
    # Unattended: no keyboard (a key pressed in the terminal must not stop or redo an episode), and
    # record()'s closing line would name the staging folder, so it is not shown.
    with contextlib.redirect_stdout(io.StringIO()):
        code = record(cfg, keys=TerminalKeys(io.StringIO()), status=status)
    if code:
        shutil.rmtree(staging, ignore_errors=True)
        raise SampleError(f"recording the sample into {staging} failed (exit {code})")
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlbench_sms.data.sample", description=doc_description(__doc__))
    parser.add_argument("root", type=Path)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        path = build_sample(args.root, args.episodes, seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, SampleError) as e:
        print(e, file=sys.stderr)
        return 1
    print(f"sample dataset written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
