"""What a finished training run prints: its final metrics as a table, then the paths to copy.

The paths are plain lines after the table, never table cells: a cell is cut (``/.../checkpo…``)
or folded over several lines at the terminal's width, and a user copies these into the next
command (``ckpt_path=...``, ``evaluate.py policy=...``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

# The final metrics shown, in this order, when the run logged them.
REPORT_METRICS = ("train/loss", "val/loss", "val/action_mse")
METRIC_FORMAT = "{:.4f}"


def report_paths(record: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, path) of what the run wrote, in the order a user needs them."""
    paths = [("run folder", record["run_dir"])]
    if record.get("export_dir"):
        paths.append(("exported policy", record["export_dir"]))
    if record.get("last_checkpoint"):
        paths.append(("resume from", record["last_checkpoint"]))
    paths.append(("metrics", str(Path(record["run_dir"]) / "csv" / "metrics.csv")))
    return paths


def print_report(record: dict[str, Any], file: TextIO | None = None) -> None:
    """Print the end-of-training report of a completed run's ``run.json`` record to ``file``
    (stdout by default)."""
    from rich.console import Console
    from rich.table import Table

    out = file if file is not None else sys.stdout
    title = f"training finished: {record['modality']}, seed {record['seed']}"
    table = Table(title=title, show_header=False, min_width=len(title))   # the title on one line
    for key in REPORT_METRICS:
        value = record["metrics"].get(key)
        if value is not None:
            table.add_row(key, METRIC_FORMAT.format(value))
    table.add_row("steps", str(record.get("global_step")))
    Console(file=out).print(table)
    width = max(len(label) for label, _ in report_paths(record)) + 1
    for label, path in report_paths(record):
        print(f"{label + ':':<{width}} {path}", file=out, flush=True)
