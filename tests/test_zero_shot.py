"""Zero-shot: prompts encoded once, probabilities vs a naive loop, evaluation end to end on stored embeddings."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from silverclip.eval.embeddings import Embeddings, load_embeddings, save_embeddings
from silverclip.eval.zero_shot import (
    build_zero_shot_classifier,
    evaluate_zero_shot,
    list_template_sets,
    load_templates,
    prompt_pairs,
    zero_shot_probabilities,
)
from silverclip.findings import FINDINGS

E = 16


class StubCLIP(torch.nn.Module):
    """Text side of a CLIP model: each distinct text maps to a fixed random unit vector; counts encodes."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab: dict[str, int] = {}
        self.encoded: list[str] = []
        self.table = torch.nn.functional.normalize(
            torch.randn(512, E, generator=torch.Generator().manual_seed(0)), dim=1
        )

    def tokenize(self, texts):
        ids = [self.vocab.setdefault(t, len(self.vocab)) for t in texts]
        self.encoded += list(texts)
        return {"input_ids": torch.tensor(ids)[:, None]}

    def encode_text(self, tokens):
        return self.table[tokens["input_ids"][:, 0]]

    def get_logit_scale(self):
        return torch.tensor(10.0)


def test_templates_and_prompts():
    assert {"ctclip", "ensemble"} <= set(list_template_sets())
    pairs = prompt_pairs("Lung nodule", load_templates("ctclip"))
    assert pairs == [("Lung nodule is present.", "Lung nodule is not present.")]
    free = prompt_pairs("pneumothorax", load_templates("ensemble"))
    assert ("There is pneumothorax.", "There is no pneumothorax.") in free


def test_classifier_encodes_each_prompt_once_and_averages():
    model = StubCLIP()
    templates = load_templates("ensemble")
    cls = build_zero_shot_classifier(model, FINDINGS, templates)
    assert cls.shape == (18, 2, E)
    assert len(model.encoded) == len(set(model.encoded))  # no prompt encoded twice
    assert len(model.encoded) <= 18 * 2 * len(templates)
    # positive side of finding 0 = normalised mean of its positive prompts' embeddings
    pos = [p for p, _ in prompt_pairs(FINDINGS[0], templates)]
    ref = torch.nn.functional.normalize(torch.stack([model.table[model.vocab[p]] for p in pos]).mean(0), dim=0)
    assert torch.allclose(cls[0, 0], ref, atol=1e-6)


def test_probabilities_match_naive_softmax():
    rng = np.random.default_rng(0)
    img, cls = rng.normal(size=(7, E)), rng.normal(size=(5, 2, E))
    p = zero_shot_probabilities(img, cls, logit_scale=3.0, chunk_size=3)
    for n in range(7):
        for f in range(5):
            a, b = 3.0 * img[n] @ cls[f, 0], 3.0 * img[n] @ cls[f, 1]
            assert p[n, f] == pytest.approx(np.exp(a) / (np.exp(a) + np.exp(b)), rel=1e-4)


def _synthetic(labels: pd.DataFrame, cls: np.ndarray, seed: int, signal: float = 0.6) -> Embeddings:
    rng = np.random.default_rng(seed)
    y = labels[list(FINDINGS)].to_numpy(dtype=float)
    direction = cls[:, 0] - cls[:, 1]  # (F, E)
    x = (y - 0.5) @ direction * signal + rng.normal(scale=1.0, size=(len(y), cls.shape[2]))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = {"logit_scale": 10.0, "findings": list(FINDINGS), "default_template_set": "ctclip"}
    ids = [i.replace(".nii.gz", "") for i in labels.index]
    return Embeddings(ids, x.astype(np.float32), classifiers={"ctclip": cls}, meta=meta)


@pytest.fixture(scope="module")
def ctrate_valid(shared_data):
    df = pd.read_csv(shared_data / "ctrate_labels" / "valid_labels.csv").set_index("VolumeName")
    return df.iloc[:600]


@pytest.fixture(scope="module")
def classifier():
    return build_zero_shot_classifier(StubCLIP(), FINDINGS, "ctclip").numpy()


def test_evaluate_default_and_ctclip_modes(tmp_path, ctrate_valid, classifier):
    test_labels, val_labels = ctrate_valid.iloc[:300], ctrate_valid.iloc[300:]
    save_embeddings(tmp_path / "test_emb", _synthetic(test_labels, classifier, 1))
    save_embeddings(tmp_path / "val_emb", _synthetic(val_labels, classifier, 2))
    emb = load_embeddings(tmp_path / "test_emb")
    assert emb.image.shape == (300, E) and emb.classifier().shape == (18, 2, E)
    lab_csv = tmp_path / "test_labels.csv"
    test_labels.reset_index().to_csv(lab_csv, index=False)
    val_csv = tmp_path / "val_labels.csv"
    val_labels.reset_index().to_csv(val_csv, index=False)

    res = evaluate_zero_shot(
        tmp_path / "test_emb",
        lab_csv,
        tmp_path / "out",
        val_embeddings=tmp_path / "val_emb",
        val_labels=val_csv,
        n_boot=50,
    )
    assert res["n_volumes"] == 300 and res["f1_average"] == "binary"
    assert "validation" in res["threshold_source"]
    assert 0.6 < res["metrics"]["mean"]["auc"] <= 1.0  # the synthetic signal is found
    lo, hi = res["bootstrap"]["lower"]["mean/auc"], res["bootstrap"]["upper"]["mean/auc"]
    assert lo < res["metrics"]["mean"]["auc"] < hi
    assert res["n_units"] < 300  # reconstructions of a scan are one bootstrap unit
    for f in ("zero_shot.json", "zero_shot.md", "roc_curves.png", "probabilities.csv"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    saved = json.loads((tmp_path / "out" / "zero_shot.json").read_text())
    assert saved["metrics"]["mean"]["auc"] == pytest.approx(res["metrics"]["mean"]["auc"])
    assert "| Lung nodule |" in (tmp_path / "out" / "zero_shot.md").read_text()

    ct = evaluate_zero_shot(tmp_path / "test_emb", lab_csv, mode="ctclip-compatible", n_boot=20)
    assert ct["f1_average"] == "weighted" and ct["strict_threshold"]
    assert "TEST SET" in ct["threshold_source"]
    # AUC does not depend on the threshold rule
    assert ct["metrics"]["mean"]["auc"] == pytest.approx(res["metrics"]["mean"]["auc"])
    # weighted F1 on the test-picked threshold flatters rare findings compared to the honest binary F1
    assert ct["metrics"]["mean"]["f1"] > res["metrics"]["mean"]["f1"]


def test_evaluate_radchestct_protocol(tmp_path, shared_data, classifier):
    raw = pd.read_csv(shared_data / "radchestct_labels" / "imgtest.csv").set_index("NoteAcc_DEID")
    # synthetic CT-RATE-style ground truth derived from the RAD-ChestCT columns, to drive the embeddings
    from silverclip.eval.radchestct import load_mapping

    m = load_mapping()
    fake = pd.DataFrame(0, index=raw.index, columns=list(FINDINGS))
    for f in FINDINGS:
        if m.sources.get(f):
            fake[f] = raw[list(m.sources[f])].max(axis=1)
    save_embeddings(tmp_path / "emb", _synthetic(fake, classifier, 3))
    res = evaluate_zero_shot(tmp_path / "emb", shared_data / "radchestct_labels" / "imgtest.csv", n_boot=20)
    assert res["protocol"] == "radchestct"
    assert len(res["findings"]) == 16 and "Calcification" in res["findings"]
    assert res["n_volumes"] == 360
    assert res["metrics"]["mean"]["auc"] > 0.6


def test_mismatched_ids_are_a_clear_error(tmp_path, ctrate_valid, classifier):
    emb = _synthetic(ctrate_valid.iloc[:10], classifier, 4)
    emb.image_ids = [f"other_{i}" for i in range(10)]
    with pytest.raises(ValueError, match="ids of embeddings and labels"):
        evaluate_zero_shot(emb, ctrate_valid.iloc[:10], n_boot=5)


def test_phrase_templates_expand_per_finding_and_average():
    """``{phrases}`` gives one pair per clinical phrase of the finding (findings.yaml); the classifier averages
    a different number of pairs per finding, each prompt encoded once."""
    from silverclip.findings import load_findings

    templates = load_templates("ctrate")
    phrases = {f.name: f.phrases for f in load_findings()}
    opacity = prompt_pairs("Lung opacity", templates)
    assert len(opacity) == len(phrases["Lung opacity"]) > 1
    assert ("Ground glass opacity was observed.", "No ground glass opacity was detected.") in opacity
    assert prompt_pairs("pneumothorax", templates) == [("Pneumothorax was observed.", "No pneumothorax was detected.")]
    model = StubCLIP()
    names = ["Lung opacity", "Hiatal hernia", "pneumothorax"]
    cls = build_zero_shot_classifier(model, names, templates)
    assert cls.shape == (3, 2, E)
    assert len(model.encoded) == len(set(model.encoded))  # each prompt encoded once
    for i, name in enumerate(names):
        pairs = prompt_pairs(name, templates)
        pos = torch.stack([model.encode_text(model.tokenize([p])) for p, _ in pairs]).mean(0)[0]
        expected = torch.nn.functional.normalize(pos, dim=0) if len(pairs) > 1 else pos
        torch.testing.assert_close(cls[i, 0], expected)


def test_findings_with_few_positives_are_not_estimable_and_not_averaged(tmp_path):
    """A finding with fewer than ``min_positives`` positives is reported but left out of the mean (and of the
    bootstrap mean); the mean equals the naive mean over the estimable findings."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n = 120
    ids = [f"valid_{i}_a_1" for i in range(n)]
    labels = pd.DataFrame(rng.integers(0, 2, size=(n, len(FINDINGS))), index=ids, columns=list(FINDINGS))
    labels["Hiatal hernia"] = 0
    labels.iloc[:3, labels.columns.get_loc("Hiatal hernia")] = 1  # 3 positives
    classifier = torch.nn.functional.normalize(torch.randn(len(FINDINGS), 2, E), dim=-1)
    image = torch.nn.functional.normalize(torch.randn(n, E), dim=-1).numpy()
    save_embeddings(
        tmp_path / "emb", Embeddings(image=image, image_ids=ids, classifiers={"ctclip": classifier.numpy()})
    )
    res = evaluate_zero_shot(tmp_path / "emb", labels, template_set="ctclip", n_boot=50, min_positives=10)
    assert res["not_estimable"] == ["Hiatal hernia"]
    assert res["metrics"]["Hiatal hernia"]["estimable"] == 0.0 and np.isfinite(res["metrics"]["Hiatal hernia"]["auc"])
    probs = zero_shot_probabilities(image, classifier, 1.0)
    naive = [roc_auc_score(labels[f], probs[:, j]) for j, f in enumerate(FINDINGS) if f != "Hiatal hernia"]
    assert res["metrics"]["mean"]["auc"] == pytest.approx(np.mean(naive))
    assert res["metrics"]["mean"]["n_findings"] == len(FINDINGS) - 1
    lo, hi = res["bootstrap"]["lower"]["mean/auc"], res["bootstrap"]["upper"]["mean/auc"]
    assert lo <= res["metrics"]["mean"]["auc"] <= hi
    # without the rule every finding is averaged
    res1 = evaluate_zero_shot(tmp_path / "emb", labels, template_set="ctclip", n_boot=10)
    assert res1["not_estimable"] == [] and res1["metrics"]["mean"]["n_findings"] == len(FINDINGS)
