"""``silverclip labels extract|evaluate|compare``: report labels, their quality, and disagreements.

- ``extract``: reports CSV -> CT-RATE-format labels CSV (1/0/-1 kept, + a ``report_status`` column),
  ``<stem>_probs.csv`` and ``<stem>.evidence.jsonl`` next to it; backend ``rules`` (offline default),
  ``keyword`` (patterns without negation, a baseline), ``llm`` or ``cascade`` (rules, then an LLM for
  the findings they leave open).
- ``evaluate``: predicted labels (+ probabilities) vs reference labels -> per-finding and macro
  prevalence, ROC AUC, F1, precision, recall as JSON and Markdown.
- ``compare``: the reports where two label files disagree, with the deciding sentences.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# = silverclip.labels.backends.backend_names() (kept literal: `silverclip --help` must not import pandas)
BACKEND_CHOICES = ("rules", "keyword", "llm", "cascade")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "labels", help="extract labels from reports, evaluate and compare them", description=__doc__
    )
    sub = p.add_subparsers(dest="labels_command", metavar="COMMAND")

    e = sub.add_parser("extract", help="label reports with the 18 findings (rules or LLM)")
    e.add_argument("--reports", required=True, type=Path, help="reports CSV (CT-RATE, manual-label or generic layout)")
    e.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="rules",
        help="labeller: rules (offline default), keyword (patterns without negation), llm, cascade (rules + LLM)",
    )
    e.add_argument("--out", required=True, type=Path, help="labels CSV to write (CT-RATE format)")
    e.add_argument("--id-column", default=None, help="id column (default: VolumeName or AccessionNo)")
    e.add_argument(
        "--text-columns",
        default=None,
        help="comma-separated text columns joined in order (default: Findings_EN,Impressions_EN or report_text)",
    )
    e.add_argument("--limit", type=int, default=None, help="label only the first N reports")
    e.add_argument(
        "--include-flagged",
        action="store_true",
        help="label empty and non-English reports too (default: left unlabelled, excluded from training)",
    )
    e.add_argument("--no-progress", action="store_true")
    try:  # the LLM options belong to the LLM labeller (silverclip.cli.llm)
        from silverclip.cli.llm import add_llm_arguments
    except ImportError:
        pass
    else:
        add_llm_arguments(e)
    e.set_defaults(func=_extract)

    v = sub.add_parser("evaluate", help="metrics of predicted labels against reference labels")
    v.add_argument("--pred", required=True, type=Path, help="predicted labels CSV (1/0/-1)")
    v.add_argument("--gold", required=True, type=Path, help="reference labels CSV (e.g. the manual labels)")
    v.add_argument(
        "--prob", type=Path, default=None, help="probabilities CSV for ROC AUC (default: <pred>_probs.csv if present)"
    )
    v.add_argument("--no-prob", action="store_true", help="ignore probabilities; AUC from the labels")
    v.add_argument("--uncertain-as", choices=("positive", "negative"), default="positive", help="predicted -1 for F1")
    v.add_argument(
        "--allow-subset", action="store_true", help="evaluate the shared ids instead of failing on a mismatch"
    )
    v.add_argument("--out", type=Path, default=None, help="folder for metrics.json and metrics.md")
    v.set_defaults(func=_evaluate)

    c = sub.add_parser("compare", help="reports where two label files disagree, with deciding sentences")
    c.add_argument("a", type=Path, help="labels CSV A")
    c.add_argument("b", type=Path, help="labels CSV B")
    c.add_argument("--reports", type=Path, default=None, help="reports CSV (sentences for files without evidence)")
    c.add_argument("--id-column", default=None)
    c.add_argument("--text-columns", default=None)
    c.add_argument("--findings", default=None, help="comma-separated subset of findings")
    c.add_argument("--out", type=Path, default=None, help="output prefix: writes <out>.md and <out>.csv")
    c.set_defaults(func=_compare)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _columns(arg: str | None) -> list[str] | None:
    return [c.strip() for c in arg.split(",") if c.strip()] if arg else None


def _extract(args: argparse.Namespace) -> int:
    from silverclip.io import check_output_file
    from silverclip.labels.backends import LLM_BACKENDS, BackendOptions, label_reports
    from silverclip.labels.compare import evidence_path, probabilities_path, write_evidence
    from silverclip.labels.report_status import status_summary
    from silverclip.labels.reports_io import read_reports, refuse_overwriting_inputs
    from silverclip.labels.table import write_labels

    check_output_file(args.out, "labels file")
    uses_llm = args.backend in LLM_BACKENDS
    fail_path = args.out.with_name(f"{args.out.stem}.failures.json")
    outputs = {
        "--out": args.out,
        "probabilities": probabilities_path(args.out),
        "evidence": evidence_path(args.out),
        "failure list": fail_path,
    }
    cache = None
    if uses_llm:
        from silverclip.labels.llm_batch import state_path

        cache = Path(args.llm_cache) if getattr(args, "llm_cache", None) else args.out.with_suffix(".llm_cache.sqlite")
        outputs["--llm-cache"] = cache
        outputs["batch state"] = state_path(cache)
    elif getattr(args, "dry_run", False):
        print(f"dry run: backend {args.backend} sends nothing to an LLM; nothing written")
        return 0
    try:
        refuse_overwriting_inputs(outputs, {"--reports": args.reports})
    except ValueError as e:
        print(f"labels extract: error: {e}", file=sys.stderr)
        return 2
    reports = read_reports(args.reports, args.id_column, _columns(args.text_columns))
    if args.limit is not None:
        reports = dict(list(reports.items())[: args.limit])
    progress = not args.no_progress
    options = BackendOptions(cache_path=cache, progress=progress)
    if uses_llm:
        try:
            from silverclip.cli.llm import cascade_config_from_args, llm_config_from_args
        except ImportError as e:
            print(f"labels extract --backend {args.backend}: the LLM labeller is not available ({e})", file=sys.stderr)
            return 2
        try:
            options.llm = llm_config_from_args(args)
            options.cascade = cascade_config_from_args(args) if args.backend == "cascade" else None
        except ValueError as e:
            print(f"labels extract --backend {args.backend}: error: {e}", file=sys.stderr)
            return 2
        if args.dry_run:
            return _dry_run(args, reports, options)
    try:
        result = label_reports(args.backend, reports, options, include_flagged=args.include_flagged)
    except (PermissionError, ValueError, RuntimeError) as e:  # privacy guard, bad config, endpoint refuses
        if not uses_llm:
            raise
        print(
            f"labels extract --backend {args.backend}: {type(e).__name__}: {_redacted(e, options.llm)}", file=sys.stderr
        )
        print(f"answers received before the error are kept in {cache}; rerun to resume", file=sys.stderr)
        return 2
    write_labels(result.labels, args.out, status=result.status)
    written = [str(args.out)]
    if result.probabilities is not None:
        write_labels(result.probabilities, probabilities_path(args.out), float_format="%.4f")
        written.append(str(probabilities_path(args.out)))
    if result.evidence:
        write_evidence(evidence_path(args.out), result.evidence, result.decided_by)
        written.append(str(evidence_path(args.out)))
    if len(result.failures):
        result.failures.write(fail_path)
        written.append(str(fail_path))
    labels = result.labels
    print(f"labelled {int(labels.notna().all(axis=1).sum())}/{len(labels)} reports with backend {args.backend}")
    print("positives per finding: " + ", ".join(f"{f}={int((labels[f] == 1).sum())}" for f in labels.columns))
    summary = status_summary(result.status, args.include_flagged)
    if summary:
        print(summary)
    if result.usage:
        print("usage: " + json.dumps(result.usage, default=float))
    print("wrote " + ", ".join(written))
    result.failures.report()
    return result.failures.exit_code


def _redacted(error: BaseException, config: object) -> str:
    """The error text with the API key (from its variable) and base-URL credentials masked."""
    import os

    from silverclip.labels.redact import Redactor

    return Redactor([os.environ.get(config.api_key_env)], [config.base_url])(error)


def _dry_run(args: argparse.Namespace, reports: dict[str, str], options: object) -> int:
    """``--dry-run``: the requests, tokens and cost of this run; nothing is sent and nothing written."""
    from silverclip.labels.backends import plan_requests
    from silverclip.labels.llm_cache import cached_keys
    from silverclip.labels.llm_tokens import choose_counter, dry_run, format_dry_run

    try:
        jobs, counts = plan_requests(args.backend, reports, options, include_flagged=args.include_flagged)
        done = cached_keys(options.cache_path, [j.key for j in jobs])
        todo = [j for j in jobs if j.key not in done]
        tokens = dry_run(todo, choose_counter(args.tokenizer, options.llm.model), options.llm.prices)
    except ValueError as e:
        print(f"labels extract --dry-run: error: {e}", file=sys.stderr)
        return 2
    print(format_dry_run(tokens, len(reports)))
    print("dry run: " + json.dumps({**counts, "already_cached": len(done), **tokens}, default=float))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from silverclip.io import atomic_write_json, atomic_write_text
    from silverclip.labels.compare import probabilities_path
    from silverclip.labels.evaluate import evaluate_labels, metrics_markdown
    from silverclip.labels.table import read_labels

    pred = read_labels(args.pred)
    gold = read_labels(args.gold)
    prob_path = args.prob
    if prob_path is None and not args.no_prob and probabilities_path(args.pred).exists():
        prob_path = probabilities_path(args.pred)
    probs = None if args.no_prob or prob_path is None else read_labels(prob_path)
    result = evaluate_labels(pred, gold, probs, uncertain_as=args.uncertain_as, allow_subset=args.allow_subset)
    result.update(pred=str(args.pred), gold=str(args.gold), prob=str(prob_path) if probs is not None else None)
    md = metrics_markdown(result, title=f"{args.pred.name} vs {args.gold.name}")
    print(md)
    if args.out is not None:
        atomic_write_json(args.out / "metrics.json", result)
        atomic_write_text(args.out / "metrics.md", md)
        print(f"wrote {args.out / 'metrics.json'} and {args.out / 'metrics.md'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from silverclip.io import atomic_to_csv, atomic_write_text, check_output_file
    from silverclip.labels.compare import disagreements, disagreements_markdown, evidence_path, read_evidence
    from silverclip.labels.reports_io import read_reports
    from silverclip.labels.table import read_labels

    if args.out is not None:
        check_output_file(args.out.with_name(args.out.name + ".md"), "output prefix")
    a, b = read_labels(args.a), read_labels(args.b)
    ev_a = read_evidence(evidence_path(args.a)) if evidence_path(args.a).exists() else None
    ev_b = read_evidence(evidence_path(args.b)) if evidence_path(args.b).exists() else None
    reports = read_reports(args.reports, args.id_column, _columns(args.text_columns)) if args.reports else None
    findings = _columns(args.findings)
    df = disagreements(a, b, reports, ev_a, ev_b, findings)
    md = disagreements_markdown(df, args.a.name, args.b.name)
    if args.out is None:
        print(md)
    else:
        atomic_write_text(args.out.with_name(args.out.name + ".md"), md)
        atomic_to_csv(df, args.out.with_name(args.out.name + ".csv"))
        print(f"{len(df)} disagreements; wrote {args.out}.md and {args.out}.csv")
    return 0
