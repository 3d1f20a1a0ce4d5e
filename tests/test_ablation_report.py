"""The ablation's records, paired differences (against a naive loop) and the 'shown' rule."""

from __future__ import annotations

import numpy as np
import pytest

from silverclip.pipeline.ablation_report import aggregate, make_record, paired_difference, results_markdown


def _records(rng: np.random.Generator) -> list[dict]:
    out = []
    for seed in range(5):
        base = 0.6 + 0.02 * rng.standard_normal()
        for arm, gain in (("scratch", 0.0), ("gold", 0.2), ("rules", 0.19), ("keyword", 0.01)):
            out.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "zero_shot_auc": base + gain + 0.01 * rng.standard_normal(),
                    "map_at_50": 0.3 + gain / 2,
                    "seconds": 1.0,
                }
            )
    return out


def test_paired_difference_matches_a_naive_loop_and_the_shown_rule() -> None:
    recs = _records(np.random.default_rng(0))
    for arm in ("gold", "rules", "keyword"):
        d = paired_difference(recs, arm, "scratch", "zero_shot_auc")
        naive = [
            a["zero_shot_auc"] - b["zero_shot_auc"]
            for a in recs
            for b in recs
            if a["arm"] == arm and b["arm"] == "scratch" and a["seed"] == b["seed"]
        ]
        assert d["mean"] == pytest.approx(np.mean(naive)) and d["std"] == pytest.approx(np.std(naive, ddof=1))
        assert d["wins"] == sum(x > 0 for x in naive) and d["n"] == 5
        assert d["shown"] == (all(x > 0 for x in naive) and np.mean(naive) > 2 * np.std(naive, ddof=1))
    assert paired_difference(recs, "gold", "scratch", "zero_shot_auc")["shown"]
    assert not paired_difference(recs, "keyword", "scratch", "zero_shot_auc")["shown"]
    # a seed missing in one arm is left out of the pairing
    d = paired_difference(
        [r for r in recs if not (r["arm"] == "scratch" and r["seed"] == 0)], "gold", "scratch", "map_at_50"
    )
    assert d["n"] == 4


def test_aggregate_and_markdown() -> None:
    recs = _records(np.random.default_rng(1))
    arms = ["scratch", "gold", "rules", "keyword"]
    agg = aggregate(recs, arms)
    vals = [r["zero_shot_auc"] for r in recs if r["arm"] == "rules"]
    assert agg["rules"]["mean"]["zero_shot_auc"] == pytest.approx(np.mean(vals))
    assert agg["rules"]["std"]["zero_shot_auc"] == pytest.approx(np.std(vals, ddof=1))
    assert "diff_vs_scratch" not in agg["scratch"]
    md = results_markdown(recs, arms, "silverclip ablate x.yaml")
    assert md.count("| (d) pre-trained on weak labels") == 3  # arm row, paired difference and per-seed row
    assert "**+0.2" in md  # gold - scratch is shown (bold)


def test_make_record_flattens_the_evaluation() -> None:
    ev = {
        "zero_shot": {
            "auc": 0.9,
            "auc_ci": [0.88, 0.92],
            "f1": 0.5,
            "n_findings": 17,
            "not_estimable": ["X"],
            "n_volumes": 300,
            "per_finding_auc": {"A": 0.8, "B": float("nan")},
        },
        "retrieval": {
            "map": {"1": 0.4, "50": 0.3},
            "map_gallery": 290,
            "report_to_image": {5: 0.1, 100: 0.6},
            "report_to_image_gallery": 300,
        },
    }
    r = make_record("rules", 3, ev, 12.345, pretrain_val_auc=0.93, label_quality={"auc": 0.99, "f1": 0.97})
    assert r["zero_shot_auc"] == 0.9 and r["map_at_50"] == 0.3 and r["r2i_recall_at_100"] == 0.6
    assert r["r2i_gallery"] == 300 and r["label_macro_f1"] == 0.97 and r["seconds"] == 12.3
    assert r["zero_shot_per_finding_auc"]["B"] is None  # NaN is not valid JSON
