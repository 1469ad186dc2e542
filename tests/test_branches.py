"""Sensor branches of our SmolVLA (depth / force / tip) on a tiny random model (CPU, offline).

Each test pins one promise of rlbench_sms.policy.branches: the spec layer, the features the
branches add, each branch's numerics, that all-off is exactly plain SmolVLA, and the checkpoint
sidecar with strict loading.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlbench_sms.features import (ACTION, FORCE, STATE, TIP_POSITION, TIP_VALID, depth_feature, depth_key,
                                  force_feature, joint_feature, rgb_feature, tip_features)
from rlbench_sms.policy import NormalizationStatsError, Normalizer
from rlbench_sms.policy.branches import (BranchesConfig, DepthCNN, ForceMLP, TipText, branch_input_features,
                                         parse_branches, resolve_branches)
from rlbench_sms.policy.branches.config import BRANCHES_FILE
from rlbench_sms.policy.branches.tip import tip_text
from rlbench_sms.policy.smolvla import CheckpointKeyError, PolicyFeature, SmolVLAPolicy, build_tiny_vlm, tiny_config
from rlbench_sms.policy.smolvla.preprocess import prepare_image, tokenize_tasks

STATE_DIM, FORCE_DIM, CHUNK, WINDOW, HW = 6, 6, 4, 3, 32
FRONT_DEPTH = depth_key("front")
DATASET_FEATURES = {f.key: f for f in [joint_feature(STATE), joint_feature(ACTION), rgb_feature("front", HW, HW),
                                       depth_feature("front", HW, HW), force_feature(), *tip_features()]}
TOKEN_SPEC = {"depth": {"type": "cnn", "input_size": [16, 16], "channels": [8, 16], "grid": [1, 2]},
              "force": {"type": "mlp", "window": WINDOW, "hidden_dim": 32, "n_tokens": 2},
              "tip": {"type": "token", "n_freqs": 3, "hidden_dim": 16}}
FREE_SPEC = {"depth": {"type": "as_image"}, "force": {"type": "state"}, "tip": {"type": "text"}}


def make_stats(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def mean_std(n):
        return {"mean": torch.randn(n, generator=g), "std": torch.rand(n, generator=g) + 0.5}

    return {STATE: mean_std(STATE_DIM), ACTION: mean_std(STATE_DIM), FORCE: mean_std(FORCE_DIM),
            TIP_POSITION: mean_std(3)}


def make_batch(batch_size: int = 2, seed: int = 0, window: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(batch_size, 1, HW, HW, generator=g) * 2.0        # metres, some beyond 1.5
    depth[:, :, :4] = 0.0                                               # no return in the top rows
    force = torch.randn(batch_size, window, FORCE_DIM, generator=g) * 3
    is_pad = torch.zeros(batch_size, window, dtype=torch.bool)
    is_pad[0, : window - 1] = True                                      # first sample: episode start
    batch = {
        "observation.images.front": torch.rand(batch_size, 3, HW, HW, generator=g),
        FRONT_DEPTH: depth,
        STATE: torch.randn(batch_size, STATE_DIM, generator=g) * 10,
        FORCE: force if window > 1 else force[:, 0],
        TIP_POSITION: torch.tensor([[0.12, -0.05, 0.41], [-0.2, 0.003, 0.9]])[:batch_size],
        TIP_VALID: torch.tensor([[True], [False]])[:batch_size],
        ACTION: torch.randn(batch_size, CHUNK, STATE_DIM, generator=g) * 10,
        "action_is_pad": torch.zeros(batch_size, CHUNK, dtype=torch.bool),
        "task": ["pick up the red cube", "open the top drawer"][:batch_size],
    }
    if window > 1:
        batch["observation.force_is_pad"] = is_pad
    return batch


def fixed_noise_time(batch_size: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, CHUNK, 32, generator=g), torch.rand(batch_size, generator=g) * 0.9 + 0.05


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("branches") / "vlm")


def make_config(vlm_dir, spec=None, **overrides):
    overrides.setdefault("num_steps", 3)                                # fewer Euler steps: faster tests
    cfg = tiny_config(vlm_dir, cameras=("front",), image_shape=(3, HW, HW), chunk_size=CHUNK,
                      n_action_steps=CHUNK, **overrides)
    if spec:
        cfg = cfg.replace(input_features={**cfg.input_features, **branch_input_features(spec, DATASET_FEATURES)})
    return cfg


def build(vlm_dir, spec=None, seed=0, stats=None, **overrides) -> SmolVLAPolicy:
    spec = resolve_branches(spec, DATASET_FEATURES)
    torch.manual_seed(seed)
    return SmolVLAPolicy(make_config(vlm_dir, spec, **overrides), dataset_stats=stats or make_stats(),
                         branches=spec)


def window_of(policy: SmolVLAPolicy) -> int:
    force = policy.branch_config.force
    return force.window if force is not None else 1


def loss_and_chunk(policy, batch=None, use_cache=None):
    batch = batch or make_batch(window=window_of(policy))
    noise, time = fixed_noise_time()
    with torch.no_grad():
        loss, _ = policy.compute_loss(batch, noise=noise, time=time)
    return loss, policy.predict_action_chunk(batch, noise=noise, use_cache=use_cache)


# ---------------------------------------------------------------------------------- spec
def test_spec_defaults_and_round_trip():
    off = [parse_branches(None), parse_branches({}), parse_branches({"depth": None, "force": None, "tip": None})]
    assert all(c == BranchesConfig() and not c.any_on and c.to_dict() == {} for c in off)
    cfg = parse_branches({"depth": {"type": "cnn"}, "force": {"type": "mlp", "window": 10}, "tip": {"type": "text"}})
    assert isinstance(cfg.depth, DepthCNN) and isinstance(cfg.force, ForceMLP) and isinstance(cfg.tip, TipText)
    assert (cfg.depth.keys, cfg.depth.max_depth_m, cfg.depth.input_size, cfg.depth.grid) == (None, 1.5, (96, 128), (2, 4))
    assert cfg.depth.n_tokens == 8 and cfg.force.window == 10 and cfg.force.n_tokens == 1 and cfg.tip.decimals == 2
    assert list(cfg.active) == ["depth", "force", "tip"]
    for spec in (TOKEN_SPEC, FREE_SPEC, cfg.to_dict()):
        parsed = parse_branches(spec)
        as_json = json.loads(json.dumps(parsed.to_dict()))
        assert parse_branches(as_json) == parsed and parse_branches(parsed) is parsed
    from omegaconf import OmegaConf

    assert parse_branches(OmegaConf.create(TOKEN_SPEC)) == parse_branches(TOKEN_SPEC)


@pytest.mark.parametrize("spec, names", [
    ({"dept": {"type": "cnn"}}, "'dept'"),
    ({"depth": {"type": "lidar"}}, "branches.depth.type"),
    ({"depth": {"keys": []}}, "branches.depth.type"),
    ({"force": {"type": "mlp", "windw": 3}}, "'windw'"),
    ({"force": {"type": "mlp", "window": 0}}, "'window'"),
    ({"force": {"type": "state", "window": 2.5}}, "'window'"),
    ({"tip": {"type": "token", "n_freqs": "many"}}, "'n_freqs'"),
    ({"tip": {"type": "text", "decimals": -1}}, "'decimals'"),
    ({"depth": {"type": "cnn", "keys": ["observation.images.front"]}}, "'keys'"),
    ({"depth": {"type": "cnn", "keys": FRONT_DEPTH}}, "'keys'"),
    ({"depth": {"type": "cnn", "grid": [2, 2, 2]}}, "'grid'"),
    ({"depth": {"type": "cnn", "channels": [12]}}, "'norm_groups'"),
    ("cnn", "branches"),
])
def test_bad_spec_is_one_line_value_error(spec, names):
    with pytest.raises(ValueError) as err:
        parse_branches(spec)
    assert names in str(err.value) and "\n" not in str(err.value)


def test_branch_input_features():
    feats = branch_input_features({"depth": {"type": "as_image"}, "force": {"type": "mlp"},
                                   "tip": {"type": "token"}}, DATASET_FEATURES)
    assert feats == {FRONT_DEPTH: PolicyFeature("VISUAL", (3, HW, HW)), FORCE: PolicyFeature("STATE", (6,)),
                     TIP_POSITION: PolicyFeature("STATE", (3,)), TIP_VALID: PolicyFeature("ENV", (1,))}
    feats = branch_input_features({"depth": {"type": "cnn"}, "tip": {"type": "text"}}, DATASET_FEATURES)
    assert feats[FRONT_DEPTH] == PolicyFeature("ENV", (1, HW, HW))
    assert feats[TIP_POSITION] == PolicyFeature("ENV", (3,))           # text uses raw metres: no stats needed
    assert resolve_branches({"depth": {"type": "cnn"}}, DATASET_FEATURES).depth.keys == (FRONT_DEPTH,)
    no_force = {k: v for k, v in DATASET_FEATURES.items() if k != FORCE}
    with pytest.raises(ValueError, match=r"branches.force: the dataset has no feature 'observation.force'"):
        branch_input_features({"force": {"type": "state"}}, no_force)


def test_policy_checks_its_features(vlm_dir):
    spec = resolve_branches({"force": {"type": "mlp"}}, DATASET_FEATURES)
    with pytest.raises(ValueError, match=r"'observation.force' must be an input feature of type STATE"):
        SmolVLAPolicy(make_config(vlm_dir), dataset_stats=make_stats(), branches=spec)
    with pytest.raises(ValueError, match="unresolved"):
        SmolVLAPolicy(make_config(vlm_dir, {"depth": {"type": "cnn"}}), dataset_stats=make_stats(),
                      branches={"depth": {"type": "cnn"}})
    with pytest.raises(ValueError, match=r"exceed max_state_dim \(32\)"):
        build(vlm_dir, {"force": {"type": "state"}}, input_features={
            STATE: PolicyFeature("STATE", (30,)), "observation.images.front": PolicyFeature("VISUAL", (3, HW, HW))})
    policy = build(vlm_dir, {"force": {"type": "mlp"}})
    with pytest.raises(KeyError, match="the batch has no 'observation.force'"):
        policy.compute_loss({k: v for k, v in make_batch().items() if k != FORCE})


def test_missing_force_stats_is_an_error(vlm_dir):
    stats = make_stats()
    del stats[FORCE]
    with pytest.raises(NormalizationStatsError, match=r"observation\.force\.mean"):
        build(vlm_dir, {"force": {"type": "mlp"}}, stats=stats)
    build(vlm_dir, {"tip": {"type": "text"}}, stats={k: v for k, v in make_stats().items() if k != TIP_POSITION})


# ---------------------------------------------------------------------------- all off
def test_all_off_is_exactly_plain_smolvla(vlm_dir, tmp_path):
    torch.manual_seed(0)
    plain = SmolVLAPolicy(make_config(vlm_dir), dataset_stats=make_stats())
    torch.manual_seed(0)
    off = SmolVLAPolicy(make_config(vlm_dir), dataset_stats=make_stats(), branches={"depth": None, "tip": None})
    torch.manual_seed(0)
    via_from_config = SmolVLAPolicy.from_config(make_config(vlm_dir), dataset_stats=make_stats(), branches={})
    a, b, c = plain.state_dict(), off.state_dict(), via_from_config.state_dict()
    assert list(a) == list(b) == list(c) and not any(k.startswith("branches") for k in b)
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    loss_a, chunk_a = loss_and_chunk(plain)
    loss_b, chunk_b = loss_and_chunk(off)
    assert torch.equal(loss_a, loss_b) and torch.equal(chunk_a, chunk_b)
    ck_a, ck_b = plain.save_pretrained(tmp_path / "a"), off.save_pretrained(tmp_path / "b")
    files = sorted(p.name for p in ck_a.iterdir())
    assert files == sorted(p.name for p in ck_b.iterdir()) and BRANCHES_FILE not in files
    assert all((ck_a / f).read_bytes() == (ck_b / f).read_bytes() for f in files)


# --------------------------------------------------------------------------- training
@pytest.mark.parametrize("kind", ["depth", "force", "tip", "all"])
def test_token_branch_trains(vlm_dir, kind):
    spec = TOKEN_SPEC if kind == "all" else {kind: TOKEN_SPEC[kind]}
    policy = build(vlm_dir, spec).train()
    assert sorted(policy.branches.keys()) == sorted(spec)
    loss, _ = policy.compute_loss(make_batch(window=window_of(policy)))
    loss.backward()
    named = dict(policy.named_parameters())
    branch = {k: v for k, v in named.items() if k.startswith("branches.")}
    assert branch and all(v.requires_grad and v.grad is not None and v.grad.abs().sum() > 0 for v in branch.values())
    assert all(v.grad is None for k, v in named.items() if ".vlm." in k)     # train_expert_only still holds
    inp = policy.prepare_inputs(make_batch(window=window_of(policy)))
    n_tokens = {"depth": 2, "force": 2, "tip": 1}
    want = [g for g in ("depth", "force", "tip") if g in spec]
    assert [g.name.rstrip("0") for g in inp.extra_groups] == want
    assert [g.embs.shape[1] for g in inp.extra_groups] == [n_tokens[g] for g in want]
    assert all(g.ar.eq(0).all() for g in inp.extra_groups)


def test_parameter_free_branches_run(vlm_dir):
    policy = build(vlm_dir, FREE_SPEC).train()
    assert not any(k.startswith("branches.") for k in policy.state_dict())
    loss, _ = policy.compute_loss(make_batch())
    loss.backward()
    assert torch.isfinite(loss) and policy.model.state_proj.weight.grad.abs().sum() > 0


def test_kv_cache_and_sampling_see_branch_tokens(vlm_dir):
    policy = build(vlm_dir, TOKEN_SPEC).eval()
    batch = make_batch(window=WINDOW)
    _, cached = loss_and_chunk(policy, batch, use_cache=True)
    _, full = loss_and_chunk(policy, batch, use_cache=False)
    assert torch.allclose(cached, full, atol=1e-5, rtol=0)
    pushed = dict(batch, **{FORCE: batch[FORCE] + 5.0})
    assert not torch.allclose(loss_and_chunk(policy, pushed)[1], cached)


def test_single_unbatched_observation(vlm_dir):
    policy = build(vlm_dir, {**TOKEN_SPEC, "tip": {"type": "text"}}).eval()
    obs = {k: v[0] for k, v in make_batch(window=WINDOW).items() if k not in (ACTION, "action_is_pad", "task")}
    obs["task"] = "pick up the red cube"
    action = policy.select_action(obs)
    assert action.shape == (1, STATE_DIM) and torch.isfinite(action).all()


# ------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("spec", [TOKEN_SPEC, FREE_SPEC], ids=["token", "parameter_free"])
def test_save_load_round_trip_bit_exact(vlm_dir, tmp_path, spec):
    policy = build(vlm_dir, spec).eval()
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "rlbench_sms.json").write_text("{}")            # other sidecars are ignored
    ck = policy.save_pretrained(tmp_path / "ck")
    sidecar = json.loads((ck / BRANCHES_FILE).read_text())
    assert sidecar == {"format_version": 1, "branches": parse_branches(resolve_branches(spec, DATASET_FEATURES)).to_dict()}
    weights = load_file(str(ck / "model.safetensors"))
    assert any(k.startswith("branches.") for k in weights) == (spec is TOKEN_SPEC)
    loaded = SmolVLAPolicy.from_pretrained(ck)
    assert loaded.branch_config == policy.branch_config
    a, b = policy.state_dict(), loaded.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    for use_cache in (True, False):
        loss_a, chunk_a = loss_and_chunk(policy, use_cache=use_cache)
        loss_b, chunk_b = loss_and_chunk(loaded, use_cache=use_cache)
        assert torch.equal(loss_a, loss_b) and torch.equal(chunk_a, chunk_b)
    assert all(p.requires_grad for p in loaded.branches.parameters())


def test_strict_loading_of_branch_checkpoints(vlm_dir, tmp_path):
    ck = build(vlm_dir, TOKEN_SPEC).save_pretrained(tmp_path / "ck")
    weights = load_file(str(ck / "model.safetensors"))
    sidecar = (ck / BRANCHES_FILE).read_text()
    (ck / BRANCHES_FILE).unlink()
    with pytest.raises(CheckpointKeyError) as err:
        SmolVLAPolicy.from_pretrained(ck)
    assert err.value.unexpected and all(k.startswith("branches.") for k in err.value.unexpected)
    assert not err.value.missing and "branches.force.mlp.0.weight" in str(err.value)
    (ck / BRANCHES_FILE).write_text(sidecar)
    dropped = "branches.tip.mlp.2.bias"
    save_file({k: v for k, v in weights.items() if k != dropped}, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointKeyError) as err:
        SmolVLAPolicy.from_pretrained(ck)
    assert err.value.missing == [dropped] and not err.value.unexpected
    with pytest.raises(ValueError, match="differ"):
        SmolVLAPolicy.from_pretrained(ck, branches={"tip": {"type": "text"}})


def test_fresh_branches_on_a_plain_checkpoint(vlm_dir, tmp_path):
    plain = build(vlm_dir)
    ck = plain.save_pretrained(tmp_path / "plain")
    spec = resolve_branches({"force": TOKEN_SPEC["force"]}, DATASET_FEATURES)
    features = make_config(vlm_dir, spec).input_features
    tuned = SmolVLAPolicy.from_pretrained(ck, branches=spec, dataset_stats=make_stats(),
                                          config_overrides={"input_features": features})
    a, b = plain.state_dict(), tuned.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and set(b) - set(a) == {k for k in b if k.startswith("branches.")}
    assert set(b) - set(a) and all(p.requires_grad for p in tuned.branches.parameters())
    assert tuned.normalizer.mode(FORCE) == "MEAN_STD"                   # the new feature is normalised
    assert torch.isfinite(tuned.compute_loss(make_batch(window=WINDOW))[0])


# ------------------------------------------------------------------------- numerics
def test_tip_text_is_written_into_the_task(vlm_dir):
    policy = build(vlm_dir, {"tip": {"type": "text"}})
    inp = policy.prepare_inputs(make_batch())
    want = ["pick up the red cube object at x=0.12 y=-0.05 z=0.41 m", "open the top drawer object not visible"]
    ids, mask = tokenize_tasks(policy.tokenizer, want, 48, "longest")
    assert torch.equal(inp.lang_tokens, ids) and torch.equal(inp.lang_masks, mask)
    decoded = policy.tokenizer.decode(inp.lang_tokens[0][inp.lang_masks[0]])
    assert decoded == want[0] + "\n"                                   # still one trailing newline
    pos, valid = torch.tensor([[0.1234, -0.0004, 1.0]]), torch.tensor([[True]])
    assert tip_text(["push the cube\n"], pos, valid, 3) == ["push the cube object at x=0.123 y=0.000 z=1.000 m"]
    with pytest.raises(KeyError, match="pre-tokenised"):
        policy.prepare_inputs({**make_batch(), "observation.language.tokens": ids})


def test_force_state_follows_the_state(vlm_dir):
    policy = build(vlm_dir, {"force": {"type": "state", "window": WINDOW}})
    batch = make_batch(window=WINDOW)
    inp = policy.prepare_inputs(batch)
    st, fo = make_stats()[STATE], make_stats()[FORCE]
    state = (batch[STATE] - st["mean"]) / (st["std"] + 1e-8)
    force = (batch[FORCE][:, -1] - fo["mean"]) / (fo["std"] + 1e-8)        # the current (last) step
    assert inp.state.shape == (2, 32)
    assert torch.equal(inp.state[:, :STATE_DIM], state)
    assert torch.equal(inp.state[:, STATE_DIM:STATE_DIM + FORCE_DIM], force)
    assert torch.all(inp.state[:, STATE_DIM + FORCE_DIM:] == 0)


def test_depth_as_image_is_one_more_camera(vlm_dir):
    plain = build(vlm_dir)
    policy = build(vlm_dir, {"depth": {"type": "as_image", "max_depth_m": 1.5}})
    assert list(policy.config.image_features) == ["observation.images.front", FRONT_DEPTH]
    batch = make_batch()
    inp, inp_plain = policy.prepare_inputs(batch), plain.prepare_inputs(batch)
    model = policy.model
    with torch.no_grad():
        names = [g.name for g in model.prefix_groups(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks,
                                                     inp.state, inp.extra_groups)]
        plain_names = [g.name for g in plain.model.prefix_groups(inp_plain.images, inp_plain.img_masks,
                                                                 inp_plain.lang_tokens, inp_plain.lang_masks,
                                                                 inp_plain.state)]
    assert plain_names == ["image0", "language", "state"] and names == ["image0", "image1", "language", "state"]
    grey = (batch[FRONT_DEPTH].clamp(0, 1.5) / 1.5).expand(-1, 3, -1, -1)
    assert torch.equal(inp.images[1], prepare_image(grey, policy.config.resize_imgs_with_padding))
    assert torch.equal(inp.images[0], inp_plain.images[0])


def test_tip_token_is_masked_when_invalid(vlm_dir):
    policy = build(vlm_dir, {"tip": TOKEN_SPEC["tip"]}).eval()
    batch = make_batch()                                                # sample 0 valid, sample 1 invalid
    inp = policy.prepare_inputs(batch)
    assert inp.extra_groups[0].pad_mask.tolist() == [[True], [False]]
    _, base = loss_and_chunk(policy, batch)
    moved = dict(batch, **{TIP_POSITION: batch[TIP_POSITION] + torch.tensor([[0.0] * 3, [0.3, -0.2, 0.5]])})
    _, same = loss_and_chunk(policy, moved)
    assert torch.equal(base, same)                                      # the invalid tip's position is unseen
    nan = dict(batch, **{TIP_POSITION: torch.tensor([[0.12, -0.05, 0.41], [math.nan] * 3])})
    assert torch.equal(loss_and_chunk(policy, nan)[1], base)
    valid_moved = dict(batch, **{TIP_POSITION: batch[TIP_POSITION] + torch.tensor([[0.3, -0.2, 0.5], [0.0] * 3])})
    assert not torch.allclose(loss_and_chunk(policy, valid_moved)[1][0], base[0])


def test_force_window_ignores_padded_steps(vlm_dir):
    policy = build(vlm_dir, {"force": TOKEN_SPEC["force"]}).eval()
    batch = make_batch(window=WINDOW)                                   # sample 0: 2 padded steps
    loss, chunk = loss_and_chunk(policy, batch)
    changed = batch[FORCE].clone()
    changed[0, 0] = math.nan
    changed[0, 1] += 50.0
    loss2, chunk2 = loss_and_chunk(policy, dict(batch, **{FORCE: changed}))
    assert torch.equal(loss, loss2) and torch.equal(chunk, chunk2)
    changed[0, 2] += 50.0                                               # the current, valid step
    assert not torch.equal(loss_and_chunk(policy, dict(batch, **{FORCE: changed}))[1], chunk)


def test_normalizer_force_window_and_bool_flags():
    feats = {FORCE: PolicyFeature("STATE", (2,)), TIP_VALID: PolicyFeature("ENV", (1,))}
    stats = {FORCE: {"mean": [1.0, -1.0], "std": [2.0, 4.0]}, TIP_VALID: {"mean": [0.5], "std": [0.5]}}
    n = Normalizer(feats, {"STATE": "MEAN_STD", "ENV": "MEAN_STD"}, stats)
    window = torch.tensor([[[1.0, 3.0], [5.0, -1.0], [3.0, 7.0]]])      # (B=1, W=3, C=2)
    out = n.normalize_batch({FORCE: window, TIP_VALID: torch.tensor([[True]])})
    assert torch.allclose(out[FORCE], torch.tensor([[[0.0, 1.0], [2.0, 0.0], [1.0, 2.0]]]))
    assert out[TIP_VALID].dtype == torch.bool and out[TIP_VALID].item() is True
    with pytest.raises(ValueError, match="2 channels"):
        n.normalize(FORCE, torch.zeros(1, 3))
