"""Label evaluation against scikit-learn and naive references; id alignment; uncertain handling."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from silverclip.findings import FINDINGS
from silverclip.labels.evaluate import align, binarize, evaluate_labels, metrics_markdown


def _frames(n: int = 60, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"train_{i}_a_1" for i in range(n)]
    gold = pd.DataFrame(rng.integers(0, 2, (n, 18)), index=ids, columns=list(FINDINGS))
    gold.iloc[:2, 0] = [0, 1]  # both classes present everywhere
    probs = pd.DataFrame(
        np.clip(gold.to_numpy() * 0.4 + rng.random((n, 18)) * 0.6, 0, 1), index=ids, columns=list(FINDINGS)
    )
    pred = pd.DataFrame(np.where(probs.to_numpy() > 0.5, 1, 0), index=ids, columns=list(FINDINGS))
    pred.iloc[3:8, :] = -1
    return pred, gold, probs


def test_against_sklearn_with_probabilities() -> None:
    pred, gold, probs = _frames()
    res = evaluate_labels(pred, gold, probs, uncertain_as="negative")
    for f in FINDINGS:
        y = gold[f].to_numpy()
        yhat = (pred[f].to_numpy() == 1).astype(int)
        m = res["per_finding"][f]
        assert m["auc"] == pytest.approx(roc_auc_score(y, probs[f]))
        assert m["f1"] == pytest.approx(f1_score(y, yhat))
        assert m["precision"] == pytest.approx(precision_score(y, yhat, zero_division=0))
        assert m["recall"] == pytest.approx(recall_score(y, yhat))
        assert m["prevalence"] == pytest.approx(y.mean())
        assert m["auc_source"] == "prob"
    assert res["macro"]["auc"] == pytest.approx(np.mean([res["per_finding"][f]["auc"] for f in FINDINGS]))


def test_uncertain_policy_and_label_auc() -> None:
    pred, gold, _ = _frames()
    pos = evaluate_labels(pred, gold, uncertain_as="positive")
    f = FINDINGS[4]
    y = gold[f].to_numpy()
    yhat = np.isin(pred[f].to_numpy(), (1, -1)).astype(int)
    assert pos["per_finding"][f]["f1"] == pytest.approx(f1_score(y, yhat))
    graded = np.select([pred[f] == 1, pred[f] == -1], [1.0, 0.5], 0.0)
    assert pos["per_finding"][f]["auc"] == pytest.approx(roc_auc_score(y, graded))
    assert pos["per_finding"][f]["n_uncertain_pred"] == 5
    np.testing.assert_array_equal(binarize(np.array([1, 0, -1, np.nan]), "negative"), [1, 0, 0, 0])


def test_gold_uncertain_and_single_class_are_excluded() -> None:
    pred, gold, probs = _frames()
    gold = gold.astype(float)
    gold.iloc[:10, 1] = -1
    gold[FINDINGS[2]] = 0
    res = evaluate_labels(pred, gold, probs)
    assert res["per_finding"][FINDINGS[1]]["n"] == len(gold) - 10
    assert math.isnan(res["per_finding"][FINDINGS[2]]["auc"])
    assert res["macro"]["n_findings_auc"] == 17
    assert "n/a" in metrics_markdown(res)


def test_ids_aligned_explicitly() -> None:
    pred, gold, probs = _frames()
    shuffled = pred.sample(frac=1.0, random_state=1)
    shuffled.index = [f"{i}.nii.gz" for i in shuffled.index]  # CT-RATE file names match volume ids
    a = evaluate_labels(pred, gold, probs)
    b = evaluate_labels(shuffled, gold, probs.sample(frac=1.0, random_state=2))
    assert a["per_finding"] == b["per_finding"]
    with pytest.raises(ValueError, match=r"1 reference id\(s\) missing.*train_0_a_1"):
        align(pred.iloc[1:], gold)
    with pytest.raises(ValueError, match="not in the reference"):
        align(pred, gold.iloc[1:])
    sub_pred, sub_gold = align(pred.iloc[1:], gold, allow_subset=True)
    assert len(sub_pred) == len(sub_gold) == len(gold) - 1
