"""LLM labeller: CT reports -> 18 labels in {1, 0, -1} (+ P(present)) through any OpenAI-compatible endpoint.

Entry point: :func:`extract_labels_llm` (``silverclip labels extract --backend llm``). One request
per report (system prompt listing the 18 findings, user message = Findings + Impressions; prompt
variants in ``resources/prompts/``), identical texts sent once, run by :func:`silverclip.labels.llm_jobs.run_jobs`
(cache, resume, retries, re-asks, privacy guard, live or batch). The pieces:

- :mod:`~silverclip.labels.llm_prompt`: the prompt variants;
- :mod:`~silverclip.labels.llm_client`: config, privacy guard, retries, re-asks, no redirects;
- :mod:`~silverclip.labels.llm_jobs` / :mod:`~silverclip.labels.llm_batch`: live and batch runs;
- :mod:`~silverclip.labels.llm_parse`: strict answer parsing, P(present) from token log-probs;
- :mod:`~silverclip.labels.llm_cache`: the SQLite answer cache;
- :mod:`~silverclip.labels.llm_usage` / :mod:`~silverclip.labels.llm_tokens`: token and cost accounting, dry runs;
- :mod:`~silverclip.labels.llm_server`: the local llama.cpp server (``silverclip llm serve``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from silverclip.findings import FINDINGS
from silverclip.io import FailureLog
from silverclip.labels.llm_cache import cache_key, text_sha256
from silverclip.labels.llm_client import (
    FatalEndpointError,
    LLMConfig,
    RemoteEndpointError,
    check_endpoint,
    is_loopback_url,
)
from silverclip.labels.llm_jobs import JobRun, LabelJob, run_jobs_async
from silverclip.labels.llm_prompt import LabelPrompt, format_report, load_prompt
from silverclip.labels.llm_usage import format_usage
from silverclip.labels.table import LabelingResult

__all__ = [
    "LLMConfig",
    "RemoteEndpointError",
    "FatalEndpointError",
    "extract_labels_llm",
    "extract_labels_llm_async",
    "llm_jobs",
    "format_usage",
    "format_report",
    "check_endpoint",
    "is_loopback_url",
]


def llm_jobs(reports: dict[str, str], config: LLMConfig, prompt: LabelPrompt, failures: FailureLog) -> list[LabelJob]:
    """One job per distinct report text (all findings); empty texts are recorded in ``failures``, not sent."""
    jobs: dict[str, LabelJob] = {}
    where = f"llm:{config.shown_url}"
    for rid, text in reports.items():
        if not isinstance(text, str) or not text.strip():
            failures.add(rid, where, "empty report text" if isinstance(text, str) or text is None else "not text")
            continue
        key = cache_key(config.model, prompt.prompt_id, text)
        if key not in jobs:
            jobs[key] = LabelJob(key, prompt.prompt_id, text_sha256(text), prompt.messages(text), prompt.n_findings)
        jobs[key].ids.append(rid)
    return list(jobs.values())


def record_failures(jobs: list[LabelJob], run: JobRun, failures: FailureLog, where: str) -> None:
    """Every report id of a failed job, with the job's reason."""
    for job in jobs:
        if job.key in run.failed:
            for rid in job.ids:
                failures.add(rid, where, run.failed[job.key])


async def extract_labels_llm_async(
    reports: dict[str, str], config: LLMConfig, cache_path: str | Path, progress: bool = True
) -> LabelingResult:
    """Async form of :func:`extract_labels_llm` (for callers that already run an event loop)."""
    prompt = load_prompt(config.prompt_version)
    failures = FailureLog("labels (llm)")
    jobs = llm_jobs(reports, config, prompt, failures)
    run = await run_jobs_async(jobs, config, prompt, cache_path, progress=progress)
    record_failures(jobs, run, failures, f"llm:{config.shown_url}")

    ids = list(reports)
    labels = pd.DataFrame(np.nan, index=pd.Index(ids, name="id"), columns=list(FINDINGS))
    probs = labels.copy()
    any_probs = False
    for job in jobs:
        answer = run.answers.get(job.key)
        if answer is None:
            continue
        labels.loc[job.ids, :] = np.asarray(answer.labels, dtype=float)
        if answer.probabilities is not None:
            probs.loc[job.ids, :] = np.asarray(answer.probabilities, dtype=float)
            any_probs = True
    usage = {"reports": len(reports), "unique_reports": len(jobs), **run.usage, "failed": len(failures)}
    if progress:
        print(format_usage(usage), file=sys.stderr)
    return LabelingResult(labels=labels, probabilities=probs if any_probs else None, failures=failures, usage=usage)


def extract_labels_llm(
    reports: dict[str, str], config: LLMConfig, cache_path: str | Path, progress: bool = True
) -> LabelingResult:
    """Label ``reports`` (id -> Findings + Impressions text) with an LLM; resumable through ``cache_path``.

    Returns a LabelingResult whose ``labels`` frame is indexed by the given ids (input order) with
    the 18 findings as columns, values 1/0/-1, NaN for reports that failed after the last try
    (listed in ``failures`` with the reason). ``probabilities`` holds P(present) where the
    endpoint returned token log-probabilities (see :func:`silverclip.labels.llm_parse.present_probabilities`),
    NaN rows for answers without them, or is None when no answer had them. ``usage``: ``reports``,
    ``unique_reports`` (identical texts are sent once), ``cache_hits``, ``labelled`` (new answers),
    ``failed``, ``requests``/``retries``/``reasks``, ``prompt_tokens`` (of which ``cached_prompt_tokens``)
    and ``completion_tokens`` (from the server's ``usage``, this run only), ``elapsed_s`` and, when
    both prices are set, ``cost_usd``.

    Raises RemoteEndpointError (privacy guard), ValueError (no API key for a remote endpoint,
    unknown prompt version, unusable cache file) and FatalEndpointError (the endpoint refuses every
    request, or redirects); answers finished before such an error stay in the cache.
    """
    return asyncio.run(extract_labels_llm_async(reports, config, cache_path, progress=progress))
