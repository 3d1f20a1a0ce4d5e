"""LLM labeller: CT reports -> 18 labels in {1, 0, -1} (+ P(present)) through any OpenAI-compatible endpoint.

Entry point: :func:`extract_labels_llm` (``silverclip labels extract --backend llm``). One request
per report (system prompt listing the 18 findings, user message = Findings + Impressions; see
``resources/prompts/labels_v1.yaml``), ``config.concurrency`` requests in flight, every finished
answer committed to a persistent cache (:mod:`silverclip.labels.llm_cache`) before the next one is
counted, so a run can be killed at any moment and rerun to resume. The pieces:

- :mod:`~silverclip.labels.llm_prompt`: the versioned prompt template;
- :mod:`~silverclip.labels.llm_client`: config, privacy guard, retries, re-asks;
- :mod:`~silverclip.labels.llm_parse`: strict answer parsing, P(present) from token log-probs;
- :mod:`~silverclip.labels.llm_cache`: the SQLite answer cache;
- :mod:`~silverclip.labels.llm_server`: the local llama.cpp server (``silverclip llm serve``).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from silverclip.findings import FINDINGS
from silverclip.io import FailureLog
from silverclip.labels.llm_cache import AnswerCache, CachedAnswer, cache_key
from silverclip.labels.llm_client import (
    FatalEndpointError,
    LLMConfig,
    RemoteEndpointError,
    ReportFailed,
    ReportLabeler,
    check_endpoint,
    is_loopback_url,
    make_client,
    resolve_api_key,
)
from silverclip.labels.llm_prompt import format_report, load_prompt
from silverclip.labels.table import LabelingResult

__all__ = [
    "LLMConfig",
    "RemoteEndpointError",
    "FatalEndpointError",
    "extract_labels_llm",
    "extract_labels_llm_async",
    "estimate_cost",
    "format_usage",
    "format_report",
    "check_endpoint",
    "is_loopback_url",
]

log = logging.getLogger(__name__)


def estimate_cost(
    prompt_tokens: float, completion_tokens: float, price_input_per_m: float | None, price_output_per_m: float | None
) -> float | None:
    """USD for the given token counts at per-million-token prices; None when a price is not given."""
    if price_input_per_m is None or price_output_per_m is None:
        return None
    return (prompt_tokens * price_input_per_m + completion_tokens * price_output_per_m) / 1e6


def format_usage(usage: dict[str, float]) -> str:
    """One human-readable summary line of a run's usage counters (tokens, requests, cache, cost)."""
    parts = [
        f"{int(usage.get('reports', 0))} reports",
        f"{int(usage.get('labelled', 0))} labelled now",
        f"{int(usage.get('cache_hits', 0))} from cache",
        f"{int(usage.get('failed', 0))} failed",
        f"{int(usage.get('requests', 0))} requests ({int(usage.get('retries', 0))} retries, "
        f"{int(usage.get('reasks', 0))} re-asks)",
        f"{int(usage.get('prompt_tokens', 0))} prompt + {int(usage.get('completion_tokens', 0))} completion tokens",
    ]
    if "cost_usd" in usage:
        parts.append(
            f"estimated cost ${usage['cost_usd']:.4f} at ${usage['price_input_per_m']:g}/M in, "
            f"${usage['price_output_per_m']:g}/M out"
        )
    return "LLM labels: " + ", ".join(parts)


def _quiet_http_loggers() -> None:
    # openai logs whole request options (report text) and httpx request lines at DEBUG; under
    # `silverclip -v` that would copy report text (and possibly headers) into logs.
    for name in ("openai", "httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


async def extract_labels_llm_async(
    reports: dict[str, str], config: LLMConfig, cache_path: str | Path, progress: bool = True
) -> LabelingResult:
    """Async form of :func:`extract_labels_llm` (for callers that already run an event loop)."""
    check_endpoint(config.base_url, config.allow_remote)  # before anything else touches the reports
    api_key = resolve_api_key(config)
    prompt = load_prompt(config.prompt_version)
    _quiet_http_loggers()
    t0 = time.perf_counter()
    failures = FailureLog("labels (llm)")
    where = f"llm:{config.base_url}"

    ids_by_key: dict[str, list[str]] = {}
    text_by_key: dict[str, str] = {}
    for rid, text in reports.items():
        if not isinstance(text, str) or not text.strip():
            failures.add(rid, where, "empty report text" if isinstance(text, str) or text is None else "not text")
            continue
        key = cache_key(config.model, prompt.prompt_id, text)
        ids_by_key.setdefault(key, []).append(rid)
        text_by_key[key] = text

    answers: dict[str, CachedAnswer] = {}
    labeller: ReportLabeler | None = None
    with AnswerCache(cache_path) as cache:
        cached = cache.get_many(list(ids_by_key))
        answers.update(cached)
        todo = [k for k in ids_by_key if k not in cached]
        if todo:
            client = make_client(config, api_key)
            labeller = ReportLabeler(config, prompt, client, api_key)
            semaphore = asyncio.Semaphore(config.concurrency)

            async def one(key: str) -> tuple[str, CachedAnswer | Exception]:
                async with semaphore:
                    try:
                        return key, await labeller.label(text_by_key[key])
                    except (ReportFailed, FatalEndpointError) as e:
                        return key, e
                    except Exception as e:  # noqa: BLE001 - one odd response must not kill a run of thousands
                        return key, ReportFailed(f"{type(e).__name__}: {e}"[:300])

            tasks = [asyncio.create_task(one(k)) for k in todo]
            bar = tqdm(total=len(todo), desc="LLM labels", unit="report", disable=not progress, file=sys.stderr)
            try:
                for next_done in asyncio.as_completed(tasks):
                    key, outcome = await next_done
                    if isinstance(outcome, FatalEndpointError):
                        raise outcome
                    if isinstance(outcome, Exception):
                        for rid in ids_by_key[key]:
                            failures.add(rid, where, str(outcome))
                    else:
                        cache.put(key, config.model, prompt.prompt_id, text_by_key[key], outcome)  # durable now
                        answers[key] = outcome
                    bar.update(1)
                    bar.set_postfix(failed=len(failures), tokens=labeller.usage.prompt_tokens, refresh=False)
            finally:
                bar.close()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await client.close()

    ids = list(reports)
    labels = pd.DataFrame(np.nan, index=pd.Index(ids, name="id"), columns=list(FINDINGS))
    probs = labels.copy()
    any_probs = False
    for key, rids in ids_by_key.items():
        answer = answers.get(key)
        if answer is None:
            continue
        labels.loc[rids, :] = np.asarray(answer.labels, dtype=float)
        if answer.probabilities is not None:
            probs.loc[rids, :] = np.asarray(answer.probabilities, dtype=float)
            any_probs = True

    usage: dict[str, float] = {
        "reports": len(reports),
        "unique_reports": len(ids_by_key),
        "cache_hits": len(cached),
        "labelled": len(todo) - sum(1 for k in todo if k not in answers),
        "failed": len(failures),
        "requests": 0,
        "retries": 0,
        "reasks": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "elapsed_s": time.perf_counter() - t0,
    }
    if labeller is not None:
        u = labeller.usage
        usage.update(
            requests=u.requests,
            retries=u.retries,
            reasks=u.reasks,
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            responses_without_usage=u.responses_without_usage,
        )
    cost = estimate_cost(
        usage["prompt_tokens"], usage["completion_tokens"], config.price_input_per_m, config.price_output_per_m
    )
    if cost is not None:
        usage.update(
            cost_usd=cost, price_input_per_m=config.price_input_per_m, price_output_per_m=config.price_output_per_m
        )
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
    ``failed``, ``requests``/``retries``/``reasks``, ``prompt_tokens``/``completion_tokens`` (from the
    server's ``usage``, this run only), ``elapsed_s`` and, when both prices are set, ``cost_usd``.

    Raises RemoteEndpointError (privacy guard), ValueError (no API key for a remote endpoint,
    unknown prompt version, unusable cache file) and FatalEndpointError (the endpoint refuses every
    request); answers finished before such an error stay in the cache.
    """
    return asyncio.run(extract_labels_llm_async(reports, config, cache_path, progress=progress))
