"""Statistics: exact against brute force, LeRobot's sampling rules, and lossless serialisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlbench_sms.data.stats import (
    STAT_KEYS,
    aggregate_stats,
    downsample_for_stats,
    flatten_episode_stats,
    image_stats,
    sample_indices,
    stats_from_json,
    stats_to_json,
    unflatten_episode_stats,
    vector_stats,
)


def _episodes(rng: np.random.Generator) -> list[np.ndarray]:
    # Episodes of different lengths and different distributions, so pooling actually matters.
    return [rng.normal(loc=i, scale=1 + i, size=(n, 4)) for i, n in enumerate((17, 50, 3, 120))]


def test_sample_indices_follow_lerobot_rule():
    assert sample_indices(0).size == 0
    for length, expected in ((1, 1), (5, 5), (100, 100), (150, 100), (1000, 177), (10**6, 10_000)):
        idx = sample_indices(length)
        assert idx.size == expected
        assert idx[0] == 0 and idx[-1] == length - 1
        assert np.all(np.diff(idx) >= 0) and idx.dtype == np.int64
    assert np.array_equal(sample_indices(50), np.arange(50))


def test_downsample_for_stats():
    small = np.zeros((240, 299, 3), np.uint8)
    assert downsample_for_stats(small) is small
    assert downsample_for_stats(np.zeros((480, 640, 3), np.uint8)).shape == (120, 160, 3)
    assert downsample_for_stats(np.zeros((720, 1280, 3), np.uint8)).shape == (90, 160, 3)
    assert downsample_for_stats(np.zeros((300, 200), np.uint16)).shape == (150, 100)


def test_vector_stats_exact():
    x = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    s = vector_stats(x)
    assert tuple(s) == STAT_KEYS
    for k in STAT_KEYS:
        assert s[k].shape == ((1,) if k == "count" else (6,))
        assert s[k].dtype == (np.int64 if k == "count" else np.float32)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(s["mean"], x64.mean(0), atol=1e-6)
    np.testing.assert_allclose(s["std"], x64.std(0), atol=1e-6)
    np.testing.assert_array_equal(s["min"], x.min(0))
    for name, q in (("q01", 0.01), ("q50", 0.5), ("q99", 0.99)):   # LeRobot's definition: inverse CDF
        np.testing.assert_allclose(s[name], np.sort(x64, 0)[int(np.ceil(q * len(x))) - 1], atol=1e-6)
    assert s["count"][0] == 200


def test_vector_stats_scalar_and_bool():
    s = vector_stats(np.array([True, False, True, True]))
    assert s["mean"].shape == (1,) and s["mean"][0] == pytest.approx(0.75)
    assert s["max"][0] == 1.0 and s["min"][0] == 0.0


def test_aggregate_matches_brute_force():
    eps = _episodes(np.random.default_rng(1))
    agg = aggregate_stats([{"x": vector_stats(e)} for e in eps])["x"]
    allx = np.concatenate(eps)
    np.testing.assert_allclose(agg["mean"], allx.mean(0), atol=1e-6)
    np.testing.assert_allclose(agg["std"], allx.std(0), atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(agg["min"], allx.min(0), atol=1e-6)
    np.testing.assert_allclose(agg["max"], allx.max(0), atol=1e-6)
    assert agg["count"].tolist() == [len(allx)]
    qs, names = [0.01, 0.1, 0.5, 0.9, 0.99], ("q01", "q10", "q50", "q90", "q99")
    per_ep = np.stack([np.quantile(e, qs, axis=0, method="inverted_cdf") for e in eps])  # (E, 5, 4)
    counts = np.array([len(e) for e in eps], float)
    # LeRobot's rule (the default): the count-weighted mean of the episode quantiles.
    for i, q in enumerate(names):
        np.testing.assert_allclose(agg[q], (counts[:, None] * per_ep[:, i]).sum(0) / counts.sum(), atol=1e-5)
    # The envelope: lowest lower quantiles, highest upper quantiles; other stats unchanged.
    env = aggregate_stats([{"x": vector_stats(e)} for e in eps], quantiles="envelope")["x"]
    for i, q in enumerate(names):
        np.testing.assert_allclose(env[q], per_ep[:, i].min(0) if i < 3 else per_ep[:, i].max(0), atol=1e-6)
    for k in ("min", "max", "mean", "std", "count"):
        np.testing.assert_array_equal(env[k], agg[k])
    assert np.all(env["q01"] <= agg["q01"]) and np.all(env["q99"] >= agg["q99"])
    with pytest.raises(ValueError):
        aggregate_stats([], quantiles="median")


def test_aggregate_one_episode_is_identity():
    s = {"a": vector_stats(np.random.default_rng(2).normal(size=(31, 3))),
         "img": image_stats(np.random.default_rng(3).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), False)}
    agg = aggregate_stats([s])
    for feat in s:
        for k in STAT_KEYS:
            np.testing.assert_array_equal(agg[feat][k], s[feat][k])
            assert agg[feat][k].dtype == s[feat][k].dtype


def test_aggregate_feature_missing_in_some_episodes_and_v21_stats():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(10, 2)), rng.normal(size=(20, 2))
    v21 = {k: v for k, v in vector_stats(b).items() if k in ("min", "max", "mean", "std", "count")}
    agg = aggregate_stats([{"x": vector_stats(a), "only": vector_stats(a)}, {"x": v21}])
    assert agg["x"]["count"][0] == 30 and "q01" not in agg["x"]
    np.testing.assert_allclose(agg["x"]["mean"], np.concatenate([a, b]).mean(0), atol=1e-6)
    assert agg["only"]["count"][0] == 10
    assert aggregate_stats([]) == {}


def test_image_stats_rgb_and_depth():
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (6, 12, 16, 3), dtype=np.uint8)
    s = image_stats(rgb, is_depth=False)
    for k in STAT_KEYS:
        assert s[k].shape == ((1,) if k == "count" else (3, 1, 1))
    assert s["count"][0] == 6
    assert 0.0 <= s["min"].min() and s["max"].max() <= 1.0
    np.testing.assert_allclose(s["mean"][:, 0, 0], rgb.reshape(-1, 3).mean(0) / 255.0, atol=1e-6)

    depth = rng.integers(300, 1500, (5, 10, 10), dtype=np.uint16)
    d = image_stats(depth, is_depth=True)
    assert d["mean"].shape == (1, 1, 1)
    assert d["min"][0, 0, 0] >= 300 and d["max"][0, 0, 0] < 1500  # millimetres, not scaled
    np.testing.assert_allclose(d["mean"].item(), depth.astype(np.float64).mean(), rtol=1e-6)
    d1 = image_stats(depth[..., None], is_depth=True)
    for k in STAT_KEYS:
        np.testing.assert_array_equal(d[k], d1[k])


def test_image_stats_downsamples_large_frames():
    frames = np.random.default_rng(7).integers(0, 256, (2, 300, 400, 3), dtype=np.uint8)
    small = np.stack([downsample_for_stats(f) for f in frames])
    assert small.shape == (2, 150, 200, 3)
    big, ref = image_stats(frames, is_depth=False), image_stats(small, is_depth=False)
    for k in STAT_KEYS:
        np.testing.assert_array_equal(big[k], ref[k])


def _example_stats() -> dict:
    rng = np.random.default_rng(6)
    return {
        "observation.state": vector_stats(rng.normal(size=(40, 6))),
        "observation.tip.valid": vector_stats(rng.random(40) > 0.5),
        "observation.images.front": image_stats(rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), False),
        "observation.images.front_depth": image_stats(rng.integers(0, 4000, (3, 8, 8), dtype=np.uint16), True),
    }


def _assert_stats_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for feat in a:
        assert a[feat].keys() == b[feat].keys()
        for k in a[feat]:
            assert a[feat][k].shape == b[feat][k].shape, (feat, k)
            assert a[feat][k].dtype == b[feat][k].dtype, (feat, k)
            np.testing.assert_array_equal(a[feat][k], b[feat][k])


def test_json_round_trip_is_exact():
    stats = _example_stats()
    text = json.dumps(stats_to_json(stats))
    _assert_stats_equal(stats_from_json(json.loads(text)), stats)


def test_flatten_round_trip_through_parquet(tmp_path):
    episodes = [_example_stats(), _example_stats()]
    flat = flatten_episode_stats(episodes[0])
    assert "stats/observation.images.front/mean" in flat
    assert np.asarray(flat["stats/observation.images.front/mean"]).shape == (3, 1, 1)
    _assert_stats_equal(unflatten_episode_stats({"episode_index": 0, "length": 40, **flat}), episodes[0])

    rows = [{"episode_index": i, **flatten_episode_stats(s)} for i, s in enumerate(episodes)]
    path = tmp_path / "episodes.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist()):
        _assert_stats_equal(unflatten_episode_stats(row), episodes[i])
    # pandas hands nested list cells back as object arrays of arrays.
    for i, (_, row) in enumerate(table.to_pandas().iterrows()):
        _assert_stats_equal(unflatten_episode_stats(row.to_dict()), episodes[i])


FIXTURE = Path(__file__).parent / "fixtures" / "lerobot_v30_tiny"


@pytest.mark.skipif(not FIXTURE.exists(), reason="LeRobot-written fixture not present")
def test_matches_stats_written_by_lerobot():
    """Episode stats columns written by LeRobot 0.4.4 unflatten with their shapes, and aggregating
    them reproduces its meta/stats.json; our episode stats of its data match its episode stats."""
    rows = pq.read_table(FIXTURE / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    episodes = [unflatten_episode_stats(row) for row in rows]
    assert episodes[0]["observation.images.front"]["mean"].shape == (3, 1, 1)
    assert episodes[0]["observation.state"]["count"].tolist() == [rows[0]["length"]]
    reference = stats_from_json(json.loads((FIXTURE / "meta/stats.json").read_text()))
    ours = aggregate_stats(episodes)
    assert ours.keys() == reference.keys()
    for feat, ref in reference.items():
        assert ours[feat].keys() == ref.keys()
        for k in ref:
            assert ours[feat][k].shape == ref[k].shape, (feat, k)
            np.testing.assert_allclose(ours[feat][k], ref[k], rtol=1e-6, atol=1e-6, err_msg=f"{feat}/{k}")

    data = pq.read_table(FIXTURE / "data/chunk-000/file-000.parquet")
    ep_index = np.asarray(data["episode_index"])
    for feat in ("observation.state", "action", "observation.force"):
        values = np.asarray(data[feat].to_pylist(), dtype=np.float32)
        for e, theirs in enumerate(episodes):
            mine, ref = vector_stats(values[ep_index == e]), theirs[feat]
            for k in ("min", "max", "mean", "count"):
                np.testing.assert_allclose(mine[k], ref[k], rtol=1e-6, err_msg=f"{feat}/{k}")
            # LeRobot takes std as sqrt(E[x²] - E[x]²) in float32, which loses digits when the
            # values sit far from 0 (action ≈ 1000 here: 1 % off); ours is exact.
            np.testing.assert_allclose(mine["std"], ref["std"], rtol=2e-2)
            bin_width = (ref["max"] - ref["min"]) / 5000   # LeRobot's histogram resolution
            for q in ("q01", "q10", "q50", "q90", "q99"):
                assert np.all(np.abs(mine[q] - ref[q]) <= 2 * bin_width + 1e-6), (feat, e, q)
