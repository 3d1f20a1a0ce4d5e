"""Labeller backends by name, and the one call that runs any of them (``labels extract``, the pipeline).

| name | what | needs |
|---|---|---|
| ``rules`` | rule labeller: patterns + negation/uncertainty cues (:mod:`~silverclip.labels.rules`) | nothing |
| ``keyword`` | the rules' patterns without negation/uncertainty (:mod:`~silverclip.labels.keyword`) | nothing |
| ``llm`` | one LLM request per report, all 18 findings (:mod:`~silverclip.labels.llm`) | an endpoint |
| ``cascade`` | rules first, the LLM only for open findings (:mod:`~silverclip.labels.cascade`) | an endpoint |

:func:`label_reports` also applies the report-status policy (:mod:`~silverclip.labels.report_status`):
empty and non-English reports are not labelled (empty rows, ``report_status`` says why) unless
``include_flagged``. A new backend is a function ``(reports, options) -> LabelingResult``
registered with :func:`register_backend`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from silverclip.findings import FINDINGS
from silverclip.labels.report_status import FAILED, OK, report_statuses
from silverclip.labels.table import LabelingResult


@dataclass
class BackendOptions:
    """Options a backend may need. ``llm``: an LLMConfig; ``cascade``: a CascadeConfig; ``cache_path``: answer cache."""

    llm: Any = None
    cascade: Any = None
    cache_path: str | Path | None = None
    progress: bool = True


Backend = Callable[[dict[str, str], BackendOptions], LabelingResult]
_BACKENDS: dict[str, Backend] = {}
LLM_BACKENDS = ("llm", "cascade")


def register_backend(name: str) -> Callable[[Backend], Backend]:
    """Decorator: make ``fn(reports, options) -> LabelingResult`` selectable as backend ``name``."""

    def add(fn: Backend) -> Backend:
        _BACKENDS[name] = fn
        return fn

    return add


def backend_names() -> tuple[str, ...]:
    return tuple(_BACKENDS)


@register_backend("rules")
def _rules(reports: dict[str, str], options: BackendOptions) -> LabelingResult:
    from silverclip.labels.rules import RuleLabeler

    return RuleLabeler().label_reports(reports, progress=options.progress)


@register_backend("keyword")
def _keyword(reports: dict[str, str], options: BackendOptions) -> LabelingResult:
    from silverclip.labels.keyword import KeywordLabeler

    return KeywordLabeler().label_reports(reports, progress=options.progress)


def _need_llm(name: str, options: BackendOptions) -> None:
    if options.llm is None or options.cache_path is None:
        raise ValueError(f"backend {name!r} needs an LLM config and an answer-cache path")


@register_backend("llm")
def _llm(reports: dict[str, str], options: BackendOptions) -> LabelingResult:
    from silverclip.labels.llm import extract_labels_llm

    _need_llm("llm", options)
    return extract_labels_llm(reports, options.llm, options.cache_path, progress=options.progress)


@register_backend("cascade")
def _cascade(reports: dict[str, str], options: BackendOptions) -> LabelingResult:
    from silverclip.labels.cascade import extract_labels_cascade

    _need_llm("cascade", options)
    return extract_labels_cascade(reports, options.llm, options.cache_path, options.cascade, options.progress)


def _chosen(reports: dict[str, str], include_flagged: bool) -> tuple[dict[str, str], pd.Series]:
    status = report_statuses(reports)
    return (reports if include_flagged else {k: v for k, v in reports.items() if status[k] == OK}), status


def plan_requests(
    backend: str, reports: dict[str, str], options: BackendOptions, include_flagged: bool = False
) -> tuple[list, dict[str, float]]:
    """The LLM requests (:class:`~silverclip.labels.llm_jobs.LabelJob`) a run of ``backend`` would send, and counts.

    Nothing is sent: this is what ``--dry-run`` counts. Counts: ``reports``, ``flagged`` and, for the
    cascade, the open (report, finding) pairs and the reports that reach the LLM.
    """
    from silverclip.io import FailureLog
    from silverclip.labels.llm_prompt import load_prompt

    if backend not in LLM_BACKENDS:
        raise ValueError(f"backend {backend!r} sends no LLM requests")
    _need_llm(backend, options)
    chosen, status = _chosen(reports, include_flagged)
    counts: dict[str, float] = {"reports": len(reports), "flagged": int((status != OK).sum())}
    prompt = load_prompt(options.llm.prompt_version)
    if backend == "llm":
        from silverclip.labels.llm import llm_jobs

        return llm_jobs(chosen, options.llm, prompt, FailureLog("dry run")), counts
    from silverclip.labels.cascade import plan_cascade

    plan = plan_cascade(chosen, options.llm, options.cascade, prompt)
    return plan.jobs, {**counts, **plan.counts(), "reports": len(reports)}


def label_reports(
    backend: str, reports: dict[str, str], options: BackendOptions | None = None, include_flagged: bool = False
) -> LabelingResult:
    """Label ``reports`` (id -> text) with ``backend``; flagged reports stay unlabelled unless ``include_flagged``.

    The result covers every id in input order: ``labels``/``probabilities`` NaN for flagged (and
    failed) reports, ``status`` id -> ``ok``/``empty``/``not_english``/``failed``, ``usage["flagged"]``.
    Flagged reports are never sent to an LLM unless ``include_flagged``.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown labeller backend {backend!r}; choose from {list(_BACKENDS)}")
    options = options or BackendOptions()
    chosen, status = _chosen(reports, include_flagged)
    result = _BACKENDS[backend](chosen, options)
    ids = pd.Index(list(reports), name=result.labels.index.name)
    result.labels = result.labels.reindex(index=ids, columns=list(FINDINGS))
    if result.probabilities is not None:
        result.probabilities = result.probabilities.reindex(index=ids, columns=list(FINDINGS))
    failed = {f.item for f in result.failures.failures}
    status[[i for i in status.index if i in failed]] = FAILED
    result.status = status
    result.usage["flagged"] = int((~status.isin([OK, FAILED])).sum())
    result.usage["flagged_included"] = int(include_flagged)
    return result
