"""ConText-style assertion status of a finding mention: affirmed, negated or uncertain.

Follows the ConText algorithm (Harkema et al., J Biomed Inform 2009) in a reduced form: trigger
phrases act forward (``pre_*``) or backward (``post_*``) within their clause and a word window;
pseudo-triggers ("no significant change in ...") block negation cues they overlap. The cue lists
are data (``resources/rules/context.yaml``). medspaCy implements the same algorithm on top of
spaCy; we keep this ~100-line version because the labeller then needs no spaCy pipeline or model
download, and the CT-RATE-specific cues (translated Turkish phrasing) have to be written anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from silverclip.labels.sentences import Span, split_clauses

AFFIRMED = "affirmed"
NEGATED = "negated"
UNCERTAIN = "uncertain"

_WORD = re.compile(r"\w+")


def _compile(patterns: list[str], source: str) -> list[re.Pattern[str]]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p, re.IGNORECASE))
        except re.error as e:
            raise ValueError(f"{source}: bad regular expression {p!r}: {e}") from None
    return out


@dataclass
class ContextRules:
    """Cue lists compiled from ``context.yaml``; see that file for their meaning."""

    clause_boundary: re.Pattern[str]
    conditional_boundary: re.Pattern[str] | None
    predicate: re.Pattern[str] | None
    pre_negation: list[re.Pattern[str]]
    post_negation: list[re.Pattern[str]]
    pseudo_negation: list[re.Pattern[str]]
    pre_uncertainty: list[re.Pattern[str]]
    post_uncertainty: list[re.Pattern[str]]
    max_words: dict[str, int]

    @classmethod
    def load(cls, path: str | Path | None = None) -> ContextRules:
        """Load the cue lists from ``path`` (default: the packaged ``resources/rules/context.yaml``)."""
        if path is None:
            text = resources.files("silverclip.resources").joinpath("rules/context.yaml").read_text()
            source = "resources/rules/context.yaml"
        else:
            text, source = Path(path).read_text(), str(path)
        data = yaml.safe_load(text)
        try:
            boundary = re.compile("|".join(f"(?:{b})" for b in data["clause_boundaries"]), re.IGNORECASE)
            cond = data.get("conditional_boundaries")
            return cls(
                clause_boundary=boundary,
                conditional_boundary=re.compile("|".join(f"(?:{b})" for b in cond), re.IGNORECASE) if cond else None,
                predicate=re.compile(data["predicate"], re.IGNORECASE) if data.get("predicate") else None,
                pre_negation=_compile(data["pre_negation"], source),
                post_negation=_compile(data["post_negation"], source),
                pseudo_negation=_compile(data.get("pseudo_negation", []), source),
                pre_uncertainty=_compile(data["pre_uncertainty"], source),
                post_uncertainty=_compile(data["post_uncertainty"], source),
                max_words={k: int(v) for k, v in data["max_words"].items()},
            )
        except KeyError as e:
            raise ValueError(f"{source}: missing key {e}") from None

    def clauses(self, sentence: Span) -> list[Span]:
        """The clauses (cue scopes) of one sentence."""
        return split_clauses(sentence, self.clause_boundary, self.conditional_boundary, self.predicate)

    def status(self, clause: str, start: int, end: int) -> str:
        """Assertion status of the mention ``clause[start:end]``: AFFIRMED, NEGATED or UNCERTAIN.

        Uncertainty wins over negation when their cues overlap ("cannot be excluded"); otherwise a
        negation cue in scope makes the mention NEGATED, an uncertainty cue makes it UNCERTAIN.
        """
        blocked = [m.span() for p in self.pseudo_negation for m in p.finditer(clause)]
        uncertain_spans = self._in_scope(clause, start, end, self.pre_uncertainty, self.post_uncertainty, "uncertainty")
        blocked += uncertain_spans
        negation_spans = self._in_scope(clause, start, end, self.pre_negation, self.post_negation, "negation", blocked)
        if negation_spans:
            return NEGATED
        if uncertain_spans:
            return UNCERTAIN
        return AFFIRMED

    def _in_scope(
        self,
        clause: str,
        start: int,
        end: int,
        pre: list[re.Pattern[str]],
        post: list[re.Pattern[str]],
        kind: str,
        blocked: list[tuple[int, int]] | None = None,
    ) -> list[tuple[int, int]]:
        blocked = blocked or []
        found = []
        for p in pre:
            for m in p.finditer(clause, 0, end):
                if m.end() > start or _overlaps(m.span(), blocked):
                    continue
                if _n_words(clause[m.end() : start]) <= self.max_words[f"pre_{kind}"]:
                    found.append(m.span())
        for p in post:
            for m in p.finditer(clause, end):
                if _overlaps(m.span(), blocked):
                    continue
                if _n_words(clause[end : m.start()]) <= self.max_words[f"post_{kind}"]:
                    found.append(m.span())
        return found


def _n_words(text: str) -> int:
    return len(_WORD.findall(text))


def _overlaps(span: tuple[int, int], others: list[tuple[int, int]]) -> bool:
    return any(span[0] < e and s < span[1] for s, e in others)
