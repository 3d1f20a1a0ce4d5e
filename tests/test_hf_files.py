"""Text towers from Hugging Face repositories read as data, never as code (CXR-BERT without remote code).

The replica below has the file layout of ``microsoft/BiomedVLP-CXR-BERT-specialized`` on the hub: a
``config.json`` with ``model_type: cxr-bert`` and an ``auto_map`` to the repository's modules, a
``tokenizer_config.json`` naming ``CXRBertTokenizer`` with an ``auto_map``, ``vocab.txt``, the modules
themselves (here: each writes a marker file when imported) and BERT masked-LM weights under ``bert.``
in ``pytorch_model.bin`` (the hub repository has no safetensors) or ``model.safetensors``.
"""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from silverclip.models import create_model
from silverclip.models.hf_files import RemoteCodeRefused

torch.set_num_threads(1)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "left", "pleural", "effusion", "small", "nod", "##ule"]
VOCAB += [".", ",", "right", "lobe"]
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37}
CODE_MODULES = ("configuration_cxrbert", "modeling_cxrbert", "tokenization_cxrbert")
CXR_BERT = "microsoft/BiomedVLP-CXR-BERT-specialized"


def _marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('the repository code ran')\n"


def cxr_bert_replica(folder: Path, marker: Path, weights: str = "bin") -> dict[str, torch.Tensor]:
    """Write the replica into ``folder``; returns its weights (``bert.*`` + masked-LM and projection heads)."""
    from transformers import BertConfig, BertForMaskedLM

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    cfg = {"vocab_size": len(VOCAB), "max_position_embeddings": 64, **TINY}
    torch.manual_seed(3)
    state = {k: v.clone() for k, v in BertForMaskedLM(BertConfig(**cfg)).state_dict().items()}
    state["cls_projection_head.dense_to_hidden.weight"] = torch.randn(32, 32)
    state["cls_projection_head.dense_to_output.weight"] = torch.randn(16, 32)
    assert any(k.startswith("bert.encoder.") for k in state) and any(k.startswith("cls.") for k in state)
    if weights == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    config = {
        **cfg,
        "architectures": ["CXRBertModel"],
        "auto_map": {"AutoConfig": "configuration_cxrbert.CXRBertConfig", "AutoModel": "modeling_cxrbert.CXRBertModel"},
        "model_type": "cxr-bert",
        "projection_size": 16,
        "transformers_version": "4.17.0.dev0",
    }
    (folder / "config.json").write_text(json.dumps(config))
    tok_cfg = {
        "do_lower_case": True,
        "model_max_length": 512,
        "tokenizer_class": "CXRBertTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_cxrbert.CXRBertTokenizer", None]},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    special = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]"}
    (folder / "special_tokens_map.json").write_text(json.dumps({**special, "mask_token": "[MASK]"}))
    for name in CODE_MODULES:
        (folder / f"{name}.py").write_text(_marker_code(marker))
    return state


@pytest.fixture
def no_prompt_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub, and any question asked on the terminal fails the test."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_input(*args: object) -> str:
        raise AssertionError(f"loading asked a question on the terminal: {args}")

    monkeypatch.setattr(builtins, "input", no_input)


def _reference_bert(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    ref = BertModel(BertConfig(vocab_size=len(VOCAB), max_position_embeddings=64, **TINY), add_pooling_layer=False)
    ref.load_state_dict({k[len("bert.") :]: v for k, v in state.items() if k.startswith("bert.")}, strict=True)
    return ref.eval()


def _assert_is_the_replica(model: torch.nn.Module, state: dict[str, torch.Tensor], marker: Path) -> None:
    assert type(model.model).__name__ == "BertModel"
    assert type(model.tokenizer).__module__.startswith("transformers.")
    tokens = model.tokenize(["Left pleural effusion, small nodule."])
    ids = [VOCAB.index(t) for t in ["[CLS]", "left", "pleural", "effusion", ",", "small", "nod", "##ule", ".", "[SEP]"]]
    assert tokens["input_ids"][0].tolist() == ids  # BERT WordPiece over vocab.txt, lower-cased
    torch.testing.assert_close(
        model.model.encoder.layer[1].output.dense.weight, state["bert.encoder.layer.1.output.dense.weight"]
    )
    model.eval()
    with torch.no_grad():
        expected = _reference_bert(state)(**tokens).last_hidden_state[:, 0]
        torch.testing.assert_close(model(**tokens), expected)
    assert not marker.exists(), "the repository's own code was run"
    assert not any(name in sys.modules for name in CODE_MODULES)


@pytest.mark.parametrize("weights", ["bin", "safetensors"])
def test_cxr_bert_replica_loads_without_remote_code(
    tmp_path: Path, no_prompt_offline: None, weights: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "MARKER"
    repo = tmp_path / "BiomedVLP-CXR-BERT-specialized"
    state = cxr_bert_replica(repo, marker, weights)
    monkeypatch.syspath_prepend(str(repo))  # even importable, the repository's modules are never imported
    _assert_is_the_replica(create_model("hf_text", name_or_path=str(repo)), state, marker)


def test_cxr_bert_by_hub_id_from_the_hub_cache_offline(
    tmp_path: Path, no_prompt_offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The paper's default text tower, by its hub id, found in a hub cache (as after a first download).
    import huggingface_hub.constants

    marker = tmp_path / "MARKER"
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_cache = cache / ("models--" + CXR_BERT.replace("/", "--"))
    state = cxr_bert_replica(repo_cache / "snapshots" / commit, marker)
    (repo_cache / "refs").mkdir()
    (repo_cache / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    model = create_model("hf_text")  # DEFAULT_TEXT_MODEL
    assert model.name_or_path == CXR_BERT
    _assert_is_the_replica(model, state, marker)


def test_cxr_bert_checkpoint_keeps_no_pointer_to_remote_code(tmp_path: Path, no_prompt_offline: None) -> None:
    from silverclip import checkpoint as ckpt

    marker = tmp_path / "MARKER"
    repo = tmp_path / "cxr"
    cxr_bert_replica(repo, marker)
    model = create_model("clip", image={"name": "resnet10_3d"}, text={"name_or_path": str(repo)}, embed_dim=8)
    folder = ckpt.save_checkpoint(tmp_path / "ckpt", model, step=1)
    text = folder / "text" / "text_tower"
    assert "auto_map" not in json.loads((text / "config.json").read_text())
    assert json.loads((text / "config.json").read_text())["model_type"] == "bert"
    tok_cfg = json.loads((text / "tokenizer_config.json").read_text())
    assert "auto_map" not in tok_cfg and tok_cfg["tokenizer_class"] != "CXRBertTokenizer"
    loaded, _ = ckpt.load_model(folder)
    tokens = model.tokenize(["no pleural effusion."])
    torch.testing.assert_close(loaded.tokenize(["no pleural effusion."])["input_ids"], tokens["input_ids"])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens))
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling this object writes the marker
        return (Path.write_text, (self.marker, "unpickled"))


def test_pickled_weights_are_never_unpickled(tmp_path: Path, no_prompt_offline: None) -> None:
    marker = tmp_path / "MARKER"
    repo = tmp_path / "cxr"
    state = cxr_bert_replica(repo, tmp_path / "CODE_MARKER")
    torch.save({**state, "extra": _Payload(marker)}, repo / "pytorch_model.bin")
    with pytest.raises(ValueError, match="never unpickles"):
        create_model("hf_text", name_or_path=str(repo))
    assert not marker.exists()


def test_weights_that_do_not_fit_the_config_are_an_error(tmp_path: Path, no_prompt_offline: None) -> None:
    repo = tmp_path / "cxr"
    state = cxr_bert_replica(repo, tmp_path / "MARKER")
    torch.save({k: v for k, v in state.items() if ".layer.1." not in k}, repo / "pytorch_model.bin")
    with pytest.raises(ValueError, match="do not fit"):
        create_model("hf_text", name_or_path=str(repo))


def test_remote_code_is_refused(tmp_path: Path, no_prompt_offline: None) -> None:
    repo = tmp_path / "cxr"
    marker = tmp_path / "MARKER"
    cxr_bert_replica(repo, marker)
    with pytest.raises(RemoteCodeRefused, match="never runs"):
        create_model("hf_text", name_or_path=str(repo), trust_remote_code=True)
    (repo / "vocab.txt").unlink()  # a custom tokenizer that is not BERT WordPiece: refused, not run
    with pytest.raises(RemoteCodeRefused, match="CXRBertTokenizer"):
        create_model("hf_text", name_or_path=str(repo))
    assert not marker.exists()


def test_missing_hub_model_offline_is_one_clear_error(tmp_path: Path, no_prompt_offline: None, monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match="could not be fetched from the hub"):
        create_model("hf_text", name_or_path="someone/not-cached")
    with pytest.raises(FileNotFoundError, match="no such text-model folder"):
        create_model("hf_text", name_or_path=str(tmp_path / "no" / "such" / "folder"))
