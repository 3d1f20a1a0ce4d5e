"""``silverclip clip`` end to end on tiny data: image tower from a pre-training checkpoint, tiny text tower."""

from __future__ import annotations

import json

import torch
import yaml
from safetensors.torch import load_file

from silverclip.checkpoint import load_model
from silverclip.cli import main
from train_fixtures import TINY_IMAGE, TINY_TEXT, make_all


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
