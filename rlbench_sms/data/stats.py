"""Feature statistics in LeRobot's layout (``meta/stats.json`` and the ``stats/*`` episode columns).

Per episode, every feature gets ``min, max, mean, std, count`` and the quantiles ``q01 .. q99``.
Vectors are reduced over frames, so each stat has the feature's shape (n,); cameras are reduced
over frames and pixels, per channel, so each stat has shape (C, 1, 1) and broadcasts against a
channel-first image. ``count`` is always shape (1,): frames for vectors, sampled frames for images.

RGB stats are in [0, 1] (uint8 divided by 255), matching how a policy sees images; depth stats stay
in the stored unit (millimetres), as LeRobot keeps them in the unit it decodes to.

Quantiles are exact per episode: the inverse empirical CDF (``np.quantile(...,
method="inverted_cdf")``, the smallest value with at least q*N values at or below it), which is
what LeRobot's 5000-bin histogram estimate converges to; the two agree to about a bin width.
Across episodes, quantiles cannot be pooled exactly. LeRobot (0.4.4 and its main branch; checked
against ``tests/fixtures/lerobot_v30_tiny``, which LeRobot wrote) takes the count-weighted mean of
the episode quantiles, and that is the default here, so our ``meta/stats.json`` matches theirs.
``quantiles="envelope"`` gives a conservative alternative instead: the lowest q01/q10/q50 and the
highest q90/q99 over the episodes.

Pure numpy: the recorder computes episode stats on a robot PC without torch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

STAT_KEYS = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
# The "envelope" aggregation: lower quantiles take the minimum over episodes, upper the maximum.
LOWER_QUANTILES = ("q01", "q10", "q50")
UPPER_QUANTILES = ("q90", "q99")

# LeRobot's image subsampling: at least 100 frames (or all, if fewer), growing as length**0.75,
# capped at 10 000; and images with a side >= 300 px strided down to about 150 px.
MIN_IMAGE_SAMPLES = 100
MAX_IMAGE_SAMPLES = 10_000
DOWNSAMPLE_THRESHOLD_PX = 300
DOWNSAMPLE_TARGET_PX = 150

FLAT_PREFIX = "stats/"

Stats = dict[str, np.ndarray]
FeatureStats = dict[str, Stats]


def sample_indices(length: int) -> np.ndarray:
    """Evenly spaced frame indices (int64, sorted, within [0, length-1]) used for image stats."""
    if length <= 0:
        return np.zeros(0, dtype=np.int64)
    n = max(min(length, MIN_IMAGE_SAMPLES), min(int(length**0.75), MAX_IMAGE_SAMPLES))
    return np.round(np.linspace(0, length - 1, n)).astype(np.int64)


def downsample_for_stats(image: np.ndarray) -> np.ndarray:
    """Stride an (H, W[, C]) image so its longer side is ~150 px; images under 300 px are unchanged."""
    h, w = image.shape[:2]
    if max(h, w) < DOWNSAMPLE_THRESHOLD_PX:
        return image
    stride = max(h, w) // DOWNSAMPLE_TARGET_PX
    return image[::stride, ::stride]


def _stats_of_rows(x: np.ndarray) -> Stats:
    """Stats of each row of a (k, N) float64 array (contiguous rows are fastest): shape (k,), count (1,)."""
    if x.shape[1] == 0:
        raise ValueError("cannot compute statistics of zero samples")
    out: Stats = {"min": x.min(axis=1), "max": x.max(axis=1), "mean": x.mean(axis=1), "std": x.std(axis=1)}
    qs = np.quantile(x, list(QUANTILES.values()), axis=1, method="inverted_cdf")  # (5, k)
    for i, name in enumerate(QUANTILES):
        out[name] = qs[i]
    result = {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
    result["count"] = np.array([x.shape[1]], dtype=np.int64)
    return {k: result[k] for k in STAT_KEYS}


def vector_stats(values: np.ndarray) -> Stats:
    """Stats of a vector feature over frames: (T, n) -> each stat (n,); (T,) -> each stat (1,).

    Booleans count as 0/1. The arithmetic is float64; results are float32 (count int64).
    """
    x = np.asarray(values)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"vector_stats expects (T,) or (T, n) values, got shape {x.shape}")
    return _stats_of_rows(np.ascontiguousarray(x.T, dtype=np.float64))


def image_stats(frames: np.ndarray, is_depth: bool) -> Stats:
    """Per-channel stats of sampled frames, each stat shape (C, 1, 1), count (1,) = frames.

    ``frames``: (N, H, W, C) uint8 RGB, or (N, H, W) / (N, H, W, 1) depth in its stored unit.
    Subsampling (:func:`sample_indices`) is the caller's job, so that it decodes only the frames it
    needs; so is downsampling (:func:`downsample_for_stats`), which is applied here too if the
    caller skipped it (it is idempotent). RGB is divided by 255; depth is not.
    Invalid depth (0) is included, as LeRobot does: the stats describe the stored values.
    """
    x = np.asarray(frames)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"image_stats expects (N, H, W[, C]) frames, got shape {x.shape}")
    if max(x.shape[1:3]) >= DOWNSAMPLE_THRESHOLD_PX:   # a caller forgot: keep memory bounded
        x = np.stack([downsample_for_stats(f) for f in x])
    n, _, _, c = x.shape
    rows = np.ascontiguousarray(np.moveaxis(x, -1, 0).reshape(c, -1), dtype=np.float64)  # (C, N*H*W)
    if not is_depth:
        rows /= 255.0
    stats = _stats_of_rows(rows)
    stats = {k: (v if k == "count" else v.reshape(c, 1, 1)) for k, v in stats.items()}
    stats["count"] = np.array([n], dtype=np.int64)
    return stats


def aggregate_stats(per_episode: Sequence[Mapping[str, Mapping[str, np.ndarray]]],
                    quantiles: str = "weighted") -> FeatureStats:
    """Combine per-episode stats into dataset stats (``meta/stats.json``).

    Per feature, over the episodes that have it: min of mins, max of maxes, count-weighted mean,
    pooled variance (within-episode variance plus the spread of episode means), summed count.
    Quantiles: ``"weighted"`` (LeRobot's rule, the default) is their count-weighted mean;
    ``"envelope"`` the lowest lower and highest upper quantile. Stats that some of those episodes
    lack (v2.1 episodes carry no quantiles) are left out.
    """
    if quantiles not in ("weighted", "envelope"):
        raise ValueError(f"quantiles must be 'weighted' or 'envelope', not {quantiles!r}")
    features: list[str] = []
    for ep in per_episode:
        features.extend(k for k in ep if k not in features)
    out: FeatureStats = {}
    for feat in features:
        eps = [ep[feat] for ep in per_episode if feat in ep]
        present = [k for k in STAT_KEYS if all(k in s for s in eps)]
        counts = np.array([float(np.asarray(s.get("count", [1])).reshape(-1)[0]) for s in eps])
        total = counts.sum()
        agg: Stats = {}
        if "min" in present:
            agg["min"] = np.min([np.asarray(s["min"], np.float64) for s in eps], axis=0)
        if "max" in present:
            agg["max"] = np.max([np.asarray(s["max"], np.float64) for s in eps], axis=0)
        if "mean" in present:
            means = np.stack([np.asarray(s["mean"], np.float64) for s in eps])  # (E, *shape)
            w = _weights(counts, means.ndim)
            mean = (w * means).sum(axis=0)
            agg["mean"] = mean
            if "std" in present:
                stds = np.stack([np.asarray(s["std"], np.float64) for s in eps])
                var = (w * (stds**2 + (means - mean) ** 2)).sum(axis=0)
                agg["std"] = np.sqrt(np.maximum(var, 0.0))
        for q in (q for q in QUANTILES if q in present):
            values = np.stack([np.asarray(s[q], np.float64) for s in eps])  # (E, *shape)
            if quantiles == "weighted":
                agg[q] = (_weights(counts, values.ndim) * values).sum(axis=0)
            else:
                agg[q] = values.min(axis=0) if q in LOWER_QUANTILES else values.max(axis=0)
        result = {k: np.asarray(v, dtype=np.float32) for k, v in agg.items()}
        if "count" in present:
            result["count"] = np.array([int(round(total))], dtype=np.int64)
        out[feat] = {k: result[k] for k in STAT_KEYS if k in result}
    return out


def _weights(counts: np.ndarray, ndim: int) -> np.ndarray:
    """Episode weights (E,) proportional to counts (equal if all are 0), shaped to broadcast over
    an (E, ...) stack of ``ndim`` dimensions."""
    total = counts.sum()
    w = counts / total if total > 0 else np.full(len(counts), 1.0 / len(counts))
    return w.reshape((-1,) + (1,) * (ndim - 1))


def _to_array(value: Any, stat: str) -> np.ndarray:
    """A stat from json / parquet (nested lists, or pandas' object arrays of arrays) to numpy."""
    def nested(v: Any) -> Any:
        if isinstance(v, np.ndarray) and v.dtype != object:
            return v
        if isinstance(v, (list, tuple, np.ndarray)):
            return np.stack([np.asarray(nested(e)) for e in v]) if len(v) else np.zeros(0)
        return v

    dtype = np.int64 if stat == "count" else np.float32
    return np.atleast_1d(np.asarray(nested(value)).astype(dtype))


def stats_to_json(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{feature: {stat: nested list}}``, as LeRobot's ``meta/stats.json``."""
    return {feat: {k: np.asarray(v).tolist() for k, v in s.items()} for feat, s in stats.items()}


def stats_from_json(d: Mapping[str, Mapping[str, Any]]) -> FeatureStats:
    """Inverse of :func:`stats_to_json`: float32 arrays (count int64) with their shapes."""
    return {feat: {k: _to_array(v, k) for k, v in s.items()} for feat, s in d.items()}


def flatten_episode_stats(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, list]:
    """``{"stats/<feature>/<stat>": nested list}``: the stats columns of v3.0 ``meta/episodes``."""
    return {
        f"{FLAT_PREFIX}{feat}/{k}": np.asarray(v).tolist()
        for feat, s in stats.items()
        for k, v in s.items()
    }


def unflatten_episode_stats(row: Mapping[str, object]) -> FeatureStats:
    """Inverse of :func:`flatten_episode_stats`; other columns and null cells are ignored.

    Feature keys contain dots but no slashes, and stat names no slashes, so the last slash splits.
    """
    out: FeatureStats = {}
    for key, value in row.items():
        if not key.startswith(FLAT_PREFIX) or value is None:
            continue
        feat, _, stat = key[len(FLAT_PREFIX):].rpartition("/")
        if not feat:
            continue
        out.setdefault(feat, {})[stat] = _to_array(value, stat)
    # Canonical stat order first, then anything unknown (kept, so a reader can warn about it).
    return {feat: {**{k: s[k] for k in STAT_KEYS if k in s}, **s} for feat, s in out.items()}
