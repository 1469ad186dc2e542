"""SmolVLA inference latency: milliseconds per 50-action chunk, and peak memory. Prints ONE JSON line.

- Always: the tiny random model (tests' size) on CPU, 2 cameras of 480x640, batch 1, KV cache on.
- With CUDA: the real-size model (SmolVLM2-500M config built in code, random weights, no download)
  in LeRobot's checkpoint dtype mix (bf16 backbone and expert, fp32 heads and cross-attention k/v),
  2 cameras, batch 1: with the KV cache, without it, and with ``torch.compile`` of the sampler.
  Without CUDA that part reports ``{"skipped": "no CUDA"}``.

Each figure is end to end (``predict_action_chunk``: tokenise, normalise, resize, prefix, 10
Euler steps, unnormalise) after warm-up; p50/p99 over ``--iters`` runs.

    python benchmarks/policy_latency.py [--iters 30] [--compile-mode default] [--real-on-cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlbench_sms.policy.smolvla import SmolVLAPolicy, build_tiny_vlm, smolvlm2_500m_config, tiny_config  # noqa: E402
from rlbench_sms.policy.smolvla.tiny import build_tokenizer  # noqa: E402

CAMERAS = ("front", "wrist")
STATE_DIM = ACTION_DIM = 6


def stats() -> dict:
    return {"observation.state": {"mean": torch.zeros(STATE_DIM), "std": torch.ones(STATE_DIM)},
            "action": {"mean": torch.zeros(ACTION_DIM), "std": torch.ones(ACTION_DIM)}}


def observation(device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    obs = {f"observation.images.{c}": torch.rand(1, 3, 480, 640, generator=g) for c in CAMERAS}
    obs["observation.state"] = torch.randn(1, STATE_DIM, generator=g)
    obs["task"] = ["pick up the red cube and place it in the bowl"]
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in obs.items()}


def percentiles(samples_ms: list[float]) -> dict:
    t = torch.tensor(samples_ms, dtype=torch.float64)
    return {"p50_ms": round(float(t.quantile(0.5)), 2), "p99_ms": round(float(t.quantile(0.99)), 2),
            "n": len(samples_ms)}


def time_chunks(policy: SmolVLAPolicy, obs: dict, iters: int, warmup: int, use_cache: bool, sync) -> dict:
    noise = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim, device=policy.device)
    for _ in range(warmup):
        policy.predict_action_chunk(obs, noise=noise, use_cache=use_cache)
    sync()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        chunk = policy.predict_action_chunk(obs, noise=noise, use_cache=use_cache)
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    assert chunk.shape == (1, 50, ACTION_DIM) and torch.isfinite(chunk).all()
    return percentiles(samples)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def tiny_cpu(workdir: Path, iters: int) -> dict:
    torch.manual_seed(0)
    rss_before = peak_rss_mib()
    policy = SmolVLAPolicy(tiny_config(build_tiny_vlm(workdir / "tiny_vlm"), cameras=CAMERAS), dataset_stats=stats())
    result = {"params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 3),
              "threads": torch.get_num_threads(),
              "kv_cache": time_chunks(policy, observation("cpu"), iters, 3, True, lambda: None),
              "no_cache": time_chunks(policy, observation("cpu"), iters, 3, False, lambda: None)}
    result["peak_rss_mib"] = peak_rss_mib()
    result["peak_rss_before_model_mib"] = rss_before
    return result


def real_vlm_dir(workdir: Path) -> Path:
    """The SmolVLM2-500M config with the offline test tokenizer (ids fit its 49280 vocabulary)."""
    d = workdir / "smolvlm2_500m_config_only"
    d.mkdir(parents=True, exist_ok=True)
    smolvlm2_500m_config().save_pretrained(d)
    build_tokenizer().save_pretrained(d)
    return d


def real_policy(workdir: Path, device: str) -> SmolVLAPolicy:
    torch.manual_seed(0)
    cfg = tiny_config(real_vlm_dir(workdir), cameras=CAMERAS, num_vlm_layers=16, device=device)
    policy = SmolVLAPolicy(cfg, dataset_stats=stats())
    # The dtype mix of lerobot/smolvla_base: bf16 everywhere but the five heads and the cross-layer
    # k/v projections (created as plain fp32 nn.Linear by LeRobot).
    vw = policy.model.vlm_with_expert
    vw.to(torch.bfloat16)
    for idx, layer in enumerate(vw.lm_expert.layers):
        if vw.is_cross_layer(idx):
            layer.self_attn.k_proj.float()
            layer.self_attn.v_proj.float()
    return policy.to(device).eval()


def real_cuda(workdir: Path, iters: int, compile_mode: str) -> dict:
    device = "cuda"
    sync = torch.cuda.synchronize
    policy = real_policy(workdir, device)
    obs = observation(device)
    n_params = sum(p.numel() for p in policy.parameters())
    out = {"gpu": torch.cuda.get_device_name(0), "params_m": round(n_params / 1e6, 1)}
    for name, use_cache in (("kv_cache", True), ("no_cache", False)):
        torch.cuda.reset_peak_memory_stats()
        out[name] = time_chunks(policy, obs, iters, 3, use_cache, sync)
        out[name]["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    eager_sampler = policy.model.sample_actions
    policy.model.sample_actions = torch.compile(eager_sampler, mode=compile_mode)
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    policy.predict_action_chunk(obs, noise=torch.randn(1, 50, 32, device=device))  # compiles
    sync()
    compile_s = time.perf_counter() - start
    out["compiled_kv_cache"] = time_chunks(policy, obs, iters, 2, True, sync)
    out["compiled_kv_cache"].update(compile_s=round(compile_s, 1), mode=compile_mode,
                                    peak_mem_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1))
    policy.model.sample_actions = eager_sampler
    return out


def real_cpu_smoke(workdir: Path) -> dict:
    """One real-size chunk on CPU, to check the real-size path where there is no GPU (slow)."""
    policy = real_policy(workdir, "cpu")
    return {"params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 1),
            "kv_cache": time_chunks(policy, observation("cpu"), 1, 0, True, lambda: None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode for the CUDA run")
    ap.add_argument("--real-on-cpu", action="store_true", help="also run one real-size chunk on CPU")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"benchmark": "policy_latency", "chunk_size": 50, "cameras": len(CAMERAS), "batch": 1,
                  "torch": torch.__version__, "tiny_cpu": tiny_cpu(work, args.iters)}
        if torch.cuda.is_available():
            result["real_cuda_bf16"] = real_cuda(work, args.iters, args.compile_mode)
        else:
            result["real_cuda_bf16"] = {"skipped": "no CUDA"}
        if args.real_on_cpu:
            result["real_cpu_smoke"] = real_cpu_smoke(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
