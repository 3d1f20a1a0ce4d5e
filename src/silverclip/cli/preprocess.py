"""``silverclip preprocess --manifest M --preset paper --out CACHE``: fill the preprocessed-volume cache."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "preprocess",
        help="resample/window/crop every manifest volume into an int16 cache (resumable, parallel, shardable)",
        description=(
            "Volumes already in the cache are skipped, so rerunning the same command resumes. A volume that "
            "cannot be read is listed at the end (and in CACHE/failures.json) and the exit status is 1."
        ),
    )
    p.add_argument("--manifest", required=True, help="manifest CSV/Parquet from `silverclip ingest`")
    p.add_argument("--preset", default="paper", help="preset name (paper, ctclip, demo) or a preset YAML file")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1: in this process)")
    p.add_argument("--shard", help="i/n: process only shard i (0-based) of n; run the other shards elsewhere")
    p.add_argument("--limit", type=int, help="process at most this many volumes (smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    from silverclip.data.preprocess import preprocess_manifest

    try:
        failures = preprocess_manifest(
            args.manifest,
            args.preset,
            args.out,
            workers=args.workers,
            shard=args.shard,
            progress=not args.no_progress,
            limit=args.limit,
        )
    except (ValueError, FileNotFoundError) as e:  # bad manifest/preset/cache: a clear message, not a traceback
        print(f"preprocess failed: {e}", file=sys.stderr)
        return 1
    return failures.exit_code
