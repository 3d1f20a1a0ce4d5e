"""``silverclip run CONFIG``: the whole method end to end in one resumable command."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="the whole pipeline: data -> preprocess -> labels -> pretrain -> CLIP -> embed -> evaluate -> report",
        description=(
            "Runs every stage into one run folder. Completed stages are skipped; a killed run resumes at the "
            "stage (and training step) where it stopped: rerun the same command. Overrides: key=value, dotted "
            "for nesting (run_dir=runs/x source.synth.n_patients=50 pretrain.train.epochs=2)."
        ),
    )
    p.add_argument("config", help="pipeline YAML (configs/demo.yaml, configs/ctrate_paper.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--force", nargs="*", default=[], metavar="STAGE", help="rerun these completed stages")
    p.add_argument(
        "--until",
        metavar="STAGE",
        help="stop after this stage (data, preprocess, labels, pretrain, clip, embed, evaluate); e.g. --until labels "
        "before starting the training stages under torchrun",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from silverclip.config import load_config
    from silverclip.pipeline.config import PipelineConfig
    from silverclip.pipeline.run import Pipeline
    from silverclip.pipeline.summary import headline_lines

    cfg = load_config(PipelineConfig, args.config, args.overrides)
    summary = Pipeline(cfg, force=tuple(args.force)).run_all(until=args.until)
    if summary is None:  # stopped early (--until) or a non-zero torchrun rank
        return 0
    print(f"\nReport: {summary['report']}")
    if summary.get("report_html"):
        print(f"        {summary['report_html']}")
    for line in headline_lines(summary):
        print(f"  {line}")
    return 0
