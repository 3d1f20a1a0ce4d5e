"""Binary classification metrics per finding: AUC, F1, accuracy, precision, and threshold selection.

Point estimates come from scikit-learn. The bootstrap needs the same numbers thousands of times, so
:func:`fast_binary_metrics` recomputes them from confusion counts and a rank-based AUC (identical to
scikit-learn's, ties included; checked in tests/test_metrics.py) without sklearn's per-call overhead.

Labels are 1 (present), 0 (absent); anything else (uncertain -1, NaN) is left out of that finding's
metrics. Scores are P(present) in [0, 1] (any monotone score works for AUC).

Threshold conventions:
- ``youden`` / ``f1`` (the honest default, chosen on a separate split): a volume is positive when
  ``score >= threshold`` (scikit-learn's ``roc_curve`` convention).
- ``ctclip``: CT-CLIP's ``find_threshold`` (``scripts/bootstrap_values.py``): scan 100 thresholds
  ``np.linspace(0, 1, 100)``, predict ``score > t``, keep the threshold closest to the ROC corner
  (0, 1), i.e. minimising ``sqrt((1 - TPR)^2 + FPR^2)``, the last one on ties (``<=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, f1_score, precision_recall_curve, precision_score, roc_auc_score, roc_curve

ThresholdMethod = Literal["youden", "f1", "ctclip"]
F1Average = Literal["binary", "weighted"]
METRIC_NAMES = ("auc", "f1", "accuracy", "precision", "recall", "specificity")


def valid_mask(labels: np.ndarray) -> np.ndarray:
    """True where a label is a usable 0/1 ground truth (not uncertain -1, not NaN)."""
    labels = np.asarray(labels, dtype=float)
    return (labels == 0) | (labels == 1)


def _clean(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=float).ravel()
    scores = np.asarray(scores, dtype=float).ravel()
    if y_true.shape != scores.shape:
        raise ValueError(f"labels {y_true.shape} and scores {scores.shape} differ in length")
    keep = valid_mask(y_true) & np.isfinite(scores)
    return y_true[keep].astype(int), scores[keep]


def predict_labels(scores: np.ndarray, threshold: float, strict: bool = False) -> np.ndarray:
    """0/1 predictions: ``score > threshold`` if ``strict`` (CT-CLIP) else ``score >= threshold``."""
    scores = np.asarray(scores, dtype=float)
    return (scores > threshold if strict else scores >= threshold).astype(int)


def select_threshold(y_true: np.ndarray, scores: np.ndarray, method: ThresholdMethod = "youden") -> float:
    """The operating point for one finding (see the module docstring for the three methods).

    Returns NaN when the labels hold a single class (no threshold is defined).
    """
    y, s = _clean(y_true, scores)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    if method == "youden":
        fpr, tpr, thr = roc_curve(y, s)
        best = float(thr[int(np.argmax(tpr - fpr))])
        # roc_curve's first threshold is +inf ("nothing positive"); keep it finite for JSON.
        return best if np.isfinite(best) else float(np.nextafter(s.max(), np.inf))
    if method == "f1":
        prec, rec, thr = precision_recall_curve(y, s)
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)[:-1]
        return float(thr[int(np.argmax(f1))])
    if method == "ctclip":
        grid = np.linspace(0, 1, 100)
        pred = s[None, :] > grid[:, None]  # (100, N)
        pos, neg = y == 1, y == 0
        tpr = (pred & pos).sum(1) / pos.sum()
        fpr = (pred & neg).sum(1) / neg.sum()
        dist = np.sqrt((1 - tpr) ** 2 + fpr**2)
        # CT-CLIP keeps the LAST threshold whose distance is <= the best so far.
        return float(grid[len(dist) - 1 - int(np.argmin(dist[::-1]))])
    raise ValueError(f"unknown threshold method {method!r}; use youden, f1 or ctclip")


def binary_metrics(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    f1_average: F1Average = "binary",
    strict: bool = False,
) -> dict[str, float]:
    """AUC (threshold-free) and F1/accuracy/precision/recall/specificity at ``threshold``, via scikit-learn.

    ``f1_average="weighted"`` is CT-CLIP's choice (support-weighted mean of the F1 of class 1 and
    class 0), which flatters rare findings; ``"binary"`` is the F1 of the positive class.
    Undefined values (one class only, no predicted positives) are NaN / 0 as scikit-learn defines.
    """
    y, s = _clean(y_true, scores)
    out: dict[str, float] = {"n": float(y.size), "n_pos": float(y.sum()), "threshold": float(threshold)}
    if y.size == 0:
        return {**out, **{m: float("nan") for m in METRIC_NAMES}}
    out["auc"] = float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")
    if not np.isfinite(threshold):
        return {**out, **{m: float("nan") for m in METRIC_NAMES if m != "auc"}}
    pred = predict_labels(s, threshold, strict)
    out["f1"] = float(f1_score(y, pred, average=f1_average, zero_division=0))
    out["accuracy"] = float(accuracy_score(y, pred))
    out["precision"] = float(precision_score(y, pred, zero_division=0))
    tp, fn = int(((pred == 1) & (y == 1)).sum()), int(((pred == 0) & (y == 1)).sum())
    tn, fp = int(((pred == 0) & (y == 0)).sum()), int(((pred == 1) & (y == 0)).sum())
    out["recall"] = tp / (tp + fn) if tp + fn else float("nan")
    out["specificity"] = tn / (tn + fp) if tn + fp else float("nan")
    return out


def fast_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank statistic (ties get half credit, as in scikit-learn)."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fast_binary_metrics(
    y: np.ndarray, s: np.ndarray, threshold: float, f1_average: F1Average = "binary", strict: bool = False
) -> dict[str, float]:
    """The numbers of :func:`binary_metrics` for already-cleaned int labels ``y`` and scores ``s``."""
    pred = predict_labels(s, threshold, strict) == 1
    pos = y == 1
    tp = float((pred & pos).sum())
    fp = float((pred & ~pos).sum())
    fn = float((~pred & pos).sum())
    tn = float(y.size - tp - fp - fn)
    n = float(y.size)

    def _f1(a: float, b: float, c: float) -> float:  # tp, fp, fn of one class
        return 2 * a / (2 * a + b + c) if (2 * a + b + c) else 0.0

    f1_pos = _f1(tp, fp, fn)
    f1 = f1_pos if f1_average == "binary" else ((tp + fn) * f1_pos + (tn + fp) * _f1(tn, fn, fp)) / n if n else 0.0
    return {
        "auc": fast_auc(y, s),
        "f1": f1,
        "accuracy": (tp + tn) / n if n else float("nan"),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
    }


def per_finding_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    names: Sequence[str],
    thresholds: Sequence[float],
    f1_average: F1Average = "binary",
    strict: bool = False,
    min_positives: int = 1,
) -> dict[str, dict[str, float]]:
    """Metrics for each column of ``labels``/``probs`` (both (N, F)) plus a ``"mean"`` row over findings.

    A finding is *estimable* when its labels hold at least ``min_positives`` positives and as many
    negatives (each row carries ``estimable`` 1.0/0.0). The mean is over estimable findings only, and skips
    values that are undefined (NaN); ``mean["n_findings"]`` says how many findings it averages. An AUC from
    a handful of positives is mostly noise (its standard error is ~0.1 with 5 positives), so evaluation
    reports such findings but does not average them (``min_positives=10`` in ``silverclip run``).
    """
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    if labels.shape != probs.shape or labels.shape[1] != len(names) or len(thresholds) != len(names):
        raise ValueError(f"shape mismatch: labels {labels.shape}, probs {probs.shape}, {len(names)} names")
    out = {
        name: binary_metrics(labels[:, j], probs[:, j], thresholds[j], f1_average, strict)
        for j, name in enumerate(names)
    }
    for row in out.values():
        row["estimable"] = float(min(row["n_pos"], row["n"] - row["n_pos"]) >= max(1, min_positives))
    out["mean"] = mean_over_findings(out)
    return out


def estimable_findings(labels: np.ndarray, min_positives: int = 1) -> np.ndarray:
    """(F,) bool: columns of ``labels`` (N, F) with at least ``min_positives`` positives and negatives."""
    labels = np.asarray(labels, dtype=float)
    pos = (labels == 1).sum(0)
    neg = (labels == 0).sum(0)
    return np.minimum(pos, neg) >= max(1, min_positives)


def per_finding_auc(
    labels: np.ndarray, scores: np.ndarray, names: Sequence[str], min_positives: int = 1
) -> dict[str, float]:
    """AUC of each column of ``labels``/``scores`` (both (N, F)) and ``"mean"`` over the defined ones.

    :func:`per_finding_metrics` without thresholds (the training loop's per-epoch validation): entries
    whose label is not 0/1 are left out; a finding with a single class has AUC NaN and is skipped by the mean.
    """
    m = per_finding_metrics(labels, scores, names, [float("nan")] * len(names), min_positives=min_positives)
    return {k: v["auc"] for k, v in m.items()}


def mean_over_findings(per_finding: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the findings whose row is estimable (all rows without an ``estimable`` key)."""
    rows = [v for k, v in per_finding.items() if k != "mean" and v.get("estimable", 1.0)]
    mean: dict[str, float] = {"n_findings": float(len(rows))}
    for m in METRIC_NAMES:
        vals = np.array([r.get(m, np.nan) for r in rows], dtype=float)
        mean[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return mean
