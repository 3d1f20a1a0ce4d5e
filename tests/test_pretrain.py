"""``silverclip pretrain`` end to end on tiny synthetic data, through the CLI."""

from __future__ import annotations

import json

import pytest
import yaml

from silverclip.checkpoint import load_model
from silverclip.cli import main
from silverclip.findings import FINDINGS
from train_fixtures import TINY_IMAGE, make_all


def test_pretrain_cli_end_to_end(tmp_path, capsys):
    p = make_all(tmp_path)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": "resnet10_3d", "model_kwargs": TINY_IMAGE, "train": {"epochs": 2}}))
    run = tmp_path / "run"
    argv = [
        "pretrain",
        "--cache",
        str(p["cache"]),
        "--labels",
        str(p["labels"]),
        "--val-labels",
        str(p["val_labels"]),
        "--out",
        str(run),
        "--uncertain-policy",
        "positive",
        str(cfg),
        "train.progress=false",
        "data.batch_size=4",
    ]
    assert main(argv) == 0
    best = capsys.readouterr().out.strip().splitlines()[-1]
    assert best == str(run / "best")
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["uncertain_policy"] == "positive" and resolved["train"]["lr"] == 1e-4  # paper default kept
    assert resolved["train"]["min_lr"] == 1e-6 and resolved["train"]["weight_decay"] == 1e-4
    model, meta = load_model(run / "best")  # rebuilt from the folder alone
    assert meta["findings"] == list(FINDINGS) and meta["preset"]["name"] == "tiny"
    assert meta["model_config"]["name"] == "resnet10_3d"
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert len(val) == 2 and 0 <= val[-1]["mean_auc"] <= 1
    assert (run / "metrics.csv").is_file() and (run / "version.json").is_file()


def test_pretrain_reports_a_bad_config_key(tmp_path):
    from silverclip.config import ConfigError

    p = make_all(tmp_path)
    with pytest.raises(ConfigError, match="trian"):
        main(
            ["pretrain", "--cache", str(p["cache"]), "--labels", str(p["labels"]), "--out", str(tmp_path), "trian.lr=1"]
        )


def test_pretrain_without_matching_ids_names_both_sides(tmp_path):
    p = make_all(tmp_path)
    other = tmp_path / "other.csv"
    other.write_text(p["labels"].read_text().replace("train_", "valid_"))
    with pytest.raises(ValueError, match="no volume id"):
        main(["pretrain", "--cache", str(p["cache"]), "--labels", str(other), "--out", str(tmp_path / "r")])


def test_diverged_training_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from silverclip.train.tasks import SupervisedTask

    p = make_all(tmp_path)
    run = tmp_path / "run"
    base = ["pretrain", "--cache", str(p["cache"]), "--labels", str(p["labels"]), "--out", str(run)]
    tiny = [f"model_kwargs={json.dumps(TINY_IMAGE)}", "train.progress=false", "data.batch_size=4"]
    assert main([*base, *tiny, "train.max_steps=2", "train.checkpoint_every=1"]) == 0
    saved = (run / "last" / "model.safetensors").read_bytes()
    real_loss = SupervisedTask.loss

    def nan_loss(self, model, batch):
        return real_loss(self, model, batch) * float("nan")

    monkeypatch.setattr(SupervisedTask, "loss", nan_loss)
    with pytest.raises(FloatingPointError, match="diverged at step 3"):
        main([*base, *tiny, "train.max_steps=4", "train.checkpoint_every=1"])
    assert (run / "last" / "model.safetensors").read_bytes() == saved
