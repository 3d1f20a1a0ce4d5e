"""Offline rule labeller: 18 CT-RATE findings from report text, negation- and uncertainty-aware.

Pipeline per report: split into sentences and clauses (:mod:`silverclip.labels.sentences`); find
finding mentions with the patterns in ``resources/rules/patterns.yaml``; give each mention an
assertion status with ConText-style cues (:mod:`silverclip.labels.context`); aggregate per finding:

- label 1 if any mention is affirmed, else -1 if any is uncertain, else 0 (negated or not mentioned);
- score (for ROC AUC) graded by the strongest status and the number of such mentions:
  affirmed 0.8-1.0 > uncertain 0.5-0.6 > weak evidence 0.3-0.4 > negated 0.05 > not mentioned 0.0
  (see :data:`SCORE_BASE`). The order follows how often each state is a manual positive on the
  development reports: affirmed 93%, uncertain 38% (rare), weak 22%, negated 0.2%, not mentioned 0.3%;
  the last two are statistically the same and the small gap between them only breaks ties;
- evidence: the sentences of the mentions that decided the label.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd
import yaml

from silverclip.findings import FINDINGS
from silverclip.labels.context import AFFIRMED, NEGATED, UNCERTAIN, ContextRules
from silverclip.labels.sentences import Span, split_sentences
from silverclip.labels.table import LabelingResult

WEAK = "weak"
"""Status of a non-negated mention by a ``weak`` rule (indirect evidence): raises the score only."""
STATUS_ORDER = (AFFIRMED, UNCERTAIN, WEAK, NEGATED)
LABEL_OF_STATUS = {AFFIRMED: 1, UNCERTAIN: -1, WEAK: 0, NEGATED: 0}
SCORE_BASE = {AFFIRMED: 0.8, UNCERTAIN: 0.5, WEAK: 0.3, NEGATED: 0.05, None: 0.0}
"""Score of a finding by its decisive status; affirmed/uncertain get a bonus per extra mention."""
SCORE_BONUS = {AFFIRMED: 0.2, UNCERTAIN: 0.1, WEAK: 0.1}


@dataclass(frozen=True)
class Rule:
    """All ``patterns`` must match in one clause; ``unless`` (if set) must not."""

    patterns: tuple[re.Pattern[str], ...]
    unless: re.Pattern[str] | None = None
    weak: bool = False

    def find(self, clause: str) -> tuple[int, int] | None:
        """Span covering the first match of every pattern, or None."""
        if self.unless is not None and self.unless.search(clause):
            return None
        spans = []
        for p in self.patterns:
            m = p.search(clause)
            if m is None:
                return None
            spans.append(m.span())
        return min(s for s, _ in spans), max(e for _, e in spans)


@dataclass(frozen=True)
class Mention:
    finding: str
    status: str
    sentence: str
    clause: str
    text: str


def load_patterns(path: str | Path | None = None) -> dict[str, list[Rule]]:
    """Finding -> rules, from ``path`` (default: packaged ``resources/rules/patterns.yaml``)."""
    if path is None:
        text = resources.files("silverclip.resources").joinpath("rules/patterns.yaml").read_text()
        source = "resources/rules/patterns.yaml"
    else:
        text, source = Path(path).read_text(), str(path)
    data = yaml.safe_load(text)["findings"]
    unknown = set(data) - set(FINDINGS)
    missing = set(FINDINGS) - set(data)
    if unknown or missing:
        raise ValueError(
            f"{source}: findings must be exactly the 18 CT-RATE names (unknown {unknown}, missing {missing})"
        )

    def rx(p: str) -> re.Pattern[str]:
        try:
            return re.compile(p, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"{source}: bad regular expression {p!r}: {e}") from None

    out: dict[str, list[Rule]] = {}
    for finding in FINDINGS:
        rules = []
        for item in data[finding]:
            if isinstance(item, str):
                rules.append(Rule((rx(item),)))
            else:
                unless = item.get("unless")
                patterns = tuple(rx(p) for p in item["all"])
                rules.append(Rule(patterns, rx(unless) if unless else None, bool(item.get("weak", False))))
        out[finding] = rules
    return out


class RuleLabeler:
    """Label reports with the 18 findings by patterns + ConText cues (no model, no network).

    ``label(text)`` returns ``(labels, scores, evidence)``: finding -> 1/0/-1, finding -> score in
    [0, 1] (a graded confidence that the finding is present, for ROC AUC), finding -> sentences.
    """

    def __init__(self, patterns: str | Path | None = None, context: str | Path | None = None) -> None:
        self.rules = load_patterns(patterns)
        self.context = ContextRules.load(context)

    def mentions(self, text: str) -> list[Mention]:
        """Every finding mention in ``text`` with its assertion status, in reading order."""
        out = []
        for sentence in split_sentences(_normalise(text)):
            for clause in self.context.clauses(sentence):
                out.extend(self._clause_mentions(sentence, clause))
        return out

    def _clause_mentions(self, sentence: Span, clause: Span) -> Iterable[Mention]:
        for finding, rules in self.rules.items():
            for rule in rules:
                span = rule.find(clause.text)
                if span is None:
                    continue
                status = self.context.status(clause.text, *span)
                if rule.weak and status != NEGATED:
                    status = WEAK
                yield Mention(finding, status, sentence.text, clause.text, clause.text[span[0] : span[1]])
                break  # one mention per finding and clause: the first rule that fires decides

    def mentions_by_finding(self, text: str) -> dict[str, list[Mention]]:
        """finding -> its mentions in ``text`` (reading order), for all 18 findings (empty list: not mentioned)."""
        by_finding: dict[str, list[Mention]] = {f: [] for f in FINDINGS}
        for m in self.mentions(text):
            by_finding[m.finding].append(m)
        return by_finding

    def label(self, text: str) -> tuple[dict[str, int], dict[str, float], dict[str, list[str]]]:
        """Labels (1/0/-1), scores in [0, 1] and evidence sentences for each of the 18 findings."""
        return aggregate(self.mentions_by_finding(text))

    def label_reports(self, reports: dict[str, str], progress: bool = False) -> LabelingResult:
        """Label many reports: id -> text. Returns a :class:`LabelingResult` with probabilities = scores."""
        return label_each(self.label, reports, "rules", progress)


def decisive_status(mentions: list[Mention]) -> str | None:
    """The status that decides a finding's label: the strongest in :data:`STATUS_ORDER` (None: not mentioned)."""
    statuses = {m.status for m in mentions}
    return next((s for s in STATUS_ORDER if s in statuses), None)


def aggregate(
    by_finding: dict[str, list[Mention]],
) -> tuple[dict[str, int], dict[str, float], dict[str, list[str]]]:
    """Labels, scores and evidence sentences from each finding's mentions (see the module docstring)."""
    labels, scores, evidence = {}, {}, {}
    for finding, ms in by_finding.items():
        decisive = decisive_status(ms)
        labels[finding] = LABEL_OF_STATUS.get(decisive, 0)
        n = sum(m.status == decisive for m in ms) if decisive else 0
        bonus = SCORE_BONUS.get(decisive, 0.0) * (1.0 - 0.5 ** max(n - 1, 0))
        scores[finding] = round(SCORE_BASE[decisive] + bonus, 4)
        evidence[finding] = list(dict.fromkeys(m.sentence for m in ms if m.status == decisive))
    return labels, scores, evidence


def label_each(
    label: Callable[[str], tuple[dict[str, int], dict[str, float], dict[str, list[str]]]],
    reports: dict[str, str],
    desc: str,
    progress: bool = False,
) -> LabelingResult:
    """Run a per-report ``label(text) -> (labels, scores, evidence)`` over ``reports`` (id -> text).

    One report that raises is recorded in ``failures`` (NaN row), never stops the batch.
    """
    from tqdm.auto import tqdm

    labels, scores, evidence = {}, {}, {}
    result = LabelingResult(labels=pd.DataFrame())
    for rid, text in tqdm(reports.items(), desc=desc, disable=not progress, unit="report"):
        try:
            labels[rid], scores[rid], evidence[rid] = label(text if isinstance(text, str) else "")
        except Exception as e:  # one bad report must not stop the batch
            result.failures.add(rid, "", e)
    ids = list(reports)
    result.labels = pd.DataFrame.from_dict(labels, orient="index").reindex(index=ids, columns=list(FINDINGS))
    result.probabilities = (
        pd.DataFrame.from_dict(scores, orient="index").reindex(index=ids, columns=list(FINDINGS)).astype(float)
    )
    result.evidence = evidence
    result.usage = {"reports": float(len(labels))}
    return result


def _normalise(text: str) -> str:
    # Translated reports use typographic quotes/bullets as item separators and "?" glued to words.
    return re.sub(r"[\u2018\u2019`]", "'", text or "")
