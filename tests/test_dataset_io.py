"""Write -> read round trips of the v3.0 writer and the reader, and the on-disk layout LeRobot expects."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dataset_factory as f
from rlbench_sms.data.depth_codec import dequantize_depth, quantize_depth
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.validate import validate
from rlbench_sms.data.video import DepthEncoderConfig, DepthQuantization
from rlbench_sms.data.writer import DatasetWriter
from rlbench_sms.features import ACTION, FORCE, STATE, depth_key, image_key


def test_vectors_round_trip_exactly(tiny_dataset):
    with DatasetReader(tiny_dataset) as r:
        cols = r.load_columns([STATE, ACTION, FORCE, "timestamp", "frame_index", "index", "task_index"])
        for e, (ep, start) in enumerate(zip(r.episodes, r.episode_starts)):
            n = f.episode_length(e)
            assert ep.length == n
            for i in range(n):
                np.testing.assert_array_equal(cols[STATE][start + i], f.state(e, i))
                np.testing.assert_array_equal(cols[ACTION][start + i], f.action(e, i))
                np.testing.assert_array_equal(cols[FORCE][start + i], f.force(e, i))
            np.testing.assert_allclose(cols["timestamp"][start:start + n], np.arange(n) / f.FPS, atol=1e-6)
            assert r.meta.tasks[cols["task_index"][start]] == f.task(e)
        assert cols[STATE].dtype == np.float32 and cols[STATE].shape == (r.num_frames, 6)
        np.testing.assert_array_equal(cols["index"], np.arange(r.num_frames))


def test_depth_is_bit_exact_and_rgb_close(tiny_dataset):
    with DatasetReader(tiny_dataset) as r:
        for e, ep in enumerate(r.episodes):
            n = ep.length
            ts = np.arange(n) / f.FPS
            d = r.frames(depth_key("front"), ep, ts)
            assert d.dtype == np.uint16 and d.shape == (n, f.H, f.W)
            for i in range(n):
                np.testing.assert_array_equal(d[i], f.depth(e, i))
            for cam in ("front", "wrist"):
                img = r.frames(image_key(cam), ep, ts[::-1])[::-1]   # random order == sequential
                assert img.dtype == np.uint8 and img.shape == (n, f.H, f.W, 3)
                for i in range(n):
                    err = np.abs(img[i].astype(float) - f.rgb(e, i, cam).astype(float)).mean()
                    assert err < 4.0, (cam, e, i, err)


def test_layout_matches_lerobot_v30(tiny_dataset):
    info = json.loads((tiny_dataset / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(f.episode_length(e) for e in range(3))
    assert info["total_tasks"] == 2 and info["splits"] == {"train": "0:3"}
    for key in ("chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "data_path", "video_path"):
        assert key in info
    front = info["features"]["observation.images.front"]
    assert front["dtype"] == "video" and front["shape"] == [f.H, f.W, 3]
    assert front["names"] == ["height", "width", "channels"]
    assert front["info"]["video.codec"] == "av1" and front["info"]["video.pix_fmt"] == "yuv420p"
    assert front["info"]["video.g"] == 2 and front["info"]["video.crf"] == 30
    dfeat = info["features"]["observation.images.front_depth"]
    assert dfeat["shape"] == [f.H, f.W, 1]
    assert dfeat["info"]["is_depth_map"] is True and dfeat["info"]["video.pix_fmt"] == "gray16le"
    assert dfeat["info"]["video.codec"] == "ffv1"
    assert dfeat["info"]["intrinsics"]["fx"] == 30.0 and dfeat["info"]["depth_scale_m"] == 0.001
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert k in info["features"]
    # Data, videos and metadata at LeRobot's paths.
    assert (tiny_dataset / "data/chunk-000/file-000.parquet").is_file()
    for key in ("observation.images.front", "observation.images.wrist", "observation.images.front_depth"):
        assert (tiny_dataset / f"videos/{key}/chunk-000/file-000.mp4").is_file()
    eps = pq.read_table(tiny_dataset / "meta/episodes/chunk-000/file-000.parquet").to_pandas()
    for col in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                "dataset_from_index", "dataset_to_index", "meta/episodes/chunk_index",
                "videos/observation.images.front/from_timestamp", "videos/observation.images.front/to_timestamp",
                "stats/observation.state/q01", "stats/observation.state/q99", "stats/observation.images.front/mean"):
        assert col in eps.columns, col
    assert list(eps["videos/observation.images.front/from_timestamp"]) == pytest.approx(
        [0.0, f.episode_length(0) / f.FPS, (f.episode_length(0) + f.episode_length(1)) / f.FPS])
    tasks = pd.read_parquet(tiny_dataset / "meta/tasks.parquet")
    assert tasks.index.name == "task" and list(tasks["task_index"]) == [0, 1]
    assert tasks.loc["pick the cube", "task_index"] == 0
    stats = json.loads((tiny_dataset / "meta/stats.json").read_text())
    assert set(stats["observation.state"]) >= {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    assert stats["observation.state"]["count"] == [info["total_frames"]]
    # Data parquet types as HF datasets writes them: fixed-size float32 lists, scalar int64.
    schema = pq.read_schema(tiny_dataset / "data/chunk-000/file-000.parquet")
    state_type = schema.field("observation.state").type
    assert pa.types.is_fixed_size_list(state_type) and state_type.list_size == 6
    assert state_type.value_type == pa.float32()
    assert str(schema.field("index").type) == "int64"
    assert "observation.images.front" not in schema.names


def test_aggregated_stats_match_data(tiny_dataset):
    meta = DatasetMeta.load(tiny_dataset)
    with DatasetReader(tiny_dataset) as r:
        s = r.load_columns([STATE])[STATE]
    np.testing.assert_allclose(meta.stats[STATE]["mean"], s.mean(0), rtol=1e-5)
    np.testing.assert_allclose(meta.stats[STATE]["std"], s.std(0), rtol=1e-4)
    np.testing.assert_array_equal(meta.stats[STATE]["min"], s.min(0))
    dmean = meta.stats[depth_key("front")]["mean"]
    assert dmean.shape == (1, 1, 1) and 400 < float(dmean.ravel()[0]) < 2000   # millimetres, not /255


def test_validate_accepts_what_we_write(tiny_dataset):
    summary = validate(tiny_dataset)
    assert summary.episodes == 3 and summary.version == "v3.0"
    assert "ffv1" in summary.features[depth_key("front")]


def test_resume_appends_to_new_files_and_keeps_old_episodes(tmp_path):
    root = f.make_dataset(tmp_path / "ds", episodes=2)
    before = (root / "data/chunk-000/file-000.parquet").read_bytes()
    writer, report = DatasetWriter.open(root)
    assert report.clean
    with writer:
        f.write_episode(writer, 2)
    assert (root / "data/chunk-000/file-000.parquet").read_bytes() == before
    assert (root / "data/chunk-000/file-001.parquet").is_file()
    assert (root / "videos/observation.images.front/chunk-000/file-001.mp4").is_file()
    validate(root)
    with DatasetReader(root) as r:
        assert [ep.index for ep in r.episodes] == [0, 1, 2]
        d = r.frames(depth_key("front"), r.episodes[2], [0.0, 0.1])
        np.testing.assert_array_equal(d[1], f.depth(2, 1))


def test_small_file_limits_roll_over_to_new_files(tmp_path):
    root = tmp_path / "ds"
    with DatasetWriter.create(root, f.FPS, f.features(), data_files_size_in_mb=0,
                              video_files_size_in_mb=0, chunks_size=2) as w:
        for e in range(3):
            f.write_episode(w, e)
    assert (root / "data/chunk-001/file-000.parquet").is_file()   # 3rd file -> next chunk dir
    validate(root)
    with DatasetReader(root) as r:
        d = r.frames(depth_key("front"), r.episodes[2], [0.2])
        np.testing.assert_array_equal(d[0], f.depth(2, 2))


def test_lerobot_log_quantised_hevc_depth_is_read_as_millimetres(tmp_path):
    root = f.make_dataset(tmp_path / "ds", episodes=1,
                          depth_config=DepthEncoderConfig(vcodec="hevc", pix_fmt="gray12le"))
    meta = DatasetMeta.load(root)
    q = DepthQuantization.from_feature_info(dict(meta.features[depth_key("front")].info))
    assert q is not None and q.use_log
    validate(root)
    with DatasetReader(root) as r:
        d = r.frames(depth_key("front"), r.episodes[0], [0.0, 0.3])
    for k, i in enumerate((0, 3)):
        np.testing.assert_array_equal(d[k], dequantize_depth(quantize_depth(f.depth(0, i), q), q))


def test_bad_frames_change_nothing(tmp_path):
    from rlbench_sms.data.errors import DatasetError

    root = tmp_path / "ds"
    with DatasetWriter.create(root, f.FPS, f.features()) as w:
        w.add_frame(f.frame(0, 0), "t")
        bad = f.frame(0, 1)
        bad[STATE] = np.zeros(5, np.float32)
        with pytest.raises(DatasetError, match="observation.state.*shape"):
            w.add_frame(bad, "t")
        bad = f.frame(0, 1)
        bad[depth_key("front")] = bad[depth_key("front")].astype(np.float32)
        with pytest.raises(DatasetError, match="front_depth.*uint16"):
            w.add_frame(bad, "t")
        with pytest.raises(DatasetError, match="unknown_key.*not a feature"):
            w.add_frame({**f.frame(0, 1), "unknown_key": 1}, "t")
        assert w.episode_length == 1
        w.add_frame(f.frame(0, 1), "t")
        w.save_episode()
    validate(root)


def test_a_failed_save_discards_the_episode_and_keeps_the_dataset_valid(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    with DatasetWriter.create(root, f.FPS, f.features()) as w:
        f.write_episode(w, 0)
        real = DatasetWriter._append_video

        def fail_once(self, key, tmp):
            monkeypatch.setattr(DatasetWriter, "_append_video", real)
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(DatasetWriter, "_append_video", fail_once)
        for i in range(f.episode_length(1)):
            w.add_frame(f.frame(1, i), "a task never committed")
        with pytest.raises(OSError, match="No space"):
            w.save_episode()
        assert w.episode_length == 0 and w.num_episodes == 1
        f.write_episode(w, 1)              # the same index, now saved for real
    validate(root)
    meta = DatasetMeta.load(root)
    assert meta.tasks == [f.task(0), f.task(1)]
    with DatasetReader(root) as r:
        np.testing.assert_array_equal(r.load_columns([STATE])[STATE][-1], f.state(1, f.episode_length(1) - 1))
        np.testing.assert_array_equal(r.frames(depth_key("front"), r.episodes[1], [0.1])[0], f.depth(1, 1))
    first = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert set(first["episode_index"].to_pylist()) == {0}   # the failed rows were trimmed at once
    assert DatasetWriter.open(root)[1].clean
