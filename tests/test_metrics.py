"""Per-finding metrics against scikit-learn, thresholds, and CT-CLIP's choices on a hand-checked case."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, roc_auc_score

from silverclip.eval.metrics import (
    binary_metrics,
    fast_binary_metrics,
    per_finding_auc,
    per_finding_metrics,
    select_threshold,
    valid_mask,
)


def _data(seed: int, n: int = 300, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    s = np.clip(0.5 * y + rng.normal(0.3, 0.25, n), 0, 1)
    if ties:
        s = np.round(s, 1)  # many tied scores
    return y, s


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("average", ["binary", "weighted"])
def test_binary_metrics_match_sklearn(ties, average):
    y, s = _data(1, ties=ties)
    t = 0.45
    m = binary_metrics(y, s, t, f1_average=average)
    pred = (s >= t).astype(int)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average=average))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    fast = fast_binary_metrics(y.astype(int), s, t, f1_average=average)
    for k in ("auc", "f1", "accuracy", "precision", "recall", "specificity"):
        assert fast[k] == pytest.approx(m[k], abs=1e-12), k


def test_uncertain_and_nan_labels_are_left_out():
    y, s = _data(2)
    y_unc = y.copy()
    y_unc[:20] = -1
    y_unc[20:30] = np.nan
    m = binary_metrics(y_unc, s, 0.5)
    keep = valid_mask(y_unc)
    assert m["n"] == keep.sum() == len(y) - 30
    assert m["auc"] == pytest.approx(roc_auc_score(y[30:], s[30:]))


def test_single_class_auc_is_nan_and_mean_skips_it():
    y, s = _data(3)
    labels = np.stack([y, np.zeros_like(y)], 1)
    probs = np.stack([s, s], 1)
    out = per_finding_metrics(labels, probs, ["a", "b"], [0.5, 0.5])
    assert np.isnan(out["b"]["auc"])
    assert out["mean"]["auc"] == pytest.approx(out["a"]["auc"])


def test_youden_threshold_maximises_j():
    y, s = _data(4)
    t = select_threshold(y, s, "youden")

    def j(th):
        p = s >= th
        return p[y == 1].mean() - p[y == 0].mean()

    assert j(t) == pytest.approx(max(j(c) for c in np.unique(s)))


def test_f1_threshold_maximises_f1():
    y, s = _data(5)
    t = select_threshold(y, s, "f1")
    best = max(f1_score(y, (s >= c).astype(int)) for c in np.unique(s))
    assert f1_score(y, (s >= t).astype(int)) == pytest.approx(best)


def test_ctclip_threshold_and_weighted_f1_hand_checked():
    # 4 positives, 4 negatives. CT-CLIP scans t in linspace(0, 1, 100), predicts p > t and keeps the
    # LAST t with the smallest distance to the ROC corner sqrt((1-TPR)^2 + FPR^2).
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1, 0.05])
    # For t in [0.30, 0.6): predicted positives {0.9, 0.8, 0.6, 0.7} -> TPR 3/4, FPR 1/4, d = 0.354.
    # For t in [0.2, 0.3): TPR 1, FPR 1/4 -> d = 0.25 (best). Grid points in [0.2, 0.3): 0.2020..0.2929;
    # the last one is 29/99 = 0.29292929.
    t = select_threshold(y, p, "ctclip")
    assert t == pytest.approx(29 / 99)
    m = binary_metrics(y, p, t, f1_average="weighted", strict=True)
    # pred = [1,1,1,1,1,0,0,0]: class1 F1 = 2*4/(2*4+1+0) = 8/9; class0 F1 = 2*3/(2*3+0+1) = 6/7.
    assert m["f1"] == pytest.approx(0.5 * 8 / 9 + 0.5 * 6 / 7)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(7 / 8)
    binary = binary_metrics(y, p, t, f1_average="binary", strict=True)
    assert binary["f1"] == pytest.approx(8 / 9)


def test_ctclip_threshold_matches_reference_loop():
    # A literal transcription of CT-CLIP's find_threshold loop (with sklearn's confusion matrix).
    from sklearn.metrics import confusion_matrix

    y, s = _data(6)
    best_t, best = 0.0, 1e4
    for th in np.linspace(0, 1, 100):
        c = confusion_matrix(y, (s > th).astype(int), labels=[0, 1])
        d = np.sqrt((1 - c[1, 1] / (c[1, 1] + c[1, 0])) ** 2 + (c[0, 1] / (c[0, 1] + c[0, 0])) ** 2)
        if d <= best:
            best, best_t = d, th
    assert select_threshold(y, s, "ctclip") == pytest.approx(best_t)


def test_per_finding_auc_leaves_out_uncertain_and_single_class_findings():
    rng = np.random.default_rng(3)
    labels = rng.choice([1.0, 0.0, -1.0, np.nan], size=(60, 3))
    labels[:, 2] = np.where(labels[:, 2] == 1, 0, labels[:, 2])  # finding 2 has no positive
    scores = rng.random((60, 3)) + 0.3 * (labels == 1)
    aucs = per_finding_auc(labels, scores, ["a", "b", "c"])
    for j, name in enumerate(["a", "b"]):
        keep = (labels[:, j] == 0) | (labels[:, j] == 1)
        assert aucs[name] == pytest.approx(roc_auc_score(labels[keep, j], scores[keep, j]))
    assert np.isnan(aucs["c"])
    assert aucs["mean"] == pytest.approx((aucs["a"] + aucs["b"]) / 2)
