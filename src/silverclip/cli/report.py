"""``silverclip report RUN_DIR``: (re)write the run's self-contained ``report.html`` from its files."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="write a run folder's self-contained report.html",
        description=(
            "Reads only the run folder's files (summary, evaluation outputs, training metrics, labels, cache, "
            "embeddings) and writes one HTML file with inline images and CSS that opens without network."
        ),
    )
    p.add_argument("run_dir", help="a silverclip run folder")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from silverclip.pipeline.html_report import write_html_report

    if not (Path(args.run_dir) / "summary.json").is_file() and not (Path(args.run_dir) / "eval").is_dir():
        raise FileNotFoundError(f"{args.run_dir}: not a finished run folder (no summary.json, no eval/)")
    print(f"Report: {write_html_report(args.run_dir, args.out)}")
    return 0
