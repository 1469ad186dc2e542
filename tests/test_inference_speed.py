"""The CPU inference speed-ups of the SmolVLA path keep its values (benchmarks/policy_latency.py).

Each test pins one mechanism (work done once instead of every step or call) and that the values
stay those of the plain computation: bitwise where the same operations run, within float32
rounding where a fused kernel replaces a chain of small ones.
"""

from __future__ import annotations

import resource

import pytest
import torch

from rlbench_sms.data.convert import to_model_input
from rlbench_sms.policy.smolvla import SmolVLAPolicy, build_tiny_vlm, tiny_config
from rlbench_sms.policy.smolvla import preprocess
from rlbench_sms.policy.smolvla.flow_matching import make_att_2d_masks
from rlbench_sms.policy.smolvla import vlm_with_expert as vwe
from rlbench_sms.policy.smolvla.preprocess import prepare_image, resize_with_pad
from rlbench_sms.runtime import heap

STATE_DIM, ACTION_DIM, CHUNK = 6, 6, 50
CAMS = ("front", "wrist")
FUSED_ATTENTION_TOL = 2e-6


def stats() -> dict:
    return {"observation.state": {"mean": torch.linspace(-1, 1, STATE_DIM), "std": torch.linspace(0.5, 2, STATE_DIM)},
            "action": {"mean": torch.linspace(1, -1, ACTION_DIM), "std": torch.linspace(2, 0.5, ACTION_DIM)}}


def observation(seed: int = 0) -> dict:
    """One device observation as the runner gives it: uint8 (3, H, W) frames, float32 state, task."""
    g = torch.Generator().manual_seed(seed)
    obs = {f"observation.images.{c}": torch.randint(0, 256, (3, 96, 128), generator=g, dtype=torch.uint8).numpy()
           for c in CAMS}
    obs["observation.state"] = torch.randn(STATE_DIM, generator=g).numpy()
    obs["task"] = "pick up the red cube"
    return obs


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    torch.manual_seed(0)
    vlm = build_tiny_vlm(tmp_path_factory.mktemp("speed") / "vlm")
    return SmolVLAPolicy(tiny_config(vlm, cameras=CAMS), dataset_stats=stats()).eval()


def noise(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, CHUNK, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ images
def with_threads(n: int, fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("shape", [(1, 3, 480, 640), (2, 3, 640, 480), (1, 3, 48, 64), (2, 1, 3, 100, 60)])
def test_prepare_image_is_resize_pad_then_signed(shape):
    """The one-buffer pad + map of torch's multi-threaded resize: bitwise ``resize_with_pad * 2 - 1``
    there, and at any thread count (a one-thread NCHW resize is a few ulps off)."""
    torch.manual_seed(0)
    img = torch.rand(*shape)
    last = img[:, -1] if img.ndim == 5 else img
    want = with_threads(2, lambda: resize_with_pad(last, 512, 512) * 2.0 - 1.0)
    for threads in (1, 2):
        got = with_threads(threads, lambda: prepare_image(img, (512, 512)))
        assert got.shape == want.shape and got.is_contiguous()
        assert torch.equal(got, want)
    assert torch.allclose(with_threads(1, lambda: resize_with_pad(last, 512, 512) * 2.0 - 1.0), want, atol=1e-6)
    new_h, new_w = preprocess.fitted_size(last.shape[-2], last.shape[-1], 512, 512)
    assert torch.all(got[..., : 512 - new_h, :] == -1) and torch.all(got[..., : 512 - new_w] == -1)


def test_prepare_image_keeps_dtype_and_sizes_already_fitting():
    half = torch.rand(1, 3, 48, 64).to(torch.bfloat16)
    assert prepare_image(half, (512, 512)).dtype == torch.bfloat16
    square = torch.rand(1, 3, 512, 512)
    assert torch.equal(prepare_image(square, (512, 512)), square * 2.0 - 1.0)
    assert torch.equal(prepare_image(square, None), square * 2.0 - 1.0)


def test_uint8_and_uint16_conversions_keep_their_values():
    frame = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    depth = torch.randint(0, 65536, (1, 8, 8), dtype=torch.int32).to(torch.uint16)
    out = to_model_input({"observation.images.front": frame, "observation.images.front_depth": depth,
                          "observation.state": torch.zeros(6)})
    assert torch.equal(out["observation.images.front"][0], frame.to(torch.float32) / 255.0)
    assert torch.equal(out["observation.images.front_depth"][0], depth.to(torch.float32) * 1e-3)


# --------------------------------------------------------------------------- attention
def test_fused_attention_equals_eager_form_with_fully_masked_rows():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 7, 4, 8), torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)
    mask = torch.rand(2, 7, 9) > 0.4
    mask[0, 3] = False                               # a query that sees nothing (a padded token)
    fused = vwe.eager_attention(q, k, v, mask, 8)
    eager = vwe.eager_attention(q.double(), k.double(), v.double(), mask, 8)   # not float32: the eager form
    assert torch.isfinite(fused).all()
    assert torch.allclose(fused, eager.float(), atol=FUSED_ATTENTION_TOL, rtol=0)
    # Nothing visible: uniform attention over every key, as the eager form's float32-min fill gives.
    uniform = v[0].repeat_interleave(2, dim=1).mean(dim=0).reshape(-1)
    assert torch.allclose(fused[0, 3], uniform, atol=FUSED_ATTENTION_TOL)


# ------------------------------------------------------------------------ the sampler
def test_step_invariants_are_computed_once_per_chunk(policy, monkeypatch):
    """Rotary tables, the step mask/positions and the cross layers' expert K/V of the cached prefix:
    once per chunk, not once per layer and step."""
    tables, projections = [], []
    real_tables = vwe.rope_tables
    monkeypatch.setattr(vwe, "rope_tables", lambda *a, **kw: tables.append(1) or real_tables(*a, **kw))
    vw = policy.model.vlm_with_expert
    cross = [i for i in range(vw.num_vlm_layers) if vw.is_cross_layer(i)]
    hooks = [vw.lm_expert.layers[i].self_attn.k_proj.register_forward_hook(lambda *a: projections.append(1))
             for i in cross]
    try:
        policy.predict_action_chunk(observation(), noise=noise())
    finally:
        for hook in hooks:
            hook.remove()
    steps = policy.config.num_steps
    assert steps == 10 and cross
    assert len(projections) == len(cross)                   # not len(cross) * steps
    # The cache fill: one table; the steps: the suffix positions and their re-based form, once.
    assert len(tables) == 1 + 2


def test_memoised_steps_give_bitwise_the_recomputed_chunk(policy, monkeypatch):
    memoised = policy.predict_action_chunk(observation(), noise=noise())
    model = policy.model
    real_fill = model.fill_prefix_cache
    # A plain list is no KVCache: every step recomputes what the memo would have kept.
    monkeypatch.setattr(model, "fill_prefix_cache", lambda *a: list(real_fill(*a)))
    recomputed = policy.predict_action_chunk(observation(), noise=noise())
    assert torch.equal(memoised, recomputed)


def test_cache_fill_skips_the_last_layers_prefix_output(policy):
    """Sampling reads only the cache: the last VLM layer's MLP never runs, yet its K/V are stored
    exactly as a full pass stores them."""
    vw = policy.model.vlm_with_expert
    last = vw.text_model.layers[vw.num_vlm_layers - 1]
    calls = []
    hook = last.mlp.register_forward_hook(lambda *a: calls.append(1))
    try:
        policy.predict_action_chunk(observation(), noise=noise())
        assert calls == []
        inp = policy.prepare_inputs(observation())
        with torch.no_grad():
            prefix, pad, ar = policy.model.embed_prefix(inp.images, inp.img_masks, inp.lang_tokens, inp.lang_masks,
                                                        inp.state)
            short = policy.model.fill_prefix_cache(prefix, pad, ar)
            _, _, full = vw(prefix, None, make_att_2d_masks(pad, ar), torch.cumsum(pad, 1) - 1, fill_cache=True)
    finally:
        hook.remove()
    assert calls == [1]                                       # the full pass did run it
    assert len(short) == len(full) == vw.num_vlm_layers
    for (k1, v1), (k2, v2) in zip(short, full):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)


def test_task_tokens_are_reused_and_handed_out_as_copies(policy, monkeypatch):
    calls = []
    real = policy.tokenizer.__class__.__call__
    monkeypatch.setattr(policy.tokenizer.__class__, "__call__",
                        lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw))
    policy._token_cache.clear()
    first = policy.prepare_inputs(observation())
    first.lang_tokens.fill_(0)                                # a caller editing its copy
    second = policy.prepare_inputs(observation())
    assert len(calls) == 1
    assert second.lang_tokens.ne(0).any()
    other = policy.prepare_inputs({**observation(), "task": "open the top drawer"})
    assert len(calls) == 2 and not torch.equal(other.lang_tokens[:, :2], second.lang_tokens[:, :2])


def test_eval_walk_only_when_a_module_trains(policy, monkeypatch):
    walks = []
    real = SmolVLAPolicy.train
    monkeypatch.setattr(SmolVLAPolicy, "train", lambda self, mode=True: walks.append(mode) or real(self, mode))
    policy.predict_action_chunk(observation(), noise=noise())
    assert walks == []
    policy.model.action_out_proj.train()                      # one submodule left in training mode
    policy.predict_action_chunk(observation(), noise=noise())
    assert walks == [False] and not any(m.training for m in policy.modules())


# ------------------------------------------------------------------------------- heap
def test_freed_heap_memory_is_kept_for_the_next_call():
    if not heap.retain_freed_memory():
        pytest.skip("not glibc: the malloc thresholds do not apply")
    assert heap.retain_freed_memory()                        # once per process, then the same answer
    size = 4 * 2**20 // 4                                     # float32 elements in 4 MiB, a frame-sized block
    for _ in range(3):                                        # warm: the heap grows once
        blocks = [torch.ones(size) for _ in range(4)]
        del blocks
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        blocks = [torch.ones(size) for _ in range(4)]
        del blocks
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # Returned to the kernel, each 4 MiB block page-faults ~1000 pages again: 40 blocks ~40000.
    assert faults < 2000, faults


def test_vision_input_unchanged_by_layout_tricks(policy):
    """The images the vision tower gets are plain contiguous NCHW float32, as before."""
    inp = policy.prepare_inputs(observation())
    for img in inp.images:
        assert img.dtype == torch.float32 and img.is_contiguous() and img.shape[-2:] == (512, 512)
        assert img.min() >= -1 and img.max() <= 1


def test_cameras_of_one_size_share_one_vision_call(policy):
    inp = policy.prepare_inputs(observation())
    vw = policy.model.vlm_with_expert
    calls = []
    hook = vw.vlm.model.vision_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            together = policy.model.embed_images(inp.images)
            assert len(calls) == 1
            apart = [vw.embed_image(img) for img in inp.images]
    finally:
        hook.remove()
    assert len(together) == len(apart) == len(CAMS)
    for a, b in zip(together, apart):
        assert torch.equal(a, b)
