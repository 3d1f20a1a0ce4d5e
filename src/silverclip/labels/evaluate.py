"""Label quality: predicted labels (and optional probabilities) against reference labels.

Definitions (also in docs/labels.md):

- Ids are aligned explicitly: both tables are indexed by id (``volume_id`` strips ``.nii.gz``);
  an id present on only one side is an error that lists those ids, unless ``allow_subset``.
- Reference (gold) labels: 1 positive, 0 negative; gold -1 (uncertain) and NaN entries are left out
  of that finding's metrics.
- Predicted -1 (uncertain) is turned into a binary decision by ``uncertain_as`` (``positive`` by
  default: an uncertain mention is a finding the report raises) for F1/precision/recall; for ROC AUC
  without probabilities the labels are used as a graded score 1 > -1 (0.5) > 0. Predicted NaN
  (failed report) counts as negative with score 0 and is counted in ``n_missing_pred``.
- ROC AUC uses the probabilities table where given (``auc_source: "prob"``), else the labels
  (``"labels"``). AUC is undefined (NaN) when the reference has only one class; macro means average
  over the findings where the metric is defined, and report how many that was.
- Metrics come from scikit-learn (``roc_auc_score``, ``precision_recall_fscore_support`` with
  ``zero_division=0``).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pandas as pd

from silverclip.findings import FINDINGS
from silverclip.labels.table import volume_id

UncertainAs = Literal["positive", "negative"]
METRICS = ("auc", "f1", "precision", "recall")


def align(pred: pd.DataFrame, gold: pd.DataFrame, allow_subset: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Re-index ``pred`` on ``gold``'s ids (normalised by ``volume_id``).

    Raises ValueError listing ids found on only one side (unless ``allow_subset``: then the
    intersection is used, and it must not be empty).
    """
    pred = pred.copy()
    gold = gold.copy()
    pred.index = [volume_id(i) for i in pred.index.astype(str)]
    gold.index = [volume_id(i) for i in gold.index.astype(str)]
    for name, df in (("predictions", pred), ("reference", gold)):
        dup = df.index[df.index.duplicated()].tolist()
        if dup:
            raise ValueError(f"{name}: duplicate ids after normalisation: {dup[:5]}")
    only_pred = sorted(set(pred.index) - set(gold.index))
    only_gold = sorted(set(gold.index) - set(pred.index))
    if (only_pred or only_gold) and not allow_subset:
        raise ValueError(
            f"ids do not match: {len(only_gold)} reference id(s) missing from the predictions {only_gold[:10]}, "
            f"{len(only_pred)} prediction id(s) not in the reference {only_pred[:10]}"
        )
    common = [i for i in gold.index if i in set(pred.index)]
    if not common:
        raise ValueError("predictions and reference share no id")
    return pred.loc[common], gold.loc[common]


def binarize(labels: np.ndarray, uncertain_as: UncertainAs = "positive") -> np.ndarray:
    """Predicted labels {1, 0, -1, NaN} -> {1, 0}; -1 follows ``uncertain_as``, NaN -> 0."""
    if uncertain_as not in ("positive", "negative"):
        raise ValueError(f"uncertain_as must be 'positive' or 'negative', not {uncertain_as!r}")
    labels = np.asarray(labels, dtype=float)
    out = (labels == 1).astype(int)
    if uncertain_as == "positive":
        out[labels == -1] = 1
    return out


def label_scores(labels: np.ndarray) -> np.ndarray:
    """Labels as a graded score for ROC AUC when no probabilities exist: 1 -> 1, -1 -> 0.5, 0/NaN -> 0."""
    labels = np.asarray(labels, dtype=float)
    return np.where(labels == 1, 1.0, np.where(labels == -1, 0.5, 0.0))


def evaluate_labels(
    pred: pd.DataFrame,
    gold: pd.DataFrame,
    probs: pd.DataFrame | None = None,
    uncertain_as: UncertainAs = "positive",
    allow_subset: bool = False,
) -> dict:
    """Per-finding and macro prevalence, ROC AUC, F1, precision, recall of ``pred`` against ``gold``.

    ``pred``/``gold``/``probs`` are frames indexed by id with the 18 findings as columns. Returns
    ``{"n_reports", "uncertain_as", "per_finding": {finding: {...}}, "macro": {...}}``.
    """
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    pred, gold = align(pred, gold, allow_subset=allow_subset)
    if probs is not None:
        probs, _ = align(probs, gold, allow_subset=False)
    per: dict[str, dict] = {}
    for f in FINDINGS:
        g = gold[f].to_numpy(dtype=float)
        keep = (g == 0) | (g == 1)
        y = g[keep].astype(int)
        p = pred[f].to_numpy(dtype=float)[keep]
        yhat = binarize(p, uncertain_as)
        if probs is not None:
            score = np.nan_to_num(probs[f].to_numpy(dtype=float)[keep], nan=0.0)
            source = "prob"
        else:
            score = label_scores(p)
            source = "labels"
        two_classes = len(np.unique(y)) == 2
        auc = float(roc_auc_score(y, score)) if two_classes else math.nan
        prec, rec, f1, _ = precision_recall_fscore_support(y, yhat, average="binary", zero_division=0)
        per[f] = {
            "n": int(keep.sum()),
            "n_positive": int(y.sum()),
            "prevalence": float(y.mean()) if y.size else math.nan,
            "predicted_positive": int(yhat.sum()),
            "n_uncertain_pred": int((p == -1).sum()),
            "n_missing_pred": int(np.isnan(p).sum()),
            "auc": auc,
            "auc_source": source,
            "f1": float(f1),
            "precision": float(prec),
            "recall": float(rec),
        }
    macro = {}
    for m in ("prevalence", *METRICS):
        vals = [v[m] for v in per.values() if not math.isnan(v[m])]
        macro[m] = float(np.mean(vals)) if vals else math.nan
        macro[f"n_findings_{m}"] = len(vals)
    return {"n_reports": int(len(gold)), "uncertain_as": uncertain_as, "per_finding": per, "macro": macro}


def metrics_markdown(result: dict, title: str | None = None) -> str:
    """A Markdown table: one row per finding plus the macro mean."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        f"{result['n_reports']} reports; predicted uncertain (-1) counted as {result['uncertain_as']} for F1.",
        "",
        "| finding | n pos | prevalence | AUC | F1 | precision | recall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.3f}"

    for f, v in result["per_finding"].items():
        lines.append(
            f"| {f} | {v['n_positive']} | {fmt(v['prevalence'])} | {fmt(v['auc'])} | {fmt(v['f1'])} | "
            f"{fmt(v['precision'])} | {fmt(v['recall'])} |"
        )
    m = result["macro"]
    lines.append(
        f"| **macro** |  | {fmt(m['prevalence'])} | **{fmt(m['auc'])}** | **{fmt(m['f1'])}** | "
        f"{fmt(m['precision'])} | {fmt(m['recall'])} |"
    )
    return "\n".join(lines) + "\n"
