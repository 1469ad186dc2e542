import os
import sys
from pathlib import Path

import pytest

# Nothing in the tests may reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).parent))

from dataset_factory import make_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A 3-episode dataset (2 RGB cameras, aligned depth, force) shared read-only by tests."""
    return make_dataset(tmp_path_factory.mktemp("tiny") / "ds", episodes=3)
