"""Our SmolVLA against tensors produced by LeRobot's own current code (tests/fixtures/smolvla_tiny_ref).

The fixture (see its README) is a tiny random SmolVLA saved by LeRobot HEAD 7427f318, with fixed
inputs, noise and time, LeRobot's outputs and its intermediates, all float32 on CPU with one torch
thread. We load the checkpoint strictly and compare every stage, earliest first, so a mismatch
points at the step that introduced it. Outputs must agree within 1e-4; run single-threaded (as
here) they agree bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlbench_sms.policy.smolvla import SmolVLAPolicy
from rlbench_sms.policy.smolvla import flow_matching as fm
from rlbench_sms.policy.smolvla.preprocess import tokenize_tasks

FIXTURE = Path(__file__).parent / "fixtures" / "smolvla_tiny_ref"
TOL = 1e-4
CAMERAS = ("camera1", "camera2")

pytestmark = pytest.mark.skipif(not (FIXTURE / "README.md").is_file(), reason="reference fixture not present")


def close(ours: torch.Tensor, name: str, io: dict, tol: float = TOL) -> float:
    ref = io[name]
    assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs LeRobot {tuple(ref.shape)}"
    diff = (ours.detach().double() - ref.double()).abs().max().item()
    assert diff <= tol, f"{name}: max |ours - LeRobot| = {diff:.3g} > {tol}"
    return diff


def same(ours: torch.Tensor, name: str, io: dict) -> None:
    ref = io[name]
    assert ours.shape == ref.shape and torch.equal(ours.to(ref.dtype), ref), f"{name} differs from LeRobot's"


@pytest.fixture(scope="module")
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)   # the fixture was made with one thread
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ref(single_thread):
    io = load_file(str(FIXTURE / "io.safetensors"))
    meta = json.loads((FIXTURE / "io.json").read_text())
    # config.json names the VLM by the absolute path LeRobot wrote; point at the fixture's copy.
    policy = SmolVLAPolicy.from_pretrained(FIXTURE / "checkpoint", vlm_path=FIXTURE / "vlm")
    batch = {k[len("in."):]: v for k, v in io.items() if k.startswith("in.") and k not in ("in.noise", "in.time")}
    batch["task"] = list(meta["tasks"])
    return policy, io, meta, batch


def test_strict_load_and_config(ref):
    policy, _, meta, _ = ref
    sd = policy.state_dict()
    assert len(sd) == len(meta["parameters"]) == 124
    assert all(v.dtype == torch.float32 for v in sd.values())
    assert policy.padding == "max_length" and policy.tokenizer_max_length == 48
    assert not any(b.is_meta for b in policy.buffers())


def test_preprocessing_matches(ref):
    policy, io, meta, batch = ref
    inp = policy.prepare_inputs(batch)
    same(inp.lang_tokens, "pre.observation.language.tokens", io)
    same(inp.lang_masks, "pre.observation.language.attention_mask", io)
    assert inp.lang_masks.sum(1).tolist() == meta["lang_num_valid_tokens"]
    close(inp.state[:, :6], "pre.observation.state", io)
    close(inp.actions[..., :6], "pre.action", io)
    close(inp.state, "model.state_padded", io)
    close(inp.actions, "model.actions_padded", io)
    for img, mask, cam in zip(inp.images, inp.img_masks, CAMERAS):
        close(img[:, :, 120:136], f"model.images.{cam}.rows120_136", io)    # top padding then image
        close(img[:, :, ::16, ::16], f"model.images.{cam}.sub16", io)
        sums = io[f"model.images.{cam}.sum_hw"]
        assert torch.allclose(img.double().sum(dim=(2, 3)), sums, rtol=1e-6, atol=0)
        same(mask, f"model.images.{cam}.mask", io)


def test_long_task_truncation_matches(ref):
    policy, io, meta, _ = ref
    ids, mask = tokenize_tasks(policy.tokenizer, [meta["tokenizer_cases"]["long_task"]], 48, "max_length")
    same(ids, "tok.long_task.input_ids", io)
    same(mask, "tok.long_task.attention_mask", io)


def test_prefix_matches(ref):
    policy, io, _, batch = ref
    m = policy.model
    inp = policy.prepare_inputs(batch)
    with torch.no_grad():
        vision = m.vlm_with_expert.vlm.model.vision_model
        close(vision(pixel_values=inp.images[0], patch_attention_mask=None).last_hidden_state,
              "model.vision_last_hidden_state.camera1", io)
        for img, cam in zip(inp.images, CAMERAS):
            close(m.vlm_with_expert.embed_image(img), f"model.embed_image.{cam}", io)
        embs, pad, ar = m.embed_prefix(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state)
    close(embs, "model.prefix.embs", io)
    same(pad, "model.prefix.pad_masks", io)
    same(ar.bool(), "model.prefix.att_masks", io)


def test_training_forward_matches(ref):
    policy, io, meta, batch = ref
    m = policy.model
    noise, time = io["in.noise"], io["in.time"]
    inp = policy.prepare_inputs(batch)
    with torch.no_grad():
        x_t, u_t = fm.interpolate(noise, inp.actions, time)
        close(x_t, "train.x_t", io)
        close(u_t, "train.u_t", io)
        close(fm.time_embedding(time, 48, 4e-3, 4.0), "train.time_emb_f64", io)
        suffix, suffix_pad, suffix_ar = m.embed_suffix(x_t, time)
        close(suffix, "train.suffix.embs", io)
        same(suffix_pad, "train.suffix.pad_masks", io)
        same(suffix_ar.float(), "train.suffix.att_masks", io)
        prefix, prefix_pad, prefix_ar = m.embed_prefix(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks,
                                                       inp.state)
        pad = torch.cat([prefix_pad, suffix_pad], 1)
        mask = fm.make_att_2d_masks(pad, torch.cat([prefix_ar, suffix_ar], 1))
        positions = torch.cumsum(pad, 1) - 1
        same(mask, "train.att_2d_masks", io)
        same(positions, "train.position_ids", io)
        prefix_out, suffix_out, _ = m.vlm_with_expert(prefix, suffix, mask, positions)
        close(prefix_out, "train.prefix_out", io)       # padded rows too: same finfo.min fill
        close(suffix_out, "train.suffix_out", io)

    policy.train()
    try:
        with torch.no_grad():
            _, terms = policy.flow_terms(batch, noise, time)
            loss, per_element = policy.compute_loss(batch, noise, time)
            per_sample, _ = policy.compute_loss(batch, noise, time, reduction="none")
    finally:
        policy.eval()
    close(terms.v_t, "train.v_t", io)
    close(terms.losses, "train.losses_elementwise_padded", io)
    close(per_element, "train.losses_masked", io)
    close(loss, "train.loss", io)
    close(per_sample, "train.loss_per_sample", io)
    assert abs(loss.item() - meta["loss"]) <= TOL


def test_sampling_matches(ref, monkeypatch):
    policy, io, meta, batch = ref
    m = policy.model
    noise = io["in.noise"]
    inp = policy.prepare_inputs(batch)
    with torch.no_grad():
        prefix, pad, ar = m.embed_prefix(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state)
        mask, positions = fm.make_att_2d_masks(pad, ar), torch.cumsum(pad, 1) - 1
        same(mask, "sample.prefix_att_2d_masks", io)
        same(positions, "sample.prefix_position_ids", io)
        prefix_out, _, _ = m.vlm_with_expert(prefix, None, mask, positions, fill_cache=True)
        close(prefix_out, "sample.prefix_out", io)

    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    real_step = m.cached_velocity

    def recording_step(cache, prefix_pad, x_t, t):
        v = real_step(cache, prefix_pad, x_t, t)
        seen.append((x_t.clone(), t.clone(), v.clone()))
        return v

    monkeypatch.setattr(m, "cached_velocity", recording_step)
    actions = policy.predict_action_chunk(batch, noise=noise)
    assert len(seen) == 10
    close(torch.stack([s[0] for s in seen]), "sample.x_t_per_step", io)
    same(torch.stack([s[1] for s in seen]), "sample.time_per_step", io)
    close(torch.stack([s[2] for s in seen]), "sample.v_t_per_step", io)
    close(actions, "post.actions", io)
    monkeypatch.undo()
    with torch.no_grad():
        normalized = m.sample_actions(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state,
                                      noise=noise)[..., :6]
    close(normalized, "sample.actions_normalized", io)
    # The no-cache path (LeRobot's own crashes with use_cache=False) gives the same chunk.
    close(policy.predict_action_chunk(batch, noise=noise, use_cache=False), "post.actions", io)


def test_step0_mask_and_positions(ref):
    policy, io, _, batch = ref
    m = policy.model
    inp = policy.prepare_inputs(batch)
    with torch.no_grad():
        _, prefix_pad, _ = m.embed_prefix(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state)
        _, suffix_pad, suffix_ar = m.embed_suffix(io["in.noise"], torch.ones(2))
    batch_size, n_suffix = suffix_pad.shape
    full = torch.cat([prefix_pad[:, None, :].expand(batch_size, n_suffix, -1),
                      fm.make_att_2d_masks(suffix_pad, suffix_ar)], dim=2)
    same(full, "sample.step0.full_att_2d_masks", io)
    same(prefix_pad.sum(-1)[:, None] + torch.cumsum(suffix_pad, 1) - 1, "sample.step0.position_ids", io)


def test_resave_in_our_layout_round_trips(ref, tmp_path):
    policy, io, _, batch = ref
    out = policy.save_pretrained(tmp_path / "ours")
    again = SmolVLAPolicy.from_pretrained(out, vlm_path=FIXTURE / "vlm")
    assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), again.state_dict().values()))
    close(again.predict_action_chunk(batch, noise=io["in.noise"]), "post.actions", io)
    assert "pretrained_revision" not in json.loads((out / "config.json").read_text())  # 0.4.4-readable
