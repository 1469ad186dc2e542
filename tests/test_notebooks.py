"""The notebooks run top to bottom on a real dataset (executed, not just parsed)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"


def test_dataset_explorer_runs(tiny_dataset, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    monkeypatch.setenv("DATASET_ROOT", str(root))
    monkeypatch.setenv("EPISODE", "1")
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / "dataset_explorer.ipynb", as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    assert (tmp_path / "out/episode_001.png").stat().st_size > 1000
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "3 episodes" in text and "observation.state" in text
