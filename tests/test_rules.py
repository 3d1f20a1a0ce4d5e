"""Rule labeller: hand-written sentences per finding family, and macro AUC on the 800 real reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from silverclip.findings import FINDINGS
from silverclip.labels.evaluate import evaluate_labels
from silverclip.labels.rules import RuleLabeler
from silverclip.labels.sentences import split_sentences

# Measured on the 800 manual reports (docs/labels.md): all 0.983 / held-out 25% 0.971. Margin 0.01.
MIN_MACRO_AUC_ALL = 0.973
MIN_MACRO_AUC_HELDOUT = 0.96


@pytest.fixture(scope="module")
def labeler() -> RuleLabeler:
    return RuleLabeler()


def label_of(labeler: RuleLabeler, text: str, finding: str) -> int:
    return labeler.label(text)[0][finding]


@pytest.mark.parametrize(
    ("text", "finding", "expected"),
    [
        # negation: pre- and post-triggers, CT-RATE's "effusion-thickening was not detected"
        ("Pleural effusion-thickening was not detected.", "Pleural effusion", 0),
        ("No pleural or pericardial effusion was detected.", "Pericardial effusion", 0),
        ("No pleural or pericardial effusion was detected.", "Pleural effusion", 0),
        ("Bilateral pleural effusion is observed.", "Pleural effusion", 1),
        ("Minimal pericardial effusion was observed.", "Pericardial effusion", 1),
        # pericardial thickening alone is not an effusion
        ("Pericardial thickening was observed.", "Pericardial effusion", 0),
        # lymph nodes: CT-RATE's annotators count any reported node, even below pathological size
        ("No enlarged lymph nodes in pathological dimensions were detected.", "Lymphadenopathy", 0),
        ("Lymph nodes that do not reach pathological size are observed in the mediastinum.", "Lymphadenopathy", 1),
        ("There is lymphadenopathy with a short axis of 15 mm in the subcarinal area.", "Lymphadenopathy", 1),
        # nodules vs "nodular" lesions that are negated; pseudo-negation "no change"
        ("No nodular or infiltrative lesion is detected in the lung parenchyma.", "Lung nodule", 0),
        ("Millimetric nonspecific nodules in both lungs.", "Lung nodule", 1),
        ("No significant change was found in the size of the nodules.", "Lung nodule", 1),
        # arterial vs coronary calcification, in lists split by ", and"
        (
            "Calcific atheroma plaques are observed in the aortic arch, descending aorta, and coronary arteries.",
            "Coronary artery wall calcification",
            1,
        ),
        ("Calcific atheroma plaques are observed in the coronary arteries.", "Arterial wall calcification", 0),
        ("Calcific atheroma plaques are observed in the coronary arteries.", "Coronary artery wall calcification", 1),
        ("There are calcific plaques in the aortic arch.", "Arterial wall calcification", 1),
        ("There are calcific plaques in the aortic arch.", "Coronary artery wall calcification", 0),
        # cardiomegaly phrasing
        ("Heart size increased.", "Cardiomegaly", 1),
        ("Heart contour and size are normal.", "Cardiomegaly", 0),
        ("The cardiothoracic index increased in favor of the heart (cardiomegaly).", "Cardiomegaly", 1),
        # medical material
        ("A port catheter extending to the right atrium is observed.", "Medical material", 1),
        ("Sternotomy wires are observed.", "Medical material", 1),
        ("Degenerative changes are observed in the end plates of the vertebrae.", "Medical material", 0),
        # uncertainty
        ("Atelectasis cannot be excluded.", "Atelectasis", -1),
        ("Findings may be compatible with bronchiectasis.", "Bronchiectasis", -1),
        ("Subsegmental atelectasis is observed in the lower lobe.", "Atelectasis", 1),
        # scope terminators: a negation does not cross "but" or a second predicate
        (
            "No pleural effusion was detected, but consolidation is observed in the right lower lobe.",
            "Consolidation",
            1,
        ),
        ("Emphysematous changes are observed, and pleural effusion was not detected.", "Emphysema", 1),
        ("Hiatal hernia was not observed.", "Hiatal hernia", 0),
        ("Sliding type hiatal hernia was observed at the lower end of the esophagus.", "Hiatal hernia", 1),
        ("Peribronchial thickness increases are observed in both lungs.", "Peribronchial thickening", 1),
        ("Interlobular septal thickenings are observed.", "Interlobular septal thickening", 1),
        ("Mosaic attenuation pattern in both lungs.", "Mosaic attenuation pattern", 1),
        ("Sequelae fibrotic changes in the right upper lobe.", "Pulmonary fibrotic sequela", 1),
        (
            "Renal sinus lipomatosis secondary to chronic pyelonephritis sequelae changes.",
            "Pulmonary fibrotic sequela",
            0,
        ),
        ("Ground glass opacities are observed in both lungs.", "Lung opacity", 1),
    ],
)
def test_sentences(labeler: RuleLabeler, text: str, finding: str, expected: int) -> None:
    assert label_of(labeler, text, finding) == expected


def test_scores_graded_and_evidence(labeler: RuleLabeler) -> None:
    text = (
        "Ground glass opacities are observed in both lungs. Atelectasis cannot be excluded. "
        "Pleural effusion was not detected."
    )
    labels, scores, evidence = labeler.label(text)
    assert set(labels) == set(FINDINGS) == set(scores) == set(evidence)
    assert all(0.0 <= s <= 1.0 for s in scores.values())
    assert scores["Lung opacity"] > scores["Atelectasis"] > scores["Pleural effusion"] > scores["Emphysema"]
    assert evidence["Atelectasis"] == ["Atelectasis cannot be excluded."]
    assert evidence["Pleural effusion"] == ["Pleural effusion was not detected."]
    assert evidence["Emphysema"] == []


def test_sentence_splitter_keeps_decimals_and_quotes() -> None:
    spans = split_sentences('Effusion of 3.3 cm is seen. " Nodule in the right lung')
    assert [s.text for s in spans] == ["Effusion of 3.3 cm is seen.", "Nodule in the right lung"]


def test_label_reports_result(labeler: RuleLabeler) -> None:
    res = labeler.label_reports({"a": "Cardiomegaly.", "b": "", "c": None})  # type: ignore[dict-item]
    assert list(res.labels.index) == ["a", "b", "c"]
    assert list(res.labels.columns) == list(FINDINGS)
    assert res.labels.loc["a", "Cardiomegaly"] == 1 and res.labels.loc["b"].eq(0).all()
    assert res.probabilities is not None and res.probabilities.shape == (3, 18)
    assert len(res.failures) == 0


def test_macro_auc_on_real_reports(labeler: RuleLabeler, shared_data) -> None:
    df = pd.read_csv(shared_data / "ctrate_reports_manual" / "reports_manual_labels.csv")
    df.index = df["AccessionNo"].astype(str)
    res = labeler.label_reports(df["report_text"].to_dict())
    gold = df[list(FINDINGS)]
    full = evaluate_labels(res.labels, gold, res.probabilities)
    assert full["macro"]["auc"] >= MIN_MACRO_AUC_ALL, full["macro"]
    assert full["macro"]["f1"] >= 0.92, full["macro"]
    # the fixed held-out quarter used while developing the rules (docs/labels.md)
    rng = np.random.default_rng(0)
    held = list(rng.permutation(np.array(sorted(df.index)))[:200])
    part = evaluate_labels(res.labels.loc[held], gold.loc[held], res.probabilities.loc[held])
    assert part["macro"]["auc"] >= MIN_MACRO_AUC_HELDOUT, part["macro"]
    assert min(v["auc"] for v in full["per_finding"].values()) > 0.9
