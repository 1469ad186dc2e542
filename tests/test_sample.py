"""The bundled sample (what `make demo` builds): a valid v3.0 dataset where depth and force carry
information, built atomically."""

import numpy as np
import pytest

from rlbench_sms.data.reader import DatasetReader
from rlbench_sms.data.sample import build_sample, main
from rlbench_sms.data.sample_scene import SceneConfig
from rlbench_sms.data.validate import validate
from rlbench_sms.features import FORCE, depth_key, image_key

SMALL = SceneConfig(height=48, width=64, episode_seconds=1.0)


def test_sample_is_valid_and_informative(tmp_path):
    root = build_sample(tmp_path / "sample", episodes=2, config=SMALL, show_progress=False)
    summary = validate(root)
    assert summary.episodes == 2 and summary.frames == 60
    with DatasetReader(root) as r:
        spec = r.meta.features[depth_key("front")]
        assert spec.info["intrinsics"]["width"] == 64 and spec.info["aligned_to"] == image_key("front")
        force = r.load_columns([FORCE])[FORCE]
        assert np.abs(force).max() > 1.0            # contact shows in the force signal
        ep = r.episodes[0]
        depth = r.frames(depth_key("front"), ep, [0.0, 0.9])
        assert depth.dtype == np.uint16 and (depth > 0).mean() > 0.8
        assert not np.array_equal(depth[0], depth[1])   # the scene moves in depth
        front, wrist = (r.frames(image_key(c), ep, [0.5])[0] for c in ("front", "wrist"))
        assert np.abs(front.astype(int) - wrist.astype(int)).mean() > 10


def test_sample_refuses_to_overwrite_without_flag(tmp_path, capsys):
    root = build_sample(tmp_path / "sample", episodes=1, config=SMALL, show_progress=False)
    with pytest.raises(FileExistsError):
        build_sample(root, episodes=1, config=SMALL, show_progress=False)
    assert main([str(root)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert not (tmp_path / "sample.building").exists()
