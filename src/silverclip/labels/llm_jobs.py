"""Running label requests ("jobs") against an endpoint: answer cache first, then live requests or a batch.

Both LLM backends (``llm``: one request per report for all findings; ``cascade``: one request per
report for the findings the rules left open) turn their reports into :class:`LabelJob` s and call
:func:`run_jobs`, so they share one cache, one resume logic, one retry policy, one privacy guard,
one failure list and one token account:

1. privacy guard and API key, before anything touches the reports or the disk;
2. answers already in the cache are used as they are (nothing paid twice);
3. the rest is sent, ``config.concurrency`` requests in flight (:class:`~silverclip.labels.llm_client.ReportLabeler`:
   retries, re-asks) or, with ``config.batch``, through the endpoint's batch API
   (:mod:`silverclip.labels.llm_batch`); every finished answer is committed before the next is counted;
4. secrets are redacted from every message and log line of the run (:mod:`silverclip.labels.redact`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from silverclip.labels.llm_cache import AnswerCache, CachedAnswer
from silverclip.labels.llm_client import (
    NO_KEY,
    FatalEndpointError,
    LLMConfig,
    ReportFailed,
    ReportLabeler,
    check_endpoint,
    make_client,
    resolve_api_key,
)
from silverclip.labels.llm_prompt import LabelPrompt
from silverclip.labels.llm_usage import UsageCounter, add_cost
from silverclip.labels.redact import Redactor, redacting_logs


@dataclass
class LabelJob:
    """One request: ``messages`` asking ``n_values`` labels, answered once for every report id in ``ids``.

    key: the answer-cache key (model, prompt id incl. the findings asked, hash of the text sent).
    text_hash: sha256 of the text sent (stored in the cache instead of the text).
    """

    key: str
    prompt_id: str
    text_hash: str
    messages: list[dict[str, str]]
    n_values: int
    ids: list[str] = field(default_factory=list)


@dataclass
class JobRun:
    """What :func:`run_jobs` returns: answers by job key (cached and new), failures by key, usage counters."""

    answers: dict[str, CachedAnswer]
    failed: dict[str, str]
    usage: dict[str, float]


def make_redactor(config: LLMConfig, api_key: str | None) -> Redactor:
    """The redactor of a run: the API key (unless the loopback placeholder) and the base URL's credentials."""
    return Redactor([api_key if api_key != NO_KEY else None], [config.base_url])


async def run_jobs_async(
    jobs: list[LabelJob], config: LLMConfig, prompt: LabelPrompt, cache_path: str | Path, progress: bool = True
) -> JobRun:
    """Async form of :func:`run_jobs`."""
    check_endpoint(config.base_url, config.allow_remote)  # before anything else touches the reports
    api_key = resolve_api_key(config)
    redact = make_redactor(config, api_key)
    t0 = time.perf_counter()
    counter = UsageCounter()
    failed: dict[str, str] = {}
    with redacting_logs(redact), AnswerCache(cache_path) as cache:
        answers = cache.get_many([j.key for j in jobs])
        n_cached = len(answers)
        todo = [j for j in jobs if j.key not in answers]
        if todo:
            client = make_client(config, api_key)
            try:
                if config.batch:
                    from silverclip.labels.llm_batch import BatchRun

                    await BatchRun(config, client, cache, answers, failed, counter, redact, progress).run(todo)
                else:
                    labeller = ReportLabeler(config, prompt, client, redact)
                    counter = labeller.usage
                    await _run_live(todo, config, labeller, cache, answers, failed, progress)
            finally:
                await client.close()
    usage: dict[str, float] = {
        "requests_needed": len(jobs),
        "cache_hits": n_cached,
        "labelled": len(answers) - n_cached,
        "failed_requests": len(failed),
        "requests": counter.requests,
        "retries": counter.retries,
        "reasks": counter.reasks,
        "prompt_tokens": counter.prompt_tokens,
        "cached_prompt_tokens": counter.cached_prompt_tokens,
        "completion_tokens": counter.completion_tokens,
        "responses_without_usage": counter.responses_without_usage,
        "elapsed_s": time.perf_counter() - t0,
    }
    add_cost(usage, config.prices)
    return JobRun(answers, failed, usage)


def run_jobs(
    jobs: list[LabelJob], config: LLMConfig, prompt: LabelPrompt, cache_path: str | Path, progress: bool = True
) -> JobRun:
    """Answer every job from the cache or the endpoint; see the module docstring.

    Raises RemoteEndpointError (privacy guard), ValueError (no API key for a remote endpoint,
    unusable cache) and FatalEndpointError (the endpoint refuses every request or redirects);
    answers finished before such an error stay in the cache.
    """
    return asyncio.run(run_jobs_async(jobs, config, prompt, cache_path, progress=progress))


async def _run_live(
    todo: list[LabelJob],
    config: LLMConfig,
    labeller: ReportLabeler,
    cache: AnswerCache,
    answers: dict[str, CachedAnswer],
    failed: dict[str, str],
    progress: bool,
) -> None:
    semaphore = asyncio.Semaphore(config.concurrency)

    async def one(job: LabelJob) -> tuple[LabelJob, CachedAnswer | Exception]:
        async with semaphore:
            try:
                return job, await labeller.label(job.messages, job.n_values)
            except (ReportFailed, FatalEndpointError) as e:
                return job, e
            except Exception as e:  # noqa: BLE001 - one odd response must not kill a run of thousands
                return job, ReportFailed(labeller.redact(f"{type(e).__name__}: {e}")[:300])

    tasks = [asyncio.create_task(one(j)) for j in todo]
    bar = tqdm(total=len(todo), desc="LLM requests", unit="request", disable=not progress, file=sys.stderr)
    try:
        for next_done in asyncio.as_completed(tasks):
            job, outcome = await next_done
            if isinstance(outcome, FatalEndpointError):
                raise outcome
            if isinstance(outcome, Exception):
                failed[job.key] = str(outcome)
            else:
                cache.put(job.key, config.model, job.prompt_id, job.text_hash, outcome)  # durable now
                answers[job.key] = outcome
            bar.update(1)
            bar.set_postfix(failed=len(failed), tokens=labeller.usage.prompt_tokens, refresh=False)
    finally:
        bar.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
