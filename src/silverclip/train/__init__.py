"""Training: one loop (``loop.fit``) for supervised pre-training and CLIP, driven by task objects.

``run_pretrain(cfg)`` and ``run_clip(cfg)`` (:mod:`silverclip.train.stages`) are the stages' entry
points for the CLI and the pipeline; configs are in :mod:`silverclip.train.config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from silverclip.train.config import ClipConfig, PretrainConfig

__all__ = ["run_clip", "run_pretrain"]


def run_pretrain(cfg: PretrainConfig) -> Path:
    """See :func:`silverclip.train.stages.run_pretrain` (imported lazily: torch is heavy)."""
    from silverclip.train.stages import run_pretrain as run

    return run(cfg)


def run_clip(cfg: ClipConfig) -> Path:
    """See :func:`silverclip.train.stages.run_clip`."""
    from silverclip.train.stages import run_clip as run

    return run(cfg)
