"""Talking to an OpenAI-compatible chat endpoint: configuration, privacy guard, retry policy, re-asks.

Works with anything that speaks ``/v1/chat/completions``: OpenAI, DeepSeek, vLLM, Ollama,
llama.cpp (``silverclip llm serve``). The ``openai`` client's own retries are switched off
(``max_retries=0``) so that the policy below is the only one and can be tested:

- timeouts, connection errors, HTTP 408/409/429 and 5xx: retried up to ``max_retries`` times after
  an exponential back-off with jitter (``Retry-After`` honoured when the server sends one);
- a malformed answer: re-asked up to ``max_reasks`` times with a corrective message (the bad
  answer stays in the conversation so the model sees what was wrong);
- HTTP 400/422: no retry (the same request would fail again), except once without log-probs if
  the endpoint refuses them; HTTP 401/403/404 (bad key, no access, unknown model) stop the run;
- a redirect (HTTP 3xx) is never followed: it stops the run with an error naming the Location.
  Following it would re-send the report text to wherever the endpoint points, past the privacy
  guard (a loopback server answering 307 to another host).

Secrets (the API key, credentials in ``base_url``) are redacted from every message
(:mod:`silverclip.labels.redact`), including an answer that echoes the key.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import openai

from silverclip.labels.llm_cache import CachedAnswer
from silverclip.labels.llm_parse import AnswerFormatError, TokenLogprob, parse_answer, present_probabilities
from silverclip.labels.llm_prompt import LabelPrompt, labels_grammar
from silverclip.labels.llm_usage import Prices, UsageCounter, cached_tokens, prices_from
from silverclip.labels.redact import Redactor, redact_url

T = TypeVar("T")
NO_KEY = "sk-no-key-required"  # local servers (llama.cpp, vLLM, Ollama) accept any key


@dataclass
class LLMConfig:
    """Options of the LLM labeller. Holds the *name* of the API-key variable, never the key.

    base_url: OpenAI-compatible endpoint (``.../v1``); the default is ``silverclip llm serve``'s.
    model: model name sent with each request (local servers ignore it; it is part of the cache key).
    allow_remote: permit a non-loopback ``base_url`` (report text leaves the machine).
    concurrency: requests in flight. max_retries: retries on transient errors per request.
    max_reasks: corrective re-asks per report after a malformed answer.
    logprobs/top_logprobs: ask for token log-probabilities to derive P(present) per finding.
    uncertain_weight: how much of an "uncertain" answer counts as present in P(present).
    prompt_version: prompt variant by name (``resources/prompts/labels_<name>.yaml``: ``v1``, ``authors``).
    price_input_per_m / price_cached_input_per_m / price_output_per_m: USD per million uncached input,
        cached input (None: as uncached) and output tokens, for the cost estimate (None: no estimate).
    backoff_base_s/backoff_max_s: first back-off delay and its cap.
    grammar: send a llama.cpp GBNF grammar of the expected answer (as many values as findings asked).
    extra_body: extra JSON fields sent with every request (never put secrets here).
    batch: send through the endpoint's batch API (``/v1/files`` + ``/v1/batches``) instead of one
        request at a time; ``batch_poll_s`` between status checks, ``batch_window`` the completion
        window asked for, ``batch_max_wait_s`` how long one run waits (None: until the batch ends;
        a rerun resumes polling the same batch).
    """

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "SmolLM2-135M-Instruct"
    api_key_env: str = "OPENAI_API_KEY"
    allow_remote: bool = False
    concurrency: int = 16
    max_retries: int = 3
    max_reasks: int = 2
    timeout_s: float = 120.0
    temperature: float = 0.0
    prompt_version: str = "v1"
    logprobs: bool = True
    top_logprobs: int = 5
    max_tokens: int = 128
    uncertain_weight: float = 0.5
    price_input_per_m: float | None = None
    price_output_per_m: float | None = None
    price_cached_input_per_m: float | None = None
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    grammar: bool = False
    extra_body: dict | None = None
    batch: bool = False
    batch_poll_s: float = 30.0
    batch_window: str = "24h"
    batch_max_wait_s: float | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0 or self.max_reasks < 0:
            raise ValueError("max_retries and max_reasks must be >= 0")
        if not 0.0 <= self.uncertain_weight <= 1.0:
            raise ValueError(f"uncertain_weight must lie in [0, 1], got {self.uncertain_weight}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env or ""):
            # Not echoed: a key pasted where the variable's name belongs must not reach a log.
            raise ValueError("api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must lie in [0, 20] (OpenAI's limit), got {self.top_logprobs}")
        if self.batch_poll_s <= 0:
            raise ValueError(f"batch_poll_s must be > 0, got {self.batch_poll_s}")

    @property
    def prices(self) -> Prices | None:
        return prices_from(self.price_input_per_m, self.price_output_per_m, self.price_cached_input_per_m)

    @property
    def shown_url(self) -> str:
        """``base_url`` as it may appear in messages and files (credentials replaced by ``***``)."""
        return redact_url(self.base_url)


class RemoteEndpointError(PermissionError):
    """Report text would be sent to a non-loopback endpoint without explicit permission."""


class FatalEndpointError(RuntimeError):
    """The endpoint refuses every request (bad key, no access, unknown model): stop the run."""


class ReportFailed(Exception):
    """One report could not be labelled after the last try; the message is the recorded reason."""


def is_loopback_url(base_url: str | None) -> bool:
    """True only for ``localhost`` and literal loopback addresses (127.0.0.0/8, ::1).

    Host names are not resolved: a name that happens to resolve to 127.0.0.1 today is still
    treated as remote, so the guard cannot be fooled by DNS.
    """
    if not base_url:
        return False  # the openai client's default is api.openai.com
    host = urlsplit(base_url).hostname
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def check_endpoint(base_url: str | None, allow_remote: bool) -> None:
    """Privacy guard: raise RemoteEndpointError unless ``base_url`` is loopback or ``allow_remote``."""
    if not is_loopback_url(base_url) and not allow_remote:
        raise RemoteEndpointError(
            f"refusing to send report text to the non-loopback endpoint {redact_url(base_url)!r}: reports may contain "
            "patient information. Pass --allow-remote-endpoint (LLMConfig.allow_remote=True) if this endpoint "
            "is allowed to receive them."
        )


def resolve_api_key(config: LLMConfig) -> str:
    """The API key from the environment variable ``config.api_key_env`` (never from options or files).

    Loopback servers need no key; a remote endpoint without the variable set is an error that names
    the variable (never a value).
    """
    key = os.environ.get(config.api_key_env, "")
    if key:
        return key
    if is_loopback_url(config.base_url):
        return NO_KEY
    raise ValueError(f"no API key: set the environment variable {config.api_key_env} for {config.shown_url}")


def make_client(config: LLMConfig, api_key: str, transport: object | None = None) -> openai.AsyncOpenAI:
    """An AsyncOpenAI client with retries off (ours apply), redirects never followed and, for loopback,
    proxies from the environment ignored.

    Why ``trust_env=False`` for loopback: with HTTP(S)_PROXY set, httpx would route even a
    127.0.0.1 request through the proxy, sending report text off the machine behind the guard's back.
    Why ``follow_redirects=False`` (the openai client's default is True): a redirect would re-send the
    request body (report text) to another host. ``transport`` (an httpx transport of the client's own
    httpx flavour) is for tests only.
    """
    kwargs = {"transport": transport} if transport is not None else {}
    http_client = openai.DefaultAsyncHttpxClient(
        trust_env=not is_loopback_url(config.base_url), follow_redirects=False, **kwargs
    )
    return openai.AsyncOpenAI(
        base_url=config.base_url,
        api_key=api_key,
        max_retries=0,
        timeout=config.timeout_s,
        http_client=http_client,
    )


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before retry ``attempt`` (0-based): ``d = min(max_s, base_s * 2**attempt)``, drawn from [d/2, d].

    Half-jittered exponential back-off: the jitter keeps many clients from retrying in lock-step
    after a shared 429, the floor of d/2 keeps the growth exponential.
    """
    d = min(max_s, base_s * (2.0**attempt))
    return d / 2 + rng.random() * d / 2


def redirect_error(config: LLMConfig, err: openai.APIStatusError, redact: Redactor) -> FatalEndpointError:
    """The error that stops a run whose endpoint answered with a redirect (never followed)."""
    try:
        location = err.response.headers.get("location") or "(no Location header)"
    except AttributeError:
        location = "(no Location header)"
    return FatalEndpointError(
        f"{config.shown_url} answered HTTP {err.status_code} redirecting to {redact(redact_url(location))!r}; "
        "redirects are never followed (they would re-send report text elsewhere): point --base-url at the "
        "final address yourself if it is allowed to receive the reports"
    )


def _retry_after_s(err: openai.APIStatusError) -> float | None:
    try:
        value = err.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _token_logprobs(choice: object) -> list[TokenLogprob] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return [
        TokenLogprob(t.token, t.logprob, tuple((a.token, a.logprob) for a in (t.top_logprobs or []))) for t in content
    ]


class BadRequest(ReportFailed):
    """HTTP 400/422: the same request would fail again (not retried)."""


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    config: LLMConfig,
    redact: Redactor,
    rng: random.Random,
    usage: UsageCounter | None = None,
) -> T:
    """``await call()`` under the retry policy of the module docstring (every try counted in ``usage``).

    Raises FatalEndpointError (401/403/404, a redirect), BadRequest (400/422) or ReportFailed
    (another 4xx, or transient errors on every try); messages are redacted.
    """
    attempt = 0
    while True:
        if usage is not None:
            usage.requests += 1
        try:
            return await call()
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
            # The body may echo part of the key (OpenAI: "Incorrect API key provided: sk-ab***"): not shown.
            raise FatalEndpointError(
                f"{config.shown_url} refused the request with HTTP {e.status_code} ({type(e).__name__}); check "
                f"the model name {config.model!r} and the key in ${config.api_key_env}"
            ) from None
        except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
            raise BadRequest(f"HTTP {e.status_code}: {redact(e)[:300]}") from None
        except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as e:
            status = getattr(e, "status_code", None)
            if status is not None and 300 <= status < 400:
                raise redirect_error(config, e, redact) from None
            retriable = status is None or status in (408, 409, 429) or status >= 500
            what = f"HTTP {status}" if status is not None else type(e).__name__
            if not retriable:
                raise ReportFailed(f"{what}: {redact(e)[:300]}") from None
            if attempt >= config.max_retries:
                raise ReportFailed(f"{what} on all {attempt + 1} tries") from None
            delay = backoff_delay(attempt, config.backoff_base_s, config.backoff_max_s, rng)
            if isinstance(e, openai.APIStatusError):
                hinted = _retry_after_s(e)
                if hinted is not None:
                    delay = max(delay, min(hinted, config.backoff_max_s))
            attempt += 1
            if usage is not None:
                usage.retries += 1
            await asyncio.sleep(delay)


class ReportLabeler:
    """Labels one report at a time through ``client``; shared by all concurrent tasks of a run."""

    def __init__(self, config: LLMConfig, prompt: LabelPrompt, client: openai.AsyncOpenAI, redact: Redactor):
        self.config = config
        self.prompt = prompt
        self.client = client
        self.usage = UsageCounter()
        self.redact = redact
        self._rng = random.Random()
        self._logprobs = config.logprobs and config.top_logprobs > 0

    async def _request(self, messages: list[dict[str, str]], n_values: int) -> object:
        cfg = self.config
        while True:
            kwargs: dict[str, object] = {}
            if self._logprobs:
                kwargs = {"logprobs": True, "top_logprobs": cfg.top_logprobs}
            body = request_extra_body(cfg, n_values)
            if body:
                kwargs["extra_body"] = body

            def call(kwargs: dict[str, object] = kwargs) -> Awaitable[object]:
                return self.client.chat.completions.create(
                    model=cfg.model, messages=messages, temperature=cfg.temperature, max_tokens=cfg.max_tokens, **kwargs
                )

            try:
                response = await call_with_retries(call, cfg, self.redact, self._rng, self.usage)
            except BadRequest as e:
                if self._logprobs and "logprob" in str(e).lower():
                    self._logprobs = False  # this endpoint does not do log-probs: labels only, from now on
                    continue
                raise
            self.usage.add_response(getattr(response, "usage", None))
            return response

    async def label(self, messages: list[dict[str, str]], n_values: int) -> CachedAnswer:
        """Labels (and P(present) where log-probs came back) for one request of ``n_values`` values.

        Raises ReportFailed (recorded, retried by a later run) or FatalEndpointError (stops the run).
        """
        prompt_tokens = cached = completion_tokens = requests = 0
        for ask in range(self.config.max_reasks + 1):
            before = self.usage.requests
            response = await self._request(messages, n_values)
            requests += self.usage.requests - before
            usage = getattr(response, "usage", None)
            if usage is not None:
                prompt_tokens += usage.prompt_tokens or 0
                cached += cached_tokens(usage)
                completion_tokens += usage.completion_tokens or 0
            try:
                answer = answer_from_choice(response, n_values, self.config.uncertain_weight, self.redact)
            except AnswerFormatError as e:
                content = _content(response)
                if ask == self.config.max_reasks:
                    shown = self.redact(content or "")[:200]  # an endpoint may echo the key: never stored
                    raise ReportFailed(
                        f"malformed answer after {ask + 1} asks ({self.redact(e)}); last answer: {shown!r}"
                    ) from None
                self.usage.reasks += 1
                messages = [
                    *messages,
                    {"role": "assistant", "content": content or ""},
                    {"role": "user", "content": self.prompt.reask(str(e), n_values)},
                ]
                continue
            return CachedAnswer(
                labels=answer.labels,
                probabilities=answer.probabilities,
                answer=answer.answer,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                requests=requests,
                cached_prompt_tokens=cached,
            )
        raise AssertionError("unreachable")  # the loop returns or raises


def request_extra_body(config: LLMConfig, n_values: int) -> dict | None:
    """The extra JSON fields of one request: ``config.extra_body`` plus the answer grammar if asked for."""
    body = dict(config.extra_body or {})
    if config.grammar:
        body["grammar"] = labels_grammar(n_values)
    return body or None


def _content(response: object) -> str | None:
    choices = getattr(response, "choices", None) or []
    return getattr(getattr(choices[0], "message", None), "content", None) if choices else None


def answer_from_choice(response: object, n_values: int, uncertain_weight: float, redact: Redactor) -> CachedAnswer:
    """Parse a chat completion (object from the client, or from a batch output line) into labels + P(present).

    Raises AnswerFormatError for a malformed answer or ReportFailed when there is no answer at all.
    Token counts are left 0 (the caller adds them).
    """
    choices = getattr(response, "choices", None)
    if not choices:
        raise ReportFailed("the endpoint returned no choices")
    choice = choices[0]
    content = getattr(getattr(choice, "message", None), "content", None)
    parsed = parse_answer(content, n_values)
    tokens = _token_logprobs(choice)
    probs = present_probabilities(content, parsed, tokens, uncertain_weight) if tokens else None
    return CachedAnswer(list(parsed.labels), probs, redact(content), 0, 0, 0)
