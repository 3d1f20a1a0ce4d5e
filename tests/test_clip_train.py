"""``silverclip clip`` end to end on tiny data: image tower from a pre-training checkpoint, tiny text tower.

Also: the per-epoch validation gives the numbers the evaluation gives on the same weights (one
definition of Recall@K, zero-shot AUC and prompts), and the checkpoint's report-text choice
(``include_impressions``) is what ``silverclip embed`` uses unless told otherwise.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from silverclip.checkpoint import load_model
from silverclip.cli import main
from silverclip.findings import FINDINGS
from train_fixtures import N_TRAIN, TINY_IMAGE, TINY_TEXT, make_all


def test_clip_cli_from_a_pretrain_checkpoint(tmp_path, capsys):
    p = make_all(tmp_path)
    pre = tmp_path / "pre"
    assert (
        main(
            [
                "pretrain",
                "--cache",
                str(p["cache"]),
                "--labels",
                str(p["labels"]),
                "--out",
                str(pre),
                "model=resnet10_3d",
                f"model_kwargs={TINY_IMAGE}",
                "train.epochs=1",
                "train.progress=false",
            ]
        )
        == 0
    )
    cfg = tmp_path / "clip.yaml"
    cfg.write_text(yaml.safe_dump({"model_kwargs": {"text": TINY_TEXT, "embed_dim": 16}, "retrieval_ks": [1, 2]}))
    run = tmp_path / "clip"
    assert (
        main(
            [
                "clip",
                "--cache",
                str(p["cache"]),
                "--manifest",
                str(p["manifest"]),
                "--init",
                str(pre / "best"),
                "--out",
                str(run),
                "--include-impressions",
                str(cfg),
                "train.epochs=2",
                "train.progress=false",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run / "best")
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["lr"] == 1e-5 and resolved["train"]["grad_clip"] == 1.0  # paper defaults
    model, meta = load_model(run / "best")
    assert meta["model_config"]["image"]["widen_factor"] == TINY_IMAGE["widen_factor"]  # architecture from --init
    assert meta["model_config"]["image"]["num_classes"] == 0
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert len(val) == 2
    for r in val:
        assert 0 <= r["r2i_recall@1"] <= r["r2i_recall@2"] <= 1 and 0 <= r["zs_mean_auc"] <= 1
    # the image tower started from the pre-trained weights (checked on a layer CLIP barely moves in 2 steps)
    pre_w = load_file(str(pre / "best" / "model.safetensors"))["conv1.weight"]
    assert model.image_tower.conv1.weight.shape == pre_w.shape
    assert torch.allclose(model.image_tower.conv1.weight, pre_w, atol=1e-3)
    assert meta["extra"]["include_impressions"] is True  # how the texts were built travels with the weights

    _validation_equals_evaluation(run / "best", meta["extra"]["val"], p, tmp_path)


def _validation_equals_evaluation(best, val, p, tmp_path):
    """Embed the validation split from the best checkpoint and evaluate: the numbers logged at that epoch."""
    from silverclip.eval.embeddings import compute_embeddings, load_embeddings
    from silverclip.eval.metrics import per_finding_auc
    from silverclip.eval.retrieval import recall_at_k
    from silverclip.eval.zero_shot import zero_shot_probabilities

    out = tmp_path / "emb"
    argv = ["embed", "--checkpoint", str(best), "--cache", str(p["cache"]), "--manifest", str(p["manifest"])]
    assert main([*argv, "--split", "valid", "--out", str(out)]) == 0
    emb = load_embeddings(out)
    assert len(emb.image_ids) == 4 and emb.meta["include_impressions"] is True  # the checkpoint's choice
    recall = recall_at_k(emb.text, emb.image, emb.text_ids, emb.image_ids, ks=(1, 2))["recall"]
    assert recall[1] == pytest.approx(val["r2i_recall@1"]) and recall[2] == pytest.approx(val["r2i_recall@2"])
    manifest = pd.read_csv(p["manifest"]).set_index("volume_id")
    labels = manifest.loc[emb.image_ids, list(FINDINGS)].to_numpy(float)
    probs = zero_shot_probabilities(emb.image, emb.classifier(), emb.logit_scale)
    aucs = per_finding_auc(labels, probs, FINDINGS)
    assert aucs["mean"] == pytest.approx(val["zs_mean_auc"], abs=1e-6)
    assert aucs["Lung nodule"] == pytest.approx(val["zs_auc/Lung nodule"], abs=1e-6)

    # the flag overrides the checkpoint: Findings only gives other report embeddings
    findings_only, _ = compute_embeddings(
        best, p["cache"], p["manifest"], tmp_path / "emb2", split="valid", include_impressions=False, progress=False
    )
    assert findings_only.meta["include_impressions"] is False and findings_only.text_ids == emb.text_ids
    assert np.allclose(findings_only.image, emb.image, atol=1e-6)
    model, _ = load_model(best)
    row = manifest.loc[emb.text_ids[0]]
    with torch.no_grad():
        for texts, text_emb in (([row["findings"]], findings_only), ([f"{row['findings']} {row['impressions']}"], emb)):
            ref = model.encode_text(model.tokenize(texts))[0].numpy()
            assert np.abs(ref - text_emb.text[0]).max() < 1e-5
    assert np.abs(findings_only.text[0] - emb.text[0]).max() > 1e-4  # (the two texts do give other embeddings)
    assert sorted(emb.image_ids) == sorted(manifest.index[N_TRAIN:])


def test_clip_from_scratch_differs_from_init(tmp_path):
    p = make_all(tmp_path)
    common = [
        "clip",
        "--cache",
        str(p["cache"]),
        "--manifest",
        str(p["manifest"]),
        "train.max_steps=1",
        "train.progress=false",
        f"model_kwargs={{text: {TINY_TEXT}, image: {TINY_IMAGE}, embed_dim: 8}}",
    ]
    assert main([*common, "--out", str(tmp_path / "scratch")]) == 0
    meta = json.loads((tmp_path / "scratch" / "best" / "checkpoint.json").read_text())
    assert meta["task"] == "clip" and meta["tokenizer"]  # self-describing
    assert meta["model_config"]["text"]["config"]["hidden_size"] == 32
