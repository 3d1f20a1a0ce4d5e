"""Task objects: what differs between supervised pre-training and CLIP inside the one training loop.

A task builds the model, turns a batch into a loss and validates; :mod:`silverclip.train.loop` does
everything else (devices, precision, DDP, accumulation, clipping, schedule, checkpoints, logging).

Contract (duck-typed, see :class:`Task`): ``build_model() -> nn.Module``; ``loss(model, batch) ->
scalar tensor`` where ``model`` may be the DDP/compiled wrapper and ``batch`` is already on the
device; ``validate(model, loader, device, autocast) -> {name: value}`` with ``primary_metric`` among
the keys (higher is better); ``checkpoint_info() -> dict`` (findings, preset, tokenizer) stored with
every checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from silverclip.data.presets import Preset
from silverclip.findings import FINDINGS, load_findings

log = logging.getLogger(__name__)

AutocastFactory = Callable[[], contextlib.AbstractContextManager]


def per_finding_auc(labels: np.ndarray, scores: np.ndarray, names: tuple[str, ...] = FINDINGS) -> dict[str, float]:
    """AUC per finding (scikit-learn) over entries labelled 0/1; NaN where a finding lacks one class.

    labels: (N, F) in {1, 0, -1, nan}; scores: (N, F) any monotone score of P(present).
    """
    from sklearn.metrics import roc_auc_score

    out = {}
    for j, name in enumerate(names):
        y, s = labels[:, j], scores[:, j]
        keep = ((y == 0) | (y == 1)) & np.isfinite(s)
        y, s = y[keep], s[keep]
        out[name] = float(roc_auc_score(y, s)) if y.size and 0 < y.sum() < y.size else float("nan")
    return out


def mean_defined(values: dict[str, float]) -> float:
    v = np.array([x for x in values.values() if np.isfinite(x)], dtype=float)
    return float(v.mean()) if v.size else float("nan")


def recall_at_k(similarity: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Report-to-image Recall@K: ``similarity[i, j]`` of text i and image j; a hit when image i ranks in the top K.

    Ties count against the query (rank = number of images scoring strictly higher, plus ties other than
    itself), so a constant model gets no credit. K larger than the gallery counts every query as a hit.
    """
    own = np.diag(similarity)[:, None]
    higher = (similarity > own).sum(axis=1)
    ties = (similarity == own).sum(axis=1) - 1
    rank = higher + ties  # 0-based worst-case rank of the own image
    return {k: float((rank < k).mean()) for k in ks}


class Task:
    """Base class documenting the contract; subclasses fill it in."""

    name = "task"
    primary_metric = "loss"
    ddp_find_unused_parameters = False

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def checkpoint_info(self) -> dict[str, Any]:
        return {}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device, autocast: AutocastFactory) -> dict:
        raise NotImplementedError


class SupervisedTask(Task):
    """Multi-label BCE over the 18 findings with per-entry weights (0 = masked, e.g. uncertain labels).

    Validation: per-finding AUC (scikit-learn) against the validation labels, uncertain entries left
    out; ``primary_metric = "mean_auc"``.
    """

    name = "pretrain"
    primary_metric = "mean_auc"

    def __init__(self, model_name: str, preset: Preset, model_kwargs: dict[str, Any] | None = None):
        self.model_name = model_name
        self.preset = preset
        self.model_kwargs = {"num_classes": len(FINDINGS), **(model_kwargs or {})}

    def build_model(self) -> nn.Module:
        from silverclip.models import create_model

        return create_model(self.model_name, **self.model_kwargs)

    def checkpoint_info(self) -> dict[str, Any]:
        return {"findings": list(FINDINGS), "preset": self.preset.to_dict(), "task": self.name}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        from silverclip.losses import masked_bce_with_logits

        return masked_bce_with_logits(model(batch["image"]), batch["targets"], batch["weights"])

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device, autocast: AutocastFactory) -> dict:
        from silverclip.losses import masked_bce_with_logits

        model.eval()
        scores, targets, weights, losses = [], [], [], []
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            with autocast():
                logits = model(x).float()
            t, w = batch["targets"], batch["weights"]
            losses.append(float(masked_bce_with_logits(logits.cpu(), t, w)) * len(x))
            scores.append(torch.sigmoid(logits).cpu().numpy())
            targets.append(t.numpy())
            weights.append(w.numpy())
        y = np.concatenate(targets)
        y[np.concatenate(weights) == 0] = np.nan  # masked entries are not ground truth
        aucs = per_finding_auc(y, np.concatenate(scores))
        out = {"loss": sum(losses) / len(y), "mean_auc": mean_defined(aucs)}
        out.update({f"auc/{k}": v for k, v in aucs.items()})
        return out


class ClipTask(Task):
    """Symmetric InfoNCE between volumes and report texts (embeddings gathered across ranks by ClipLoss).

    Validation on the validation pairs: report-to-image Recall@K (each report queries all validation
    volumes; a hit when its own volume is in the top K) and, where validation labels exist, zero-shot
    AUC with one (positive, negative) prompt pair per finding; ``primary_metric`` is ``zs_mean_auc``
    then, else ``r2i_mean_recall``.
    """

    name = "clip"

    def __init__(
        self,
        preset: Preset,
        image_model: str = "resnet18_3d",
        text_model: str | None = None,
        init: str | Path | None = None,
        model_kwargs: dict[str, Any] | None = None,
        retrieval_ks: list[int] | None = None,
        has_labels: bool = False,
    ):
        self.preset = preset
        self.image_model = image_model
        self.text_model = text_model
        self.init = Path(init) if init else None
        self.model_kwargs = dict(model_kwargs or {})
        self.retrieval_ks = list(retrieval_ks or [5, 10, 50, 100])
        self.primary_metric = "zs_mean_auc" if has_labels else "r2i_mean_recall"
        self.ddp_find_unused_parameters = True  # the image tower's classification head is not used by CLIP
        self._config: dict[str, Any] | None = None
        self.module: nn.Module | None = None
        self._losses: dict[bool, nn.Module] = {}

    def build_model(self) -> nn.Module:
        """``create_model("clip", image=..., text=...)``; the image tower's architecture comes from the
        ``init`` checkpoint (its head dropped) and its weights are loaded from it.

        ``model_kwargs`` may hold ``name`` (``clip`` | ``clip_authors``), ``embed_dim``, ``normalize``...,
        and ``image`` / ``text`` dicts merged into the towers' configs.
        """
        import copy

        from silverclip.models import create_model

        kw = copy.deepcopy(self.model_kwargs)
        image = {"name": self.image_model}
        if self.init is not None:
            image.update(_checkpoint_model_config(self.init))
        image.update(kw.pop("image", {}))
        image["num_classes"] = 0  # CLIP uses the pooled features
        text = {"name_or_path": self.text_model or "offline", **kw.pop("text", {})}
        model = create_model(kw.pop("name", "clip"), image=image, text=text, **kw)
        if self.init is not None:
            model.load_image_tower_from(self.init)
        self.module = model
        return model

    def checkpoint_info(self) -> dict[str, Any]:
        text = getattr(self.module, "text_tower", None)
        tok = getattr(text, "tokenizer_name", None) or getattr(text, "name_or_path", self.text_model)
        return {"findings": list(FINDINGS), "preset": self.preset.to_dict(), "tokenizer": tok, "task": self.name}

    def _criterion(self, gather: bool = True) -> nn.Module:
        """ClipLoss; training gathers across ranks, validation (rank 0 alone) must not."""
        if gather not in self._losses:
            from silverclip.losses import ClipLoss

            self._losses[gather] = ClipLoss(gather=gather)
        return self._losses[gather]

    def tokenize(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        tokens = self.module.tokenize(list(texts))
        return {k: v.to(device, non_blocking=True) for k, v in tokens.items()}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        tokens = self.tokenize(batch["text"], batch["image"].device)
        out = model(batch["image"], tokens)
        return self._criterion()(out["image_embeds"].float(), out["text_embeds"].float(), out["logit_scale"].float())

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device, autocast: AutocastFactory) -> dict:
        model.eval()
        img, txt, labels, losses, n = [], [], [], 0.0, 0
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            with autocast():
                out = model(x, self.tokenize(batch["text"], device))
            i, t = out["image_embeds"].float(), out["text_embeds"].float()
            if len(x) > 1:  # in-batch contrastive loss (no gather), a comparable number across epochs
                losses += float(self._criterion(gather=False)(i, t, out["logit_scale"].float())) * len(x)
                n += len(x)
            img.append(i.cpu())
            txt.append(t.cpu())
            if "labels" in batch:
                labels.append(batch["labels"].numpy())
        img_e, txt_e = torch.cat(img), torch.cat(txt)
        sim = (txt_e @ img_e.T).numpy()
        recalls = recall_at_k(sim, self.retrieval_ks)
        result = {f"r2i_recall@{k}": v for k, v in recalls.items()}
        result["r2i_mean_recall"] = float(np.mean(list(recalls.values())))
        if n:
            result["loss"] = losses / n
        if labels:
            aucs = per_finding_auc(np.concatenate(labels), self.zero_shot_scores(img_e, device, autocast))
            result["zs_mean_auc"] = mean_defined(aucs)
            result.update({f"zs_auc/{k}": v for k, v in aucs.items()})
        return result

    def zero_shot_scores(
        self, image_embeds: torch.Tensor, device: torch.device, autocast: AutocastFactory
    ) -> np.ndarray:
        """P(present) per (volume, finding): softmax over the similarities to "{f} is present." / "... not present."

        The prompts are encoded once for all volumes. Returns (N, 18).
        """
        prompts = []
        for f in load_findings():
            prompts += [f"{f.prompt} is present.", f"{f.prompt} is not present."]
        with autocast():
            emb = self.module.encode_text(self.tokenize(prompts, device)).float().cpu()
        emb = emb.view(len(FINDINGS), 2, -1)  # (F, 2, E)
        sims = torch.einsum("ne,fke->nfk", image_embeds, emb)  # (N, F, 2)
        return torch.softmax(sims, dim=-1)[..., 0].numpy()


def _checkpoint_model_config(folder: Path) -> dict[str, Any]:
    """The image architecture recorded in a checkpoint folder's ``checkpoint.json`` (``model_config``).

    A CLIP checkpoint contributes its image tower's config, so CLIP can also be continued from CLIP.
    """
    import json

    meta_path = Path(folder) / "checkpoint.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder (checkpoint.json is missing)")
    cfg = dict(json.loads(meta_path.read_text()).get("model_config") or {})
    if cfg.get("name") in ("clip", "clip_authors"):
        cfg = dict(cfg.get("image") or {})
    cfg.pop("num_classes", None)
    return cfg
