"""SmolVLA numerics and checkpoint handling on a tiny random model (CPU, offline, seconds).

Each test pins one fact of LeRobot's SmolVLA (reference/lerobot_facts.md section 1); the
comparison against outputs of LeRobot's own code is tests/test_smolvla_reference.py.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from rlbench_sms.policy import NormalizationStatsError, Normalizer
from rlbench_sms.policy.smolvla import (CheckpointKeyError, SmolVLAConfig, SmolVLAPolicy, build_tiny_vlm,
                                        smolvlm2_500m_config, tiny_config)
from rlbench_sms.policy.smolvla import flow_matching as fm
from rlbench_sms.policy.smolvla import vlm_with_expert as vwe
from rlbench_sms.policy.smolvla.modeling import VLAFlowMatching
from rlbench_sms.policy.smolvla.preprocess import prepare_image, resize_with_pad, tokenize_tasks

STATE_DIM, ACTION_DIM, CHUNK = 6, 6, 50
CAMS = ("front", "wrist")


def make_stats(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "observation.state": {"mean": torch.randn(STATE_DIM, generator=g),
                              "std": torch.rand(STATE_DIM, generator=g) + 0.5},
        "action": {"mean": torch.randn(ACTION_DIM, generator=g), "std": torch.rand(ACTION_DIM, generator=g) + 0.5},
        "observation.images.front": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.2)},
    }


def make_batch(batch_size: int = 2, seed: int = 0, pad_from: int | None = 40) -> dict:
    g = torch.Generator().manual_seed(seed)
    is_pad = torch.zeros(batch_size, CHUNK, dtype=torch.bool)
    if pad_from is not None:
        is_pad[0, pad_from:] = True  # the first sample's chunk runs past its episode end
    return {
        "observation.images.front": torch.rand(batch_size, 3, 96, 128, generator=g),
        "observation.images.wrist": torch.rand(batch_size, 3, 64, 64, generator=g),
        "observation.state": torch.randn(batch_size, STATE_DIM, generator=g) * 10,
        "action": torch.randn(batch_size, CHUNK, ACTION_DIM, generator=g) * 10,
        "action_is_pad": is_pad,
        "task": ["pick up the red cube", "open the top drawer and put the sponge inside"][:batch_size],
    }


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("smolvla") / "vlm")


@pytest.fixture(scope="module")
def policy(vlm_dir):
    torch.manual_seed(0)
    return SmolVLAPolicy(tiny_config(vlm_dir, cameras=CAMS), dataset_stats=make_stats()).eval()


def fixed_noise_time(batch_size: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, CHUNK, 32, generator=g), torch.rand(batch_size, generator=g) * 0.9 + 0.05


# ----------------------------------------------------------------------------- config
def test_config_defaults_and_file_forms(caplog):
    cfg = SmolVLAConfig()
    assert (cfg.chunk_size, cfg.n_action_steps, cfg.max_state_dim, cfg.max_action_dim) == (50, 50, 32, 32)
    assert (cfg.tokenizer_max_length, cfg.num_steps) == (48, 10)
    assert (cfg.num_vlm_layers, cfg.self_attn_every_n_layers) == (16, 2)
    assert cfg.resize_imgs_with_padding == (512, 512) and cfg.pad_language_to == "longest"
    assert cfg.normalization_mapping == {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"}
    assert (cfg.min_period, cfg.max_period, cfg.expert_width_multiplier) == (4e-3, 4.0, 0.75)
    d = cfg.to_dict()
    assert list(d)[:2] == ["type", "n_obs_steps"] and d["type"] == "smolvla"
    assert "pretrained_revision" not in d and "pretrained_revision" in cfg.to_dict("head")
    head = dict(cfg.to_dict("head"), pretrained_revision="abc", some_future_field=1)
    with caplog.at_level(logging.WARNING):
        back = SmolVLAConfig.from_dict(head)
    assert "some_future_field" in caplog.text
    assert back.pretrained_revision == "abc" and back.to_dict() == d
    with pytest.raises(ValueError):
        SmolVLAConfig(chunk_size=10, n_action_steps=20)


# ------------------------------------------------------------------------- preprocessing
def test_resize_with_pad_left_top_bilinear():
    img = torch.rand(1, 3, 480, 640)
    out = resize_with_pad(img, 512, 512)
    assert out.shape == (1, 3, 512, 512)
    assert torch.all(out[:, :, :128] == 0)                     # 480x640 -> 384x512, 128 rows on top
    ref = F.interpolate(img, size=(384, 512), mode="bilinear", align_corners=False)
    assert torch.equal(out[:, :, 128:], ref)
    tall = resize_with_pad(torch.rand(1, 3, 640, 480), 512, 512)
    assert torch.all(tall[..., :128] == 0) and tall[..., 128:].abs().sum() > 0   # padding on the left
    same = torch.rand(1, 3, 512, 512)
    assert resize_with_pad(same, 512, 512) is same
    prepared = prepare_image(img[:, None], (512, 512))         # 5-D input uses its last step; x*2-1
    assert torch.all(prepared[:, :, :128] == -1) and prepared.min() >= -1 and prepared.max() <= 1


def test_tokenization_newline_right_padding_no_bos(policy):
    tok = policy.tokenizer
    ids, mask = tokenize_tasks(tok, ["pick up the red cube", "open"], 48, "longest")
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    plain = tok("pick up the red cube\n", add_special_tokens=False)["input_ids"]
    assert ids[0, : len(plain)].tolist() == plain               # task + "\n", no BOS/EOS added
    assert tok.bos_token_id not in ids[0].tolist()
    short = int(mask[1].sum())
    assert mask[1, :short].all() and not mask[1, short:].any()  # right padding
    assert (ids[1, short:] == tok.pad_token_id).all()
    ids48, mask48 = tokenize_tasks(tok, ["open"], 48, "max_length")
    assert ids48.shape == (1, 48) and mask48.sum() == len(tok("open\n")["input_ids"])
    long_ids, _ = tokenize_tasks(tok, ["pick " * 100], 48, "longest")
    assert long_ids.shape == (1, 48)
    # a task that already ends with a newline is not given a second one
    a, _ = tokenize_tasks(tok, ["open\n"], 48, "longest")
    b, _ = tokenize_tasks(tok, ["open"], 48, "longest")
    assert torch.equal(a, b)


def test_state_action_zero_padded_to_32(policy):
    inp = policy.prepare_inputs(make_batch())
    assert inp.state.shape == (2, 32) and inp.actions.shape == (2, CHUNK, 32)
    assert torch.all(inp.state[:, STATE_DIM:] == 0) and torch.all(inp.actions[..., ACTION_DIM:] == 0)
    stats = make_stats()
    st = stats["observation.state"]
    want = (make_batch()["observation.state"] - st["mean"]) / (st["std"] + 1e-8)
    assert torch.allclose(inp.state[:, :STATE_DIM], want)       # MEAN_STD with eps 1e-8
    assert len(inp.images) == 2 and all(i.shape == (2, 3, 512, 512) for i in inp.images)


# ------------------------------------------------------------------------------ prefix
def test_prefix_layout_64_image_tokens_sqrt_scaling(policy):
    model = policy.model
    inp = policy.prepare_inputs(make_batch())
    with torch.no_grad():
        groups = model.prefix_groups(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state)
        raw_img = model.vlm_with_expert.embed_image(inp.images[0])
        raw_lang = model.vlm_with_expert.embed_language_tokens(inp.lang_tokens)
        embs, pad, ar = model.embed_prefix(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state)
    hidden = model.vlm_with_expert.config.text_config.hidden_size
    assert [g.name for g in groups] == ["image0", "image1", "language", "state"]
    assert groups[0].embs.shape == (2, 64, hidden)
    assert torch.allclose(groups[0].embs, raw_img * math.sqrt(hidden))
    assert torch.allclose(groups[2].embs, raw_lang * math.sqrt(hidden))
    assert groups[3].embs.shape == (2, 1, hidden)                # one state token, unscaled
    assert torch.allclose(groups[3].embs[:, 0], model.state_proj(inp.state))
    n_lang = inp.lang_tokens.shape[1]
    assert embs.shape[1] == 2 * 64 + n_lang + 1
    assert ar[0].tolist() == [0] * (128 + n_lang) + [1]
    assert torch.equal(pad[:, 128:128 + n_lang], inp.lang_masks)


def test_attention_mask_blocks():
    # 3 prefix tokens (one padded), 1 state, 3 actions
    pad = torch.tensor([[True, True, False, True, True, True, True]])
    ar = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    m = fm.make_att_2d_masks(pad, ar)[0].int()
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0],   # prefix: bidirectional among real prefix tokens
        [1, 1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],   # padding sees nothing and is seen by nobody
        [1, 1, 0, 1, 0, 0, 0],   # state: prefix + itself
        [1, 1, 0, 1, 1, 0, 0],   # actions: causal among themselves
        [1, 1, 0, 1, 1, 1, 0],
        [1, 1, 0, 1, 1, 1, 1],
    ])
    assert torch.equal(m, expected)


def test_attention_is_causal_over_actions_and_prefix_blind_to_state(policy):
    model = policy.model
    inp = policy.prepare_inputs(make_batch())
    noise, time = fixed_noise_time()
    with torch.no_grad():
        base = model.flow_terms(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state,
                                inp.actions, noise, time).v_t
        later = noise.clone()
        later[:, 30] += 5.0                                       # perturb action token 30
        moved = model.flow_terms(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state,
                                 inp.actions, later, time).v_t
    assert torch.equal(base[:, :30], moved[:, :30])               # earlier actions cannot see it
    assert not torch.allclose(base[:, 30:], moved[:, 30:])
    # The prefix (images + language) never attends to the state token.
    vw = model.vlm_with_expert
    with torch.no_grad():
        embs, pad, ar = model.embed_prefix(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state)
        mask, pos = fm.make_att_2d_masks(pad, ar), torch.cumsum(pad, 1) - 1
        out1, _, _ = vw(embs, None, mask, pos)
        embs2 = embs.clone()
        embs2[:, -1] += 3.0
        out2, _, _ = vw(embs2, None, mask, pos)
    real = pad[:, :-1]                       # padded rows attend uniformly to everything: skip them
    assert torch.equal(out1[:, :-1][real], out2[:, :-1][real])
    assert not torch.equal(out1[:, -1], out2[:, -1])


def test_rope_base_10000_half_rotation():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 16)
    pos = torch.arange(5).expand(2, 5) + torch.tensor([[0], [7]])
    out = vwe.apply_rope(x, pos)
    half = 8
    inv = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) * 2 / 16))
    ang = pos[..., None, None].double() * inv                      # (B, L, 1, half)
    x1, x2 = x[..., :half].double(), x[..., half:].double()
    ref = torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin()], -1)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    # relative: <rope(q, m), rope(k, n)> depends on m - n only
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    def dot(m, n):
        return (vwe.apply_rope(q, torch.tensor([[m]])) * vwe.apply_rope(k, torch.tensor([[n]]))).sum()

    assert torch.allclose(dot(3, 1), dot(12, 10), atol=1e-5)
    bf = vwe.apply_rope(x.bfloat16(), pos)
    assert bf.dtype == torch.bfloat16


def test_eager_attention_gqa_fp32_softmax():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 4, 8), torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8)
    mask = torch.rand(1, 4, 6) > 0.3
    mask[..., 0] = True
    out = vwe.eager_attention(q, k, v, mask, 8)
    for h in range(4):
        kv = h // 2                                                # heads 0,1 -> kv 0; 2,3 -> kv 1
        s = (q[0, :, h] @ k[0, :, kv].T) / math.sqrt(8)
        s = s.masked_fill(~mask[0], float("-inf")).softmax(-1)
        assert torch.allclose(out[0, :, h * 8:(h + 1) * 8], s @ v[0, :, kv], atol=1e-6)


def test_layer_layout_self_and_cross(policy):
    vw = policy.model.vlm_with_expert
    text_cfg = vw.config.text_config
    kv_width = text_cfg.num_key_value_heads * text_cfg.head_dim
    assert vw.num_vlm_layers == 4 and len(vw.text_model.layers) == 4   # truncated from 6
    assert vw.expert_hidden_size == int(text_cfg.hidden_size * 0.75)
    for i, layer in enumerate(vw.lm_expert.layers):
        k = layer.self_attn.k_proj
        if i % 2 == 0:
            assert not vw.is_cross_layer(i) and k.in_features == vw.expert_hidden_size
        else:
            assert vw.is_cross_layer(i) and (k.in_features, k.out_features) == (kv_width, kv_width)
    assert vw.lm_expert.embed_tokens is None


def test_expert_positions_rebased_in_cross_layers(policy, monkeypatch):
    """Self layers rotate suffix queries at n_valid_prefix + k; cross layers at k (re-based)."""
    seen: list[torch.Tensor] = []
    real = vwe.apply_rope

    def spy(x, positions, *a, **kw):
        seen.append(positions.clone())
        return real(x, positions, *a, **kw)

    monkeypatch.setattr(vwe, "apply_rope", spy)
    model = policy.model
    inp = policy.prepare_inputs(make_batch())
    with torch.no_grad():
        embs, pad, ar = model.embed_prefix(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state)
        cache = model.fill_prefix_cache(embs, pad, ar)
        seen.clear()
        model.cached_velocity(cache, pad, torch.randn(2, CHUNK, 32), torch.full((2,), 0.5))
    n_valid = pad.sum(1)
    assert n_valid[0] != n_valid[1]                                # language padding differs
    layer0_q = seen[0]                                             # self layer 0: q then k
    assert torch.equal(layer0_q, n_valid[:, None] + torch.arange(CHUNK))
    cross_q = seen[2]                                              # layer 1 (cross): expert q only
    assert torch.equal(cross_q, torch.arange(CHUNK).expand(2, -1))
    assert len(seen) == 2 + 1 + 2 + 1                              # no RoPE on cross-layer keys


# ------------------------------------------------------------------------ flow matching
def test_time_distribution_beta_1_5_1():
    torch.manual_seed(0)
    t = fm.sample_time(20000, "cpu")
    assert t.dtype == torch.float32 and t.min() >= 0.001 and t.max() <= 1.0
    beta = (t - 0.001) / 0.999
    for x in (0.2, 0.5, 0.8):                                      # Beta(1.5, 1) CDF is x**1.5
        assert abs((beta <= x).float().mean().item() - x ** 1.5) < 0.015


def test_interpolant_target_and_time_embedding(policy):
    model = policy.model
    inp = policy.prepare_inputs(make_batch())
    noise, time = fixed_noise_time()
    with torch.no_grad():
        terms = model.flow_terms(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks, inp.state,
                                 inp.actions, noise, time)
    t = time[:, None, None]
    assert torch.allclose(terms.x_t, t * noise + (1 - t) * inp.actions)
    assert torch.allclose(terms.u_t, noise - inp.actions)
    assert terms.v_t.dtype == torch.float32
    assert torch.allclose(terms.losses, (terms.u_t - terms.v_t) ** 2)
    emb = fm.time_embedding(torch.tensor([0.3]), 8, 4e-3, 4.0)
    assert emb.dtype == torch.float64
    period = 4e-3 * (4.0 / 4e-3) ** torch.linspace(0, 1, 4, dtype=torch.float64)
    arg = torch.tensor(0.3).double() * (1.0 / period * 2 * math.pi)  # float32 time, float64 maths
    assert torch.allclose(emb[0], torch.cat([arg.sin(), arg.cos()]))


def test_loss_over_valid_entries_only(policy):
    noise, time = fixed_noise_time()
    batch = make_batch()
    loss, per = policy.compute_loss(batch, noise=noise, time=time)
    assert per.shape == (2, CHUNK, ACTION_DIM)                     # cropped to the true action dims
    assert torch.all(per[0, 40:] == 0)
    _, terms = policy.flow_terms(batch, noise, time)
    full = terms.losses[:, :, :ACTION_DIM]
    valid = ~batch["action_is_pad"]
    want = (full * valid[..., None]).sum() / (valid.sum() * ACTION_DIM)
    assert torch.allclose(loss, want)
    per_sample, _ = policy.compute_loss(batch, noise=noise, time=time, reduction="none")
    assert torch.allclose(per_sample[0], full[0, :40].mean()) and torch.allclose(per_sample[1], full[1].mean())
    # Changing padded actions changes nothing (but the unmasked error there does change).
    other = dict(batch, action=batch["action"].clone())
    other["action"][0, 45:] += 100.0
    loss2, _ = policy.compute_loss(other, noise=noise, time=time)
    assert torch.equal(loss, loss2)
    no_pad = {k: v for k, v in batch.items() if k != "action_is_pad"}
    loss3, _ = policy.compute_loss(no_pad, noise=noise, time=time)
    assert torch.allclose(loss3, full.mean())


def test_euler_sampling_ten_steps_from_one():
    times: list[float] = []

    def velocity(x, t):
        times.append(t[0].item())
        assert t.dtype == torch.float32 and t.shape == (3,)
        return torch.ones_like(x) * t[:, None, None]

    noise = torch.zeros(3, 4, 2)
    out = fm.euler_integrate(velocity, noise, 10)
    assert times == pytest.approx([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1], abs=1e-7)
    assert torch.allclose(out, torch.full_like(out, -0.1 * sum(times)))


def test_sample_actions_uses_num_steps(policy, monkeypatch):
    calls = []
    real = policy.model.cached_velocity
    monkeypatch.setattr(policy.model, "cached_velocity", lambda *a: calls.append(1) or real(*a))
    policy.predict_action_chunk(make_batch(), noise=fixed_noise_time()[0])
    assert len(calls) == 10


def test_kv_cache_equals_no_cache(policy):
    noise, _ = fixed_noise_time()
    batch = make_batch()
    cached = policy.predict_action_chunk(batch, noise=noise, use_cache=True)
    full = policy.predict_action_chunk(batch, noise=noise, use_cache=False)
    assert cached.shape == (2, CHUNK, ACTION_DIM)
    assert torch.allclose(cached, full, atol=1e-5, rtol=0)


def test_fixed_noise_gives_identical_chunks(policy):
    noise, _ = fixed_noise_time()
    a = policy.predict_action_chunk(make_batch(), noise=noise)
    b = policy.predict_action_chunk(make_batch(), noise=noise)
    c = policy.predict_action_chunk(make_batch(), noise=noise + 1)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_chunk_is_unnormalized(policy, monkeypatch):
    """predict_action_chunk returns robot units: x * std + mean of the sampled normalised actions."""
    fake = torch.randn(2, CHUNK, 32)
    monkeypatch.setattr(policy.model, "sample_actions", lambda *a, **k: fake)
    out = policy.predict_action_chunk(make_batch())
    st = make_stats()["action"]
    assert torch.allclose(out, fake[..., :ACTION_DIM] * st["std"] + st["mean"])


def test_select_action_queue(vlm_dir, monkeypatch):
    torch.manual_seed(0)
    p = SmolVLAPolicy(tiny_config(vlm_dir, cameras=CAMS, n_action_steps=5), dataset_stats=make_stats())
    chunk = torch.arange(2 * CHUNK * ACTION_DIM, dtype=torch.float32).reshape(2, CHUNK, ACTION_DIM)
    calls = []
    monkeypatch.setattr(p, "predict_action_chunk", lambda batch, noise=None: calls.append(1) or chunk)
    got = [p.select_action(make_batch()) for _ in range(7)]
    assert len(calls) == 2                                          # refilled after 5 actions
    assert torch.equal(got[0], chunk[:, 0]) and torch.equal(got[4], chunk[:, 4]) and torch.equal(got[5], chunk[:, 0])
    p.reset()
    p.select_action(make_batch())
    assert len(calls) == 3


# ------------------------------------------------------------------- training and dtypes
def test_forward_backward_trains_expert_only(vlm_dir):
    torch.manual_seed(0)
    p = SmolVLAPolicy(tiny_config(vlm_dir, cameras=CAMS), dataset_stats=make_stats()).train()
    loss, _ = p.compute_loss(make_batch())
    loss.backward()
    named = dict(p.named_parameters())
    assert named["model.vlm_with_expert.lm_expert.layers.0.self_attn.q_proj.weight"].grad.abs().sum() > 0
    assert named["model.vlm_with_expert.lm_expert.layers.1.self_attn.k_proj.weight"].grad.abs().sum() > 0
    assert named["model.action_out_proj.weight"].grad.abs().sum() > 0
    assert named["model.state_proj.weight"].grad.abs().sum() > 0
    assert all(v.grad is None for k, v in named.items() if ".vlm." in k)
    assert not p.model.vlm_with_expert.vlm.training                  # frozen parts stay in eval mode
    # train_expert_only=False: the VLM trains except the vision tower and its unused tail.
    p2 = SmolVLAPolicy(tiny_config(vlm_dir, cameras=CAMS, train_expert_only=False), dataset_stats=make_stats())
    trainable = {k for k, v in p2.named_parameters() if v.requires_grad}
    assert "model.vlm_with_expert.vlm.model.text_model.layers.0.mlp.up_proj.weight" in trainable
    assert not any("vision_model" in k or "text_model.layers.3." in k or "lm_head" in k for k in trainable)


def test_mixed_bf16_backbone_fp32_heads_runs(vlm_dir):
    torch.manual_seed(0)
    p = SmolVLAPolicy(tiny_config(vlm_dir, cameras=CAMS), dataset_stats=make_stats())
    p.model.vlm_with_expert.to(torch.bfloat16)                      # like smolvla_base: bf16 backbone
    for layer_idx in (1, 3):                                        # ... but fp32 cross k/v projections
        attn = p.model.vlm_with_expert.lm_expert.layers[layer_idx].self_attn
        attn.k_proj.float(), attn.v_proj.float()
    noise, time = fixed_noise_time()
    loss, _ = p.compute_loss(make_batch(), noise=noise, time=time)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    chunk = p.predict_action_chunk(make_batch(), noise=noise)
    assert chunk.dtype == torch.float32 and torch.isfinite(chunk).all()
    assert torch.allclose(chunk, p.predict_action_chunk(make_batch(), noise=noise, use_cache=False), atol=1e-2)


# ------------------------------------------------------------------------ checkpoints
def test_save_load_bit_exact_and_layout(policy, tmp_path):
    ck = policy.save_pretrained(tmp_path / "ck")
    names = sorted(p.name for p in ck.iterdir())
    assert names == ["config.json", "model.safetensors", "policy_postprocessor.json",
                     "policy_postprocessor_step_0_unnormalizer_processor.safetensors",
                     "policy_preprocessor.json", "policy_preprocessor_step_5_normalizer_processor.safetensors"]
    pre = json.loads((ck / "policy_preprocessor.json").read_text())
    assert [s["registry_name"] for s in pre["steps"]] == [
        "rename_observations_processor", "to_batch_processor", "smolvla_new_line_processor",
        "tokenizer_processor", "device_processor", "normalizer_processor"]
    stats = load_file(str(ck / "policy_preprocessor_step_5_normalizer_processor.safetensors"))
    assert {"observation.state.mean", "observation.state.std", "action.mean", "action.std"} <= set(stats)
    assert all(k.startswith("model.") for k in load_file(str(ck / "model.safetensors")))

    loaded = SmolVLAPolicy.from_pretrained(ck)
    a, b = policy.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    noise, time = fixed_noise_time()
    assert torch.equal(policy.predict_action_chunk(make_batch(), noise=noise),
                       loaded.predict_action_chunk(make_batch(), noise=noise))
    assert torch.equal(policy.compute_loss(make_batch(), noise, time)[0],
                       loaded.compute_loss(make_batch(), noise, time)[0])


def test_load_keeps_file_dtypes(vlm_dir, tmp_path):
    torch.manual_seed(0)
    p = SmolVLAPolicy(tiny_config(vlm_dir, cameras=CAMS), dataset_stats=make_stats())
    p.model.vlm_with_expert.vlm.to(torch.bfloat16)
    p.save_pretrained(tmp_path / "ck")
    q = SmolVLAPolicy.from_pretrained(tmp_path / "ck")
    sd = q.state_dict()
    assert sd["model.vlm_with_expert.vlm.model.text_model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert sd["model.action_out_proj.weight"].dtype == torch.float32
    noise = fixed_noise_time()[0]
    assert torch.equal(p.predict_action_chunk(make_batch(), noise=noise),
                       q.predict_action_chunk(make_batch(), noise=noise))


def test_strict_keys_both_ways(policy, tmp_path):
    ck = policy.save_pretrained(tmp_path / "ck")
    weights = load_file(str(ck / "model.safetensors"))
    old = "model.vlm_with_expert.lm_expert.layers.1.self_attn.k_proj.weight"
    renamed = dict(weights)
    renamed["model.vlm_with_expert.lm_expert.layers.1.self_attn.key_proj.weight"] = renamed.pop(old)
    save_file(renamed, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointKeyError) as err:
        SmolVLAPolicy.from_pretrained(ck)
    assert old in str(err.value) and "key_proj" in str(err.value)
    assert err.value.missing == [old] and len(err.value.unexpected) == 1

    extra = dict(weights, **{"model.extra_head.weight": torch.zeros(2)})
    save_file(extra, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointKeyError, match="model.extra_head.weight"):
        SmolVLAPolicy.from_pretrained(ck)

    wrong = dict(weights)
    wrong["model.state_proj.weight"] = torch.zeros(3, 3)
    save_file(wrong, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointKeyError, match="shape mismatch") as err:
        SmolVLAPolicy.from_pretrained(ck)
    assert err.value.mismatched[0][0] == "model.state_proj.weight"


def test_missing_stats_is_an_error(vlm_dir, policy, tmp_path):
    stats = make_stats()
    del stats["observation.state"]
    with pytest.raises(NormalizationStatsError, match=r"observation\.state\.mean"):
        SmolVLAPolicy(tiny_config(vlm_dir, cameras=CAMS), dataset_stats=stats)
    ck = policy.save_pretrained(tmp_path / "ck")
    for name in ("policy_preprocessor_step_5_normalizer_processor.safetensors",):
        flat = load_file(str(ck / name))
        save_file({k: v for k, v in flat.items() if not k.startswith("observation.state")}, str(ck / name))
    with pytest.raises(NormalizationStatsError, match=r"observation\.state\.std"):
        SmolVLAPolicy.from_pretrained(ck)
    # The dataset's stats (what fine-tuning passes) replace the checkpoint's.
    fixed = SmolVLAPolicy.from_pretrained(ck, dataset_stats=make_stats())
    assert fixed.normalizer.mode("observation.state") == "MEAN_STD"


def test_normalizer_modes():
    feats = {"s": {"type": "STATE", "shape": [2]}, "a": {"type": "ACTION", "shape": [2]}}
    x = torch.tensor([[1.0, 5.0]])
    st = {"s": {"mean": [1.0, 2.0], "std": [2.0, 0.0], "min": [0.0, 5.0], "max": [2.0, 5.0],
                "q01": [0.0, 0.0], "q99": [4.0, 10.0], "q10": [1.0, 1.0], "q90": [3.0, 3.0]}}
    n = Normalizer(feats, {"STATE": "MEAN_STD"}, st)
    assert torch.allclose(n.normalize("s", x), torch.tensor([[0.0, 3.0 / 1e-8]]))
    assert torch.allclose(n.unnormalize("s", torch.tensor([[1.0, 1.0]])), torch.tensor([[3.0, 2.0]]))
    assert torch.equal(n.normalize("a", x), x)                      # ACTION not mapped -> IDENTITY
    mm = Normalizer(feats, {"STATE": "MIN_MAX"}, st)
    assert torch.allclose(mm.normalize("s", x), torch.tensor([[0.0, 2 * 0 / 1e-8 - 1]]))
    q = Normalizer(feats, {"STATE": "QUANTILES"}, st)
    assert torch.allclose(q.unnormalize("s", q.normalize("s", x)), x)
    with pytest.raises(NormalizationStatsError, match=r"a\.mean"):
        Normalizer(feats, {"ACTION": "MEAN_STD"}, st)


def test_real_size_layout_matches_lerobot_keys():
    """SmolVLM2-500M dims: expert 720 wide, MLP 2048, q 720->960, k/v 720->320, cross k/v 320->320."""
    with torch.device("meta"):
        model = VLAFlowMatching(SmolVLAConfig(), smolvlm2_500m_config())
    sd = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(sd) == 500 and round(sum(math.prod(s) for s in sd.values()) / 1e6) == 450
    p = "model.vlm_with_expert."
    assert sd[p + "lm_expert.layers.0.self_attn.q_proj.weight"] == (960, 720)
    assert sd[p + "lm_expert.layers.0.self_attn.k_proj.weight"] == (320, 720)
    assert sd[p + "lm_expert.layers.1.self_attn.k_proj.weight"] == (320, 320)
    assert sd[p + "lm_expert.layers.15.self_attn.v_proj.weight"] == (320, 320)
    assert sd[p + "lm_expert.layers.0.mlp.gate_proj.weight"] == (2048, 720)
    assert sd[p + "vlm.model.connector.modality_projection.proj.weight"] == (960, 12288)
    assert sd[p + "vlm.lm_head.weight"] == (49280, 960)
    assert sd["model.state_proj.weight"] == (960, 32) and sd["model.action_time_mlp_in.weight"] == (720, 1440)
    assert not any(".text_model.layers.16." in k or "lm_expert.embed_tokens" in k for k in sd)
    assert f"{p}vlm.model.text_model.layers.15.self_attn.o_proj.weight" in sd


def test_load_vlm_weights_from_vlm_dir(tmp_path):
    """load_vlm_weights=True: the VLM comes from the directory's weights in bf16 (as LeRobot loads it)."""
    vlm = build_tiny_vlm(tmp_path / "vlm", with_weights=True)
    p = SmolVLAPolicy(tiny_config(vlm, cameras=CAMS, load_vlm_weights=True), dataset_stats=make_stats())
    saved = load_file(str(vlm / "model.safetensors"))
    key = "model.text_model.layers.0.mlp.up_proj.weight"
    ours = p.model.vlm_with_expert.vlm.model.text_model.layers[0].mlp.up_proj.weight
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, saved[key].to(torch.bfloat16))
    assert len(p.model.vlm_with_expert.text_model.layers) == 4
    loss, _ = p.compute_loss(make_batch())
    assert torch.isfinite(loss)


def test_legacy_in_model_stats_are_read(policy, tmp_path):
    """Pre-0.4 checkpoints kept the stats as normalize_inputs/unnormalize_outputs buffers."""
    ck = policy.save_pretrained(tmp_path / "ck")
    weights = load_file(str(ck / "model.safetensors"))
    st = make_stats()
    weights["normalize_inputs.buffer_observation_state.mean"] = st["observation.state"]["mean"]
    weights["normalize_inputs.buffer_observation_state.std"] = st["observation.state"]["std"]
    weights["normalize_targets.buffer_action.mean"] = st["action"]["mean"]
    weights["normalize_targets.buffer_action.std"] = st["action"]["std"]
    save_file(weights, str(ck / "model.safetensors"))
    for f in ck.glob("policy_*"):
        f.unlink()
    loaded = SmolVLAPolicy.from_pretrained(ck)
    noise = fixed_noise_time()[0]
    assert torch.equal(loaded.predict_action_chunk(make_batch(), noise=noise),
                       policy.predict_action_chunk(make_batch(), noise=noise))


def test_lerobot_construction_dtypes(policy, tmp_path):
    """dtype="lerobot": parameters take the dtype LeRobot's construction gives them (from the VLM
    config: bf16 text decoder + expert, fp32 vision/connector/lm_head/heads/cross k/v)."""
    ck = policy.save_pretrained(tmp_path / "ck")
    vlm = build_tiny_vlm(tmp_path / "vlm_bf16")
    cfg = json.loads((vlm / "config.json").read_text())
    cfg["text_config"]["dtype"] = "bfloat16"                       # as SmolVLM2's config says
    (vlm / "config.json").write_text(json.dumps(cfg))
    q = SmolVLAPolicy.from_pretrained(ck, vlm_path=vlm, dtype="lerobot")
    sd = q.state_dict()
    pre = "model.vlm_with_expert."
    assert sd[pre + "vlm.model.text_model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16
    assert sd[pre + "lm_expert.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    assert sd[pre + "lm_expert.layers.1.self_attn.k_proj.weight"].dtype == torch.float32
    assert sd[pre + "vlm.model.vision_model.post_layernorm.weight"].dtype == torch.float32
    assert sd[pre + "vlm.model.connector.modality_projection.proj.weight"].dtype == torch.float32
    assert sd["model.action_out_proj.weight"].dtype == torch.float32
    assert torch.isfinite(q.predict_action_chunk(make_batch(), noise=fixed_noise_time()[0])).all()
    assert SmolVLAPolicy.from_pretrained(ck).state_dict()[pre + "lm_expert.layers.0.mlp.up_proj.weight"].dtype \
        == torch.float32                                           # default: the file's dtype
