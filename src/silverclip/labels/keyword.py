"""Keyword labeller: the rule labeller's patterns without negation or uncertainty (a weak-labelling baseline).

A finding is positive (1) when any of its non-weak rules in ``resources/rules/patterns.yaml`` matches
in any sentence of the report, whatever the cues around it ("No pleural effusion" is positive),
else 0. This is the "keyword matching" arm of the ablation: how much of the rule labeller's value
comes from reading negation and hedging. Weak rules (indirect evidence of another finding, e.g.
consolidation for lung opacity) do not count; a rule's ``unless`` veto still applies (it says which
organ a word belongs to, not whether the finding is there). Score = label (1.0 / 0.0); evidence =
the matching sentences. ``silverclip labels extract --backend keyword``, pipeline ``labels.backend: keyword``.
"""

from __future__ import annotations

from pathlib import Path

from silverclip.findings import FINDINGS
from silverclip.labels.rules import _normalise, label_each, load_patterns
from silverclip.labels.sentences import split_sentences
from silverclip.labels.table import LabelingResult


class KeywordLabeler:
    """``label(text) -> (labels, scores, evidence)`` like :class:`~silverclip.labels.rules.RuleLabeler`."""

    def __init__(self, patterns: str | Path | None = None) -> None:
        self.rules = {f: [r for r in rules if not r.weak] for f, rules in load_patterns(patterns).items()}

    def label(self, text: str) -> tuple[dict[str, int], dict[str, float], dict[str, list[str]]]:
        evidence: dict[str, list[str]] = {f: [] for f in FINDINGS}
        for sentence in split_sentences(_normalise(text)):
            for finding, rules in self.rules.items():
                if any(rule.find(sentence.text) is not None for rule in rules):
                    evidence[finding].append(sentence.text)
        labels = {f: int(bool(evidence[f])) for f in FINDINGS}
        return labels, {f: float(v) for f, v in labels.items()}, evidence

    def label_reports(self, reports: dict[str, str], progress: bool = False) -> LabelingResult:
        """Label many reports: id -> text. Returns a :class:`LabelingResult` with probabilities = labels."""
        return label_each(self.label, reports, "keyword", progress)
