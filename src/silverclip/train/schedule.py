"""Learning-rate schedule: linear warm-up, then cosine decay to a minimum learning rate.

Returned as a ``torch.optim.lr_scheduler.LambdaLR`` so that its position is part of
``scheduler.state_dict()`` and a resumed run continues on the same curve. Written here rather than
taken from ``transformers.get_cosine_schedule_with_warmup`` because that one decays to zero and
has no minimum learning rate (the paper decays to 1e-6).
"""

from __future__ import annotations

import math
from functools import partial

import torch


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr after ``step`` optimizer steps (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step already moves);
    then ``min_ratio + (1 - min_ratio) * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 at the end of
    warm-up to 1 at ``total_steps - 1`` (held at ``min_ratio`` after that).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - 1 - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR following :func:`lr_factor`; each param group decays to ``min_lr`` from its own lr."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    lambdas = []
    for group in optimizer.param_groups:
        base = group.get("initial_lr", group["lr"])
        ratio = min(1.0, min_lr / base) if base > 0 else 0.0
        lambdas.append(partial(lr_factor, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=ratio))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
