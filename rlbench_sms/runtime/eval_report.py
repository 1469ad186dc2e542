"""An evaluation's results: per-episode rows, the success rate with its 95 % Wilson interval,
``eval.json`` and a ``summary.md`` table (no torch).

The Wilson score interval (Wilson 1927) is used rather than the normal approximation because
evaluations are small (10-50 episodes) and rates near 0 or 1 are common: it never leaves [0, 1]
and is not degenerate at 0 or n successes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlbench_sms.data.layout import atomic_write_bytes

# The normal quantile for a two-sided 95 % interval.
Z_95 = 1.959963984540054
EVAL_FILE = "eval.json"
SUMMARY_FILE = "summary.md"


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes ({successes}) must be within 0..n ({n})")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class EpisodeOutcome:
    """One evaluated episode. ``success`` is None for an episode the operator discarded."""

    index: int
    success: bool | None
    time_s: float
    frames: int
    task: str = ""
    seed: int | None = None
    achieved_fps: float = 0.0
    late_ticks: int = 0
    empty_queue_ticks: int = 0
    chunks: int = 0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    video: str | None = None
    details: dict[str, Any] = field(default_factory=dict)    # the detector's figures (sim/...)


def outcome_from_metadata(index: int, frames: int, fps: int, extra: Mapping[str, Any], task: str,
                          success: bool | None) -> EpisodeOutcome:
    """An :class:`EpisodeOutcome` from the episode metadata the recorder saved."""
    return EpisodeOutcome(
        index=index, success=success, time_s=frames / fps, frames=frames, task=task,
        seed=extra.get("sim/seed", extra.get("inference/seed")),
        achieved_fps=float(extra.get("timing/achieved_fps", 0.0)),
        late_ticks=int(extra.get("timing/late_ticks", 0)),
        empty_queue_ticks=int(extra.get("inference/empty_queue_ticks", 0)),
        chunks=int(extra.get("inference/chunks", 0)),
        latency_p50_ms=float(extra.get("inference/latency_p50_ms", 0.0)),
        latency_p99_ms=float(extra.get("inference/latency_p99_ms", 0.0)),
        details={k: v for k, v in extra.items() if k.startswith("sim/") and k != "sim/seed"})


def summarize(outcomes: Sequence[EpisodeOutcome]) -> dict[str, Any]:
    """Success rate over the judged episodes (discarded ones left out), its Wilson interval,
    mean episode time and the timing figures over all episodes."""
    judged = [o for o in outcomes if o.success is not None]
    wins = sum(1 for o in judged if o.success)
    low, high = wilson_interval(wins, len(judged))
    n = max(1, len(outcomes))
    return {
        "episodes": len(outcomes), "judged": len(judged), "discarded": len(outcomes) - len(judged),
        "successes": wins, "success_rate": wins / len(judged) if judged else None,
        "wilson95": [low, high],
        "mean_episode_time_s": sum(o.time_s for o in outcomes) / n,
        "mean_achieved_fps": sum(o.achieved_fps for o in outcomes) / n,
        "late_ticks": sum(o.late_ticks for o in outcomes),
        "empty_queue_ticks": sum(o.empty_queue_ticks for o in outcomes),
        "latency_p50_ms": _median([o.latency_p50_ms for o in outcomes]),
        "latency_p99_ms": max((o.latency_p99_ms for o in outcomes), default=0.0),
    }


def _median(values: list[float]) -> float:
    values = sorted(values)
    if not values:
        return 0.0
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def rate_line(summary: Mapping[str, Any]) -> str:
    """``12/50 = 24.0 % (95 % CI 14.3-37.4 %)``."""
    if summary["success_rate"] is None:
        return "no judged episode"
    low, high = summary["wilson95"]
    return (f"{summary['successes']}/{summary['judged']} = {100 * summary['success_rate']:.1f} % "
            f"(95 % CI {100 * low:.1f}-{100 * high:.1f} %)")


def write_results(run_dir: str | Path, header: Mapping[str, Any], outcomes: Sequence[EpisodeOutcome]) -> dict:
    """``eval.json`` (``header``, the summary, every episode) and ``summary.md``, written atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(outcomes)
    result = {**header, "summary": summary, "episodes": [asdict(o) for o in outcomes]}
    atomic_write_bytes(run_dir / EVAL_FILE, json.dumps(result, indent=2, default=str).encode())
    atomic_write_bytes(run_dir / SUMMARY_FILE, summary_markdown(header, summary, outcomes).encode())
    return result


def _cell(value: Any) -> str:
    if value is None:
        return "discarded"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def summary_markdown(header: Mapping[str, Any], summary: Mapping[str, Any],
                     outcomes: Sequence[EpisodeOutcome]) -> str:
    lines = [f"# Evaluation of {header.get('policy_path', '?')}", "",
             f"- success: **{rate_line(summary)}**",
             f"- inference: {header.get('inference', '?')}; robot: {header.get('robot', '?')}; "
             f"mean episode time {summary['mean_episode_time_s']:.1f} s; "
             f"mean loop rate {summary['mean_achieved_fps']:.1f} Hz",
             f"- late ticks {summary['late_ticks']}, empty-queue ticks {summary['empty_queue_ticks']}, "
             f"inference latency p50 {summary['latency_p50_ms']:.1f} ms, p99 {summary['latency_p99_ms']:.1f} ms",
             "", "| episode | seed | success | time s | Hz | late | empty queue | chunks | p50 ms | p99 ms | video |",
             "|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for o in outcomes:
        lines.append("| " + " | ".join(_cell(v) for v in (
            o.index, o.seed if o.seed is not None else "", o.success, o.time_s, o.achieved_fps, o.late_ticks,
            o.empty_queue_ticks, o.chunks, o.latency_p50_ms, o.latency_p99_ms, o.video or "")) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["wilson_interval", "EpisodeOutcome", "outcome_from_metadata", "summarize", "write_results",
           "rate_line", "EVAL_FILE", "SUMMARY_FILE"]
