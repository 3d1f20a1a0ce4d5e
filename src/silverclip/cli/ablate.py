"""``silverclip ablate CONFIG``: CLIP from scratch vs initialised from supervised pre-training (gold/silver)."""

from __future__ import annotations

import argparse
import shlex
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablate",
        help="the thesis in miniature: CLIP from scratch vs pre-trained on gold / silver labels, over seeds",
        description=(
            "Runs ablation.arms x ablation.seeds on one dataset (shared data, preprocessing and labels) and writes "
            "RUN_DIR/ablation.json (one record per arm and seed), results.md and ablation.png. Resumable: rerun the "
            "same command."
        ),
    )
    p.add_argument("config", nargs="?", help="pipeline YAML (e.g. configs/ablation.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ablation.seeds=[0,1,2]")
    p.add_argument(
        "--force",
        nargs="*",
        default=[],
        metavar="STAGE",
        help="rerun these completed stages in every arm (e.g. evaluate)",
    )
    p.add_argument(
        "--render",
        metavar="RECORDS_JSON",
        help="only re-render the tables and plot of a records file (RUN_DIR/ablation.json) into --out",
    )
    p.add_argument(
        "--out",
        metavar="MARKDOWN",
        help="with --render: the page to write (only the part between <!-- ablation:begin/end --> is replaced)",
    )
    p.add_argument("--png", metavar="PNG", help="with --render: where the plot goes (default: next to --out)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.render:
        from silverclip.pipeline.ablation_report import render

        if not args.out:
            raise SystemExit("silverclip ablate --render needs --out MARKDOWN")
        print(render(args.render, args.out, args.png))
        return 0
    if not args.config:
        raise SystemExit("silverclip ablate: a pipeline config is required (or --render RECORDS_JSON --out MD)")
    from silverclip.config import load_config
    from silverclip.pipeline.ablation import run_ablation
    from silverclip.pipeline.config import PipelineConfig

    cfg = load_config(PipelineConfig, args.config, args.overrides)
    command = "silverclip ablate " + " ".join(shlex.quote(a) for a in [args.config, *args.overrides])
    results = run_ablation(cfg, command=command, force=tuple(args.force))
    print(f"\nResults: {results['report']}")
    sys.stdout.write(open(results["report"]).read())
    return 0
