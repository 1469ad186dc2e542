"""Every malformed dataset ends in one DatasetError naming the file and the field, never a raw
KeyError or pyarrow traceback; the validator CLI prints it on one line and exits non-zero."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from rlbench_sms.data import validate as validate_cli
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.validate import validate
from rlbench_sms.data.video import VideoEncoder, VideoEncoderConfig

FRONT = "observation.images.front"
FRONT_VIDEO = f"videos/{FRONT}/chunk-000/file-000.mp4"
DATA = "data/chunk-000/file-000.parquet"


@pytest.fixture
def ds(tiny_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    return root


def edit_info(root, change):
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))


def expect_error(root, *fragments):
    with pytest.raises(DatasetError) as e:
        validate(root)
    msg = str(e.value)
    assert "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg
    assert validate_cli.main([str(root), "--quiet"]) == 1
    return msg


def test_missing_folder(tmp_path):
    expect_error(tmp_path / "nope", "nope", "not found")


def test_no_info_json(ds):
    (ds / "meta/info.json").unlink()
    expect_error(ds, "meta/info.json", "not found")


def test_info_json_not_json(ds):
    (ds / "meta/info.json").write_text("{ not json")
    expect_error(ds, "meta/info.json", "JSON")


def test_unknown_codebase_version(ds):
    edit_info(ds, lambda i: i.update(codebase_version="v9.9"))
    expect_error(ds, "info.json", "codebase_version", "v9.9")


def test_required_key_missing(ds):
    edit_info(ds, lambda i: i.pop("fps"))
    expect_error(ds, "info.json", "fps")


def test_truncated_parquet(ds):
    path = ds / DATA
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(ds, DATA, "parquet")


def test_truncated_episode_metadata(ds):
    path = ds / "meta/episodes/chunk-000/file-000.parquet"
    path.write_bytes(path.read_bytes()[:100])
    expect_error(ds, "meta/episodes/chunk-000/file-000.parquet")


def test_missing_video(ds):
    (ds / FRONT_VIDEO).unlink()
    expect_error(ds, FRONT_VIDEO)


def test_truncated_video(ds):
    path = ds / FRONT_VIDEO
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    expect_error(ds, FRONT_VIDEO)


def test_short_video(ds):
    path = ds / FRONT_VIDEO
    path.unlink()
    with VideoEncoder(path, 10, VideoEncoderConfig()) as enc:
        for _ in range(5):
            enc.add(np.zeros((24, 32, 3), np.uint8))
    expect_error(ds, FRONT_VIDEO, FRONT, "video frames")


def test_shape_mismatch(ds):
    edit_info(ds, lambda i: i["features"]["observation.state"].update(shape=[7]))
    expect_error(ds, DATA, "observation.state", "shape")


def test_video_size_mismatch(ds):
    edit_info(ds, lambda i: i["features"][FRONT].update(shape=[48, 64, 3]))
    expect_error(ds, FRONT_VIDEO, FRONT, "32x24")


def test_feature_in_info_missing_from_parquet(ds):
    edit_info(ds, lambda i: i["features"].update({"observation.extra": {"dtype": "float32", "shape": [2]}}))
    expect_error(ds, DATA, "observation.extra")


def test_unknown_dtype(ds):
    edit_info(ds, lambda i: i["features"]["observation.state"].update(dtype="complex64"))
    expect_error(ds, "info.json", "observation.state", "complex64")


def test_malformed_feature_entry(ds):
    edit_info(ds, lambda i: i["features"].update({"observation.state": {"names": []}}))
    expect_error(ds, "info.json", "features.observation.state")


def test_episode_count_mismatch(ds):
    edit_info(ds, lambda i: i.update(total_episodes=5))
    expect_error(ds, "info.json", "total_episodes")


def test_rows_missing_for_an_episode(ds):
    path = ds / DATA
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 2), path)
    expect_error(ds, DATA, "episode 2", "rows")


def test_depth_stored_8bit_is_rejected(ds):
    path = ds / "videos/observation.images.front_depth/chunk-000/file-000.mp4"
    total = json.loads((ds / "meta/info.json").read_text())["total_frames"]
    path.unlink()
    with VideoEncoder(path, 10, VideoEncoderConfig(vcodec="libx264", crf=23, preset="ultrafast")) as enc:
        for _ in range(total):
            enc.add(np.zeros((24, 32, 3), np.uint8))
    edit_info(ds, lambda i: i["features"]["observation.images.front_depth"].update(shape=[24, 32, 1]))
    expect_error(ds, "front_depth", "16-bit")


def test_unknown_feature_requested(tiny_dataset):
    with DatasetReader(tiny_dataset) as r, pytest.raises(DatasetError, match="observation.nope.*not in dataset"):
        r.load_columns(["observation.nope"])


def test_timestamp_outside_tolerance(tiny_dataset):
    with DatasetReader(tiny_dataset) as r, pytest.raises(DatasetError, match="timestamp"):
        r.frames(FRONT, r.episodes[0], [0.05])


def test_cli_prints_summary(tiny_dataset, capsys):
    assert validate_cli.main([str(tiny_dataset)]) == 0
    out = capsys.readouterr().out
    assert "3 episodes" in out and "valid" in out and "observation.images.front_depth" in out
