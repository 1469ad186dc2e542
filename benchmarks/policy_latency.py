"""SmolVLA inference latency: milliseconds per 50-action chunk, and peak memory. Prints ONE JSON line.

- Always, ``runner_cpu``: one tiny checkpoint directory saved by ``SmolVLAPolicy.save_pretrained``
  in LeRobot's layout (tiny VLM, 2 cameras of 480x640, state 6, chunk 50, 10 Euler steps), run the
  way the policy runner runs it: ``LocalPolicy.infer`` on the observation ``ObservationBuilder``
  gives for a device frame (uint8 (3, H, W) images, float32 state, task text), batch 1, CPU.
  With ``--lerobot-python`` the same directory and frame also go through LeRobot 0.4.4's own path
  (``benchmarks/lerobot_latency.py`` in that interpreter: ``prepare_observation_for_inference``,
  its pre/post processors, ``predict_action_chunk``); ``ratio`` = LeRobot p50 / ours p50. Same
  torch threads, iterations and warm-up on both sides, each side in fresh processes that take
  turns (``--rounds``), the samples of a side pooled; the frame travels as ``.npy`` files.
- Always, ``tiny_cpu``: the tiny random model (tests' size) in process, float images, batch 1, with
  the KV cache and without it.
- With CUDA: the real-size model (SmolVLM2-500M config built in code, random weights, no download)
  in LeRobot's checkpoint dtype mix (bf16 backbone and expert, fp32 heads and cross-attention k/v),
  2 cameras, batch 1: with the KV cache, without it, and with ``torch.compile`` of the sampler.
  Without CUDA that part reports ``{"skipped": "no CUDA"}``.

Each figure is end to end (tokenise, normalise, resize, prefix, 10 Euler steps, unnormalise) after
warm-up; p50/p99 over ``--iters`` runs.

The LeRobot interpreter needs ``lerobot==0.4.4`` with its ``smolvla`` extra (transformers 4.57,
num2words). It reads the checkpoint directory as we write it, but not the tiny VLM directory's
``tokenizer_config.json`` as transformers 5 saves it (``tokenizer_class: TokenizersBackend`` and
``extra_special_tokens`` as a list: transformers 4.57, which 0.4.4 pins, cannot build that
tokenizer). The benchmark rewrites that one file in the transformers 4 form
(``PreTrainedTokenizerFast``, the named special tokens under ``extra_special_tokens``), which both
versions read to the same token ids, so both sides load the one directory.

    python benchmarks/policy_latency.py [--iters 30] [--threads N] [--rounds 3] [--runner-only]
                                        [--lerobot-python /path/to/lerobot-venv/bin/python]
                                        [--compile-mode default] [--real-on-cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlbench_sms.policy.smolvla import SmolVLAPolicy, build_tiny_vlm, smolvlm2_500m_config, tiny_config  # noqa: E402
from rlbench_sms.policy.smolvla.tiny import build_tokenizer  # noqa: E402
from rlbench_sms.runtime.contract import load_contract  # noqa: E402
from rlbench_sms.runtime.local_policy import LocalPolicy  # noqa: E402
from rlbench_sms.runtime.observation import ObservationBuilder, blank_frame  # noqa: E402

CAMERAS = ("front", "wrist")
STATE_DIM = ACTION_DIM = 6
TASK = "pick up the red cube and place it in the bowl"
WARMUP = 3
MS_PER_S = 1000.0
OBSERVATION_FILE = "observation.json"          # read by benchmarks/lerobot_latency.py
LEROBOT_SCRIPT = Path(__file__).with_name("lerobot_latency.py")
# The transformers 5 tokenizer_config.json entries that transformers 4 (LeRobot 0.4.4) cannot read.
NAMED_SPECIAL_TOKENS = ("fake_image_token", "global_image_token", "image_token", "end_of_utterance_token")


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


def timed_calls(call, iters: int, warmup: int = WARMUP) -> list[float]:
    """Milliseconds of each of ``iters`` calls of ``call()`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * MS_PER_S)
    return samples


# ------------------------------------------------------------ the runner's path vs LeRobot 0.4.4
def write_transformers4_tokenizer_config(vlm_dir: Path) -> None:
    """Rewrite ``tokenizer_config.json`` in the form transformers 4.57 reads (see the module docstring)."""
    path = vlm_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    cfg["extra_special_tokens"] = {name: cfg.pop(name) for name in NAMED_SPECIAL_TOKENS if name in cfg}
    path.write_text(json.dumps(cfg, indent=2))


def checkpoint_stats() -> dict:
    """Made-up dataset stats (not the identity, so that (un)normalising does real work)."""
    spread = torch.linspace(0.5, 2.0, STATE_DIM)
    return {"observation.state": {"mean": torch.linspace(-1.0, 1.0, STATE_DIM), "std": spread},
            "action": {"mean": torch.linspace(1.0, -1.0, ACTION_DIM), "std": spread.flip(0)}}


def runner_checkpoint(workdir: Path) -> Path:
    """The tiny checkpoint directory both sides load, saved by our code in LeRobot's layout."""
    vlm_dir = build_tiny_vlm(workdir / "tiny_vlm")
    write_transformers4_tokenizer_config(vlm_dir)
    torch.manual_seed(0)
    policy = SmolVLAPolicy(tiny_config(vlm_dir, cameras=CAMERAS), dataset_stats=checkpoint_stats())
    return policy.save_pretrained(workdir / "checkpoint")


def device_frame(contract) -> dict[str, np.ndarray]:
    """A camera-like (noisy) device frame with every feature the policy reads: (H, W, 3) uint8, state."""
    rng = np.random.default_rng(0)
    frame = blank_frame(contract)
    for key, value in frame.items():
        if value.dtype == np.uint8:
            frame[key] = rng.integers(0, 256, size=value.shape, dtype=np.uint8)
        else:
            frame[key] = rng.standard_normal(value.shape).astype(value.dtype)
    return frame


def write_frame(frame: dict[str, np.ndarray], task: str, directory: Path) -> Path:
    """The frame as .npy files plus observation.json, for the measuring processes (no pickle)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = {}
    for index, (key, value) in enumerate(frame.items()):
        names[key] = f"{index:02d}.npy"
        np.save(directory / names[key], value, allow_pickle=False)
    (directory / OBSERVATION_FILE).write_text(json.dumps({"task": task, "arrays": names}))
    return directory


def read_frame(directory: Path) -> tuple[dict[str, np.ndarray], str]:
    spec = json.loads((directory / OBSERVATION_FILE).read_text())
    return {k: np.load(directory / name, allow_pickle=False) for k, name in spec["arrays"].items()}, spec["task"]


def ours_through_runner(checkpoint: Path, frame_dir: Path, iters: int, threads: int) -> dict:
    """``LocalPolicy.infer`` on the observation the runner builds from the frame (run in a child
    process, as LeRobot's side is): every sample in ms."""
    policy = LocalPolicy(checkpoint, device="cpu", num_threads=threads)
    frame, task = read_frame(frame_dir)
    builder = ObservationBuilder(policy.contract)
    builder.push(frame)
    observation = builder.build(task)
    policy.reset(seed=0)
    chunk = policy.infer(observation).actions
    assert chunk.shape == (50, ACTION_DIM) and np.isfinite(chunk).all()
    return {"threads": torch.get_num_threads(),
            "samples_ms": [round(s, 3) for s in timed_calls(lambda: policy.infer(observation), iters)]}


def measured(cmd: list[str]) -> dict:
    """The last JSON line of a measuring process (with its ``samples_ms``), or its error."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr.strip().splitlines() or ["failed without a message"])[-1]}
    return json.loads(lines[-1])


def pooled(runs: list[dict]) -> dict:
    """One side's rounds: the first error, or every round's samples as one set of percentiles."""
    for run in runs:
        if "samples_ms" not in run:
            return run
    info = {k: v for k, v in runs[0].items() if k != "samples_ms"}
    return {**info, "processes": len(runs), **percentiles([s for run in runs for s in run["samples_ms"]])}


def runner_cpu(workdir: Path, iters: int, threads: int, lerobot_python: str | None, rounds: int) -> dict:
    """Ours through the runner's path and LeRobot's on the same checkpoint and frame, each side in
    fresh processes of its own interpreter (neither inherits the other's heap or threads), taking
    turns for ``rounds`` rounds of ``iters / rounds`` calls, so that a slow spell of the machine
    falls on both sides alike."""
    checkpoint = runner_checkpoint(workdir)
    frame = device_frame(load_contract(checkpoint))
    frame_dir = write_frame(frame, TASK, workdir / "frame")
    per_round = ["--iters", str(max(1, iters // rounds)), "--threads", str(threads)]
    ours_cmd = [sys.executable, __file__, "--runner-child", str(checkpoint), str(frame_dir), *per_round]
    lerobot_cmd = None
    if not lerobot_python:
        lerobot: dict = {"skipped": "no --lerobot-python given"}
    elif not Path(lerobot_python).is_file():
        lerobot = {"skipped": f"--lerobot-python {lerobot_python}: no such file"}
    else:
        lerobot_cmd = [lerobot_python, str(LEROBOT_SCRIPT), str(checkpoint), str(frame_dir), *per_round,
                       "--warmup", str(WARMUP)]
    ours_runs, lerobot_runs = [], []
    for _ in range(rounds):
        ours_runs.append(measured(ours_cmd))
        if lerobot_cmd:
            lerobot_runs.append(measured(lerobot_cmd))
    ours = pooled(ours_runs)
    if lerobot_cmd:
        lerobot = pooled(lerobot_runs)
    result = {"checkpoint": "tiny, saved by SmolVLAPolicy.save_pretrained (LeRobot layout)", "threads": threads,
              "images": [list(v.shape) for v in frame.values() if v.dtype == np.uint8], "task": TASK,
              "ours": ours, "lerobot": lerobot}
    if "p50_ms" in result["lerobot"] and "p50_ms" in ours:
        result["ratio"] = round(result["lerobot"]["p50_ms"] / ours["p50_ms"], 2)
    return result


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
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(),
                    help="torch.set_num_threads for every CPU figure, ours and LeRobot's (default: torch's)")
    ap.add_argument("--lerobot-python", help="python of a venv with lerobot 0.4.4[smolvla] (the baseline)")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode for the CUDA run")
    ap.add_argument("--real-on-cpu", action="store_true", help="also run one real-size chunk on CPU")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runner_cpu: turns each side takes, a fresh process each, iters / rounds calls a turn")
    ap.add_argument("--runner-only", action="store_true", help="only the runner_cpu figures (ours vs LeRobot)")
    ap.add_argument("--runner-child", nargs=2, metavar=("CHECKPOINT", "FRAME_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.runner_child:
        print(json.dumps(ours_through_runner(Path(args.runner_child[0]), Path(args.runner_child[1]), args.iters,
                                             args.threads)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {"benchmark": "policy_latency", "chunk_size": 50, "cameras": len(CAMERAS), "batch": 1,
                  "torch": torch.__version__,
                  "runner_cpu": runner_cpu(work / "runner", args.iters, args.threads, args.lerobot_python,
                                           max(1, args.rounds))}
        if args.runner_only:
            print(json.dumps(result))
            return
        result["tiny_cpu"] = tiny_cpu(work, args.iters)
        if torch.cuda.is_available():
            result["real_cuda_bf16"] = real_cuda(work, args.iters, args.compile_mode)
        else:
            result["real_cuda_bf16"] = {"skipped": "no CUDA"}
        if args.real_on_cpu:
            result["real_cpu_smoke"] = real_cpu_smoke(work)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
