import os
import sys
from pathlib import Path

import pytest

# Nothing in the tests may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# One compute thread per test process: `make test` runs two xdist workers on two cores, and torch's
# spinning worker threads slow everything down many times over when they oversubscribe the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests are headless: on Linux MuJoCo renders offscreen through EGL (Mesa's, see `make install`).
if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).parent))

from dataset_factory import make_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A 3-episode dataset (2 RGB cameras, aligned depth, force) shared read-only by tests."""
    return make_dataset(tmp_path_factory.mktemp("tiny") / "ds", episodes=3)


SMALL_SAMPLE_EPISODES = 4


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory) -> Path:
    """The bundled sample (the twin's scripted expert) at 48x64: 4 one-second episodes of the
    approach to the cube (the arm moves, the cube in view): RGB x2, depth, force, tip."""
    from optional_deps import require_mujoco_rendering

    require_mujoco_rendering()
    from rlbench_sms.data.sample import SampleConfig, build_sample

    config = SampleConfig(height=48, width=64, episode_seconds=1.0,
                          cache_dir=str(tmp_path_factory.mktemp("sample_sim_cache")))
    root = tmp_path_factory.mktemp("small_sample") / "ds"
    return build_sample(root, SMALL_SAMPLE_EPISODES, config, show_progress=False)


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> Path:
    from rlbench_sms.policy.smolvla import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "tiny_smolvlm")
