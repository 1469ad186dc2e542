"""Datasets written by LeRobot itself (0.4.4 -> v3.0, 0.3.3 -> v2.1; see fixtures/README.md) read
through our reader, validator and datamodule with the values LeRobot stored."""

from pathlib import Path

import numpy as np
import pytest

from rlbench_sms.data.datamodule import FrameDataset
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.validate import validate
from rlbench_sms.features import ACTION, FORCE, STATE

FIXTURES = Path(__file__).parent / "fixtures"
LENGTHS = (12, 9, 15)
TASKS = ["pick up the red cube", "put the cube in the box"]
FRONT = "observation.images.front"


def expected_vectors(e: int, f: int) -> dict[str, np.ndarray]:
    c = np.arange(6, dtype=np.float64)
    return {STATE: (e * 100 + f + c / 10).astype(np.float32),
            ACTION: (1000 + e * 100 + f + c / 10).astype(np.float32),
            FORCE: ((c - 2.5) * (f + 1) * 0.25 + e).astype(np.float32)}


def expected_image(e: int, f: int) -> np.ndarray:
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(4 * x + 2 * f) % 256, np.minimum(5 * y, 255),
                    np.full_like(x, (128 + 40 * e) % 256)], axis=-1).astype(np.uint8)
    x0, y0 = (2 + 3 * f) % (w - 12), (4 + 2 * f) % (h - 12)
    img[y0:y0 + 12, x0:x0 + 12] = [(255, 0, 0), (0, 255, 0), (0, 0, 255)][e % 3]
    return img


@pytest.fixture(params=["lerobot_v30_tiny", "lerobot_v21_tiny"])
def fixture(request) -> Path:
    return FIXTURES / request.param


def test_metadata(fixture):
    meta = DatasetMeta.load(fixture)
    assert meta.version == ("v3.0" if "v30" in fixture.name else "v2.1")
    assert meta.fps == 10 and meta.robot_type == "so100_follower"
    assert [ep.length for ep in meta.episodes] == list(LENGTHS)
    assert [(ep.from_index, ep.to_index) for ep in meta.episodes] == [(0, 12), (12, 21), (21, 36)]
    assert meta.tasks == TASKS
    assert [ep.tasks for ep in meta.episodes] == [(TASKS[0],), (TASKS[1],), (TASKS[0],)]
    assert meta.video_keys == [FRONT]
    assert STATE in meta.stats and "mean" in meta.stats[STATE]


def test_values_and_frames(fixture):
    with DatasetReader(fixture) as r:
        cols = r.load_columns([STATE, ACTION, FORCE, "task_index"])
        for e, (ep, start) in enumerate(zip(r.episodes, r.episode_starts)):
            for f in range(ep.length):
                for key, value in expected_vectors(e, f).items():
                    np.testing.assert_array_equal(cols[key][start + f], value)
            frames = r.frames(FRONT, ep, np.arange(ep.length) / 10)
            for f in range(ep.length):
                err = np.abs(frames[f].astype(float) - expected_image(e, f)).mean() / 255
                assert err < 0.05, (e, f, err)


def test_validates(fixture):
    summary = validate(fixture)
    assert summary.episodes == 3 and summary.frames == 36


def test_v21_stats_are_aggregated_from_episodes():
    meta = DatasetMeta.load(FIXTURES / "lerobot_v21_tiny")
    state = np.concatenate([[expected_vectors(e, f)[STATE] for f in range(n)] for e, n in enumerate(LENGTHS)])
    np.testing.assert_allclose(meta.stats[STATE]["mean"], state.mean(0), rtol=1e-5)
    np.testing.assert_array_equal(meta.stats[STATE]["max"], state.max(0))
    assert int(meta.stats[STATE]["count"][0]) == 36


def test_datamodule_items_match_lerobot_semantics(fixture):
    ds = FrameDataset(fixture, [STATE, FRONT], chunk_size=50)
    item = ds[12 + 8]                      # last frame of episode 1
    assert item["action_is_pad"].tolist() == [False] + [True] * 49
    np.testing.assert_array_equal(item[ACTION][-1].numpy(), expected_vectors(1, 8)[ACTION])
    assert item["task"] == TASKS[1]
    assert item[FRONT].shape == (3, 48, 64)
