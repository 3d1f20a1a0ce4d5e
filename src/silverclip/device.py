"""The torch device a command runs on: ``auto`` picks one, and any other name is checked up front.

Asking for a device that is not there (``--device cuda`` on a CPU-only machine or torch build) is one
clear error naming the device, instead of whatever the first CUDA call happens to raise later
(a pin_memory or lazy-init error deep in a loader).
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``/``None`` -> ``cuda:<local_rank>`` when a GPU is visible, else ``cpu``; else the named device,
    which must exist (raises ``ValueError`` saying why not)."""
    if name is None or str(name) == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {str(name)!r}: not a device name (use auto, cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(
                f"device {str(name)!r}: this torch build has no CUDA support (torch {torch.__version__}); "
                "use cpu, or install a CUDA build of torch"
            )
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(name)!r}: no CUDA GPU is visible (driver? CUDA_VISIBLE_DEVICES?); use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(name)!r}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r}: Apple MPS is not available on this machine; use cpu")
    return dev
