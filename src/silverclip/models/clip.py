"""CLIP: a 3D image tower and a text tower with linear projections into one embedding space.

Default (standard CLIP): L2-normalised embeddings, learnable temperature initialised at 0.07 and
logit scale clamped at 100. The authors' variant (``normalize=False, learnable_temperature=False,
init_temperature=1.0``, also registered as ``clip_authors``) uses raw projections and a fixed scale 1.

The image tower is the same class as the supervised model (built with ``num_classes=0``: CLIP uses
its pooled features, and an unused head would break DDP), so a pre-training checkpoint loads into
it directly with :meth:`CLIP.load_image_tower_from`.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from silverclip.models.registry import create_model, register_model

__all__ = ["AUTHORS_DEFAULTS", "CLIP", "CLIPImageEncoder", "clip", "clip_authors"]

# What ``clip_authors`` changes from ``clip``.
AUTHORS_DEFAULTS: dict[str, Any] = {"normalize": False, "learnable_temperature": False, "init_temperature": 1.0}


class CLIP(nn.Module):
    """``forward(images (B,1,X,Y,Z), tokens) -> {"image_embeds" (B,E), "text_embeds" (B,E), "logit_scale" ()}``."""

    def __init__(
        self,
        image: dict[str, Any] | None = None,
        text: dict[str, Any] | None = None,
        embed_dim: int = 512,
        normalize: bool = True,
        learnable_temperature: bool = True,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        image_cfg = {"name": "resnet18_3d", "num_classes": 0, **(image or {})}
        text_cfg = {"name": "hf_text", **(text or {})}
        self.image_tower = create_model(**image_cfg)
        self.text_tower = create_model(**text_cfg)
        self.embed_dim = embed_dim
        self.normalize = normalize
        self.max_logit_scale = max_logit_scale
        # Bias-free projections as in CLIP/open_clip.
        self.image_proj = nn.Linear(self.image_tower.num_features, embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text_tower.num_features, embed_dim, bias=False)
        init = torch.tensor(math.log(1.0 / init_temperature))
        if learnable_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

    def tokenize(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        return self.text_tower.tokenize(texts)

    def batch_tokenizer(self) -> Any:
        """A picklable ``texts -> tokens`` callable for loader workers (the text tower's, else :meth:`tokenize`)."""
        make = getattr(self.text_tower, "batch_tokenizer", None)
        return make() if make is not None else self.tokenize

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize else x

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` -> ``(B, embed_dim)``."""
        return self._finish(self.image_proj(self.image_tower.forward_features(images)))

    def encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenizer output (``input_ids`` ``(B, L)``, ...) -> ``(B, embed_dim)``."""
        return self._finish(self.text_proj(self.text_tower(**tokens)))

    def get_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(self, images: torch.Tensor, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "image_embeds": self.encode_image(images),
            "text_embeds": self.encode_text(tokens),
            "logit_scale": self.get_logit_scale(),
        }

    def load_image_tower_from(self, checkpoint: str | Path, *, verbose: bool = True) -> dict[str, list[str]]:
        """Initialise the image tower from a checkpoint folder (``model.safetensors`` + ``checkpoint.json``,
        supervised or CLIP) or a ``.safetensors`` file. Head keys (``fc.*``) are dropped when the tower has
        no head; any other missing/unexpected key or shape mismatch is an error (a wrong architecture must
        not pass silently). Returns ``{"loaded": [...], "dropped": [...]}``."""
        from safetensors.torch import load_file

        path = Path(checkpoint)
        file = path / "model.safetensors" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no model.safetensors to initialise the image tower from")
        state = load_file(str(file))
        if any(k.startswith("image_tower.") for k in state):
            state = {k[len("image_tower.") :]: v for k, v in state.items() if k.startswith("image_tower.")}
        own = self.image_tower.state_dict()
        dropped = [k for k in state if k.startswith("fc.") and k not in own]
        state = {k: v for k, v in state.items() if k not in dropped}
        mismatched = [k for k in state if k in own and own[k].shape != state[k].shape]
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected or mismatched:
            raise ValueError(
                f"{file}: does not fit the image tower {getattr(self.image_tower, 'model_config', '')}: "
                f"missing {missing}, unexpected {unexpected}, shape mismatch {mismatched}"
            )
        self.image_tower.load_state_dict(state, strict=True)
        if verbose:
            print(
                f"image tower initialised from {file}: {len(state)} tensors, head dropped: {dropped}", file=sys.stderr
            )
        return {"loaded": sorted(state), "dropped": dropped}


class CLIPImageEncoder(nn.Module):
    """The image half of a :class:`CLIP` (``image_tower``, ``image_proj``, ``logit_scale``; the same state-dict
    keys), for inference that needs no text tower: ``silverclip predict`` with cached prompt embeddings starts
    without importing transformers. :meth:`from_config` takes a CLIP ``model_config``."""

    def __init__(
        self,
        image: dict[str, Any] | None = None,
        embed_dim: int = 512,
        normalize: bool = True,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        **_text_options: Any,
    ) -> None:
        super().__init__()
        image_cfg = {"name": "resnet18_3d", "num_classes": 0, **(image or {})}
        self.image_tower = create_model(**image_cfg)
        self.image_proj = nn.Linear(self.image_tower.num_features, embed_dim, bias=False)
        self.embed_dim = embed_dim
        self.normalize = normalize
        self.max_logit_scale = max_logit_scale
        self.register_buffer("logit_scale", torch.tensor(math.log(1.0 / init_temperature)))

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> CLIPImageEncoder:
        if cfg.get("name") not in ("clip", "clip_authors"):
            raise ValueError(f"not a CLIP model config: {cfg.get('name')!r}")
        kw = {k: v for k, v in cfg.items() if k not in ("name", "text", "learnable_temperature")}
        if cfg["name"] == "clip_authors":
            kw = {**{k: v for k, v in AUTHORS_DEFAULTS.items() if k != "learnable_temperature"}, **kw}
        image = dict(kw.pop("image", None) or {})
        image.pop("weights", None)
        image.pop("weights_source", None)
        return cls(image=image, **kw)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = self.image_proj(self.image_tower.forward_features(images))
        return F.normalize(x, dim=-1) if self.normalize else x

    def get_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)


@register_model
def clip(**kw: Any) -> CLIP:
    """Standard CLIP (normalised embeddings, learnable temperature); see :class:`CLIP`."""
    return CLIP(**kw)


@register_model
def clip_authors(**kw: Any) -> CLIP:
    """The paper authors' variant: no L2 normalisation, fixed logit scale 1."""
    return CLIP(**{**AUTHORS_DEFAULTS, **kw})
