"""FrameDataset / FrameDataModule: delta-timestamp windows, padding, dtypes, laziness, determinism."""

import numpy as np
import pytest
import torch

import dataset_factory as f
from rlbench_sms.data import reader as reader_module
from rlbench_sms.data.convert import ModelInputError, to_model_input
from rlbench_sms.data.datamodule import FrameDataModule, FrameDataset, modality_keys, split_episodes
from rlbench_sms.data.errors import DatasetError
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.features import ACTION, FORCE, STATE, depth_key, image_key

ALL = "rgb+depth+force"


def keys(root, modality=ALL):
    return modality_keys(DatasetMeta.load(root), modality)


def test_modality_keys(tiny_dataset):
    assert keys(tiny_dataset, "rgb") == [STATE, image_key("front"), image_key("wrist")]
    assert keys(tiny_dataset, ALL) == [STATE, image_key("front"), image_key("wrist"),
                                      depth_key("front"), FORCE]
    with pytest.raises(DatasetError, match="tip"):
        keys(tiny_dataset, "rgb+tip")
    with pytest.raises(ValueError, match="sonar"):
        keys(tiny_dataset, "rgb+sonar")


def test_action_chunk_is_clamped_and_padded_at_episode_end(tiny_dataset):
    ds = FrameDataset(tiny_dataset, keys(tiny_dataset, "rgb"), chunk_size=4)
    n0 = f.episode_length(0)
    item = ds[n0 - 2]                       # second-to-last frame of episode 0
    np.testing.assert_array_equal(item[ACTION][0].numpy(), f.action(0, n0 - 2))
    np.testing.assert_array_equal(item[ACTION][1].numpy(), f.action(0, n0 - 1))
    np.testing.assert_array_equal(item[ACTION][3].numpy(), f.action(0, n0 - 1))   # repeated
    assert item["action_is_pad"].tolist() == [False, False, True, True]
    first = ds[n0]                          # first frame of episode 1: never sees episode 0
    np.testing.assert_array_equal(first[ACTION][0].numpy(), f.action(1, 0))
    assert not first["action_is_pad"].any()
    assert first["task"] == f.task(1) and int(first["episode_index"]) == 1


def test_force_window_is_clamped_at_episode_start(tiny_dataset):
    ds = FrameDataset(tiny_dataset, keys(tiny_dataset, ALL), chunk_size=2, force_window=3)
    n0 = f.episode_length(0)
    item = ds[n0 + 1]                       # episode 1, frame 1
    assert item[FORCE].shape == (3, 6)
    assert item["observation.force_is_pad"].tolist() == [True, False, False]
    np.testing.assert_array_equal(item[FORCE][0].numpy(), f.force(1, 0))
    np.testing.assert_array_equal(item[FORCE][2].numpy(), f.force(1, 1))


def test_item_dtypes_and_float_conversion(tiny_dataset):
    ds = FrameDataset(tiny_dataset, keys(tiny_dataset, ALL), chunk_size=3)
    item = ds[5]
    assert item[image_key("front")].dtype == torch.uint8 and item[image_key("front")].shape == (3, f.H, f.W)
    assert item[depth_key("front")].dtype == torch.uint16 and item[depth_key("front")].shape == (1, f.H, f.W)
    np.testing.assert_array_equal(item[depth_key("front")][0].numpy(), f.depth(0, 5))
    assert item[STATE].dtype == torch.float32
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    out = to_model_input(batch)
    img, dep = out[image_key("front")], out[depth_key("front")]
    assert img.dtype == torch.float32 and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert dep.dtype == torch.float32
    np.testing.assert_allclose(dep[1, 0].numpy(), f.depth(0, 1) / 1000.0, rtol=1e-6)
    assert float(dep[0, 0, 0, 0]) == 0.0    # invalid stays 0


def test_device_side_conversion_is_the_policys_and_refuses_bad_frames(tiny_dataset):
    # The hook is the shared to_model_input: a frame the policy would refuse is refused here too.
    dm = FrameDataModule(tiny_dataset, keys(tiny_dataset, "rgb"), chunk_size=2, num_workers=0)
    bad = {image_key("front"): torch.zeros(2, 3, f.H, f.W, dtype=torch.int32), STATE: torch.zeros(2, 6)}
    with pytest.raises(ModelInputError, match=r"^observation\.images\.front: int32 image"):
        dm.on_after_batch_transfer(bad, 0)
    mm = {depth_key("front"): torch.full((2, 1, f.H, f.W), 800.0), STATE: torch.zeros(2, 6)}
    with pytest.raises(ModelInputError, match="millimetres as float"):
        dm.on_after_batch_transfer(mm, 0)


def test_rgb_modality_never_opens_depth_or_reads_force(tiny_dataset, monkeypatch):
    opened = []
    real = reader_module.VideoDecoder

    class Spy(real):
        def __init__(self, path, *a, **kw):
            opened.append(str(path))
            super().__init__(path, *a, **kw)

    monkeypatch.setattr(reader_module, "VideoDecoder", Spy)
    ds = FrameDataset(tiny_dataset, keys(tiny_dataset, "rgb"), chunk_size=2)
    for i in range(0, len(ds), 3):
        item = ds[i]
    assert FORCE not in ds.columns and FORCE not in item
    assert depth_key("front") not in item
    assert opened and not any("front_depth" in p for p in opened)


def test_episode_split_is_seeded_and_disjoint():
    tr, va = split_episodes(range(10), 0.2, seed=3)
    assert len(va) == 2 and not set(tr) & set(va) and sorted(tr + va) == list(range(10))
    assert (tr, va) == split_episodes(range(10), 0.2, seed=3)
    assert split_episodes(range(10), 0.2, seed=4) != (tr, va)
    assert split_episodes([0, 1], 0.1, seed=0)[1] != []        # at least one val episode
    assert split_episodes([0], 0.5, seed=0) == ([0], [])


def first_batches(root, workers, n=3, seed=0):
    dm = FrameDataModule(root, keys(root, ALL), chunk_size=4, val_fraction=0.34, batch_size=4,
                         num_workers=workers, seed=seed, persistent_workers=False)
    dm.setup()
    out = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i == n:
            break
        out.append(dm.on_after_batch_transfer(batch, 0))
    return dm, out


def test_workers_give_the_same_batches_as_the_main_process(tiny_dataset):
    dm0, b0 = first_batches(tiny_dataset, workers=0)
    dm2, b2 = first_batches(tiny_dataset, workers=2)
    assert dm0.train_episodes == dm2.train_episodes and set(dm0.val_episodes).isdisjoint(dm0.train_episodes)
    for x, y in zip(b0, b2):
        assert torch.equal(x["index"], y["index"])
        assert torch.equal(x[depth_key("front")], y[depth_key("front")])
        assert torch.equal(x[image_key("wrist")], y[image_key("wrist")])
        assert torch.equal(x[ACTION], y[ACTION])
    _, other = first_batches(tiny_dataset, workers=0, seed=1)
    assert not all(torch.equal(x["index"], y["index"]) for x, y in zip(b0, other))


def test_val_loader_covers_val_episodes_in_order(tiny_dataset):
    dm = FrameDataModule(tiny_dataset, keys(tiny_dataset, "rgb"), chunk_size=2, val_fraction=0.34,
                         batch_size=100, num_workers=0)
    dm.setup()
    (batch,) = list(dm.val_dataloader())
    expected = sum(f.episode_length(e) for e in dm.val_episodes)
    assert len(batch["index"]) == expected
    assert sorted(set(batch["episode_index"].tolist())) == dm.val_episodes
