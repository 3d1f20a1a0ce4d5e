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
            "RUN_DIR/results.md and results.json. Resumable: rerun the same command."
        ),
    )
    p.add_argument("config", help="pipeline YAML (e.g. configs/ablation.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. ablation.seeds=[0,1,2]")
    p.add_argument(
        "--force",
        nargs="*",
        default=[],
        metavar="STAGE",
        help="rerun these completed stages in every arm (e.g. evaluate)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from silverclip.config import load_config
    from silverclip.pipeline.ablation import run_ablation
    from silverclip.pipeline.config import PipelineConfig

    cfg = load_config(PipelineConfig, args.config, args.overrides)
    command = "silverclip ablate " + " ".join(shlex.quote(a) for a in [args.config, *args.overrides])
    results = run_ablation(cfg, command=command, force=tuple(args.force))
    print(f"\nResults: {results['report']}")
    sys.stdout.write(open(results["report"]).read())
    return 0
