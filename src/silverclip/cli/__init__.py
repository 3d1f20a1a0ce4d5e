"""``silverclip <stage> ...``: a thin command line that only wires library objects together.

Each stage lives in ``silverclip/cli/<stage>.py`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed args, returning an exit status). Stage modules
import heavy libraries (torch, transformers) inside their handlers so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from silverclip import __version__

STAGES = (
    "synth",
    "ingest",
    "preprocess",
    "labels",
    "llm",
    "pretrain",
    "clip",
    "embed",
    "evaluate",
    "predict",
    "search",
    "run",
    "ablate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="silverclip", description="3D chest-CT vision-language pre-training with cheap (silver) labels."
    )
    parser.add_argument("--version", action="version", version=f"silverclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")
    for stage in STAGES:
        try:
            module = importlib.import_module(f"silverclip.cli.{stage}")
        except ModuleNotFoundError as e:
            if e.name == f"silverclip.cli.{stage}":
                continue  # stage not built (yet)
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
