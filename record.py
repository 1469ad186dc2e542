"""Record teleoperated episodes: `python record.py robot=so100 camera=realsense force_sensor=serial
teleop=so100_leader dataset.repo_id=me/pick dataset.single_task="pick the red cube"`."""

import sys

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="conf", config_name="record", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from rlbench_sms.cli import run_checked
    from rlbench_sms.runtime.record_app import record

    code = run_checked(lambda: record(cfg), cfg, "recording failed")
    if code:
        sys.exit(code)   # Hydra drops return values; a failed recording must exit non-zero


if __name__ == "__main__":
    from rlbench_sms.cli import exit_on_bad_overrides

    exit_on_bad_overrides("record")     # an unknown option or key: one line, not Hydra's dump
    main()
