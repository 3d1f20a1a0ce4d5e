"""Benchmark: what the LLM is sent, and what it costs, for ``--backend llm`` vs ``--backend cascade`` on the
800 development reports; and the cascade's quality ceiling with a perfect labeller.

What is MEASURED, on all 800 reports of ``../shared/data/ctrate_reports_manual`` (nothing is sent):

- per variant, the requests a run would send, exactly as the labeller builds them (``plan_requests``,
  the code behind ``labels extract --dry-run``): the share of reports and of (report, finding) pairs
  that reach the LLM, and the input tokens of every request counted with SmolLM2-135M's tokenizer and
  chat template (exact for the local llama.cpp model; a stand-in for DeepSeek's tokenizer, which this
  machine does not have: counts for deepseek-chat will differ);
- output tokens: an answer line of as many values as findings asked, + 1 end token;
- the ceiling: the cascade's merge (``cascade.merge_answers``) with every open finding answered by the
  manual label, scored against the manual labels (macro ROC AUC and F1) next to the rules alone.

What is EXTRAPOLATED: the cost of 50,000 reports = measured tokens per report x 50,000 x the stated
per-million-token prices. Baseline for the ratios: ``llm`` with the ``v1`` prompt, in the same run.

Run: ``python benchmarks/labels_cost.py`` (about a minute on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from silverclip.findings import FINDINGS
from silverclip.labels.backends import BackendOptions, plan_requests
from silverclip.labels.cascade import CascadeConfig, merge_answers, plan_cascade
from silverclip.labels.evaluate import evaluate_labels
from silverclip.labels.llm import LLMConfig
from silverclip.labels.llm_cache import CachedAnswer
from silverclip.labels.llm_tokens import choose_counter, dry_run
from silverclip.labels.llm_usage import Prices

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SILVERCLIP_SHARED_DATA", ROOT.parent / "shared" / "data"))

# DeepSeek API list prices for deepseek-chat, USD per 1M tokens, AS RECALLED (late 2025, DeepSeek-V3.2 pricing
# page), NOT checked online from this machine: input $0.28 (cache miss) / $0.028 (cache hit), output $0.42.
DEEPSEEK = Prices(input_per_m=0.28, output_per_m=0.42, cached_input_per_m=0.028)
PAPER_COST_50K = 3.0  # Li et al. 2025: "about $3 for 50k reports" (doubao-pro-32k)
GOAL_50K = 1.0  # issue 14: <= $1 per 50k reports at DeepSeek-chat list prices

VARIANTS = [
    ("llm, prompt v1 (definitions)", "llm", "v1", None),
    ("llm, prompt authors (names only)", "llm", "authors", None),
    ("cascade, open = uncertain+weak, whole report", "cascade", "v1", CascadeConfig()),
    ("cascade, open = uncertain+weak, sentences +-1", "cascade", "v1", CascadeConfig(context="sentences")),
    (
        "cascade, open = uncertain+weak+conflict, whole report",
        "cascade",
        "v1",
        CascadeConfig(open_statuses=("uncertain", "weak", "conflict")),
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=None, help="count with this tokenizer (.gguf / tokenizer.json / folder)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()

    df = pd.read_csv(SHARED / "ctrate_reports_manual" / "reports_manual_labels.csv")
    df["AccessionNo"] = df["AccessionNo"].astype(str)
    manual = df.set_index("AccessionNo")
    reports = manual["report_text"].to_dict()
    gold = manual[list(FINDINGS)]
    n = len(reports)
    counter = choose_counter(args.tokenizer, "SmolLM2-135M-Instruct")
    print(f"{n} reports; tokens counted with {counter.name}")

    rows = []
    for name, backend, prompt, cascade in VARIANTS:
        cfg = LLMConfig(model="deepseek-chat", prompt_version=prompt)
        jobs, counts = plan_requests(backend, reports, BackendOptions(llm=cfg, cascade=cascade, cache_path="unused"))
        tokens = dry_run(jobs, counter, DEEPSEEK)
        row = {
            "variant": name,
            "requests": len(jobs),
            "report_share_to_llm": counts.get("report_share_to_llm", 1.0),
            "open_pair_share": counts.get("open_pair_share", 1.0),
            "input_tokens_per_report": tokens["input_tokens"] / n,
            "input_tokens_per_request": tokens["input_tokens"] / max(1, len(jobs)),
            "output_tokens_per_report": tokens["output_tokens"] / n,
            "cost_50k_uncached": tokens["cost_usd"] * 50_000 / n,
            "cost_50k_prefix_cached": tokens["cost_usd_prefix_cached"] * 50_000 / n,
        }
        if backend == "cascade":
            plan = plan_cascade(reports, cfg, cascade)
            perfect = {
                j.key: CachedAnswer(
                    [int(gold.loc[j.ids[0], FINDINGS[i]]) for i in plan.open[j.ids[0]]], None, "", 0, 0, 1
                )
                for j in plan.jobs
            }
            labels, probs, _ = merge_answers(plan, perfect)
            ceiling = evaluate_labels(labels, gold, probs)["macro"]
            rules = evaluate_labels(plan.rules.labels, gold, plan.rules.probabilities)["macro"]
            row.update(
                rules_auc=rules["auc"], rules_f1=rules["f1"], ceiling_auc=ceiling["auc"], ceiling_f1=ceiling["f1"]
            )
        rows.append(row)
        print(json.dumps(row), flush=True)

    base = rows[0]
    print(
        f"\nPrices (as recalled, not checked online): deepseek-chat ${DEEPSEEK.input_per_m}/M input (cache miss), "
        f"${DEEPSEEK.cached_input_per_m}/M (cache hit), ${DEEPSEEK.output_per_m}/M output. Goal <= ${GOAL_50K:.2f} "
        f"per 50k reports; paper ~${PAPER_COST_50K:.0f}.\n"
    )
    print(
        "| variant | reports to the LLM | (report, finding) pairs to the LLM | input tokens / report | "
        "x vs llm v1 | output tokens / report | $ per 50k, uncached | $ per 50k, repeated system prompt cached |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["input_tokens_per_report"] / base["input_tokens_per_report"]
        print(
            f"| {r['variant']} | {r['report_share_to_llm']:.1%} | {r['open_pair_share']:.2%} | "
            f"{r['input_tokens_per_report']:.0f} | {ratio:.3f} | {r['output_tokens_per_report']:.1f} | "
            f"${r['cost_50k_uncached']:.2f} | ${r['cost_50k_prefix_cached']:.2f} |"
        )
    print("\n| variant | rules alone: macro AUC / F1 | cascade + perfect labeller (ceiling): macro AUC / F1 |")
    print("|---|---:|---:|")
    for r in rows:
        if "ceiling_auc" in r:
            print(
                f"| {r['variant']} | {r['rules_auc']:.4f} / {r['rules_f1']:.4f} | "
                f"{r['ceiling_auc']:.4f} / {r['ceiling_f1']:.4f} |"
            )
    if args.out:
        args.out.write_text(json.dumps({"tokenizer": counter.name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
