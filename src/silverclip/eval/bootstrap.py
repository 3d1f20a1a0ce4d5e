"""Cluster bootstrap confidence intervals that really resample.

CT-CLIP's ``bootstrap_values.py`` loops 1,000 times over the *same* data (its resampling line is
commented out), so its "intervals" have zero width. Here every replicate draws units with
replacement from a seeded generator. A unit is a scan: all reconstructions of one scan are drawn
together, because they share a patient, a report and labels and are not independent observations
(resampling volumes would make the intervals too narrow).

Intervals are percentile intervals of the replicate statistics; replicates where a statistic is
undefined (e.g. AUC of a resample with no positives) are ignored for that statistic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm


@dataclass
class BootstrapResult:
    """Per statistic: the point estimate on all data, the interval and the replicate values."""

    point: dict[str, float]
    lower: dict[str, float]
    upper: dict[str, float]
    replicates: dict[str, np.ndarray]
    n_boot: int
    n_units: int
    alpha: float
    seed: int

    def to_dict(self) -> dict:
        return {
            "point": self.point,
            "lower": self.lower,
            "upper": self.upper,
            "n_boot": self.n_boot,
            "n_units": self.n_units,
            "confidence": 1 - self.alpha,
            "seed": self.seed,
            "method": "percentile, units (scans) resampled with replacement",
        }


def group_members(groups: Sequence | np.ndarray | None, n: int) -> list[np.ndarray]:
    """Row indices of each unit; ``groups=None`` makes every row its own unit."""
    if groups is None:
        return [np.array([i]) for i in range(n)]
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} rows")
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    splits = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, splits)


def resample_indices(members: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One bootstrap replicate: units drawn with replacement, each contributing all its rows."""
    chosen = rng.integers(0, len(members), size=len(members))
    return np.concatenate([members[c] for c in chosen])


def bootstrap(
    statistic: Callable[[np.ndarray], dict[str, float]],
    n: int,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    progress: bool = False,
) -> BootstrapResult:
    """Percentile bootstrap of ``statistic(row_indices) -> {name: value}`` over ``n`` rows.

    ``groups`` (length n, e.g. scan ids) defines the resampling units. The point estimate is
    ``statistic(arange(n))``. Same ``seed`` -> identical intervals.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    members = group_members(groups, n)
    point = statistic(np.arange(n))
    rng = np.random.default_rng(seed)
    reps: dict[str, list[float]] = {k: [] for k in point}
    for _ in tqdm(range(n_boot), desc="bootstrap", disable=not progress, leave=False):
        stats = statistic(resample_indices(members, rng))
        for k in reps:
            reps[k].append(float(stats.get(k, np.nan)))
    lower, upper, arrays = {}, {}, {}
    for k, vals in reps.items():
        arr = np.asarray(vals, dtype=float)
        arrays[k] = arr
        finite = arr[np.isfinite(arr)]
        if finite.size:
            lower[k] = float(np.percentile(finite, 100 * alpha / 2))
            upper[k] = float(np.percentile(finite, 100 * (1 - alpha / 2)))
        else:
            lower[k] = upper[k] = float("nan")
    return BootstrapResult(
        point={k: float(v) for k, v in point.items()},
        lower=lower,
        upper=upper,
        replicates=arrays,
        n_boot=n_boot,
        n_units=len(members),
        alpha=alpha,
        seed=seed,
    )
