"""Percentile bootstrap confidence intervals over scenes for ratio-of-sums metrics (numpy).

Every ShapesWorld protocol metric is a function of per-scene *sums* (intersections, unions, pixel counts, sums of
per-record AUROCs and their counts). A bootstrap resample draws N scenes with replacement; its sums are the
resample-count-weighted sums of the per-scene rows, and the metric is recomputed from them. The interval is the
2.5 / 97.5 percentile of the resampled metric (``numpy.random.default_rng(seed)``, 1000 resamples by default).

Example:
    >>> import numpy as np
    >>> stats = {"hit": np.array([1.0, 0.0, 1.0, 1.0]), "n": np.ones(4)}
    >>> point, low, high = bootstrap_metric(stats, lambda s: s["hit"] / s["n"], resamples=200, seed=0)
    >>> point, low <= point <= high
    (0.75, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


__all__ = ["DEFAULT_RESAMPLES", "bootstrap_metric", "resample_weights"]

DEFAULT_RESAMPLES = 1000
"""Bootstrap resamples per interval."""


def resample_weights(num_scenes: int, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> np.ndarray:
    """How often each scene is drawn in each resample: int ``[resamples, num_scenes]``, rows summing to N.

    Example:
        >>> resample_weights(3, resamples=2, seed=0).sum(axis=1).tolist()
        [3, 3]
    """
    if num_scenes < 1 or resamples < 1:
        raise ValueError(f"The bootstrap needs scenes and resamples, got {num_scenes} scenes, {resamples} resamples.")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_scenes, size=(resamples, num_scenes))  # [B, N] scene indices
    weights = np.zeros((resamples, num_scenes), dtype=np.int64)
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1)
    return weights  # [B, N]


def bootstrap_metric(
    stats: Mapping[str, np.ndarray],
    metric: Callable[[Mapping[str, np.ndarray]], np.ndarray],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    weights: np.ndarray | None = None,
    confidence: float = 0.95,
) -> tuple[float | None, float | None, float | None]:
    """Point estimate and percentile confidence interval of a metric of per-scene sums.

    Args:
        stats: ``{name: float [N]}`` per-scene sums (one entry per scene, same N for all names).
        metric: Maps summed stats (arrays of any shape, e.g. scalars or ``[B]``) to the metric; must be
            vectorised (numpy operations only). ``nan`` where undefined.
        resamples: Bootstrap resamples (ignored when ``weights`` is given).
        seed: Seed of :func:`resample_weights`.
        weights: Precomputed :func:`resample_weights` (share them so that all metrics use the same resamples).
        confidence: Interval coverage.

    Returns:
        ``(point, low, high)``; ``None`` for values that are undefined (e.g. no record of a kind).
    """
    names = list(stats)
    matrix = np.stack([np.asarray(stats[name], dtype=np.float64) for name in names], axis=1)  # [N, K]
    if weights is None:
        weights = resample_weights(matrix.shape[0], resamples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        point = float(metric(dict(zip(names, matrix.sum(axis=0)))))
        summed = weights.astype(np.float64) @ matrix  # [B, K]
        samples = np.asarray(metric({name: summed[:, k] for k, name in enumerate(names)}), dtype=np.float64)  # [B]
    if not np.isfinite(point):
        return None, None, None
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return point, None, None
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return point, float(low), float(high)
