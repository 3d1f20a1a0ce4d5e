"""A checkpoint folder is as safe to open as a safetensors file, whatever its checkpoint.json says.

Each test tampers with a real checkpoint the way an attacker handing over a folder could: pointing the
text tower at a folder (or hub repository) whose Python modules write a marker file when imported, with
``trust_remote_code: true``, paths outside the folder, links, or custom classes in the saved text files.
Loading must never run that code, never read outside the folder and never ask the hub.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from silverclip import checkpoint as ckpt
from silverclip.models import create_model
from silverclip.models.hf_files import RemoteCodeRefused

torch.set_num_threads(1)

TINY_BERT = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 37}
EVIL_MODULES = ("configuration_evil", "modeling_evil", "tokenization_evil")


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records (and refuses) every attempt to reach the hub."""
    import huggingface_hub

    calls: list = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError(f"a hub download was attempted while loading a checkpoint: {args}")

    for name in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, name, refuse)
    return calls


def _evil_repo(folder: Path, marker: Path) -> Path:
    """A text-model folder whose config and tokenizer name its own modules (each writes ``marker`` if run)."""
    folder.mkdir(parents=True)
    code = f"open({str(marker)!r}, 'w').write('checkpoint code ran')\n"
    for name in EVIL_MODULES:
        (folder / f"{name}.py").write_text(code)
    config = {
        "model_type": "evil",
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"},
        **TINY_BERT,
        "vocab_size": 30522,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tok = {"tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = create_model("clip", image={"name": "resnet10_3d"}, text={"config": TINY_BERT}, embed_dim=8)
    return ckpt.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip", model, preset="demo", step=1)


@pytest.fixture
def copy(clip_checkpoint: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint"
    shutil.copytree(clip_checkpoint, folder)
    return folder


def _edit_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "checkpoint.json").read_text())
    for key, value in changes.items():
        if key == "text":
            meta["model_config"]["text"] = value
        else:
            meta[key] = value
    (folder / "checkpoint.json").write_text(json.dumps(meta))


def test_untampered_checkpoint_loads(copy: Path, no_hub: list) -> None:
    model, meta = ckpt.load_model(copy)
    assert meta["text_files"] == {"text_tower": "text/text_tower"}
    assert model.encode_text(model.tokenize(["no effusion"])).shape == (1, 8)
    assert no_hub == []


@pytest.mark.parametrize("trust", [True, False])
def test_text_tower_pointed_at_a_code_folder_is_refused(copy: Path, tmp_path: Path, no_hub: list, trust: bool) -> None:
    marker = tmp_path / "MARKER"
    evil = _evil_repo(tmp_path / "evil", marker)
    _edit_meta(copy, text={"name_or_path": str(evil), "trust_remote_code": trust}, text_files={})
    with pytest.raises(ValueError, match="has no files in the checkpoint"):
        ckpt.load_model(copy)
    assert not marker.exists() and no_hub == []


@pytest.mark.parametrize("where", ["relative", "absolute", "linked-folder"])
def test_text_files_outside_the_checkpoint_are_refused(copy: Path, tmp_path: Path, no_hub: list, where: str) -> None:
    marker = tmp_path / "MARKER"
    evil = _evil_repo(tmp_path / "evil", marker)
    if where == "relative":
        _edit_meta(copy, text_files={"text_tower": "../evil"})
    elif where == "absolute":
        _edit_meta(copy, text_files={"text_tower": str(evil)})
    else:
        shutil.rmtree(copy / "text" / "text_tower")
        os.symlink(evil, copy / "text" / "text_tower")
    with pytest.raises(ValueError, match="outside the checkpoint folder"):
        ckpt.load_model(copy)
    assert not marker.exists() and no_hub == []


def test_a_file_linked_outside_the_checkpoint_is_refused(copy: Path, tmp_path: Path, no_hub: list) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the model")
    os.symlink(secret, copy / "text" / "text_tower" / "vocab.txt")
    with pytest.raises(RemoteCodeRefused, match="links outside the checkpoint folder"):
        ckpt.load_model(copy)


def test_hub_id_without_saved_files_never_reaches_the_hub(copy: Path, no_hub: list) -> None:
    _edit_meta(copy, text={"name_or_path": "microsoft/BiomedVLP-CXR-BERT-specialized"}, text_files={})
    with pytest.raises(ValueError, match="never from a hub"):
        ckpt.load_model(copy)
    assert no_hub == []


def test_dangerous_text_options_are_dropped(copy: Path, tmp_path: Path, no_hub: list) -> None:
    marker = tmp_path / "MARKER"
    evil = _evil_repo(tmp_path / "evil", marker)
    options = {"name_or_path": "someone/evil", "tokenizer": str(evil), "trust_remote_code": True, "config": {}}
    meta = json.loads((copy / "checkpoint.json").read_text())
    meta["model_config"]["text"] = options
    meta["model_config"]["image"]["weights"] = str(tmp_path / "no-such-weights.pth")
    (copy / "checkpoint.json").write_text(json.dumps(meta))
    model, _ = ckpt.load_model(copy)  # rebuilt from the folder's own files only
    assert model.text_tower.name_or_path == str((copy / "text" / "text_tower").resolve())
    assert not marker.exists() and no_hub == []


def test_custom_classes_in_the_saved_text_files_never_run(copy: Path, tmp_path: Path, no_hub: list) -> None:
    marker = tmp_path / "MARKER"
    text = copy / "text" / "text_tower"
    evil = _evil_repo(tmp_path / "evil", marker)
    for f in evil.iterdir():  # the saved text files now name code that sits beside them
        if f.suffix == ".py":
            shutil.copy(f, text / f.name)
    cfg = json.loads((text / "config.json").read_text())
    (text / "config.json").write_text(json.dumps({**cfg, **json.loads((evil / "config.json").read_text())}))
    tok = json.loads((text / "tokenizer_config.json").read_text())
    (text / "tokenizer_config.json").write_text(
        json.dumps({**tok, **json.loads((evil / "tokenizer_config.json").read_text())})
    )
    try:
        ckpt.load_model(copy)  # read as a BERT if its files allow, else refused: never run
    except RemoteCodeRefused as e:
        assert "EvilTokenizer" in str(e)
    assert not marker.exists() and no_hub == []
