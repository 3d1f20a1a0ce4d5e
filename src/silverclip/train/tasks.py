"""Task objects: what differs between supervised pre-training and CLIP inside the one training loop.

A task builds the model, turns a batch into a loss and validates; :mod:`silverclip.train.loop` does
everything else (devices, precision, DDP, accumulation, clipping, schedule, checkpoints, logging).

Contract (duck-typed, see :class:`Task`): ``build_model() -> nn.Module``; ``loss(model, batch) ->
scalar tensor`` where ``model`` may be the DDP/compiled wrapper and ``batch`` is already on the
device; ``validate(model, loader, device, autocast) -> {name: value}`` with ``primary_metric`` among
the keys (higher is better); ``checkpoint_info() -> dict`` (findings, preset, tokenizer, and
``extra``: JSON-able facts merged into ``checkpoint.json``'s ``extra``) stored with every checkpoint.

Validation metrics are the evaluation package's own functions (:mod:`silverclip.eval.metrics`,
:mod:`silverclip.eval.retrieval`, :mod:`silverclip.eval.zero_shot`: one definition of AUC, Recall@K
and the zero-shot prompts), applied to the validation set held in memory.
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
from silverclip.findings import FINDINGS

log = logging.getLogger(__name__)

AutocastFactory = Callable[[], contextlib.AbstractContextManager]


class Task:
    """Base class documenting the contract; subclasses fill it in."""

    name = "task"
    primary_metric = "loss"
    ddp_find_unused_parameters = False
    preset: Preset  # normalises the stored crops on the device (silverclip.data.model_input)

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def collate(self) -> Callable[[list[dict]], dict]:
        """The loaders' collate function (runs in the workers); called after :meth:`build_model`."""
        from silverclip.train.data import Collate

        return Collate()

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
        """This rank's share of the validation set through the evaluation loop, gathered from every rank."""
        from silverclip.eval.embeddings import encode_batches, gather_in_order
        from silverclip.eval.metrics import per_finding_auc
        from silverclip.losses import masked_bce_with_logits

        model.eval()
        parts: dict[str, list] = {"ids": [], "logits": [], "targets": [], "weights": []}
        for out in encode_batches(loader, self.preset, device, model, autocast=autocast):
            parts["ids"] += out["ids"]
            parts["logits"] += list(out["image"])
            parts["targets"] += list(out["batch"]["targets"].numpy())
            parts["weights"] += list(out["batch"]["weights"].numpy())
        every = gather_in_order(parts, loader.dataset.ids)
        logits, t, w = (torch.from_numpy(np.stack(every[k])) for k in ("logits", "targets", "weights"))
        y = t.numpy().copy()
        y[w.numpy() == 0] = np.nan  # masked entries are not ground truth
        aucs = per_finding_auc(y, torch.sigmoid(logits).numpy(), FINDINGS)
        out = {"loss": float(masked_bce_with_logits(logits, t, w)), "mean_auc": aucs.pop("mean")}
        out.update({f"auc/{k}": v for k, v in aucs.items()})
        return out


class ClipTask(Task):
    """Symmetric InfoNCE between volumes and report texts (embeddings gathered across ranks by ClipLoss).

    Validation on the validation pairs, with the evaluation's definitions: report-to-image Recall@K
    (:func:`silverclip.eval.retrieval.recall_at_k`, per-volume: each report queries all validation
    volumes and hits when its own volume is in the top K) and, where validation labels exist,
    zero-shot AUC from the prompt pairs of ``template_set`` (:mod:`silverclip.eval.zero_shot`; the
    prompts are encoded once per validation). ``primary_metric`` is ``zs_mean_auc`` then, else
    ``r2i_mean_recall``.

    ``include_impressions`` (how the training texts were built) is recorded in every checkpoint's
    ``extra`` so that ``silverclip embed`` embeds reports the same way by default.
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
        include_impressions: bool = False,
        template_set: str | None = None,
    ):
        from silverclip.eval.retrieval import RECALL_KS
        from silverclip.eval.zero_shot import load_templates

        if template_set is not None:
            load_templates(template_set)  # an unknown set fails now, not after the first epoch
        self.preset = preset
        self.image_model = image_model
        self.text_model = text_model
        self.init = Path(init) if init else None
        self.model_kwargs = dict(model_kwargs or {})
        self.retrieval_ks = list(retrieval_ks or RECALL_KS)
        self.include_impressions = bool(include_impressions)
        self.template_set = template_set
        self.primary_metric = "zs_mean_auc" if has_labels else "r2i_mean_recall"
        # every parameter gets a gradient (the image tower has no head, the text tower no pooler; tested), so DDP
        # need not search the graph for unused ones each step
        self.ddp_find_unused_parameters = False
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
        return {
            "findings": list(FINDINGS),
            "preset": self.preset.to_dict(),
            "tokenizer": tok,
            "task": self.name,
            "extra": {"include_impressions": self.include_impressions},
        }

    def _criterion(self, gather: bool = True) -> nn.Module:
        """ClipLoss; training gathers across ranks, validation (rank 0 alone) must not."""
        if gather not in self._losses:
            from silverclip.losses import ClipLoss

            self._losses[gather] = ClipLoss(gather=gather)
        return self._losses[gather]

    def collate(self) -> Callable[[list[dict]], dict]:
        from silverclip.train.data import Collate

        return Collate(self.module.batch_tokenizer())

    def tokenize(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        tokens = self.module.tokenize(list(texts))
        return {k: v.to(device, non_blocking=True) for k, v in tokens.items()}

    def _tokens(self, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        """The batch's tokens (made by the collate function in the loader workers), on ``device``."""
        if "tokens" not in batch:  # a loader without the task's collate function
            return self.tokenize(batch["text"], device)
        if len(batch["text_rows"]) != len(batch["image"]):
            raise ValueError("a CLIP training batch has items without report text")
        return {k: v.to(device, non_blocking=True) for k, v in batch["tokens"].items()}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        tokens = self._tokens(batch, batch["image"].device)
        out = model(batch["image"], tokens)
        return self._criterion()(out["image_embeds"].float(), out["text_embeds"].float(), out["logit_scale"].float())

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: DataLoader, device: torch.device, autocast: AutocastFactory) -> dict:
        """Every rank embeds its share (the loop ``silverclip embed`` runs); the shares are gathered in dataset
        order and scored identically on every rank, so the numbers do not depend on the number of ranks."""
        from silverclip.eval.embeddings import encode_batches, gather_in_order
        from silverclip.eval.metrics import per_finding_auc
        from silverclip.eval.retrieval import recall_at_k
        from silverclip.eval.zero_shot import build_zero_shot_classifier, logit_scale_of, zero_shot_probabilities

        model.eval()
        parts: dict[str, list] = {"ids": [], "image": [], "text": [], "labels": []}
        for out in encode_batches(loader, self.preset, device, model.encode_image, model.encode_text, autocast):
            if out["text_ids"] != out["ids"]:
                raise ValueError("a CLIP validation batch has items without report text")
            parts["ids"] += out["ids"]
            parts["image"] += list(out["image"])
            parts["text"] += list(out["text"])
            if "labels" in out["batch"]:
                parts["labels"] += list(out["batch"]["labels"].numpy())
        every = gather_in_order(parts, loader.dataset.ids)
        ids = every["ids"]
        img_e, txt_e = torch.from_numpy(np.stack(every["image"])), torch.from_numpy(np.stack(every["text"]))
        recalls = recall_at_k(txt_e, img_e, ids, ids, self.retrieval_ks, mode="per-volume")["recall"]
        result = {f"r2i_recall@{k}": v for k, v in recalls.items()}
        result["r2i_mean_recall"] = float(np.mean(list(recalls.values())))
        # in-batch contrastive loss over fixed chunks of the dataset order (no gather): comparable across
        # epochs and the same for any number of ranks
        scale = float(logit_scale_of(model))
        size = max(int(getattr(loader, "batch_size", None) or 2), 2)
        losses, n = 0.0, 0
        for start in range(0, len(ids) - 1, size):
            i, t = img_e[start : start + size], txt_e[start : start + size]
            if len(i) > 1:
                losses += float(self._criterion(gather=False)(i, t, scale)) * len(i)
                n += len(i)
        if n:
            result["loss"] = losses / n
        if every["labels"]:
            with autocast():  # (F, 2, E): every prompt encoded once for all validation volumes
                classifier = build_zero_shot_classifier(model, FINDINGS, self.template_set, device=device)
            probs = zero_shot_probabilities(img_e, classifier, logit_scale_of(model))
            aucs = per_finding_auc(np.stack(every["labels"]), probs, FINDINGS)
            result["zs_mean_auc"] = aucs.pop("mean")
            result.update({f"zs_auc/{k}": v for k, v in aucs.items()})
        return result


def _checkpoint_model_config(folder: Path) -> dict[str, Any]:
    """The image architecture recorded in a checkpoint folder's ``checkpoint.json`` (``model_config``).

    A CLIP checkpoint contributes its image tower's config, so CLIP can also be continued from CLIP.
    """
    from silverclip.checkpoint import read_checkpoint_meta

    cfg = dict(read_checkpoint_meta(folder).get("model_config") or {})
    if cfg.get("name") in ("clip", "clip_authors"):
        cfg = dict(cfg.get("image") or {})
    cfg.pop("num_classes", None)
    return cfg
