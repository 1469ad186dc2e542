"""Training throughput: samples/s and the share of step time spent waiting for data.

    python benchmarks/train_throughput.py [--dataset data/sample] [--steps 60] [--workers 0 2]
        [--modality rgb+depth+force] [--batch-size 8] [--real-size]

Prints one JSON line. The tiny SmolVLA (``experiment=demo``) trains on the CPU through the real
``train.py`` config and Lightning loop (validation off); ``perf/*`` figures come from the
:class:`ThroughputMonitor` callback, first 5 steps left out. Each worker count is a separate fit,
so the "0 workers" figure is the baseline the loader workers are measured against.

``--real-size`` (needs CUDA): the SmolVLM2-500M-sized SmolVLA (architecture built in code, random
weights, nothing downloaded) in bf16 at batch 64, the setting LeRobot reports ~122 samples/s for
on an RTX 4090. Without CUDA it is reported as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from rlbench_sms.training.callbacks import ThroughputMonitor  # noqa: E402
from rlbench_sms.training.plan import plan_training  # noqa: E402


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def measure(overrides: list[str], steps: int) -> dict:
    from hydra.utils import instantiate

    from rlbench_sms.training.build import build_module
    from rlbench_sms.training.run import build_trainer

    cfg = compose_cfg(overrides + [f"trainer.max_steps={steps}", "trainer.limit_val_batches=0",
                                   "callbacks=none", "~logger"])
    plan = plan_training(cfg)
    datamodule = instantiate(cfg.data, keys=plan.keys)
    module = build_module(cfg, plan)
    monitor = ThroughputMonitor(skip=5)
    trainer = build_trainer(cfg, [monitor], [])
    trainer.fit(module, datamodule=datamodule)
    out = {k.removeprefix("perf/"): round(v, 3) for k, v in monitor.summary().items()}
    out["steps_timed"] = max(0, monitor.steps - monitor.skip)
    return out


def real_size_vlm(workdir: Path) -> Path:
    """A VLM directory with SmolVLM2-500M's architecture and a small offline tokenizer."""
    from rlbench_sms.policy.smolvla import smolvlm2_500m_config
    from rlbench_sms.policy.smolvla.tiny import build_tokenizer

    d = workdir / "smolvlm2_500m_config_only"
    d.mkdir(parents=True, exist_ok=True)
    smolvlm2_500m_config().save_pretrained(d)
    build_tokenizer().save_pretrained(d)        # its ids fit the real 49280-token vocabulary
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, default=REPO / "data" / "sample")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--modality", default="rgb+depth+force")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--real-size", action="store_true")
    args = ap.parse_args()
    if not (args.dataset / "meta" / "info.json").is_file():
        sys.exit(f"error: {args.dataset} is not a dataset (build it with `make demo` or "
                 f"`python -m rlbench_sms.data.sample {args.dataset}`)")
    result: dict = {"benchmark": "train_throughput", "dataset": str(args.dataset), "modality": args.modality,
                    "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        base = ["experiment=demo", f"modality={args.modality}", f"dataset.root={args.dataset}",
                f"paths.models_dir={tmp}/models", f"run_dir={tmp}/run", f"data.batch_size={args.batch_size}"]
        result["tiny_cpu"] = {}
        for workers in args.workers:
            t0 = time.perf_counter()
            figures = measure(base + [f"data.num_workers={workers}"], args.steps)
            figures["wall_s"] = round(time.perf_counter() - t0, 1)
            result["tiny_cpu"][f"workers_{workers}"] = figures
        if args.real_size:
            if torch.cuda.is_available():
                vlm = real_size_vlm(Path(tmp))
                result["real_size_cuda_bf16"] = measure(
                    base[:-1] + ["policy=smolvla", f"policy.vlm_path={vlm}", "policy.config.load_vlm_weights=false",
                                 "trainer=gpu", "data.batch_size=64", "data.num_workers=8"], args.steps)
                result["gpu"] = torch.cuda.get_device_name()
            else:
                result["real_size_cuda_bf16"] = {"skipped": "no CUDA"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
