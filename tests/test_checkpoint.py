"""Checkpoints rebuild identical models from their folder alone; training state round-trips exactly."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from silverclip import checkpoint as ckpt
from silverclip.data.presets import load_preset
from silverclip.findings import FINDINGS
from silverclip.models import create_model

torch.set_num_threads(1)

TINY_BERT = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}
TEXTS = ["No pleural effusion.", "Emphysema and a nodule."]


def _volume(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))


def _perturb(model: torch.nn.Module) -> None:
    """Make weights and BN statistics differ from any fresh initialisation."""
    model.train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        if hasattr(model, "forward_features"):
            model(_volume())  # updates BatchNorm running statistics


def test_image_checkpoint_roundtrip(tmp_path: Path) -> None:
    model = create_model("resnet10_3d", num_classes=len(FINDINGS))
    _perturb(model)
    folder = ckpt.save_checkpoint(
        tmp_path / "ckpt", model, model.model_config, findings=FINDINGS, preset="paper", step=7, task="pretrain"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folders left behind
    assert ckpt.is_checkpoint(folder)
    loaded, meta = ckpt.load_model(folder)
    assert not loaded.training
    assert meta["step"] == 7 and meta["task"] == "pretrain" and meta["findings"] == list(FINDINGS)
    assert meta["model_config"] == {"name": "resnet10_3d", "num_classes": 18}
    assert meta["preset"] == load_preset("paper").to_dict()
    assert "silverclip" in meta["code_version"] and meta["timestamp"]
    model.eval()
    x = _volume()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # A fresh model differs, so the equality above is the weights' doing.
    with torch.no_grad():
        assert not torch.allclose(create_model("resnet10_3d").eval()(x), model(x))


def test_tuple_options_survive_json(tmp_path: Path) -> None:
    model = create_model("resnet10_3d", conv1_t_size=(7, 7, 3), conv1_t_stride=(2, 2, 1), shortcut_type="A").eval()
    loaded, meta = ckpt.load_model(ckpt.save_checkpoint(tmp_path / "c", model, step=0))
    assert meta["model_config"]["conv1_t_size"] == [7, 7, 3] and loaded.conv1.kernel_size == (7, 7, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_volume()), model(_volume()), rtol=0, atol=0)


def test_overwrite_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = create_model("resnet10_3d")
    folder = tmp_path / "last"
    ckpt.save_checkpoint(folder, model, step=1)
    ckpt.save_checkpoint(folder, model, step=2)
    assert ckpt.read_checkpoint_meta(folder)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "atomic_write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(folder, model, step=3)
    assert ckpt.read_checkpoint_meta(folder)["step"] == 2  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_clip_checkpoint_rebuilds_from_folder_alone(tmp_path: Path) -> None:
    # The text tower comes from a local folder that is deleted before loading: the checkpoint must
    # carry everything (text config + tokenizer) itself.
    from test_models import _fake_cxr_bert  # tests/ is on sys.path (pytest rootdir-less test modules)

    source = _fake_cxr_bert(tmp_path / "cxr-bert")
    model = create_model("clip", image={"name": "resnet10_3d"}, text={"name_or_path": str(source)}, embed_dim=16)
    _perturb(model)
    with torch.no_grad():
        model(_volume(), model.tokenize(TEXTS))  # BN statistics
    folder = ckpt.save_checkpoint(tmp_path / "clip", model, findings=FINDINGS, preset="ctclip", step=3)
    shutil.rmtree(source)
    loaded, meta = ckpt.load_model(folder)
    assert meta["tokenizer"] == str(source) and meta["text_files"] == {"text_tower": "text/text_tower"}
    assert meta["model_config"]["text"] == {"name_or_path": str(source)}  # as the user wrote it
    model.eval()
    tokens = loaded.tokenize(TEXTS)
    torch.testing.assert_close(tokens["input_ids"], model.tokenize(TEXTS)["input_ids"])
    with torch.no_grad():
        a, b = loaded(_volume(), tokens), model(_volume(), tokens)
    for key in ("image_embeds", "text_embeds", "logit_scale"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_supervised_checkpoint_initialises_clip_image_tower(tmp_path: Path) -> None:
    sup = create_model("resnet10_3d")
    _perturb(sup)
    folder = ckpt.save_checkpoint(tmp_path / "sup", sup, step=1)
    clip = create_model("clip", image={"name": "resnet10_3d"}, text={"config": TINY_BERT}, embed_dim=8)
    result = clip.load_image_tower_from(folder, verbose=False)
    assert sorted(result["dropped"]) == ["fc.bias", "fc.weight"]
    sup.eval()
    clip.eval()
    with torch.no_grad():
        torch.testing.assert_close(clip.image_tower.forward_features(_volume()), sup.forward_features(_volume()))
    # A CLIP checkpoint's image tower loads too; a different architecture is refused.
    clip_dir = ckpt.save_checkpoint(tmp_path / "clip", clip, step=2)
    other = create_model("clip", image={"name": "resnet10_3d"}, text={"config": TINY_BERT}, embed_dim=8)
    other.load_image_tower_from(clip_dir, verbose=False)
    torch.testing.assert_close(other.image_tower.layer1[0].conv1.weight, sup.layer1[0].conv1.weight)
    wrong = create_model("clip", image={"name": "resnet18_3d"}, text={"config": TINY_BERT}, embed_dim=8)
    with pytest.raises(ValueError, match="does not fit"):
        wrong.load_image_tower_from(folder, verbose=False)


def test_load_model_reports_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        ckpt.load_model(tmp_path)
    folder = ckpt.save_checkpoint(tmp_path / "c", create_model("resnet10_3d"), step=0)
    meta = json.loads((folder / "checkpoint.json").read_text())
    meta["model_config"] = {"name": "resnet18_3d"}
    (folder / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not fit"):
        ckpt.load_model(folder)


def _draws() -> tuple[list[float], list[float], list[float]]:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_rng_state_roundtrip_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.standard_normal()  # and numpy's
    state = ckpt.capture_rng_state()
    expected = _draws()
    torch.save(state, tmp_path / "rng.pt")
    _draws()
    ckpt.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


def test_training_state_roundtrip(tmp_path: Path) -> None:
    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))
        return model, opt, sched

    def step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: object) -> None:
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        sched.step()

    model, opt, sched = make()
    for _ in range(2):
        step(model, opt, sched)
    folder = ckpt.save_checkpoint(
        tmp_path / "last",
        model,
        {"name": "linear"},
        step=2,
        # numpy numbers (e.g. a validation AUC) are stored as plain floats, readable weights-only
        training_state=ckpt.training_state_dict(opt, sched, {"epoch": 0, "batch": 2, "auc": np.float64(0.5)}, step=2),
    )
    expected = _draws()
    for _ in range(2):  # the uninterrupted run continues
        step(model, opt, sched)
    reference = model.weight.detach().clone()

    _draws()  # the interrupted run's RNG is elsewhere
    resumed, opt2, sched2 = make()
    state = ckpt.load_training_state(folder, resumed, opt2, sched2)
    assert state["step"] == 2 and state["extra"] == {"epoch": 0, "batch": 2, "auc": 0.5}
    assert sched2.last_epoch == 2 and opt2.param_groups[0]["lr"] == pytest.approx(1e-2)
    assert _draws() == expected  # RNG restored: the same draws, then the same random batches below
    for _ in range(2):
        step(resumed, opt2, sched2)
    torch.testing.assert_close(resumed.weight, reference, rtol=0, atol=0)

    # save_training_state alone writes the file in place, with per-rank RNG states.
    ckpt.save_training_state(folder, opt2, sched2, {"epoch": 1}, step=4, rng_states=[ckpt.capture_rng_state()] * 2)
    state = ckpt.load_training_state(folder, None, opt2, rank=1)
    assert state["step"] == 4 and isinstance(state["rng"], list)
