"""Mixed precision: one autocast context for every forward pass.

``precision``: ``"auto"`` (bf16 autocast on CUDA, fp32 elsewhere), ``"bf16"`` (bf16 autocast on any
device, CPU included) or ``"fp32"`` (off). bf16 needs no gradient scaler (same exponent range as fp32).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def autocast(device: str | torch.device, precision: str = "auto") -> contextlib.AbstractContextManager[Any]:
    """Context manager for the forward pass and loss of one step on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    device_type = torch.device(device).type
    if precision == "fp32" or (precision == "auto" and device_type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def uses_bf16(device: str | torch.device, precision: str = "auto") -> bool:
    return precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda")


def autocast_factory(
    precision: str, device: str | torch.device
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """A zero-argument callable returning a fresh :func:`autocast` context (for code that enters it often)."""
    autocast(device, precision)  # validate now, not at the first step
    return lambda: autocast(device, precision)
