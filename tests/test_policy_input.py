"""Inference input is never silently wrong: stored dtypes are converted by the one shared function.

A raw FrameDataset item (uint8 images, uint16 depth mm, unbatched) must give exactly the actions of
the same item converted (by hand, or by the DataModule's device-side hook) for plain, depth/force
token-branch and depth-as-image policies loaded with ``from_pretrained``; a wrongly typed frame
must be refused with one line naming the key.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from rlbench_sms.data.convert import MAX_DEPTH_M, ModelInputError, to_model_input
from rlbench_sms.data.datamodule import FrameDataModule, FrameDataset, modality_keys
from rlbench_sms.data.metadata import DatasetMeta
from rlbench_sms.features import ACTION, FORCE, STATE, depth_key, image_key
from rlbench_sms.policy.branches import branch_input_features, resolve_branches
from rlbench_sms.policy.smolvla import SmolVLAConfig, SmolVLAPolicy
from rlbench_sms.training.build import dataset_policy_features

CHUNK, WINDOW = 4, 3
FRONT, WRIST, FRONT_DEPTH = image_key("front"), image_key("wrist"), depth_key("front")
TOKEN_SPEC = {"depth": {"type": "cnn", "input_size": [16, 16], "channels": [8, 16], "grid": [1, 2]},
              "force": {"type": "mlp", "window": WINDOW, "hidden_dim": 32, "n_tokens": 1}}
POLICIES = {
    "rgb": ("rgb", None),
    "rgb+depth+force": ("rgb+depth+force", TOKEN_SPEC),
    "rgb+depth_as_image": ("rgb+depth", {"depth": {"type": "as_image"}}),
}


def hand_converted(item: dict) -> dict:
    """The documented conversion written out: uint8 / 255, uint16 mm * 1e-3 = metres."""
    out = dict(item)
    for key in (FRONT, WRIST):
        out[key] = item[key].to(torch.float32) / 255.0
    if FRONT_DEPTH in item:
        out[FRONT_DEPTH] = item[FRONT_DEPTH].to(torch.float32) * 1e-3
    return out


@pytest.fixture(scope="module")
def meta(small_sample):
    return DatasetMeta.load(small_sample)


@pytest.fixture(scope="module")
def dataset(small_sample, meta):
    return FrameDataset(small_sample, modality_keys(meta, "rgb+depth+force"), chunk_size=CHUNK,
                        force_window=WINDOW)


@pytest.fixture(scope="module", params=list(POLICIES))
def policy(request, meta, tiny_vlm_dir, tmp_path_factory):
    """A tiny random policy over the sample's features, saved and loaded back as an export is."""
    modality, spec = POLICIES[request.param]
    keys = modality_keys(meta, modality)
    inputs, outputs = dataset_policy_features(meta, keys)
    if spec is not None:
        inputs.update(branch_input_features(spec, meta.features))
    config = SmolVLAConfig(input_features=inputs, output_features=outputs, vlm_model_name=str(tiny_vlm_dir),
                           num_vlm_layers=4, chunk_size=CHUNK, n_action_steps=CHUNK, num_steps=2, device="cpu")
    torch.manual_seed(0)
    fresh = SmolVLAPolicy(config, dataset_stats=meta.stats,
                          branches=resolve_branches(spec, meta.features) if spec else None)
    directory = fresh.save_pretrained(tmp_path_factory.mktemp("policy") / request.param)
    return SmolVLAPolicy.from_pretrained(directory)


def observation(policy: SmolVLAPolicy, item: dict) -> dict:
    """The item's keys the policy reads (as an evaluation loop would pass them), without actions."""
    wanted = set(policy.config.input_features) | {"task", "observation.force_is_pad"}
    return {k: v for k, v in item.items() if k in wanted}


def noise(policy: SmolVLAPolicy, batch_size: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return torch.randn(batch_size, policy.config.chunk_size, policy.config.max_action_dim, generator=g)


# ---------------------------------------------------------------------- same actions, raw or converted
def test_raw_item_gives_the_actions_of_the_converted_item(policy, dataset):
    item = dataset[len(dataset) // 2]
    assert item[FRONT].dtype == torch.uint8 and item[FRONT_DEPTH].dtype == torch.uint16
    raw = observation(policy, item)
    by_hand = observation(policy, hand_converted(item))
    expected = policy.predict_action_chunk(by_hand, noise=noise(policy))
    actions = policy.predict_action_chunk(raw, noise=noise(policy))
    assert actions.shape == (1, CHUNK, 6)
    assert torch.equal(actions, expected)
    assert raw[FRONT].dtype == torch.uint8          # the caller's observation is left as it was
    policy.reset()
    assert torch.equal(policy.select_action(raw, noise=noise(policy)), expected[:, 0])


def test_raw_batch_gives_the_actions_and_loss_of_the_training_path(policy, small_sample, dataset):
    # The training path: collated uint8/uint16 batch -> the DataModule's device-side hook -> policy.
    dm = FrameDataModule(small_sample, dataset.keys, chunk_size=CHUNK, force_window=WINDOW, num_workers=0)
    batch = default_collate([dataset[0], dataset[len(dataset) - 1]])
    trained_on = dm.on_after_batch_transfer(batch, 0)
    assert trained_on[FRONT].dtype == torch.float32 and trained_on[FRONT_DEPTH].dtype == torch.float32
    expected = policy.predict_action_chunk(observation(policy, trained_on), noise=noise(policy, 2))
    assert torch.equal(policy.predict_action_chunk(observation(policy, batch), noise=noise(policy, 2)), expected)
    g = torch.Generator().manual_seed(3)
    flow_noise, time = noise(policy, 2), torch.rand(2, generator=g)
    loss_raw, _ = policy.compute_loss(batch, noise=flow_noise, time=time)
    loss_converted, _ = policy.compute_loss(trained_on, noise=flow_noise, time=time)
    assert torch.equal(loss_raw, loss_converted)


# ----------------------------------------------------------------------------- refused in one line
def _refused(policy: SmolVLAPolicy, obs: dict, key: str, words: str) -> None:
    with pytest.raises(ModelInputError) as info:
        policy.predict_action_chunk(obs, noise=noise(policy))
    message = str(info.value)
    assert "\n" not in message and message.startswith(key) and words in message, message


def test_wrongly_typed_frames_are_refused_with_one_line(policy, dataset):
    raw = observation(policy, dataset[3])
    _refused(policy, {**raw, FRONT: raw[FRONT].to(torch.int32)}, FRONT, "int32 image")
    _refused(policy, {**raw, FRONT: raw[FRONT].float()}, FRONT, "not in [0, 1]")           # 0-255 as float
    _refused(policy, {**raw, FRONT: raw[FRONT].permute(1, 2, 0)}, FRONT, "channels last")
    if FRONT_DEPTH in raw:
        _refused(policy, {**raw, FRONT_DEPTH: raw[FRONT_DEPTH].float()}, FRONT_DEPTH, "millimetres as float")
        _refused(policy, {**raw, FRONT_DEPTH: raw[FRONT_DEPTH].to(torch.int32)}, FRONT_DEPTH, "int32 depth")


# ------------------------------------------------------------------------------ the function itself
def test_conversion_values_and_idempotence():
    rgb = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).repeat(3, 2, 1)          # (3, 2, 4)
    depth = torch.tensor([0, 1, 1500, 65535], dtype=torch.uint16).repeat(1, 2, 1)     # (1, 2, 4) mm
    mask = torch.tensor([True, False])
    batch = {FRONT: rgb[None].expand(2, -1, -1, -1), FRONT_DEPTH: depth[None].expand(2, -1, -1, -1),
             FRONT + "_padding_mask": mask, STATE: torch.zeros(2, 6), "task": ["a", "b"]}
    out = to_model_input(batch)
    assert out[FRONT].dtype == torch.float32
    assert torch.equal(out[FRONT][0, 0, 0], torch.tensor([0.0, 1.0, 128.0, 255.0]) / 255.0)
    assert out[FRONT_DEPTH].dtype == torch.float32
    assert out[FRONT_DEPTH][0, 0, 0].tolist() == pytest.approx([0.0, 0.001, 1.5, 65.535])
    assert out[FRONT_DEPTH][0, 0, 0, 0] == 0.0                                  # 0 = invalid stays 0
    assert torch.equal(out[FRONT + "_padding_mask"], mask) and batch[FRONT].dtype == torch.uint8
    again = to_model_input(out)
    assert all(again[k] is out[k] for k in (FRONT, FRONT_DEPTH, STATE))          # converted = left alone
    assert float(out[FRONT_DEPTH].max()) <= MAX_DEPTH_M                          # so depth stays accepted


def test_single_observation_numpy_and_invalid_depth():
    obs = {FRONT: np.full((48, 64, 3), 200, np.uint8).transpose(2, 0, 1),        # a non-contiguous view
           FRONT_DEPTH: np.zeros((1, 48, 64), np.uint16), STATE: np.zeros(6, np.float32), "task": "pick"}
    out = to_model_input(obs)
    assert out[FRONT].shape == (1, 3, 48, 64) and out[FRONT_DEPTH].shape == (1, 1, 48, 64)
    assert out[STATE].shape == (1, 6) and out["task"] == ["pick"]
    nan_depth = torch.full((1, 1, 4, 4), float("nan"))                          # no return: accepted
    assert torch.isnan(to_model_input({FRONT_DEPTH: nan_depth})[FRONT_DEPTH]).all()
    with pytest.raises(ModelInputError, match="cannot be negative"):
        to_model_input({FRONT_DEPTH: torch.full((1, 1, 4, 4), -0.5)})
    with pytest.raises(ModelInputError, match=r"uint8 depth"):
        to_model_input({FRONT_DEPTH: torch.zeros(1, 1, 4, 4, dtype=torch.uint8)})
    with pytest.raises(ModelInputError, match=r"nan"):
        to_model_input({FRONT: torch.full((1, 3, 4, 4), float("nan"))})
    with pytest.raises(ModelInputError, match=r"int64 image"):
        to_model_input({FORCE: torch.zeros(6), FRONT: torch.zeros(3, 4, 4, dtype=torch.int64)})
    assert issubclass(ModelInputError, ValueError)
    assert to_model_input({ACTION: torch.ones(2, 4, 6)})[ACTION].shape == (2, 4, 6)
