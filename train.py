"""Train a SmolVLA policy: `python train.py modality=rgb+depth+force`, sweeps with `-m`.

See conf/train.yaml for the options and README.md for multi-GPU, multi-node and SLURM commands.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from rlbench_sms.cli import exit_if_missing

    exit_if_missing(cfg)        # a missing setting is named in a second, before torch loads
    from rlbench_sms.training.run import entry

    return entry(cfg)


if __name__ == "__main__":
    from rlbench_sms.cli import exit_on_bad_overrides

    exit_on_bad_overrides("train")     # an unknown option or key: one line, not Hydra's dump
    main()
