"""The RAD-ChestCT -> CT-RATE mapping on the real label files in ../shared/data/radchestct_labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from silverclip.eval.radchestct import load_mapping, map_labels, map_predictions, read_radchestct_labels
from silverclip.findings import FINDINGS


def test_mapping_scores_16_findings_in_ctrate_order():
    m = load_mapping()
    assert len(m.scored) == 16
    assert "Mosaic attenuation pattern" not in m.scored
    assert m.members("Calcification") == ["Arterial wall calcification", "Coronary artery wall calcification"]
    order = [FINDINGS.index(m.members(s)[0]) for s in m.scored]
    assert order == sorted(order)


@pytest.mark.parametrize("split, rows", [("imgtrain", 2286), ("imgvalid", 984), ("imgtest", 360)])
def test_map_real_label_files(shared_data, split, rows):
    raw = read_radchestct_labels(shared_data / "radchestct_labels" / f"{split}.csv")
    assert raw.shape == (rows, 84)
    mapped = map_labels(raw)
    assert mapped.shape == (rows, 16)
    assert set(np.unique(mapped.to_numpy())) <= {0, 1}
    # one-to-one columns are copied exactly
    for scored, col in [
        ("Emphysema", "emphysema"),
        ("Lung nodule", "nodule"),
        ("Hiatal hernia", "hernia"),
        ("Peribronchial thickening", "bronchial_wall_thickening"),
        ("Calcification", "calcification"),
    ]:
        assert (mapped[scored].to_numpy() == raw[col].to_numpy().astype(int)).all(), scored
    # medical material is the union of the device columns
    devices = list(load_mapping().sources["Medical material"])
    assert (mapped["Medical material"] == raw[devices].max(axis=1).astype(int)).all()
    assert mapped["Medical material"].sum() >= raw["catheter_or_port"].sum()
    # every scored finding has positives in the real data (so AUC is defined)
    assert (mapped.sum() > 0).all()


def test_test_split_ids_match_summary(shared_data):
    raw = read_radchestct_labels(shared_data / "radchestct_labels" / "imgtest.csv")
    summary = pd.read_csv(shared_data / "radchestct_labels" / "Summary_3630.csv")
    assert set(raw.index) <= set(summary["NoteAcc_DEID"])


def test_map_predictions_takes_max_of_calcifications():
    rng = np.random.default_rng(0)
    p = rng.random((5, 18))
    out = map_predictions(p)
    assert out.shape == (5, 16)
    m = load_mapping()
    j = m.scored.index("Calcification")
    a, c = FINDINGS.index("Arterial wall calcification"), FINDINGS.index("Coronary artery wall calcification")
    assert np.allclose(out[:, j], np.maximum(p[:, a], p[:, c]))
    frame = map_predictions(pd.DataFrame(p, columns=list(FINDINGS), index=list("abcde")))
    assert list(frame.index) == list("abcde") and frame.shape == (5, 16)
    assert np.allclose(frame["Emphysema"], p[:, FINDINGS.index("Emphysema")])


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="lack column"):
        map_labels(pd.DataFrame({"nodule": [1]}))
