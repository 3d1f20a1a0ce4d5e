"""Split radiology reports into sentences and clauses, keeping character offsets.

CT-RATE reports are Turkish reports machine-translated to English: findings and impression are
joined, impression items are often separated by double quotes or bullets, and decimals ("3.3 cm")
and abbreviations ("approx.") must not end a sentence. spaCy/medspaCy sentence splitters need a
model pipeline that we do not want as a dependency, and a few regular expressions cover this
well-formed text; hence this small hand-written splitter.

A *clause* is the unit that negation and uncertainty cues act on (their scope): a sentence cut at
contrastive conjunctions ("but", "however", "apart from this") and at "and"/"," that follow a
complete predicate ("... was not detected, and ...").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at . ! ? ; or a bullet / double quote; a period between digits is a decimal point.
_SENTENCE_END = re.compile(r"(?<!\d\.\d)(?<=[.!;])\s+|\s*[\"\u201c\u201d\u2022]+\s*|\n+|(?<=\?)\s+(?=[A-Z])")


@dataclass(frozen=True)
class Span:
    """A piece of the report: its text and [start, end) offsets in the full report."""

    text: str
    start: int
    end: int


def split_sentences(text: str) -> list[Span]:
    """Return the non-empty sentences of ``text`` with their offsets (whitespace stripped)."""
    out: list[Span] = []
    pos = 0
    for m in _SENTENCE_END.finditer(text):
        _add(out, text, pos, m.start())
        pos = m.end()
    _add(out, text, pos, len(text))
    return out


def split_clauses(
    sentence: Span,
    boundary: re.Pattern[str],
    conditional: re.Pattern[str] | None = None,
    predicate: re.Pattern[str] | None = None,
) -> list[Span]:
    """Cut a sentence into clauses at every match of ``boundary`` (the match itself is dropped).

    ``conditional`` boundaries (such as ", and") cut only where the text on both sides, up to the
    neighbouring cuts, contains a ``predicate`` (a verb): two statements, not a list of nouns.
    """
    text = sentence.text
    cuts = [m.span() for m in boundary.finditer(text)]
    if conditional is not None and predicate is not None:
        for m in conditional.finditer(text):
            if any(s < m.end() and m.start() < e for s, e in cuts):
                continue
            left = max((e for _, e in cuts if e <= m.start()), default=0)
            right = min((s for s, _ in cuts if s >= m.end()), default=len(text))
            if predicate.search(text, left, m.start()) and predicate.search(text, m.end(), right):
                cuts.append(m.span())
        cuts.sort()
    out: list[Span] = []
    pos = 0
    for start, end in cuts:
        if start > pos:
            _add(out, text, pos, start, offset=sentence.start)
        pos = max(pos, end)
    _add(out, text, pos, len(text), offset=sentence.start)
    return out or [sentence]


def _add(out: list[Span], text: str, start: int, end: int, offset: int = 0) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped or not re.search(r"\w", stripped):
        return
    lead = len(piece) - len(piece.lstrip())
    s = start + lead
    out.append(Span(stripped, offset + s, offset + s + len(stripped)))
