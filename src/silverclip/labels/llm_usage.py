"""Token and cost accounting of the LLM labellers: what was sent, what the endpoint says it cost.

Input tokens are split into *cached* and *uncached* where the endpoint reports it
(``usage.prompt_tokens_details.cached_tokens``: OpenAI, DeepSeek's ``prompt_cache_hit_tokens`` is
read too); an endpoint that reports nothing counts every input token as uncached. The cost is
``uncached x price_in + cached x price_cached_in + output x price_out`` per million tokens, at the
prices given on the command line (no price is built in: they change, and batch APIs discount them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prices:
    """USD per million tokens. ``cached_input_per_m`` None: cached input billed at ``input_per_m``."""

    input_per_m: float
    output_per_m: float
    cached_input_per_m: float | None = None

    def cost(self, uncached_input: float, cached_input: float, output: float) -> float:
        cached_price = self.input_per_m if self.cached_input_per_m is None else self.cached_input_per_m
        return (uncached_input * self.input_per_m + cached_input * cached_price + output * self.output_per_m) / 1e6


def prices_from(
    input_per_m: float | None, output_per_m: float | None, cached_input_per_m: float | None = None
) -> Prices | None:
    """Prices when both the input and the output price are given, else None (no cost estimate)."""
    if input_per_m is None or output_per_m is None:
        return None
    return Prices(float(input_per_m), float(output_per_m), None if cached_input_per_m is None else cached_input_per_m)


def cached_tokens(usage: object) -> int:
    """Cached input tokens of one response's ``usage`` (0 when the endpoint does not say)."""
    details = getattr(usage, "prompt_tokens_details", None)
    if isinstance(details, dict):
        value = details.get("cached_tokens")
    else:
        value = getattr(details, "cached_tokens", None)
    if value is None:  # DeepSeek's own field (it also fills prompt_tokens_details on newer API versions)
        extra = getattr(usage, "model_extra", None) or {}
        value = extra.get("prompt_cache_hit_tokens") if isinstance(extra, dict) else None
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


@dataclass
class UsageCounter:
    """Counters of one run, across all requests (including retries and re-asks, which are paid too)."""

    requests: int = 0
    retries: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    responses_without_usage: int = 0

    def add_response(self, usage: object) -> None:
        """Count one response's ``usage`` (None: counted as a response without usage)."""
        if usage is None:
            self.responses_without_usage += 1
            return
        self.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
        self.cached_prompt_tokens += cached_tokens(usage)
        self.completion_tokens += getattr(usage, "completion_tokens", 0) or 0


def add_cost(usage: dict[str, float], prices: Prices | None) -> None:
    """Put ``cost_usd`` and the prices into a run's usage counters (nothing when no prices are given)."""
    if prices is None:
        return
    cached = usage.get("cached_prompt_tokens", 0)
    usage["cost_usd"] = prices.cost(usage.get("prompt_tokens", 0) - cached, cached, usage.get("completion_tokens", 0))
    usage["price_input_per_m"] = prices.input_per_m
    usage["price_output_per_m"] = prices.output_per_m
    if prices.cached_input_per_m is not None:
        usage["price_cached_input_per_m"] = prices.cached_input_per_m


def format_usage(usage: dict[str, float], label: str = "LLM labels") -> str:
    """One human-readable summary line of a run's usage counters (tokens, requests, cache, cost)."""
    cached = int(usage.get("cached_prompt_tokens", 0))
    prompt = int(usage.get("prompt_tokens", 0))
    parts = [
        f"{int(usage.get('reports', 0))} reports",
        f"{int(usage.get('labelled', 0))} labelled now",
        f"{int(usage.get('cache_hits', 0))} from cache",
        f"{int(usage.get('failed', 0))} failed",
        f"{int(usage.get('requests', 0))} requests ({int(usage.get('retries', 0))} retries, "
        f"{int(usage.get('reasks', 0))} re-asks)",
        f"{prompt} input tokens ({prompt - cached} uncached, {cached} cached) + "
        f"{int(usage.get('completion_tokens', 0))} output tokens",
    ]
    if "cost_usd" in usage:
        cached_price = usage.get("price_cached_input_per_m", usage["price_input_per_m"])
        parts.append(
            f"estimated cost ${usage['cost_usd']:.4f} at ${usage['price_input_per_m']:g}/M in "
            f"(${cached_price:g}/M cached), ${usage['price_output_per_m']:g}/M out"
        )
    return f"{label}: " + ", ".join(parts)
