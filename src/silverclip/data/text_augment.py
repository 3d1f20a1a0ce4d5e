"""Report-text augmentation for CLIP training: a random subset of a report's sentences.

A report states each finding in its own sentence ("No pleural effusion was detected.", "A 12 mm nodule
was observed in the right upper lobe."). Training CLIP on whole reports teaches the text tower to embed
fifteen-sentence texts, while zero-shot prompts are single sentences; training on random subsets of the
sentences (each kept with probability ``keep``, at least one) makes every sentence carry its finding on
its own, and shortens the texts the text tower reads (docs/results.md measures both effects). The
subset of an item is a function of ``(seed, epoch, index)`` only, like the random crop of its volume.
"""

from __future__ import annotations

import re

import numpy as np

# A sentence ends at ".", ";", "!" or "?" followed by white space; decimals ("3.5 mm") do not split.
_BOUNDARY = re.compile(r"(?<=[.;!?])\s+")


def split_sentences(text: str) -> list[str]:
    """The non-empty sentences of ``text`` in order."""
    return [s.strip() for s in _BOUNDARY.split(text or "") if s.strip()]


def sample_sentences(text: str, keep: float, rng: np.random.Generator) -> str:
    """Each sentence kept with probability ``keep`` (order kept); one random sentence if none is kept.

    ``keep >= 1`` (or a text of one sentence) returns the text unchanged.
    """
    if keep >= 1.0:
        return text
    sentences = split_sentences(text)
    if len(sentences) <= 1:
        return text
    mask = rng.random(len(sentences)) < keep
    if not mask.any():
        mask[int(rng.integers(len(sentences)))] = True
    return " ".join(s for s, m in zip(sentences, mask) if m)
