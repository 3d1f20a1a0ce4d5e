"""Talking to an OpenAI-compatible chat endpoint: configuration, privacy guard, retry policy, re-asks.

Works with anything that speaks ``/v1/chat/completions``: OpenAI, DeepSeek, vLLM, Ollama,
llama.cpp (``silverclip llm serve``). The ``openai`` client's own retries are switched off
(``max_retries=0``) so that the policy below is the only one and can be tested:

- timeouts, connection errors, HTTP 408/409/429 and 5xx: retried up to ``max_retries`` times after
  an exponential back-off with jitter (``Retry-After`` honoured when the server sends one);
- a malformed answer: re-asked up to ``max_reasks`` times with a corrective message (the bad
  answer stays in the conversation so the model sees what was wrong);
- HTTP 400/422: no retry (the same request would fail again), except once without log-probs if
  the endpoint refuses them; HTTP 401/403/404 (bad key, no access, unknown model) stop the run.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import openai

from silverclip.labels.llm_cache import CachedAnswer
from silverclip.labels.llm_parse import AnswerFormatError, TokenLogprob, parse_answer, present_probabilities
from silverclip.labels.llm_prompt import LabelPrompt

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
    price_*_per_m: USD per million prompt/completion tokens, for the cost estimate (None: no estimate).
    backoff_base_s/backoff_max_s: first back-off delay and its cap.
    extra_body: extra JSON fields sent with every request, e.g. ``{"grammar": labels_grammar(18)}``
        to constrain a llama.cpp server's output to the answer format (never put secrets here).
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
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    extra_body: dict | None = None

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
            f"refusing to send report text to the non-loopback endpoint {base_url!r}: reports may contain "
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
    raise ValueError(f"no API key: set the environment variable {config.api_key_env} for {config.base_url}")


def make_client(config: LLMConfig, api_key: str, transport: object | None = None) -> openai.AsyncOpenAI:
    """An AsyncOpenAI client with retries off (ours apply) and, for loopback, proxies from the env ignored.

    Why ``trust_env=False`` for loopback: with HTTP(S)_PROXY set, httpx would route even a
    127.0.0.1 request through the proxy, sending report text off the machine behind the guard's back.
    ``transport`` (an httpx transport of the client's own httpx flavour) is for tests only.
    """
    kwargs = {"transport": transport} if transport is not None else {}
    http_client = openai.DefaultAsyncHttpxClient(trust_env=not is_loopback_url(config.base_url), **kwargs)
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


@dataclass
class UsageCounter:
    """Counters of one run, across all requests (including retries and re-asks, which are paid too)."""

    requests: int = 0
    retries: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    responses_without_usage: int = 0


def _redact(message: str, secret: str) -> str:
    if secret and secret != NO_KEY:
        message = message.replace(secret, "***")
    return message


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


class ReportLabeler:
    """Labels one report at a time through ``client``; shared by all concurrent tasks of a run."""

    def __init__(self, config: LLMConfig, prompt: LabelPrompt, client: openai.AsyncOpenAI, api_key: str):
        self.config = config
        self.prompt = prompt
        self.client = client
        self.usage = UsageCounter()
        self._secret = api_key
        self._rng = random.Random()
        self._logprobs = config.logprobs and config.top_logprobs > 0

    async def _request(self, messages: list[dict[str, str]]) -> object:
        cfg = self.config
        attempt = 0
        while True:
            kwargs: dict[str, object] = {}
            if self._logprobs:
                kwargs = {"logprobs": True, "top_logprobs": cfg.top_logprobs}
            if cfg.extra_body:
                kwargs["extra_body"] = cfg.extra_body
            self.usage.requests += 1
            try:
                response = await self.client.chat.completions.create(
                    model=cfg.model,
                    messages=messages,
                    temperature=cfg.temperature,
                    max_tokens=cfg.max_tokens,
                    **kwargs,
                )
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                # The body may echo part of the key (OpenAI: "Incorrect API key provided: sk-ab***"): not shown.
                raise FatalEndpointError(
                    f"{cfg.base_url} refused the request with HTTP {e.status_code} ({type(e).__name__}); check "
                    f"the model name {cfg.model!r} and the key in ${cfg.api_key_env}"
                ) from None
            except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
                if self._logprobs and "logprob" in str(e).lower():
                    self._logprobs = False  # this endpoint does not do log-probs: labels only, from now on
                    continue
                raise ReportFailed(f"HTTP {e.status_code}: {_redact(str(e), self._secret)[:300]}") from None
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as e:
                status = getattr(e, "status_code", None)
                retriable = status is None or status in (408, 409, 429) or status >= 500
                what = f"HTTP {status}" if status is not None else type(e).__name__
                if not retriable:
                    raise ReportFailed(f"{what}: {_redact(str(e), self._secret)[:300]}") from None
                if attempt >= cfg.max_retries:
                    raise ReportFailed(f"{what} on all {attempt + 1} tries") from None
                delay = backoff_delay(attempt, cfg.backoff_base_s, cfg.backoff_max_s, self._rng)
                if isinstance(e, openai.APIStatusError):
                    hinted = _retry_after_s(e)
                    if hinted is not None:
                        delay = max(delay, min(hinted, cfg.backoff_max_s))
                attempt += 1
                self.usage.retries += 1
                await asyncio.sleep(delay)
                continue
            usage = getattr(response, "usage", None)
            if usage is None:
                self.usage.responses_without_usage += 1
            else:
                self.usage.prompt_tokens += usage.prompt_tokens or 0
                self.usage.completion_tokens += usage.completion_tokens or 0
            return response

    async def label(self, report: str) -> CachedAnswer:
        """Labels (and P(present) where log-probs came back) for one report; raises ReportFailed."""
        messages = self.prompt.messages(report)
        prompt_tokens = completion_tokens = requests = 0
        for ask in range(self.config.max_reasks + 1):
            before = self.usage.requests
            response = await self._request(messages)
            requests += self.usage.requests - before
            usage = getattr(response, "usage", None)
            if usage is not None:
                prompt_tokens += usage.prompt_tokens or 0
                completion_tokens += usage.completion_tokens or 0
            if not response.choices:
                raise ReportFailed("the endpoint returned no choices")
            choice = response.choices[0]
            content = choice.message.content
            try:
                parsed = parse_answer(content, self.prompt.n_findings)
            except AnswerFormatError as e:
                if ask == self.config.max_reasks:
                    shown = (content or "")[:200]
                    raise ReportFailed(f"malformed answer after {ask + 1} asks ({e}); last answer: {shown!r}") from None
                self.usage.reasks += 1
                messages = [
                    *messages,
                    {"role": "assistant", "content": content or ""},
                    {"role": "user", "content": self.prompt.reask(str(e))},
                ]
                continue
            tokens = _token_logprobs(choice)
            probs = present_probabilities(content, parsed, tokens, self.config.uncertain_weight) if tokens else None
            return CachedAnswer(
                labels=list(parsed.labels),
                probabilities=probs,
                answer=content,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                requests=requests,
            )
        raise AssertionError("unreachable")  # the loop returns or raises
