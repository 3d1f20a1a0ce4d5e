"""Strict parsing of an LLM's label answer, and P(present) per finding from token log-probabilities.

The answer format (the authors' code, and ``resources/prompts/labels_v1.yaml``) is one line of
``n`` comma-separated values, each ``1`` (present), ``0`` (absent) or ``-1`` (uncertain).

Tolerated: whitespace around values and lines, blank lines, Markdown code fences (a fence line
such as three backticks with an optional language word, or inline backticks around the line).
Not tolerated: any other text, a count other than ``n``, or any other value (``2``, ``yes``,
``+1``, ``1.0``, empty fields). A strict parser is the point: a lenient one would silently turn
"1. Medical material: 0" style prose into wrong labels; a malformed answer is re-asked instead.

Hand-written because no library parses this one-line format with character offsets, which the
log-probability step needs to find the token that carries each value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

VALUES = (1, 0, -1)


class AnswerFormatError(ValueError):
    """The answer is not one line of ``n`` values in {1, 0, -1}; the message says why (sent back in a re-ask)."""


@dataclass(frozen=True)
class ParsedAnswer:
    """``labels[i]`` in {1, 0, -1}; ``starts[i]`` = character offset of value ``i`` in the raw answer text."""

    labels: tuple[int, ...]
    starts: tuple[int, ...]


def _is_fence(stripped: str) -> bool:
    # "```", "```csv", "```text" ...: a fence line carries no values.
    return stripped.startswith("```") and (stripped[3:].strip().isalnum() or not stripped[3:].strip())


def parse_answer(text: str | None, n: int) -> ParsedAnswer:
    """Parse ``text`` into ``n`` labels in {1, 0, -1} with their character offsets.

    Raises AnswerFormatError with a short reason (e.g. "expected 18 values, got 17").
    """
    if text is None or not text.strip():
        raise AnswerFormatError("the answer is empty")
    candidates: list[tuple[int, str]] = []  # (offset of line in text, line without its newline)
    offset = 0
    for line in text.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        stripped = body.strip()
        if stripped and not _is_fence(stripped):
            candidates.append((offset, body))
        offset += len(line)
    if not candidates:
        raise AnswerFormatError("the answer contains no values")
    if len(candidates) > 1:
        raise AnswerFormatError(f"expected one line of {n} values, got {len(candidates)} non-empty lines")
    line_offset, line = candidates[0]
    # Inline code: `1,0,...` or ```1,0,...``` on one line.
    lead = len(line) - len(line.lstrip())
    core = line.strip()
    ticks = len(core) - len(core.lstrip("`"))
    if ticks and core.endswith("`" * ticks) and len(core) > 2 * ticks:
        core = core[ticks:-ticks]
        lead += ticks
    fields = core.split(",")
    if len(fields) != n:
        raise AnswerFormatError(f"expected {n} comma-separated values, got {len(fields)}")
    labels: list[int] = []
    starts: list[int] = []
    pos = line_offset + lead
    for i, field in enumerate(fields):
        value = field.strip()
        if value not in ("1", "0", "-1"):
            shown = value if len(value) <= 20 else value[:20] + "..."
            raise AnswerFormatError(f"value {i + 1} is {shown!r}, not one of 1, 0, -1")
        labels.append(int(value))
        starts.append(pos + len(field) - len(field.lstrip()))
        pos += len(field) + 1  # the comma
    return ParsedAnswer(tuple(labels), tuple(starts))


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its top alternatives ``[(token_text, logprob), ...]`` (OpenAI chat format)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


def _classify(alternative: str, prefix: str) -> int | None:
    """Which value an alternative token would start at this position, or None if it starts no value."""
    if not alternative.startswith(prefix):
        return None
    rest = alternative[len(prefix) :].lstrip()
    if not rest:
        return None
    return {"1": 1, "0": 0, "-": -1}.get(rest[0])


def present_probabilities(
    text: str, parsed: ParsedAnswer, tokens: Sequence[TokenLogprob], uncertain_weight: float = 0.5
) -> list[float] | None:
    """P(present) per finding from the token log-probabilities of the answer, or None if they do not fit.

    At the token where value ``i`` starts, the top alternatives are grouped by the value they would
    start (``"1"`` -> present, ``"0"`` -> absent, ``"-"``/``"-1"`` -> uncertain; a leading space or
    a prefix such as ``","`` shared with the generated token is allowed). With ``p1, p0, pu`` the
    summed probabilities of the three groups (tokens that start no value are ignored, i.e. the mass
    is renormalised over the three answers):

        P(present) = (p1 + uncertain_weight * pu) / (p1 + p0 + pu)

    ``uncertain_weight`` = 0.5 by default: an "uncertain" answer counts as half present, which keeps
    the ranking (the AUC) between sure positives and sure negatives. Use 1.0 to match the
    ``positive`` training policy or 0.0 for ``negative``.

    Returns None when the tokens do not concatenate to ``text`` (the endpoint returned log-probs for
    another text) or when no alternative at some value position starts a value.
    """
    if not tokens or "".join(t.token for t in tokens) != text:
        return None
    ends: list[int] = []
    pos = 0
    for t in tokens:
        pos += len(t.token)
        ends.append(pos)
    out: list[float] = []
    k = 0
    for start in parsed.starts:
        while k < len(tokens) and ends[k] <= start:
            k += 1
        if k == len(tokens):
            return None
        tok = tokens[k]
        prefix = text[ends[k] - len(tok.token) : start]
        mass = {1: 0.0, 0: 0.0, -1: 0.0}
        alternatives = dict(tok.top)
        alternatives.setdefault(tok.token, tok.logprob)  # sampled token may be missing from top-k
        for alt, logprob in alternatives.items():
            value = _classify(alt, prefix)
            if value is not None:
                mass[value] += math.exp(logprob)
        total = mass[1] + mass[0] + mass[-1]
        if total <= 0.0:
            return None
        out.append((mass[1] + uncertain_weight * mass[-1]) / total)
    return out
