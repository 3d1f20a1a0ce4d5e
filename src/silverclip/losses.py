"""Training losses: symmetric InfoNCE across all ranks (CLIP) and masked multi-label BCE (pre-training)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from silverclip.distributed import all_gather_with_grad, get_rank, get_world_size

__all__ = ["ClipLoss", "clip_logits", "masked_bce", "masked_bce_with_logits", "MaskedBCEWithLogitsLoss"]


def clip_logits(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float, gather: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Local rows against global columns, in float32 (autocast is switched off here).

    Returns ``logits_per_image`` ``(B, W*B)`` (local images vs all texts), ``logits_per_text``
    ``(B, W*B)`` (local texts vs all images) and ``labels`` ``(B,)`` = ``arange(B) + rank * B``.
    """
    batch = image_embeds.shape[0]
    # float32 whatever the caller's autocast: under bf16 the products of unit vectors scaled by up to 100 would
    # keep 8 bits of mantissa (logits in steps of ~0.4), enough to blur the softmax over W*B candidates
    with torch.autocast(device_type=image_embeds.device.type, enabled=False):
        image_embeds, text_embeds = image_embeds.float(), text_embeds.float()
        if isinstance(logit_scale, torch.Tensor):
            logit_scale = logit_scale.float()
        if gather and get_world_size() > 1:
            all_images = all_gather_with_grad(image_embeds)
            all_texts = all_gather_with_grad(text_embeds)
            offset = get_rank() * batch
        else:
            all_images, all_texts, offset = image_embeds, text_embeds, 0
        logits_per_image = logit_scale * image_embeds @ all_texts.T
        logits_per_text = logit_scale * text_embeds @ all_images.T
    labels = torch.arange(batch, device=image_embeds.device) + offset
    return logits_per_image, logits_per_text, labels


class ClipLoss(nn.Module):
    """Symmetric InfoNCE: ``(CE(image -> text) + CE(text -> image)) / 2``, mean over the local batch.

    With ``gather=True`` under ``torchrun``, embeddings of every rank are gathered *with gradients*
    and each rank scores its ``B`` rows against all ``W*B`` columns, so every GPU's samples are
    negatives for every other's. The mean of the per-rank losses equals the loss of one process on
    the concatenated batch, and DDP's gradient averaging then gives that loss's gradient. Every rank
    must have the same batch size (use ``drop_last=True``).

    ``forward(image_embeds (B,E), text_embeds (B,E), logit_scale) -> scalar``. The embeddings are used
    as given: normalise them in the model (standard CLIP) or not (the authors' variant).
    """

    def __init__(self, gather: bool = True) -> None:
        super().__init__()
        self.gather = gather

    def forward(
        self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor | float = 1.0
    ) -> torch.Tensor:
        logits_per_image, logits_per_text, labels = clip_logits(image_embeds, text_embeds, logit_scale, self.gather)
        with torch.autocast(device_type=logits_per_image.device.type, enabled=False):  # float32 logits and loss
            return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def masked_bce_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-label BCE averaged over the entries with non-zero weight.

    ``logits``, ``targets``, ``weights``: ``(B, C)``; ``weights`` is 0 for masked entries (the
    uncertain ``-1`` label under the ``mask`` policy, see ``silverclip.labels.table.to_targets``) and
    1 (or any non-negative weight) elsewhere. ``loss = sum(w * bce) / sum(w)``; a batch with every
    entry masked gives 0 (still attached to the graph, so DDP sees gradients for every parameter).
    """
    per_entry = F.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), reduction="none", pos_weight=pos_weight
    )
    if weights is None:
        return per_entry.mean()
    weights = weights.to(per_entry.dtype)
    total = weights.sum()
    # torch.where instead of an ``if``: no host-device synchronisation on GPU.
    return (per_entry * weights).sum() / torch.where(total > 0, total, torch.ones_like(total))


class MaskedBCEWithLogitsLoss(nn.Module):
    """Module form of :func:`masked_bce_with_logits`; ``pos_weight`` ``(C,)`` optional."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        return masked_bce_with_logits(logits, targets, weights, self.pos_weight)


masked_bce = masked_bce_with_logits  # short alias
