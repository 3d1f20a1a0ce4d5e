"""Cascade labeller: the rule labeller first, an LLM only for the findings the rules leave open.

``silverclip labels extract --backend cascade``. Per (report, finding) the rules' evidence either
*decides* the label or leaves it *open*, by the status that decides the rule label
(:func:`silverclip.labels.rules.decisive_status`):

- decided: an explicit, unhedged mention, affirmed (1) or negated (0), and no mention at all (0);
- open (default ``open_statuses``): ``uncertain`` (a hedged mention: "possible", "cannot be
  excluded") and ``weak`` (only indirect evidence, e.g. consolidation for lung opacity). Also
  selectable: ``conflict`` (affirmed and negated mentions in one report), ``affirmed``, ``negated``,
  ``unmentioned``.

Measured on the 800 manually labelled reports (docs/llm_labels.md): the default leaves 1.2% of the
(report, finding) pairs open, in 20% of the reports; those are where the rules' labels are right
only 47% (uncertain) and 77% (weak) of the time, against 92% (affirmed) and 99.6% (negated).

Reports with open findings get **one request** naming only those findings, with their definitions
(the prompt variant's ``system_subset``), and carrying the report (``context="report"``) or only the
sentences that mention them with ``context_sentences`` neighbours on each side (``"sentences"``;
fewer tokens, its loss against the whole report is for a user with a capable endpoint to measure).
Answers merge into the rules' labels; the evidence file says which labeller decided each label.
Cache, resume, retries, privacy guard, batch mode and failure list are those of ``--backend llm``
(:func:`silverclip.labels.llm_jobs.run_jobs`). A failed request leaves its open findings empty (NaN,
masked in training) and the report in the failure list; a rerun asks again.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from silverclip.findings import FINDINGS
from silverclip.io import FailureLog
from silverclip.labels.context import AFFIRMED, NEGATED, UNCERTAIN
from silverclip.labels.evaluate import label_scores
from silverclip.labels.llm import record_failures
from silverclip.labels.llm_cache import CachedAnswer, cache_key, text_sha256
from silverclip.labels.llm_client import LLMConfig
from silverclip.labels.llm_jobs import LabelJob, run_jobs_async
from silverclip.labels.llm_prompt import LabelPrompt, load_prompt
from silverclip.labels.llm_usage import format_usage
from silverclip.labels.rules import (
    WEAK,
    Mention,
    RuleLabeler,
    _normalise,
    aggregate,
    decisive_status,
    label_each,
)
from silverclip.labels.sentences import split_sentences
from silverclip.labels.table import LabelingResult

CONFLICT, UNMENTIONED = "conflict", "unmentioned"
OPEN_CHOICES = (UNCERTAIN, WEAK, CONFLICT, AFFIRMED, NEGATED, UNMENTIONED)
RULES, LLM = "rules", "llm"


@dataclass
class CascadeConfig:
    """Which rule decisions go to the LLM, and what text goes with them (see the module docstring)."""

    open_statuses: tuple[str, ...] = (UNCERTAIN, WEAK)
    context: Literal["report", "sentences"] = "report"
    context_sentences: int = 1

    def __post_init__(self) -> None:
        self.open_statuses = tuple(self.open_statuses)
        bad = sorted(set(self.open_statuses) - set(OPEN_CHOICES))
        if bad:
            raise ValueError(f"cascade open statuses {bad} unknown; choose from {list(OPEN_CHOICES)}")
        if self.context not in ("report", "sentences"):
            raise ValueError(f"cascade context must be 'report' or 'sentences', not {self.context!r}")
        if self.context_sentences < 0:
            raise ValueError("context_sentences must be >= 0")


def rule_state(mentions: list[Mention]) -> str:
    """The cascade's name for a finding's rule evidence: a decisive status, ``conflict`` or ``unmentioned``."""
    status = decisive_status(mentions)
    if status is None:
        return UNMENTIONED
    if status == AFFIRMED and any(m.status == NEGATED for m in mentions):
        return CONFLICT
    return status


def excerpt(text: str, mentions: list[Mention], neighbours: int) -> str:
    """The sentences of ``mentions`` with ``neighbours`` sentences on each side, in report order; gaps as [...]."""
    sentences = [s.text for s in split_sentences(_normalise(text))]
    wanted = {m.sentence for m in mentions}
    keep: set[int] = set()
    for i, s in enumerate(sentences):
        if s in wanted:
            keep.update(range(max(0, i - neighbours), min(len(sentences), i + neighbours + 1)))
    out, last = [], None
    for i in sorted(keep):
        if last is not None and i != last + 1:
            out.append("[...]")
        out.append(sentences[i])
        last = i
    return " ".join(out)


@dataclass
class CascadePlan:
    """The rules' results and what the LLM is to be asked: built without sending anything."""

    rules: LabelingResult
    open: dict[str, list[int]]  # report id -> indices (CT-RATE order) of its open findings
    jobs: list[LabelJob]
    job_of: dict[str, str] = field(default_factory=dict)  # report id -> job key

    def counts(self) -> dict[str, float]:
        n_reports = len(self.rules.labels)
        pairs = sum(len(v) for v in self.open.values())
        return {
            "reports": n_reports,
            "pairs": n_reports * len(FINDINGS),
            "open_pairs": pairs,
            "reports_to_llm": len(self.open),
            "open_pair_share": pairs / max(1, n_reports * len(FINDINGS)),
            "report_share_to_llm": len(self.open) / max(1, n_reports),
        }


def plan_cascade(
    reports: dict[str, str],
    config: LLMConfig,
    cascade: CascadeConfig | None = None,
    prompt: LabelPrompt | None = None,
    labeler: RuleLabeler | None = None,
) -> CascadePlan:
    """Run the rules and build one job per report with open findings (identical requests merged)."""
    cascade = cascade or CascadeConfig()
    prompt = prompt or load_prompt(config.prompt_version)
    labeler = labeler or RuleLabeler()
    opened = set(cascade.open_statuses)
    mentions: dict[str, dict[str, list[Mention]]] = {}
    order = iter(reports)  # label_each calls label() once per report, in order: this yields its id

    def label(text: str) -> tuple[dict[str, int], dict[str, float], dict[str, list[str]]]:
        rid = next(order)
        mentions[rid] = labeler.mentions_by_finding(text)
        return aggregate(mentions[rid])

    result = label_each(label, reports, "rules", False)
    open_by_id: dict[str, list[int]] = {}
    jobs: dict[str, LabelJob] = {}
    job_of: dict[str, str] = {}
    for rid, by_finding in mentions.items():
        indices = [i for i, f in enumerate(FINDINGS) if rule_state(by_finding[f]) in opened]
        if not indices:
            continue
        open_by_id[rid] = indices
        if cascade.context == "sentences":
            ms = [m for i in indices for m in by_finding[FINDINGS[i]]]
            text = excerpt(reports[rid], ms, cascade.context_sentences)
        else:
            text = reports[rid]
        pid = prompt.subset_id(indices)
        key = cache_key(config.model, pid, text)
        if key not in jobs:
            jobs[key] = LabelJob(key, pid, text_sha256(text), prompt.messages(text, indices), len(indices))
        jobs[key].ids.append(rid)
        job_of[rid] = key
    return CascadePlan(result, open_by_id, list(jobs.values()), job_of)


def merge_answers(
    plan: CascadePlan, answers: dict[str, CachedAnswer]
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, dict[str, str]]]:
    """The rules' labels and scores with the LLM's answers (by job key) for the open findings.

    Returns ``(labels, probabilities, decided_by)``. An open finding whose request has no answer
    (failed) is NaN in both frames: unknown, masked in training. The LLM's P(present) is used where
    its answer has one, else its label as a score (1 -> 1, -1 -> 0.5, 0 -> 0).
    """
    labels = plan.rules.labels.astype(float)
    probs = plan.rules.probabilities.astype(float)
    decided_by = {rid: dict.fromkeys(FINDINGS, RULES) for rid in labels.index}
    for rid, indices in plan.open.items():
        cols = [FINDINGS[i] for i in indices]
        answer = answers.get(plan.job_of[rid])
        for f in cols:
            decided_by[rid][f] = LLM
        if answer is None:
            labels.loc[rid, cols] = np.nan
            probs.loc[rid, cols] = np.nan
            continue
        values = np.asarray(answer.labels, dtype=float)
        labels.loc[rid, cols] = values
        p = answer.probabilities if answer.probabilities is not None else label_scores(values)
        probs.loc[rid, cols] = np.asarray(p, dtype=float)
    return labels, probs, decided_by


async def extract_labels_cascade_async(
    reports: dict[str, str],
    config: LLMConfig,
    cache_path: str | Path,
    cascade: CascadeConfig | None = None,
    progress: bool = True,
) -> LabelingResult:
    """Async form of :func:`extract_labels_cascade`."""
    prompt = load_prompt(config.prompt_version)
    plan = plan_cascade(reports, config, cascade, prompt)
    run = await run_jobs_async(plan.jobs, config, prompt, cache_path, progress=progress)
    failures = FailureLog("labels (cascade)")
    failures.failures.extend(plan.rules.failures.failures)
    record_failures(plan.jobs, run, failures, f"llm:{config.shown_url}")

    labels, probs, decided_by = merge_answers(plan, run.answers)
    counts = plan.counts()
    usage = {**counts, "unique_requests": len(plan.jobs), **run.usage, "failed": len(failures)}
    if progress:
        print(
            f"cascade: {counts['open_pairs']} of {counts['pairs']} (report, finding) pairs open "
            f"({counts['open_pair_share']:.1%}), {counts['reports_to_llm']} of {counts['reports']} reports "
            f"({counts['report_share_to_llm']:.1%}) sent to the LLM",
            file=sys.stderr,
        )
        print(format_usage(usage, "cascade LLM"), file=sys.stderr)
    return LabelingResult(
        labels=labels,
        probabilities=probs,
        evidence=plan.rules.evidence,
        failures=failures,
        usage=usage,
        decided_by=decided_by,
    )


def extract_labels_cascade(
    reports: dict[str, str],
    config: LLMConfig,
    cache_path: str | Path,
    cascade: CascadeConfig | None = None,
    progress: bool = True,
) -> LabelingResult:
    """Label ``reports`` (id -> text) with the rules, asking ``config``'s LLM only about open findings.

    Returns a LabelingResult like :func:`silverclip.labels.llm.extract_labels_llm` (labels 1/0/-1,
    probabilities = rule scores where the rules decided, the LLM's P(present) or its label as a
    score 1 / 0.5 / 0 where it decided), plus ``decided_by`` (id -> finding -> ``rules``/``llm``)
    and ``usage`` counting the open pairs and reports (``open_pairs``, ``reports_to_llm``, shares)
    besides the LLM's requests, tokens and cost. Same errors as ``extract_labels_llm``.
    """
    return asyncio.run(extract_labels_cascade_async(reports, config, cache_path, cascade, progress))
