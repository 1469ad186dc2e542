"""Summarise a Hydra sweep: one table row per run, mean ± std over seeds per group, a figure.

    python train.py -m modality=rgb,rgb+depth,rgb+depth+force seed=0,1   # writes it at the end
    python -m rlbench_sms.training.sweep_summary multirun/2025-01-31/12-00-00 [--group-by modality]

Each run folder of a sweep (``<sweep_dir>/<override_dirname>/``) holds ``.hydra/overrides.yaml``
and, written by the training code, ``run.json`` (status, overrides, final metrics, error, duration)
and ``csv/metrics.csv`` (Lightning's CSVLogger: one column per metric, sparse rows). A folder with
overrides but no ``run.json`` is a run that was killed; it counts as failed.

Written into the sweep folder:

- ``summary.csv``: the per-run table (run folder, status, one column per override key, metrics,
  duration, step, error);
- ``summary_groups.csv``: per group mean and sample std (ddof=1) over completed runs;
- ``summary.md``: the grouped table with ``mean ± std`` cells and the failed runs with their error;
- ``summary.png``: bars per main metric per group (std error bars) and the val/loss curves.

At the end of a sweep (the Hydra callback) the process exits with status 1 and one line on stderr
when any run of that sweep failed; failed runs do not stop the sweep itself.

Groups are every override key except ``seed`` unless ``group_by`` says otherwise. The std of a
single completed seed is undefined: NaN in the tables, "—" in the markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import yaml
from hydra.experimental.callback import Callback

from rlbench_sms.cli import doc_description

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
OVERRIDES = Path(".hydra") / "overrides.yaml"
HYDRA_CONFIG = Path(".hydra") / "hydra.yaml"
CURVES_DIR = "csv"
CURVES_FILE = "metrics.csv"
OPTUNA_RESULTS = "optimization_results.yaml"
COMPLETED = "completed"
FAILED = "failed"
KILLED_ERROR = "no run.json (killed?)"
SEED = "seed"
# The metrics the markdown table and the bar chart show, in this order, when present.
MAIN_METRICS = ("val/loss", "val/action_mse", "train/loss")
CURVE_METRICS = ("val/loss", "train/loss")   # the first one any run logged is plotted
# Columns of the per-run table that are neither override keys nor metrics.
LEADING_COLUMNS = ("run", "status")
TRAILING_COLUMNS = ("duration_s", "global_step", "error", "export_dir")
METRIC_PREFIXES = ("train/", "val/", "test/", "best/")   # only used when a table lost its attrs
NO_VALUE = "—"
EXIT_RUNS_FAILED = 1   # the sweep's exit status when any of its runs failed
ALL_RUNS = "all runs"

OUTPUT_FILES = {"csv": "summary.csv", "groups_csv": "summary_groups.csv", "md": "summary.md",
                "png": "summary.png"}


class SweepSummaryError(Exception):
    """The sweep folder cannot be summarised (missing, no runs, unknown column); one-line message."""


# ---------------------------------------------------------------------------------------------
# Collecting runs
# ---------------------------------------------------------------------------------------------

def _natural_key(text: str) -> list:
    """``seed=2`` before ``seed=10``, ``modality=rgb+depth,...`` before ``modality=rgb+depth+force,...``."""
    return [[int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", part)]
            for part in re.split(r"[,/]", text)]


def find_run_dirs(sweep_dir: str | Path) -> list[Path]:
    """Run folders below ``sweep_dir`` (one holding ``.hydra/overrides.yaml`` or ``run.json``), at
    any depth, never looking inside a run folder (its checkpoints, exports, nested outputs)."""
    sweep_dir = Path(sweep_dir)
    found = []
    for dirpath, dirnames, _ in os.walk(sweep_dir):
        here = Path(dirpath)
        if (here / OVERRIDES).is_file() or (here / RUN_JSON).is_file():
            found.append(here)
            dirnames[:] = []
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(found, key=lambda p: _natural_key(p.relative_to(sweep_dir).as_posix()))


def parse_value(text: str) -> Any:
    """An override value as Python: ints and floats as numbers, ``true``/``false``/``null``,
    anything else (``rgb+depth``, ``[a,b]``) as the string it was."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["modality=rgb", "+optimizer.lr=1e-4", "~logger"]`` -> ``{"modality": "rgb",
    "optimizer.lr": 0.0001, "logger": "(deleted)"}``; ``hydra.*`` overrides are left out."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = str(item).partition("=")
        deleted = key.startswith("~")
        key = key.lstrip("+~").strip()
        if not key or key.startswith("hydra."):
            continue
        parsed[key] = parse_value(value) if sep else ("(deleted)" if deleted else None)
    return parsed


def _one_line(text: Any) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else str(text)


def _read_run(sweep_dir: Path, run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """(fixed fields, overrides, metrics) of one run folder."""
    rel = run_dir.relative_to(sweep_dir).as_posix()
    info: dict[str, Any] = {}
    error = None
    if (run_dir / RUN_JSON).is_file():
        try:
            info = json.loads((run_dir / RUN_JSON).read_text())
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            info, error = {}, f"unreadable {RUN_JSON}: {_one_line(e)}"
    else:
        error = KILLED_ERROR
    overrides_list = info.get("overrides")
    if not isinstance(overrides_list, list) and (run_dir / OVERRIDES).is_file():
        try:
            overrides_list = yaml.safe_load((run_dir / OVERRIDES).read_text()) or []
        except (OSError, yaml.YAMLError) as e:
            overrides_list, error = [], error or f"unreadable {OVERRIDES.as_posix()}: {_one_line(e)}"
    overrides = parse_overrides(overrides_list if isinstance(overrides_list, list) else [])
    # A preset chosen by an experiment file, not on the command line, still names the run's group.
    for key in ("modality", SEED):
        if key not in overrides and info.get(key) is not None:
            overrides[key] = info[key]
    status = COMPLETED if info.get("status") == COMPLETED and error is None else FAILED
    if status == FAILED and error is None:
        error = _one_line(info["error"]) if info.get("error") else "failed (no error recorded)"
    metrics = {}
    for name, value in (info.get("metrics") or {}).items():
        try:
            metrics[str(name)] = float(value)
        except (TypeError, ValueError):
            continue
    fixed = {"run": rel, "status": status, "duration_s": info.get("duration_s"),
             "global_step": info.get("global_step"), "error": error if status == FAILED else None,
             "export_dir": info.get("export_dir")}
    return fixed, overrides, metrics


def excluded_keys(run_dir: Path) -> list[str]:
    """``hydra.job.config.override_dirname.exclude_keys`` of a run (keys such as ``paths.output_dir``
    that Hydra leaves out of the folder name because they do not tell runs apart)."""
    try:
        hydra_cfg = yaml.safe_load((run_dir / HYDRA_CONFIG).read_text()) or {}
        keys = hydra_cfg["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return []
    return [str(k) for k in keys] if isinstance(keys, list) else []


def order_metrics(names: Iterable[str]) -> list[str]:
    """Main metrics first (in ``MAIN_METRICS`` order), then the others alphabetically."""
    names = set(names)
    return [m for m in MAIN_METRICS if m in names] + sorted(names - set(MAIN_METRICS))


def collect_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per run folder below ``sweep_dir``: ``run`` (folder relative to the sweep),
    ``status`` (``completed``/``failed``), one column per override key, one per metric,
    ``duration_s``, ``global_step``, ``error`` (one line, failed runs only), ``export_dir``.

    ``attrs`` carries ``sweep_dir``, ``override_keys``, ``metrics`` (column lists) and
    ``excluded_keys`` (Hydra's ``override_dirname.exclude_keys``, read from the first run).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepSummaryError(f"sweep folder {sweep_dir} does not exist")
    run_dirs = find_run_dirs(sweep_dir)
    if not run_dirs:
        raise SweepSummaryError(f"no runs in {sweep_dir} (no folder below it holds "
                                f"{OVERRIDES.as_posix()} or {RUN_JSON})")
    rows, keys, metric_names = [], {}, set()
    for run_dir in run_dirs:
        fixed, overrides, metrics = _read_run(sweep_dir, run_dir)
        keys.update(dict.fromkeys(overrides))   # first-seen order
        metric_names.update(metrics)
        rows.append({**overrides, **metrics, **fixed})
    metrics = order_metrics(metric_names)
    # An override key named like a fixed column or a metric would be ambiguous: the run's own field wins.
    override_keys = [k for k in keys if k not in LEADING_COLUMNS + TRAILING_COLUMNS and k not in metric_names]
    columns = [*LEADING_COLUMNS, *override_keys, *metrics, *TRAILING_COLUMNS]
    runs = pd.DataFrame(rows).reindex(columns=columns)
    try:   # stays integer next to a killed run's <NA>
        runs["global_step"] = pd.to_numeric(runs["global_step"]).astype("Int64")
    except (TypeError, ValueError):
        pass
    runs.attrs.update(sweep_dir=str(sweep_dir), override_keys=override_keys, metrics=metrics,
                      excluded_keys=excluded_keys(run_dirs[0]))
    return runs


def override_keys(runs: pd.DataFrame) -> list[str]:
    """The override-key columns of a per-run table."""
    if "override_keys" in runs.attrs:
        return [k for k in runs.attrs["override_keys"] if k in runs.columns]
    return [c for c in runs.columns if c not in LEADING_COLUMNS + TRAILING_COLUMNS
            and not str(c).startswith(METRIC_PREFIXES)]


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The metric columns of a per-run table, main metrics first."""
    if "metrics" in runs.attrs:
        return [m for m in runs.attrs["metrics"] if m in runs.columns]
    return order_metrics(c for c in runs.columns if str(c).startswith(METRIC_PREFIXES))


# ---------------------------------------------------------------------------------------------
# Grouping
# ---------------------------------------------------------------------------------------------

def _clean(value: Any) -> Any:
    """NaN (a key a run did not set) as None, numpy scalars as Python ones, so keys compare and hash."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def group_keys(runs: pd.DataFrame, group_by: Sequence[str] | None = None) -> list[str]:
    """``group_by`` checked against the table, or by default every override key except ``seed``
    and the keys Hydra excludes from folder names (``paths.output_dir``, ``ckpt_path``, ...).

    Of the default keys, those with one value across the sweep are dropped when another key
    varies: they never split a group and would only widen the table (``-m modality=rgb,rgb+depth
    trainer.max_steps=50`` groups by modality); when none varies they all stay, to name the group.
    """
    if group_by is None:
        excluded = set(runs.attrs.get("excluded_keys", ()))
        keys = [k for k in override_keys(runs) if k != SEED and k not in excluded]
        varying = [k for k in keys if len({_clean(v) for v in runs[k]}) > 1]
        return varying or keys
    keys = list(group_by)
    unknown = [k for k in keys if k not in runs.columns]
    if unknown:
        raise SweepSummaryError(f"cannot group by {unknown[0]!r}: not a column of the run table "
                                f"(override keys: {', '.join(override_keys(runs)) or 'none'})")
    return keys


def group_label(values: Sequence[Any], keys: Sequence[str]) -> str:
    """``rgb+depth`` for one key, ``modality=rgb,optimizer.lr=0.001`` for several, ``all runs`` for none."""
    if not keys:
        return ALL_RUNS
    if len(keys) == 1:
        return str(values[0])
    return ",".join(f"{k}={v}" for k, v in zip(keys, values))


def _run_groups(runs: pd.DataFrame, keys: Sequence[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """(key values, rows) per group, sorted by key values (unset last) when they compare, else in
    order of appearance."""
    tuples = [tuple(_clean(v) for v in row) for row in runs[list(keys)].itertuples(index=False, name=None)]
    order = list(dict.fromkeys(tuples))
    try:
        order.sort(key=lambda t: tuple((v is None, 0 if v is None else v) for v in t))
    except TypeError:
        pass
    return [(t, runs[[u == t for u in tuples]]) for t in order]


def summarize(runs: pd.DataFrame, group_by: Sequence[str] | None = None,
              metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per group: ``group`` (a label), the key columns, ``<metric>_mean`` and
    ``<metric>_std`` over the completed runs (sample std, ddof=1: NaN for a single run),
    ``n_completed`` and ``n_failed``."""
    keys = group_keys(runs, group_by)
    metrics = metric_columns(runs) if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in runs.columns]
    if unknown:
        raise SweepSummaryError(f"no metric {unknown[0]!r} in the run table "
                                f"(metrics: {', '.join(metric_columns(runs)) or 'none'})")
    rows = []
    for values, frame in _run_groups(runs, keys):
        done = frame[frame["status"] == COMPLETED]
        row: dict[str, Any] = {"group": group_label(values, keys), **dict(zip(keys, values))}
        for m in metrics:
            col = pd.to_numeric(done[m], errors="coerce").dropna()
            row[f"{m}_mean"] = float(col.mean()) if len(col) else math.nan
            row[f"{m}_std"] = float(col.std(ddof=1)) if len(col) > 1 else math.nan
        row["n_completed"] = len(done)
        row["n_failed"] = len(frame) - len(done)
        rows.append(row)
    columns = ["group", *keys, *(f"{m}_{s}" for m in metrics for s in ("mean", "std")), "n_completed", "n_failed"]
    summary = pd.DataFrame(rows, columns=columns)
    summary.attrs.update(group_by=keys, metrics=metrics)
    return summary


# ---------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------

def curves_file(run_dir: Path) -> Path | None:
    """``<run>/csv/metrics.csv``, or the newest ``metrics.csv`` below ``<run>/csv/`` (CSVLogger's
    ``version_N`` layout)."""
    direct = run_dir / CURVES_DIR / CURVES_FILE
    if direct.is_file():
        return direct
    nested = sorted((run_dir / CURVES_DIR).glob(f"**/{CURVES_FILE}"), key=lambda p: _natural_key(p.as_posix()))
    return nested[-1] if nested else None


def load_curves(runs: pd.DataFrame, sweep_dir: str | Path | None = None, metric: str | None = None,
                group_by: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table ``run, group, status, metric, step, value`` of one metric over the steps of each
    run that has a CSV log (rows where the metric was not logged dropped). ``metric`` None: the
    first of ``CURVE_METRICS`` any run logged. Empty when no run has a usable CSV."""
    sweep_dir = Path(sweep_dir if sweep_dir is not None else runs.attrs["sweep_dir"])
    keys = group_keys(runs, group_by)
    logs = {}
    for _, row in runs.iterrows():
        path = curves_file(sweep_dir / row["run"])
        if path is None:
            continue
        try:
            logs[row["run"]] = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as e:
            log.warning("skipping unreadable %s: %s", path, _one_line(e))
    if metric is None:
        metric = next((m for m in CURVE_METRICS if any(m in f.columns for f in logs.values())), CURVE_METRICS[0])
    parts = []
    for _, row in runs.iterrows():
        frame = logs.get(row["run"])
        if frame is None or metric not in frame.columns or "step" not in frame.columns:
            continue
        values = pd.to_numeric(frame[metric], errors="coerce")
        steps = pd.to_numeric(frame["step"], errors="coerce")
        keep = values.notna() & steps.notna()
        if not keep.any():
            continue
        parts.append(pd.DataFrame({
            "run": row["run"], "group": group_label([_clean(row[k]) for k in keys], keys),
            "status": row["status"], "metric": metric, "step": steps[keep].astype(int).to_numpy(),
            "value": values[keep].to_numpy()}))
    columns = ["run", "group", "status", "metric", "step", "value"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib's object API: no pyplot, so no global backend switch and no open-figure leak)
# ---------------------------------------------------------------------------------------------

def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _panel_width(n_groups: int) -> float:
    """Inches for one bar panel: room for the rotated group labels, capped for big optuna sweeps."""
    return min(12.0, max(4.0, 0.9 * n_groups + 2.0))


def _shown_metrics(summary: pd.DataFrame, metrics: Sequence[str] | None) -> list[str]:
    available = summary.attrs.get("metrics") or [c[: -len("_mean")] for c in summary.columns if c.endswith("_mean")]
    if metrics is not None:
        return [m for m in metrics if m in available]
    main = [m for m in MAIN_METRICS if m in available]
    return main or list(available)


def plot_bars(summary: pd.DataFrame, metrics: Sequence[str] | None = None, axes: Sequence[Any] | None = None):
    """One bar panel per metric: the group means with ±std error bars. Returns the figure."""
    from matplotlib.figure import Figure

    metrics = _shown_metrics(summary, metrics)
    if axes is None:
        fig = Figure(figsize=(_panel_width(len(summary)) * max(1, len(metrics)), 4), layout="constrained")
        axes = fig.subplots(1, max(1, len(metrics)), squeeze=False)[0]
    fig = axes[0].figure
    labels = summary["group"].astype(str).tolist()
    colors = _colors(labels)
    x = range(len(labels))
    for ax, m in zip(axes, metrics):
        means = summary[f"{m}_mean"].to_numpy(dtype=float)
        stds = summary[f"{m}_std"].fillna(0.0).to_numpy(dtype=float)
        ax.bar(x, means, yerr=stds, capsize=4, color=[colors[lab] for lab in labels])
        ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(m)
        for i, n in enumerate(summary["n_completed"]):
            if n == 0:
                ax.annotate("no completed run", (i, 0), ha="center", va="bottom", fontsize=7, rotation=90)
    return fig


def plot_curves(curves: pd.DataFrame, ax: Any = None, group_order: Sequence[str] | None = None):
    """One line per run, coloured by group (failed runs dotted). Returns the figure."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if ax is None:
        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.subplots()
    groups = list(group_order) if group_order is not None else list(dict.fromkeys(curves["group"]))
    colors = _colors(groups + [g for g in dict.fromkeys(curves["group"]) if g not in groups])
    for run, frame in curves.groupby("run", sort=False):
        ax.plot(frame["step"], frame["value"], color=colors[frame["group"].iloc[0]], alpha=0.85,
                linestyle="-" if frame["status"].iloc[0] == COMPLETED else ":",
                marker="o" if len(frame) == 1 else None)   # a single logged point is not a line
    metric = curves["metric"].iloc[0] if len(curves) else CURVE_METRICS[0]
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per run (dotted: failed)")
    present = [g for g in colors if g in set(curves["group"])]
    ax.legend([Line2D([], [], color=colors[g]) for g in present], present, fontsize=8)
    return ax.figure


def summary_figure(summary: pd.DataFrame, curves: pd.DataFrame | None = None,
                   metrics: Sequence[str] | None = None):
    """Bars per main metric on top, the learning curves below (when there are any). None when
    there is nothing to draw (no completed metric and no curve)."""
    from matplotlib.figure import Figure

    metrics = _shown_metrics(summary, metrics)
    has_bars = bool(metrics) and summary[[f"{m}_mean" for m in metrics]].notna().any().any()
    has_curves = curves is not None and len(curves) > 0
    if not has_bars and not has_curves:
        return None
    cols = max(1, len(metrics)) if has_bars else 1
    rows = int(has_bars) + int(has_curves)
    fig = Figure(figsize=(max(7.0, _panel_width(len(summary)) * cols), 4.2 * rows), layout="constrained")
    grid = fig.add_gridspec(rows, cols)
    if has_bars:
        plot_bars(summary, metrics, [fig.add_subplot(grid[0, c]) for c in range(cols)])
    if has_curves:
        plot_curves(curves, fig.add_subplot(grid[rows - 1, :]), summary["group"].astype(str).tolist())
    return fig


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------

def format_number(x: Any) -> str:
    """Three decimals (``0.512``), or three significant digits for tiny or huge values; NaN "—"."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return NO_VALUE
    x = float(x)
    if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e5):
        return f"{x:.3g}"
    return f"{x:.3f}"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def read_optuna_results(sweep_dir: str | Path) -> dict[str, Any] | None:
    """``optimization_results.yaml`` of an optuna sweep (``best_params``, ``best_value``), or None."""
    path = Path(sweep_dir) / OPTUNA_RESULTS
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def render_markdown(runs: pd.DataFrame, summary: pd.DataFrame, metrics: Sequence[str] | None = None,
                    title: str | None = None, optuna: dict[str, Any] | None = None) -> str:
    """The grouped ``mean ± std`` table, then the failed runs with their one-line error."""
    metrics = _shown_metrics(summary, metrics)
    keys = summary.attrs.get("group_by", [])
    n_ok = int((runs["status"] == COMPLETED).sum())
    n_failed = len(runs) - n_ok
    lines = [f"# Sweep summary{f': {title}' if title else ''}", ""]
    lines.append(f"{len(runs)} runs: {n_ok} completed, {n_failed} failed. Cells: mean ± std over the "
                 f"completed runs ({NO_VALUE}: one run, no std); runs: completed/total.")
    lines.append("")
    if n_ok == 0:
        lines += [f"**No run completed: all {n_failed} runs failed.**", ""]
    header = (list(keys) or ["group"]) + list(metrics) + ["runs"]
    lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
    lines.append("|" + "---|" * len(header))
    for _, row in summary.iterrows():
        cells = [_cell(NO_VALUE if _clean(row[k]) is None else row[k]) for k in keys] or [_cell(row["group"])]
        for m in metrics:
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            cells.append(NO_VALUE if math.isnan(mean) else f"{format_number(mean)} ± {format_number(std)}")
        cells.append(f"{row['n_completed']}/{row['n_completed'] + row['n_failed']}")
        lines.append("| " + " | ".join(cells) + " |")
    failed = runs[runs["status"] != COMPLETED]
    if len(failed):
        lines += ["", f"Failed runs ({len(failed)}):", ""]
        lines += [f"- `{r['run']}`: {r['error']}" for _, r in failed.iterrows()]
    if optuna and "best_params" in optuna:
        params = ", ".join(f"{k}={v}" for k, v in (optuna.get("best_params") or {}).items())
        lines += ["", f"Optuna best: {optuna.get('best_value')} with `{params}`"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def write_summary(sweep_dir: str | Path, group_by: Sequence[str] | None = None,
                  metrics: Sequence[str] | None = None, echo: bool = True) -> dict[str, Path]:
    """Write ``summary.csv``, ``summary_groups.csv``, ``summary.md`` and (when there is anything
    to draw and matplotlib is installed) ``summary.png`` into ``sweep_dir``; print the markdown
    when ``echo``. Returns the written paths by kind (``csv``, ``groups_csv``, ``md``, ``png``)."""
    sweep_dir = Path(sweep_dir)
    runs = collect_runs(sweep_dir)
    summary = summarize(runs, group_by, metrics)
    paths = {kind: sweep_dir / name for kind, name in OUTPUT_FILES.items()}
    runs.to_csv(paths["csv"], index=False)
    summary.to_csv(paths["groups_csv"], index=False)
    md = render_markdown(runs, summary, metrics, title=sweep_dir.name, optuna=read_optuna_results(sweep_dir))
    paths["md"].write_text(md)
    if echo:
        print(md)
    skipped = None
    try:
        fig = summary_figure(summary, load_curves(runs, sweep_dir, group_by=group_by), metrics)
    except ImportError as e:   # matplotlib is a `train` extra
        fig, skipped = None, f"matplotlib is not installed ({e})"
    if fig is None:
        skipped = skipped or "no completed run and no learning curve to plot"
        paths["png"].unlink(missing_ok=True)   # a stale figure of an earlier summary would mislead
        del paths["png"]
        if echo:
            print(f"summary.png skipped: {skipped}")
    else:
        fig.suptitle(f"{sweep_dir.name}: mean ± std over completed runs")
        fig.savefig(paths["png"], dpi=100)
    return paths


def _job_stamp(run_dir: Path) -> int | None:
    """When Hydra last started a job in ``run_dir`` (it rewrites ``.hydra/overrides.yaml`` at every
    job start), in ns; ``None`` for a folder without it."""
    try:
        return (run_dir / OVERRIDES).stat().st_mtime_ns
    except OSError:
        return None


def job_stamps(sweep_dir: Path) -> dict[Path, int | None]:
    """``_job_stamp`` of every run folder already in ``sweep_dir`` (none if it does not exist)."""
    return {run_dir: _job_stamp(run_dir) for run_dir in find_run_dirs(sweep_dir)} if sweep_dir.is_dir() else {}


def failed_runs(sweep_dir: Path, before: dict[Path, int | None] | None = None) -> tuple[int, int]:
    """(failed, total) over the runs of ``sweep_dir`` that started after ``before`` was taken
    (``job_stamps``): an earlier sweep into the same folder counts for neither. ``before=None``: all."""
    if not sweep_dir.is_dir():
        return 0, 0
    runs = [d for d in find_run_dirs(sweep_dir) if before is None or d not in before or _job_stamp(d) != before[d]]
    failed = sum(_read_run(sweep_dir, d)[0]["status"] == FAILED for d in runs)
    return failed, len(runs)


class SweepFailed(SystemExit):
    """Raised at the very end of a sweep in which runs failed, once the summary is written: the
    process exits with ``EXIT_RUNS_FAILED`` (Hydra lets a ``SystemExit`` from a callback through)."""

    def __init__(self, failed: int, total: int, summary: Path | None, sweep_dir: Path):
        where = f"summary: {summary}" if summary is not None else \
            f"the summary could not be written (see the log above); runs in {sweep_dir}"
        self.message = f"sweep: {failed} of {total} runs failed; {where}"
        super().__init__(EXIT_RUNS_FAILED)


class SweepSummaryCallback(Callback):
    """Hydra callback: write the sweep summary when a multirun ends, then end the process with
    exit status 1 and one line on stderr when any run of this sweep failed.

    ``conf/hydra/default.yaml``::

        callbacks:
          sweep_summary:
            _target_: rlbench_sms.training.sweep_summary.SweepSummaryCallback

    A failed run does not stop the sweep (the training code records it in ``run.json`` and returns
    NaN), so this is where the sweep's exit status comes from. Runs already in the folder from an
    earlier sweep (same ``hydra.sweep.dir``) are summarised but do not count for the exit status.
    Hydra ends a multirun with its callbacks in reverse order: those listed after this one have
    run by then. An error while summarising is logged, never raised: a summary bug must not hide the
    runs' own results.

    Args:
        group_by, metrics: as for :func:`write_summary`.
        fail_on_failed_runs: ``False`` to exit 0 whatever the runs did.
    """

    def __init__(self, group_by: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                 fail_on_failed_runs: bool = True) -> None:
        self.group_by = list(group_by) if group_by is not None else None
        self.metrics = list(metrics) if metrics is not None else None
        self.fail_on_failed_runs = fail_on_failed_runs
        self.before: dict[Path, int | None] | None = None   # run folders present when the sweep began

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            self.before = job_stamps(Path(str(config.hydra.sweep.dir)))
        except Exception:
            log.exception("could not list the runs already in the sweep folder (all its runs will "
                          "count for the exit status)")

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = summary = None
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            paths = write_summary(sweep_dir, self.group_by, self.metrics)
            summary = paths["md"]
            log.info("sweep summary: %s", ", ".join(str(p) for p in paths.values()))
        except Exception:
            log.exception("could not write the sweep summary of %s (the runs' own outputs are "
                          "unaffected; retry with `python -m %s %s`)", sweep_dir, __name__,
                          sweep_dir if sweep_dir is not None else "<sweep_dir>")
        if not self.fail_on_failed_runs or sweep_dir is None:
            return
        try:
            failed, total = failed_runs(sweep_dir, self.before)
        except Exception:
            log.exception("could not count the failed runs of %s", sweep_dir)
            return
        if failed:
            error = SweepFailed(failed, total, summary, sweep_dir)
            print(error.message, file=sys.stderr, flush=True)
            raise error


def latest_sweep(roots: str | Path | Sequence[str | Path] = ("outputs", "multirun")) -> Path:
    """The most recent sweep below any of ``roots``: the folder of the newest ``multirun.yaml``,
    which Hydra writes in every sweep folder (ours go to ``outputs/<task>/multiruns/<time>``,
    Hydra's default is ``multirun/<date>/<time>``)."""
    roots = [Path(roots)] if isinstance(roots, (str, Path)) else [Path(r) for r in roots]
    marks = [m for root in roots for m in root.glob("**/multirun.yaml")]
    if not marks:
        raise SweepSummaryError(f"no sweep (multirun.yaml) below {', '.join(map(str, roots))}")
    return max(marks, key=lambda p: p.stat().st_mtime).parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlbench_sms.training.sweep_summary",
                                     description=doc_description(__doc__))
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder (hydra.sweep.dir)")
    parser.add_argument("--group-by", nargs="+", metavar="KEY",
                        help="override keys to group by (default: all but seed)")
    parser.add_argument("--metrics", nargs="+", metavar="NAME",
                        help=f"metrics of the markdown table and the bars (default: {', '.join(MAIN_METRICS)})")
    args = parser.parse_args(argv)
    try:
        paths = write_summary(args.sweep_dir, args.group_by, args.metrics)
    except SweepSummaryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
