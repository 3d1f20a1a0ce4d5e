"""Hugging Face text-model repositories read as data, never as code.

A repository (a local folder, or a hub id fetched into the local hub cache) is read only through its
data files: ``config.json``, the tokenizer files (``tokenizer_config.json``, ``tokenizer.json``,
``vocab.txt``, ``special_tokens_map.json``) and the weights (``*.safetensors``, or ``pytorch_model*.bin``
read with ``torch.load(weights_only=True)``). Python files are never downloaded, imported or run, and
``trust_remote_code`` is never passed to transformers, so nothing stops to ask a question on a terminal.

That is enough for the BERT family, CXR-BERT included: ``microsoft/BiomedVLP-CXR-BERT-specialized``
declares a ``cxr-bert`` model type and a ``CXRBertTokenizer`` with an ``auto_map`` to its own code, but
its tokenizer is BERT's WordPiece over ``vocab.txt`` and its weights are a BERT masked-LM's (``bert.*``);
:func:`build_config`, :func:`load_tokenizer` and :func:`load_encoder_weights` read them as a plain
``BertConfig``, ``BertTokenizer(Fast)`` and ``BertModel``.

Checkpoints: while :func:`only_files_under` is active (``silverclip.checkpoint.load_model``), every
repository must be a folder inside the given root (symbolic links resolved), and the hub is never asked.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")
TORCH_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin")
# Keys of a repository's config.json that only point at its own code or describe other classes.
CODE_KEYS = ("auto_map", "architectures", "custom_pipelines", "attn_implementation")

_ROOT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("silverclip_hf_root", default=None)

__all__ = [
    "RemoteCodeRefused",
    "only_files_under",
    "repo_folder",
    "build_config",
    "load_tokenizer",
    "load_encoder_weights",
    "clean_tokenizer_config",
]


class RemoteCodeRefused(ValueError):
    """A repository or checkpoint needs code of its own (or a file outside its folder); silverclip never runs it."""


@contextlib.contextmanager
def only_files_under(root: str | Path) -> Iterator[None]:
    """While active, :func:`repo_folder` accepts only folders inside ``root`` (no hub, no alias, no path outside)."""
    token = _ROOT.set(Path(root).resolve())
    try:
        yield
    finally:
        _ROOT.reset(token)


def restricted_root() -> Path | None:
    """The root set by :func:`only_files_under`, or ``None``."""
    return _ROOT.get()


def repo_folder(name_or_path: str | Path, *, weights: bool, local_files_only: bool = False) -> Path:
    """A local folder holding the repository's data files (and, with ``weights``, its weights).

    An existing folder is used as it is; anything else is a hub id whose data files (never its code) are
    fetched into the hub cache, or found there offline (``local_files_only`` or ``HF_HUB_OFFLINE=1``).
    """
    root = _ROOT.get()
    if root is not None:
        return _inside(root, Path(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{path}: a text model must be a folder or a hub id, not a file")
    text = str(name_or_path)
    if path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"{path}: no such text-model folder")
    return _hub_snapshot(text, weights=weights, local_files_only=local_files_only)


def _inside(root: Path, path: Path) -> Path:
    """``path`` resolved (links followed), refused unless it and every file in it lie inside ``root``."""
    resolved = (path if path.is_absolute() else root / path).resolve()
    if not resolved.is_relative_to(root):
        raise RemoteCodeRefused(f"{path}: outside the checkpoint folder {root}; a checkpoint reads only its own files")
    if not resolved.is_dir():
        raise FileNotFoundError(f"{resolved}: the checkpoint's text-model folder is missing")
    for f in resolved.rglob("*"):
        try:
            target = f.resolve(strict=True)
        except (OSError, RuntimeError) as e:  # a broken link or a link loop (RuntimeError before Python 3.13)
            raise RemoteCodeRefused(f"{f}: a broken or looping link in the checkpoint folder ({e})") from None
        if not target.is_relative_to(root):
            raise RemoteCodeRefused(f"{f}: links outside the checkpoint folder {root}")
    return resolved


def _hub_snapshot(repo_id: str, *, weights: bool, local_files_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    meta = [CONFIG_FILE, *TOKENIZER_FILES]

    def fetch(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local_files_only))
        except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated ...: one clear line
            raise FileNotFoundError(
                f"text model {repo_id!r}: not a local folder and its files could not be fetched from the hub "
                f"({type(e).__name__}: {e})"
            ) from e

    folder = fetch(meta + list(SAFETENSORS_FILES) if weights else meta)
    if weights and not _weight_files(folder):
        folder = fetch(meta + list(TORCH_FILES))  # a repository without safetensors (CXR-BERT)
    return folder


# ------------------------------------------------------------------------------------------ config
def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def build_config(d: dict[str, Any]) -> Any:
    """A transformers config from a ``config.json`` dict, built-in classes only.

    A model type transformers knows gets its own config class; an unknown one (``cxr-bert``, whose class
    lives in the repository's code) is read as a ``BertConfig`` (its weights decide: a non-BERT fails to load).
    """
    from transformers import AutoConfig, BertConfig

    d = {k: v for k, v in d.items() if k not in CODE_KEYS and not k.startswith("_")}
    model_type = d.pop("model_type", "bert")
    try:
        return AutoConfig.for_model(model_type, **d)
    except ValueError:
        log.info("model type %r is not built into transformers: reading it as a BERT", model_type)
        return BertConfig(**d)


def read_config(folder: Path) -> Any:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_FILE} (not a Hugging Face model folder)")
    return build_config(read_json(path))


def encoder_class(hf_config: Any) -> type[nn.Module]:
    """The built-in base-model class of a config (``BertModel`` for BERT and CXR-BERT)."""
    from transformers import MODEL_MAPPING, BertModel

    try:
        return MODEL_MAPPING[type(hf_config)]
    except KeyError:
        return BertModel


def new_encoder(hf_config: Any) -> nn.Module:
    """A randomly initialised encoder without a pooler (CLS pooling reads the last hidden state)."""
    import inspect

    cls = encoder_class(hf_config)
    kw = {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(cls.__init__).parameters else {}
    return cls(hf_config, **kw)


# ------------------------------------------------------------------------------------------ tokenizer
def _builtin_tokenizer_class(name: str | None) -> type | None:
    import transformers
    from transformers import PreTrainedTokenizerBase

    if not name:
        return None
    for candidate in (f"{name}Fast" if not name.endswith("Fast") else name, name):
        cls = getattr(transformers, candidate, None)
        if isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerBase):
            return cls
    return None


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer of a local repository folder, with built-in transformers classes only.

    ``tokenizer_class`` of ``tokenizer_config.json`` is used when transformers has it; a class of the
    repository's own (``CXRBertTokenizer``) over a ``vocab.txt`` is read as BERT's WordPiece tokenizer;
    anything else that needs the repository's code is refused.
    """
    import transformers

    cfg_path = folder / "tokenizer_config.json"
    name = read_json(cfg_path).get("tokenizer_class") if cfg_path.is_file() else None
    cls = _builtin_tokenizer_class(name)
    if cls is None and name is not None:
        if not (folder / "vocab.txt").is_file():
            raise RemoteCodeRefused(
                f"{cfg_path}: tokenizer class {name!r} is not built into transformers and there is no vocab.txt to "
                "read as a BERT WordPiece tokenizer; silverclip never runs a repository's own code"
            )
        log.info("%s: tokenizer class %r read as BERT WordPiece (vocab.txt)", folder, name)
        cls = getattr(transformers, "BertTokenizerFast", None) or transformers.BertTokenizer
    if cls is None:  # no tokenizer class named: transformers picks one from config.json, never remote code
        tok = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    else:
        tok = cls.from_pretrained(folder, local_files_only=True)
    clean_tokenizer_config(tok)
    return tok


def clean_tokenizer_config(tok: Any) -> None:
    """Drop what would point a saved tokenizer back at a repository's code or at this machine's folders."""
    for key in ("auto_map", "local_files_only", "is_local", "name_or_path"):
        getattr(tok, "init_kwargs", {}).pop(key, None)


# ------------------------------------------------------------------------------------------ weights
def _weight_files(folder: Path) -> list[Path]:
    """The weight files to read: safetensors first (one file or shards), else PyTorch ``.bin`` (one or shards)."""
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
        index = folder / f"{single}.index.json"
        if index.is_file():
            names = sorted(set(read_json(index).get("weight_map", {}).values()))
            bad = [n for n in names if Path(n).name != n]
            if bad:
                raise RemoteCodeRefused(f"{index}: shard names {bad} point outside the folder")
            return [folder / n for n in names]
    return []


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles arbitrary objects
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        reason = f"{type(e).__name__}: {e}"
        raise ValueError(f"{path}: not a plain tensor file, and silverclip never unpickles ({reason})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def load_encoder_weights(model: nn.Module, folder: Path) -> None:
    """Load a repository's weights into the base encoder ``model``: every encoder tensor must be there.

    A task model's prefix (``bert.`` of a masked-LM such as CXR-BERT) is stripped; its heads
    (``cls.*``, projection heads) are ignored. Missing or misshapen tensors are an error, not a warning.
    """
    files = _weight_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(_read_weights(f))
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    if prefix != "." and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or mismatched:
        raise ValueError(
            f"{folder}: the weights do not fit a {type(model).__name__} of its config.json: "
            f"{len(missing)} missing (e.g. {missing[:3]}), shape mismatch {mismatched[:3]}"
        )
    model.load_state_dict({k: state[k] for k in own}, strict=True)
