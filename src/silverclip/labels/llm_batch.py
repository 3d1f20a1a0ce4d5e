"""Batch mode of the LLM labellers: an OpenAI-compatible batch API, resumable by batch id across restarts.

For endpoints that discount batch requests (OpenAI's Batch API: half price, answers within 24 h),
``--batch`` sends the requests that are not in the answer cache as one JSONL file instead of one
request each:

1. upload: ``POST /v1/files`` (``purpose=batch``), one line per request
   ``{"custom_id": <cache key>, "method": "POST", "url": "/v1/chat/completions", "body": {...}}``
   with the same body a live request has (model, messages, temperature, max_tokens, log-probs, grammar);
2. create: ``POST /v1/batches`` (``completion_window`` from the config, default 24h);
3. poll: ``GET /v1/batches/{id}`` every ``batch_poll_s`` until ``completed``, ``failed``, ``expired``
   or ``cancelled``;
4. download: ``GET /v1/files/{output_file_id}/content`` (and the error file); each answer is parsed
   like a live one and committed to the answer cache.

The state (input file id, batch id, which cache key each line answers) is written to
``<cache>.batches.json`` before and after each step, so a run killed at any point resumes: a batch
already created is polled again by its id (never submitted twice), an upload whose batch creation
was interrupted is found again by its input file id, and finished answers are in the cache. The
state file is removed once every batch in it is downloaded. Up to 50,000 requests go in one batch
(OpenAI's limit); more make several.

Not done in batch mode: re-asks (a malformed answer is a recorded failure; a rerun submits it again
in a new batch). Retries apply to the control requests (upload, create, poll, download).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

import openai
from openai.types.chat import ChatCompletion
from tqdm.auto import tqdm

from silverclip.io import atomic_write_json
from silverclip.labels.llm_cache import AnswerCache, CachedAnswer
from silverclip.labels.llm_client import (
    LLMConfig,
    ReportFailed,
    answer_from_choice,
    call_with_retries,
    request_extra_body,
)
from silverclip.labels.llm_jobs import LabelJob
from silverclip.labels.llm_parse import AnswerFormatError
from silverclip.labels.llm_usage import UsageCounter, cached_tokens
from silverclip.labels.redact import Redactor

MAX_REQUESTS_PER_BATCH = 50_000
DONE_STATUSES = ("completed", "failed", "expired", "cancelled")
ENDPOINT = "/v1/chat/completions"


class BatchPending(RuntimeError):
    """A batch did not finish within ``batch_max_wait_s``: rerun the same command to resume polling it."""


class BatchError(RuntimeError):
    """A request to the files/batches API failed on every try: the state is saved, a rerun resumes."""


def state_path(cache_path: str | Path) -> Path:
    """``labels.llm_cache.sqlite`` -> ``labels.llm_cache.sqlite.batches.json``."""
    p = Path(cache_path)
    return p.with_name(p.name + ".batches.json")


def batch_body(job: LabelJob, config: LLMConfig) -> dict:
    """The request body of one batch line: what a live request of the same job would send."""
    body: dict = {
        "model": config.model,
        "messages": job.messages,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
    }
    if config.logprobs and config.top_logprobs > 0:
        body.update(logprobs=True, top_logprobs=config.top_logprobs)
    body.update(request_extra_body(config, job.n_values) or {})
    return body


def _load_state(path: Path) -> dict:
    if not path.exists():
        return {"batches": []}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(state.get("batches"), list):
            raise ValueError("no 'batches' list")
        return state
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not a batch state file ({e}); move it away to start new batches") from None


class BatchRun:
    """Answers requests through the batch API; batches left by an interrupted run are finished first.

    Fills ``answers`` (and the cache) and ``failed`` (key -> reason) in place and counts the label
    requests' tokens in ``usage``. :meth:`run` raises BatchPending when ``config.batch_max_wait_s``
    passes first, BatchError when a files/batches request fails on every try, FatalEndpointError
    when the endpoint refuses or redirects (each time after saving the state).
    """

    def __init__(
        self,
        config: LLMConfig,
        client: openai.AsyncOpenAI,
        cache: AnswerCache,
        answers: dict[str, CachedAnswer],
        failed: dict[str, str],
        usage: UsageCounter,
        redact: Redactor,
        progress: bool,
    ) -> None:
        self.config, self.client, self.cache = config, client, cache
        self.answers, self.failed, self.usage, self.redact = answers, failed, usage, redact
        self.progress = progress
        self.path = state_path(cache.path)
        self.state = _load_state(self.path)
        self.rng = random.Random()

    async def run(self, todo: list[LabelJob]) -> None:
        """Answer ``todo``; a previous run's batches are polled by id first, never submitted again."""
        await self.finish_all()
        pending = {k for e in self.state["batches"] for k in e["jobs"]}
        done = set(self.answers) | set(self.failed) | pending
        remaining = [j for j in todo if j.key not in done]
        if remaining:
            await self.submit(remaining)
            await self.finish_all()

    def save(self) -> None:
        if self.state["batches"]:
            atomic_write_json(self.path, self.state)
        elif self.path.exists():
            self.path.unlink()

    async def call(self, fn):  # control requests: retried, not counted as label requests
        try:
            return await call_with_retries(fn, self.config, self.redact, self.rng)
        except ReportFailed as e:
            raise BatchError(
                f"batch API request failed ({e}); what was done is saved in {self.path}: rerun the same command "
                "to resume"
            ) from None

    async def submit(self, jobs: list[LabelJob]) -> None:
        """Upload and create one batch per chunk of jobs; the state is saved after every step."""
        for start in range(0, len(jobs), MAX_REQUESTS_PER_BATCH):
            chunk = jobs[start : start + MAX_REQUESTS_PER_BATCH]
            lines = [
                json.dumps({"custom_id": j.key, "method": "POST", "url": ENDPOINT, "body": batch_body(j, self.config)})
                for j in chunk
            ]
            data = ("\n".join(lines) + "\n").encode("utf-8")
            uploaded = await self.call(
                lambda data=data: self.client.files.create(file=("labels.jsonl", data), purpose="batch")
            )
            entry = {
                "input_file_id": uploaded.id,
                "batch_id": None,
                "created": time.time(),
                "model": self.config.model,
                "jobs": {
                    j.key: {"prompt_id": j.prompt_id, "text_hash": j.text_hash, "n_values": j.n_values} for j in chunk
                },
            }
            self.state["batches"].append(entry)
            self.save()  # killed now: the upload is found again by its file id
            await self.create(entry)

    async def create(self, entry: dict) -> None:
        batch = await self.call(
            lambda: self.client.batches.create(
                input_file_id=entry["input_file_id"], endpoint=ENDPOINT, completion_window=self.config.batch_window
            )
        )
        entry["batch_id"] = batch.id
        self.save()

    async def recover(self, entry: dict) -> None:
        """An upload whose batch id was not saved: find its batch by input file id, else create it."""
        async for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == entry["input_file_id"]:
                entry["batch_id"] = batch.id
                self.save()
                return
        await self.create(entry)

    async def finish_all(self) -> None:
        """Poll every batch in the state until it ends (or ``batch_max_wait_s``), downloading each that ends."""
        for entry in self.state["batches"]:
            if entry["batch_id"] is None:
                await self.recover(entry)
        t0 = time.monotonic()
        total = sum(len(e["jobs"]) for e in self.state["batches"])
        bar = tqdm(total=total, desc="LLM batch", unit="request", disable=not self.progress, file=sys.stderr)
        try:
            while self.state["batches"]:
                done = 0
                for entry in list(self.state["batches"]):
                    batch = await self.call(lambda entry=entry: self.client.batches.retrieve(entry["batch_id"]))
                    counts = getattr(batch, "request_counts", None)
                    done += (getattr(counts, "completed", 0) or 0) + (getattr(counts, "failed", 0) or 0)
                    if batch.status in DONE_STATUSES:
                        await self.download(entry, batch)
                        self.state["batches"].remove(entry)
                        self.save()
                bar.n = min(total, done + total - sum(len(e["jobs"]) for e in self.state["batches"]))
                bar.refresh()
                if not self.state["batches"]:
                    break
                waited = time.monotonic() - t0
                if self.config.batch_max_wait_s is not None and waited >= self.config.batch_max_wait_s:
                    ids = [e["batch_id"] for e in self.state["batches"]]
                    raise BatchPending(
                        f"batch(es) {ids} not finished after {waited:.0f} s; rerun the same command to resume "
                        f"polling them (state in {self.path})"
                    )
                await asyncio.sleep(self.config.batch_poll_s)
        finally:
            bar.close()

    async def download(self, entry: dict, batch: object) -> None:
        """Store every answer of a finished batch; every job without a usable answer is a failure."""
        jobs: dict[str, dict] = entry["jobs"]
        seen: set[str] = set()
        for file_id in (getattr(batch, "output_file_id", None), getattr(batch, "error_file_id", None)):
            if not file_id:
                continue
            content = await self.call(lambda file_id=file_id: self.client.files.content(file_id))
            for line in content.text.splitlines():
                if line.strip():
                    seen.add(self.store_line(line, jobs))
        reason = f"batch {batch.id} ended {batch.status}"
        errors = getattr(getattr(batch, "errors", None), "data", None) or []
        if errors:
            reason += ": " + "; ".join(self.redact(getattr(e, "message", e)) for e in errors)[:300]
        for key in jobs:
            if key not in seen and key not in self.answers:
                self.failed[key] = f"{reason} without an answer for this request"

    def store_line(self, line: str, jobs: dict[str, dict]) -> str:
        """Parse one output/error line, commit its answer or record its failure; returns its custom_id."""
        try:
            record = json.loads(line)
            key = str(record["custom_id"])
        except (ValueError, KeyError, TypeError):
            return ""
        job = jobs.get(key)
        if job is None:
            return ""  # not one of ours
        self.usage.requests += 1
        response = record.get("response") or {}
        status = response.get("status_code")
        if record.get("error") or status != 200:
            error = record.get("error") or (response.get("body") or {}).get("error") or {}
            message = error.get("message", error) if isinstance(error, dict) else error
            self.failed[key] = self.redact(f"batch request failed (HTTP {status}): {message}")[:300]
            return key
        try:
            completion = ChatCompletion.model_validate(response["body"])
            answer = answer_from_choice(completion, job["n_values"], self.config.uncertain_weight, self.redact)
        except (AnswerFormatError, ReportFailed, ValueError, KeyError, TypeError) as e:
            shown = ""
            try:
                shown = self.redact(response["body"]["choices"][0]["message"]["content"] or "")[:200]
            except (KeyError, IndexError, TypeError):
                pass
            self.failed[key] = f"malformed answer in batch ({self.redact(e)[:200]}); answer: {shown!r}"
            return key
        self.usage.add_response(completion.usage)
        u = completion.usage
        answer = CachedAnswer(
            labels=answer.labels,
            probabilities=answer.probabilities,
            answer=answer.answer,
            prompt_tokens=(u.prompt_tokens or 0) if u else 0,
            completion_tokens=(u.completion_tokens or 0) if u else 0,
            requests=1,
            cached_prompt_tokens=cached_tokens(u) if u else 0,
        )
        self.cache.put(key, self.config.model, job["prompt_id"], job["text_hash"], answer)
        self.answers[key] = answer
        self.failed.pop(key, None)
        return key
