"""SIGKILL a writer at random moments, many times: every episode saved before a kill stays intact,
the dataset loads without repair, and reopening reports and removes the leftovers."""

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import dataset_factory as f
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.validate import validate
from rlbench_sms.data.writer import DatasetWriter
from rlbench_sms.features import ACTION, FORCE, STATE, depth_key, image_key

CHILD = Path(__file__).with_name("crash_writer.py")


def check_episodes_intact(root: Path) -> list[int]:
    """Every committed episode reads back exactly as written; returns their indices."""
    with DatasetReader(root) as r:
        cols = r.load_columns([STATE, ACTION, FORCE])
        for ep, start in zip(r.episodes, r.episode_starts):
            e = ep.index
            n = f.episode_length(e)
            assert ep.length == n
            assert ep.tasks == (f.task(e),)
            for i in range(n):
                np.testing.assert_array_equal(cols[STATE][start + i], f.state(e, i))
                np.testing.assert_array_equal(cols[FORCE][start + i], f.force(e, i))
            ts = np.arange(n) / f.FPS
            depth = r.frames(depth_key("front"), ep, ts)
            for i in range(n):
                np.testing.assert_array_equal(depth[i], f.depth(e, i))
            img = r.frames(image_key("wrist"), ep, ts[[0, -1]])
            assert abs(float(img[1].mean()) - float(f.rgb(e, n - 1, "wrist").mean())) < 4
        return [ep.index for ep in r.episodes]


def kill_many_times(root: Path, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    reported: set[int] = set()
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, str(CHILD), str(root)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        # Kill at a random moment after the writer is open: mid-frame, mid-encode or mid-save.
        first = child.stdout.readline()
        time.sleep(rng.uniform(0.0, 1.5))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        out = first + out
        reported |= {int(line.split()[1]) for line in out.splitlines() if line.startswith("saved ")}
        if not (root / "meta/info.json").is_file():
            assert not reported
            continue
        # Loads as it is, without any repair, with every reported episode intact.
        present = check_episodes_intact(root)
        assert present == list(range(len(present)))
        assert reported <= set(present), (reported, present)
    assert len(reported) >= 2, "the writer never got to save: kill times are too short"
    writer, report = DatasetWriter.open(root)
    writer.close()
    assert DatasetWriter.open(root)[1].clean    # recovery is complete the first time
    summary = validate(root)
    assert summary.episodes >= len(reported)
    check_episodes_intact(root)


def test_sigkill_at_random_points_loses_only_the_open_episode(tmp_path):
    kill_many_times(tmp_path / "ds", kills=10, seed=1)


@pytest.mark.slow
def test_sigkill_many_more_times(tmp_path):
    kill_many_times(tmp_path / "ds", kills=50, seed=2)


def test_reopen_reports_and_cleans_leftovers(tmp_path):
    root = f.make_dataset(tmp_path / "ds", episodes=2)
    # Simulate a writer killed after writing episode 2's data and episode row, before info.json.
    with DatasetWriter.open(root)[0] as w:
        f.write_episode(w, 2)
    info = (root / "meta/info.json").read_text()
    import json
    d = json.loads(info)
    d["total_episodes"], d["total_frames"] = 2, f.episode_length(0) + f.episode_length(1)
    (root / "meta/info.json").write_text(json.dumps(d))
    (root / "videos/observation.images.front/chunk-000/.tmp-file-009.mp4.x.mp4").write_bytes(b"partial")
    assert [ep.index for ep in DatasetMeta.load(root).episodes] == [0, 1]
    check_episodes_intact(root)
    writer, report = DatasetWriter.open(root)
    assert not report.clean
    assert report.dropped_episode_rows == [2]
    assert any(p.name.startswith(".tmp-") for p in report.removed_files)
    assert "discarded" in report.summary()
    with writer:
        f.write_episode(writer, 2)
    validate(root)
    assert check_episodes_intact(root) == [0, 1, 2]
