"""Baseline for benchmarks/policy_latency.py: LeRobot's own SmolVLA inference on the same checkpoint.

Runs in an interpreter that has ``lerobot`` (0.4.4) with its ``smolvla`` extra installed (never a
dependency of this project):

    /path/to/lerobot-venv/bin/python benchmarks/lerobot_latency.py CHECKPOINT OBSERVATION_DIR \
        [--iters 30 --warmup 3 --threads 2]

``OBSERVATION_DIR`` holds the device frame that policy_latency.py wrote: ``observation.json``
(``{"task": str, "arrays": {feature key: file name}}``) and one ``.npy`` per feature (images
(H, W, 3) uint8 as a camera gives them, the state float32), loaded with ``allow_pickle=False``.

Each timed call is LeRobot's own path from that frame to a chunk in robot units, as its
``predict_action`` does it: ``prepare_observation_for_inference`` (uint8 -> float32 [0, 1], channels
first, batch axis), the checkpoint's preprocessor (newline, tokenizer, normalizer),
``SmolVLAPolicy.predict_action_chunk`` (resize/pad, prefix, KV cache, Euler steps; fresh noise each
call) and the postprocessor (unnormalize, to CPU), under ``torch.inference_mode``. Warm-up calls are
not timed. Prints one JSON line with every sample in milliseconds (the caller takes percentiles the
same way for both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MS_PER_S = 1000.0
OBSERVATION_FILE = "observation.json"


def load_frame(directory: Path) -> tuple[dict, str]:
    """The device frame (feature key -> numpy array) and the task text."""
    import numpy as np

    spec = json.loads((directory / OBSERVATION_FILE).read_text())
    frame = {key: np.load(directory / name, allow_pickle=False) for key, name in spec["arrays"].items()}
    return frame, spec["task"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("observation", type=Path, help="directory with observation.json and the .npy arrays")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, required=True, help="torch.set_num_threads (same as ours)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import lerobot
    import transformers
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.policies.utils import prepare_observation_for_inference

    device = torch.device("cpu")
    policy = SmolVLAPolicy.from_pretrained(str(args.checkpoint))
    policy.to(device).eval()
    preprocessor, postprocessor = make_pre_post_processors(policy.config, pretrained_path=str(args.checkpoint))
    frame, task = load_frame(args.observation)

    def chunk() -> torch.Tensor:
        with torch.inference_mode():
            # prepare_observation_for_inference converts the dict it is given in place: a fresh copy each call.
            observation = prepare_observation_for_inference(dict(frame), device, task, "")
            observation = preprocessor(observation)
            actions = policy.predict_action_chunk(observation)
            return postprocessor(actions)

    for _ in range(args.warmup):
        chunk()
    samples = []
    for _ in range(args.iters):
        start = time.perf_counter()
        actions = chunk()
        samples.append((time.perf_counter() - start) * MS_PER_S)
    if actions.shape[:2] != (1, policy.config.chunk_size) or not torch.isfinite(actions).all():
        raise SystemExit(f"LeRobot returned a chunk of shape {tuple(actions.shape)} (or non-finite values)")
    print(json.dumps({"lerobot": getattr(lerobot, "__version__", "?"), "torch": torch.__version__,
                      "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                      "chunk_shape": list(actions.shape), "samples_ms": [round(s, 3) for s in samples]}))


if __name__ == "__main__":
    main()
