"""``silverclip <stage> ...``: a thin command line that only wires library objects together.

Each stage lives in ``silverclip/cli/<stage>.py`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (called with the parsed args, returning an exit status). Stage modules
import heavy libraries (torch, transformers) inside their handlers so that ``--help`` stays fast.

:func:`entry_point` is the ``silverclip`` command (and ``python -m silverclip.cli``): a bad input, config
or command line is one line on stderr naming the problem and exit status 2 (command line, config) or 1
(anything else), the traceback only with ``-v`` (before or after the stage name). :func:`main` is the same
command for Python callers and tests: it raises instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

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
    "report",
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
    _add_verbose(parser, top=True)
    return parser


def _add_verbose(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """``-v`` is accepted after the stage name too (``silverclip predict ... -v``)."""
    if not top:
        parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _add_verbose(child)


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


def entry_point(argv: list[str] | None = None) -> int:
    """The ``silverclip`` command: :func:`main`, with an error as one line on stderr instead of a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    try:
        return main(argv)
    except Exception as e:  # noqa: BLE001 - the one place where errors become messages
        if verbose:
            traceback.print_exc()
        stage = next((a for a in argv if a in STAGES), None)
        print(f"silverclip{' ' + stage if stage else ''}: error: {describe_error(e, verbose)}", file=sys.stderr)
        return 2 if _is_usage_error(e) else 1


def _is_usage_error(e: BaseException) -> bool:
    from silverclip.config import ConfigError

    return isinstance(e, ConfigError)


# The library's own errors: their message names the file, key or setting and says what is wrong.
_USER_ERRORS = (ValueError, OSError, RuntimeError)


def describe_error(e: BaseException, verbose: bool = False) -> str:
    """One line for an exception: its message (with the file for OS errors), the type for unexpected ones."""
    msg = str(e).strip()
    if isinstance(e, OSError) and e.strerror and e.filename is not None and str(e.filename) not in msg:
        msg = f"{e.filename}: {e.strerror}"
    msg = " ".join(msg.split()) or type(e).__name__
    if not isinstance(e, _USER_ERRORS):
        msg = f"{type(e).__name__}: {msg}" + ("" if verbose else " (unexpected: rerun with -v for the traceback)")
    return msg


if __name__ == "__main__":
    sys.exit(entry_point())
