"""The sweep summary: per-run table, mean ± std per group, markdown, PNG, CLI, Hydra callback and
the ablation notebook, on fake sweep folders laid out as Hydra multirun + our run.json write them."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml
from nbclient import NotebookClient
from omegaconf import OmegaConf

from rlbench_sms.training.sweep_summary import (SweepSummaryCallback, SweepSummaryError, collect_runs,
                                                latest_sweep, load_curves, main, parse_overrides,
                                                summarize, write_summary)

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (modality, seed) -> final metrics of a completed run; chosen so means and stds are easy to check.
METRICS = {
    ("rgb", 0): {"train/loss": 0.40, "val/loss": 0.50, "val/action_mse": 3.0, "best/val/loss": 0.48},
    ("rgb", 1): {"train/loss": 0.44, "val/loss": 0.54, "val/action_mse": 3.4, "best/val/loss": 0.52},
    ("rgb+depth", 0): {"train/loss": 0.30, "val/loss": 0.40, "val/action_mse": 2.0, "best/val/loss": 0.39},
    ("rgb+depth+force", 0): {"train/loss": 0.20, "val/loss": 0.30, "val/action_mse": 1.0},
    ("rgb+depth+force", 1): {"train/loss": 0.22, "val/loss": 0.36, "val/action_mse": 1.6},
}
FAILED = ("rgb+depth", 1)        # run.json with status failed and an error
KILLED = ("rgb+depth+force", 2)  # overrides.yaml only


def write_run(sweep: Path, overrides: list[str], info: dict | None,
              curve: list[tuple[int, float]] | None = None) -> Path:
    run = sweep / ",".join(overrides)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra/overrides.yaml").write_text(yaml.safe_dump(overrides))
    if info is not None:
        (run / "run.json").write_text(json.dumps({"overrides": overrides, **info}))
    if curve is not None:
        # CSVLogger layout: sparse rows, a metric empty where it was not logged.
        rows = []
        for step, val in curve:
            rows.append({"step": step - 1, "epoch": 0, "train/loss": val + 0.1, "lr-AdamW": 1e-4})
            rows.append({"step": step, "epoch": 0, "val/loss": val, "val/action_mse": 10 * val})
        (run / "csv").mkdir()
        pd.DataFrame(rows).to_csv(run / "csv/metrics.csv", index=False)
    return run


def make_sweep(root: Path, curves: bool = True) -> Path:
    sweep = root / "multirun/2025-01-31/12-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    for (modality, seed), metrics in METRICS.items():
        curve = [(10, 1.0), (20, 0.7), (30, metrics["val/loss"])] if curves and seed == 0 else None
        write_run(sweep, [f"modality={modality}", f"seed={seed}"],
                  {"status": "completed", "modality": modality, "seed": seed, "experiment": None,
                   "metrics": metrics, "error": None, "duration_s": 12.5, "global_step": 30,
                   "export_dir": f"/abs/{modality}/{seed}/policy/best"}, curve)
    modality, seed = FAILED
    write_run(sweep, [f"modality={modality}", f"seed={seed}"],
              {"status": "failed", "modality": modality, "seed": seed, "metrics": {"train/loss": 9.9},
               "error": "RuntimeError: CUDA out of memory", "duration_s": 3.0, "global_step": 5,
               "export_dir": None}, [(10, 1.2)] if curves else None)
    modality, seed = KILLED
    write_run(sweep, [f"modality={modality}", f"seed={seed}"], None)
    return sweep


@pytest.fixture
def sweep(tmp_path) -> Path:
    return make_sweep(tmp_path)


def test_parse_overrides():
    assert parse_overrides(["modality=rgb+depth", "seed=1", "+optimizer.lr=1e-4", "~logger",
                            "trainer.fast=true", "hydra.verbose=true", "name='a b'"]) == {
        "modality": "rgb+depth", "seed": 1, "optimizer.lr": 1e-4, "logger": "(deleted)",
        "trainer.fast": True, "name": "a b"}


def test_collect_runs(sweep):
    runs = collect_runs(sweep)
    assert len(runs) == 7
    assert list(runs.columns[:4]) == ["run", "status", "modality", "seed"]
    assert list(runs.columns[4:7]) == ["val/loss", "val/action_mse", "train/loss"]   # main metrics first
    assert {"best/val/loss", "duration_s", "global_step", "error", "export_dir"} <= set(runs.columns)
    by_run = runs.set_index("run")
    assert by_run.loc["modality=rgb,seed=1", "val/loss"] == pytest.approx(0.54)
    assert by_run.loc["modality=rgb,seed=1", "seed"] == 1
    assert by_run.loc["modality=rgb+depth,seed=1", "status"] == "failed"
    assert by_run.loc["modality=rgb+depth,seed=1", "error"] == "RuntimeError: CUDA out of memory"
    assert by_run.loc["modality=rgb+depth+force,seed=2", "status"] == "failed"
    assert by_run.loc["modality=rgb+depth+force,seed=2", "error"] == "no run.json (killed?)"
    assert (runs["status"] == "completed").sum() == 5
    assert runs.loc[runs["status"] == "completed", "error"].isna().all()


def test_collect_runs_any_depth_not_inside_runs(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "a/b", ["modality=rgb", "seed=0"], {"status": "completed", "metrics": {"val/loss": 1.0}})
    inner = write_run(sweep / "a/b/modality=rgb,seed=0/nested", ["modality=tip", "seed=9"],
                      {"status": "completed", "metrics": {"val/loss": 2.0}})
    assert inner.exists()
    (sweep / "x/.hydra").mkdir(parents=True)   # a hidden folder is not a run
    runs = collect_runs(sweep)
    assert runs["run"].tolist() == ["a/b/modality=rgb,seed=0"]


def test_summarize_means_stds_and_counts(sweep):
    summary = summarize(collect_runs(sweep)).set_index("modality")
    assert summary.index.tolist() == ["rgb", "rgb+depth", "rgb+depth+force"]
    assert "seed" not in summary.columns
    assert summary.loc["rgb", "val/loss_mean"] == pytest.approx(0.52)
    assert summary.loc["rgb", "val/loss_std"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))   # ddof=1
    assert summary.loc["rgb", "val/action_mse_std"] == pytest.approx(pd.Series([3.0, 3.4]).std())
    # One completed seed: mean of that seed, std undefined; the failed seed's train/loss is ignored.
    assert summary.loc["rgb+depth", "train/loss_mean"] == pytest.approx(0.30)
    assert math.isnan(summary.loc["rgb+depth", "train/loss_std"])
    assert summary.loc["rgb+depth+force", "val/loss_mean"] == pytest.approx(0.33)
    assert math.isnan(summary.loc["rgb+depth+force", "best/val/loss_mean"])   # no run logged it
    assert summary["n_completed"].tolist() == [2, 1, 2]
    assert summary["n_failed"].tolist() == [0, 1, 1]


def test_summarize_group_by_and_metrics(sweep):
    runs = collect_runs(sweep)
    by_seed = summarize(runs, group_by=["seed"], metrics=["val/loss"]).set_index("seed")
    assert by_seed.loc[0, "val/loss_mean"] == pytest.approx((0.50 + 0.40 + 0.30) / 3)
    assert by_seed.loc[2, "n_failed"] == 1 and by_seed.loc[2, "n_completed"] == 0
    assert [c for c in by_seed.columns if c.endswith(("_mean", "_std"))] == ["val/loss_mean", "val/loss_std"]
    everything = summarize(runs, group_by=[])
    assert everything["group"].tolist() == ["all runs"] and everything["n_completed"].item() == 5
    with pytest.raises(SweepSummaryError, match="cannot group by 'optimizer.lr'"):
        summarize(runs, group_by=["optimizer.lr"])
    with pytest.raises(SweepSummaryError, match="no metric 'val/nope'"):
        summarize(runs, metrics=["val/nope"])


def test_load_curves(sweep):
    runs = collect_runs(sweep)
    curves = load_curves(runs)
    assert set(curves["run"]) == {"modality=rgb,seed=0", "modality=rgb+depth,seed=0",
                                  "modality=rgb+depth+force,seed=0", "modality=rgb+depth,seed=1"}
    one = curves[curves["run"] == "modality=rgb,seed=0"]
    assert one["step"].tolist() == [10, 20, 30] and one["value"].tolist() == pytest.approx([1.0, 0.7, 0.5])
    assert set(one["group"]) == {"rgb"} and set(curves["metric"]) == {"val/loss"}
    train = load_curves(runs, metric="train/loss")
    assert train[train["run"] == "modality=rgb,seed=0"]["step"].tolist() == [9, 19, 29]


def test_write_summary_files(sweep, capsys):
    paths = write_summary(sweep)
    assert set(paths) == {"csv", "groups_csv", "md", "png"}
    assert all(p.parent == sweep and p.is_file() for p in paths.values())
    table = pd.read_csv(paths["csv"])
    assert len(table) == 7 and "val/loss" in table.columns
    md = paths["md"].read_text()
    assert "| modality | val/loss | val/action_mse | train/loss | runs |" in md
    assert "| rgb | 0.520 ± 0.028 | 3.200 ± 0.283 | 0.420 ± 0.028 | 2/2 |" in md
    assert "| rgb+depth | 0.400 ± — | 2.000 ± — | 0.300 ± — | 1/2 |" in md
    assert "Failed runs (2):" in md
    assert "- `modality=rgb+depth,seed=1`: RuntimeError: CUDA out of memory" in md
    assert "- `modality=rgb+depth+force,seed=2`: no run.json (killed?)" in md
    assert "| rgb | 0.520 ± 0.028" in capsys.readouterr().out   # printed too
    png = paths["png"].read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 20_000


def test_write_summary_without_curves_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        write_run(sweep, ["modality=rgb", f"seed={seed}"],
                  {"status": "completed", "metrics": {"val/loss": 0.5 + seed}})
    paths = write_summary(sweep, echo=False)
    assert "| rgb | 1.000 ± 0.707 | 2/2 |" in paths["md"].read_text()
    assert paths["png"].read_bytes().startswith(PNG_MAGIC)


def test_write_summary_all_failed(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    write_run(sweep, ["modality=rgb", "seed=0"], {"status": "failed", "error": "ValueError: bad\ntraceback..."})
    write_run(sweep, ["modality=rgb", "seed=1"], None)
    (sweep / "summary.png").write_bytes(b"stale")
    paths = write_summary(sweep)
    md = paths["md"].read_text()
    assert "No run completed: all 2 runs failed." in md
    assert "| rgb | 0/2 |" in md
    assert "- `modality=rgb,seed=0`: ValueError: bad" in md and "traceback" not in md
    assert "png" not in paths and not (sweep / "summary.png").exists()
    assert "summary.png skipped" in capsys.readouterr().out


def test_write_summary_all_failed_with_curves_still_plots(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep, ["modality=rgb", "seed=0"], {"status": "failed", "error": "boom"}, [(10, 1.0), (20, 0.9)])
    paths = write_summary(sweep, echo=False)
    assert paths["png"].read_bytes().startswith(PNG_MAGIC)


def test_optuna_results_in_markdown(tmp_path):
    sweep = tmp_path / "sweep"
    for i, lr in enumerate((1e-4, 3e-4)):
        write_run(sweep / str(i), [f"optimizer.lr={lr}"], {"status": "completed", "metrics": {"val/loss": lr * 1000}})
    (sweep / "optimization_results.yaml").write_text(
        yaml.safe_dump({"name": "optuna", "best_params": {"optimizer.lr": 1e-4}, "best_value": 0.1}))
    md = write_summary(sweep, echo=False)["md"].read_text()
    assert "| optimizer.lr | val/loss | runs |" in md and "| 0.0001 | 0.100 ± — | 1/1 |" in md
    assert "Optuna best: 0.1 with `optimizer.lr=0.0001`" in md


def test_cli(sweep, tmp_path, capsys):
    assert main([str(sweep), "--group-by", "seed"]) == 0
    out = capsys.readouterr().out
    assert "| seed | val/loss |" in out and "summary.png" in out
    assert main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 1
    assert "no runs in" in capsys.readouterr().err
    assert main([str(sweep), "--group-by", "nope"]) == 1
    assert "cannot group by 'nope'" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rlbench_sms.training.sweep_summary", str(tmp_path / "nowhere")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: sweep folder {tmp_path / 'nowhere'} does not exist"]


def test_callback_writes_summary(sweep):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep), "subdir": "${hydra.job.override_dirname}"}}})
    SweepSummaryCallback(fail_on_failed_runs=False).on_multirun_end(config)
    assert (sweep / "summary.md").is_file() and (sweep / "summary.png").is_file()
    SweepSummaryCallback(group_by=["seed"], fail_on_failed_runs=False).on_multirun_end(config)
    assert "| seed |" in (sweep / "summary.md").read_text()


def test_callback_exits_1_after_the_summary_when_runs_of_this_sweep_failed(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    # An earlier sweep into the same folder left a failed run behind: it is not this sweep's.
    write_run(sweep, ["modality=rgb", "seed=9"], {"status": "failed", "error": "ValueError: old"})
    callback = SweepSummaryCallback()
    callback.on_multirun_start(config)
    write_run(sweep, ["modality=rgb", "seed=0"], {"status": "completed", "metrics": {"val/loss": 1.0}})
    callback.on_multirun_end(config)   # only completed runs started: no exit
    assert "2 runs: 1 completed, 1 failed" in (sweep / "summary.md").read_text()
    capsys.readouterr()
    callback = SweepSummaryCallback()
    callback.on_multirun_start(config)
    write_run(sweep, ["modality=rgb", "seed=1"], {"status": "failed", "error": "RuntimeError: boom"})
    write_run(sweep, ["modality=rgb", "seed=2"], None)   # killed: no run.json
    with pytest.raises(SystemExit) as stop:
        callback.on_multirun_end(config)
    assert stop.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"sweep: 2 of 2 runs failed; summary: {sweep / 'summary.md'}"]
    assert "boom" in (sweep / "summary.md").read_text()   # written before the exit
    callback = SweepSummaryCallback(fail_on_failed_runs=False)
    callback.on_multirun_end(config)


def test_callback_exits_1_when_runs_failed_and_the_summary_did_not_write(tmp_path, capsys, monkeypatch):
    import rlbench_sms.training.sweep_summary as sweep_summary

    sweep = tmp_path / "sweep"
    write_run(sweep, ["seed=0"], {"status": "failed", "error": "RuntimeError: boom"})

    def broken(*args, **kwargs):
        raise RuntimeError("summary bug")

    monkeypatch.setattr(sweep_summary, "write_summary", broken)
    with pytest.raises(SystemExit):
        SweepSummaryCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("sweep: 1 of 1 runs failed; the summary could not be written") and str(sweep) in line


def test_callback_never_raises(tmp_path, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nowhere")}}})
    SweepSummaryCallback().on_multirun_end(config)
    assert "could not write the sweep summary" in caplog.text
    SweepSummaryCallback().on_multirun_end(OmegaConf.create({}))   # not even a sweep dir
    assert caplog.text.count("could not write the sweep summary") == 2


def test_default_groups_skip_constant_and_hydra_excluded_keys(tmp_path):
    sweep = tmp_path / "sweep"
    for modality in ("rgb", "rgb+depth"):
        for seed in (0, 1):
            run = write_run(sweep, [f"modality={modality}", f"seed={seed}", "trainer.max_steps=50",
                                    f"paths.output_dir=/scratch/{seed}"],
                            {"status": "completed", "metrics": {"val/loss": 1.0}})
            (run / ".hydra/hydra.yaml").write_text(yaml.safe_dump(
                {"hydra": {"job": {"config": {"override_dirname": {"exclude_keys": ["paths.output_dir"]}}}}}))
    runs = collect_runs(sweep)
    assert {"trainer.max_steps", "paths.output_dir"} <= set(runs.columns)   # still in the run table
    summary = summarize(runs)
    assert summary["group"].tolist() == ["rgb", "rgb+depth"] and summary["n_completed"].tolist() == [2, 2]
    assert "trainer.max_steps" not in summary.columns
    assert summarize(runs, group_by=["modality", "trainer.max_steps"])["group"].tolist() == [
        "modality=rgb,trainer.max_steps=50", "modality=rgb+depth,trainer.max_steps=50"]
    # Nothing varies: the constant keys stay, to name the single group.
    one = tmp_path / "one"
    for seed in (0, 1):
        write_run(one, ["modality=rgb", f"seed={seed}", "trainer.max_steps=50"], {"status": "completed"})
    assert summarize(collect_runs(one)).columns[:3].tolist() == ["group", "modality", "trainer.max_steps"]


def test_latest_sweep(tmp_path):
    older = make_sweep(tmp_path)
    newer = tmp_path / "outputs/train/multiruns/2025-02-01_09-00-00"
    newer.mkdir(parents=True)
    (newer / "multirun.yaml").write_text("hydra: {}\n")
    os.utime(older / "multirun.yaml", (1e9, 1e9))
    assert latest_sweep([tmp_path / "outputs", tmp_path / "multirun"]) == newer
    assert latest_sweep(tmp_path / "multirun") == older
    with pytest.raises(SweepSummaryError, match="no sweep"):
        latest_sweep(tmp_path / "nothing")


def test_ablation_notebook_runs(tmp_path, monkeypatch):
    sweep = make_sweep(tmp_path)
    monkeypatch.setenv("SWEEP_DIR", str(sweep))
    monkeypatch.setenv("OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / "ablation_report.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")   # committed cleared
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") + "".join(str(v) for v in o.get("data", {}).values()) for o in outputs)
    assert all(m in text for m in ("rgb+depth+force", "rgb+depth", "rgb"))
    assert "0.520 ± 0.028" in text and "CUDA out of memory" in text
    for name in ("metrics.png", "curves.png"):
        assert (tmp_path / "out" / name).read_bytes().startswith(PNG_MAGIC)
