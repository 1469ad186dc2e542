"""Evaluate a policy: `python evaluate.py robot=sim policy_path=outputs/train/runs/<time>/policy/best episodes=50`."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from rlbench_sms.cli import is_multirun, run_checked
    from rlbench_sms.runtime.evaluation import evaluate

    code = run_checked(lambda: evaluate(cfg), cfg, "evaluation failed")
    # In a sweep a failed run is recorded (run.json) and the others go on; the sweep exits 1 at the end.
    if code and not is_multirun():
        sys.exit(code)


if __name__ == "__main__":
    from rlbench_sms.cli import exit_on_bad_overrides

    exit_on_bad_overrides("evaluate")
    main()
