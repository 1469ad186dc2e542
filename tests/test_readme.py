"""The README's Python runs as written: its ```python blocks, in order, as one script.

They run where the README says they do: a folder holding ``data/sample`` (what ``make demo``
builds) and a ``make demo``-style run under ``outputs/train/runs``. Both are made small here.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import REPO, run_train_script

README = REPO / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def readme_python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall(README.read_text())


def test_readme_python_blocks_have_no_placeholders():
    blocks = readme_python_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        assert "[...]" not in block and "..." not in block.replace('"""', ""), block


@pytest.fixture()
def demo_workdir(tmp_path, small_sample, tiny_vlm_dir) -> Path:
    """A folder laid out as after ``make demo``: ``data/sample`` and one exported run."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data/sample").symlink_to(small_sample)
    models = tmp_path / "models"
    models.mkdir()
    (models / "tiny_smolvlm").symlink_to(tiny_vlm_dir)
    run_dir = tmp_path / "outputs/train/runs/2026-01-01_00-00-00"
    steps = 2
    result = run_train_script(
        ["experiment=demo", f"paths.models_dir={models}", f"run_dir={run_dir}",
         f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
         "trainer.limit_val_batches=1", "data.batch_size=2", "data.num_workers=0",
         "callbacks.progress_bar=null", "val_sample_batches=1", "policy.config.num_steps=2"],
        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "policy/best/config.json").exists()
    return tmp_path


def test_readme_python_runs_as_written(demo_workdir):
    script = demo_workdir / "readme_snippets.py"
    script.write_text("\n\n".join(readme_python_blocks()))
    result = subprocess.run([sys.executable, str(script)], cwd=demo_workdir, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (demo_workdir / "data/me/pick/meta/info.json").exists()
