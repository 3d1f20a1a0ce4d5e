"""``silverclip ingest {ctrate,radchestct,csv} ... --out manifest.csv``: a dataset folder -> the manifest table."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="build a manifest (one row per volume) from CT-RATE, RAD-ChestCT or your own scan list",
        description="Write a manifest CSV/Parquet (docs/data.md) that `silverclip preprocess` reads.",
    )
    sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)

    c = sub.add_parser("ctrate", help="CT-RATE layout (real or `silverclip synth` output)")
    c.add_argument("root", help="CT-RATE folder (the repository folder or its dataset/ folder)")
    c.add_argument("--split", default="valid", choices=["train", "valid"])
    c.add_argument("--version", default="auto", choices=["auto", "v1", "v2"], help="v2 = <split>_fixed (already HU)")
    c.add_argument("--reports", help="reports CSV (default: found in the standard layout)")
    c.add_argument("--labels", help="labels CSV (default: found in the standard layout)")
    c.add_argument("--metadata", help="metadata CSV (default: found in the standard layout)")
    c.add_argument(
        "--skip-missing-metadata", action="store_true", help="leave out volumes without a metadata row (listed)"
    )
    _common(c)

    r = sub.add_parser("radchestct", help="RAD-ChestCT .npz folder + 84-label CSVs")
    r.add_argument("volumes", help="folder with <NoteAcc_DEID>.npz files (searched recursively)")
    r.add_argument("--labels-dir", required=True, help="folder with imgtrain/imgvalid/imgtest.csv (+ Summary_3630.csv)")
    r.add_argument("--split", choices=["train", "valid", "test"], help="keep one split only")
    r.add_argument("--allow-unlabeled", action="store_true", help="keep volumes that have no label row")
    _common(r)

    t = sub.add_parser("csv", help="your own CSV/Parquet list of scans (a `path` column at least)")
    t.add_argument("table", help="CSV or Parquet file; relative paths are relative to its folder")
    t.add_argument("--root", help="folder relative paths are resolved against")
    _common(t)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="manifest to write (.csv or .parquet)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    try:
        return _ingest(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: a clear message, not a traceback
        print(f"ingest failed: {e}", file=sys.stderr)
        return 1


def _ingest(args: argparse.Namespace) -> int:
    from silverclip.data.manifest import write_manifest
    from silverclip.io import FailureLog, check_output_file

    check_output_file(args.out, "output manifest")
    skipped = FailureLog("ingest")
    if args.dataset == "ctrate":
        from silverclip.data.ctrate import ingest_ctrate

        df = ingest_ctrate(
            args.root,
            split=args.split,
            version=args.version,
            reports_csv=args.reports,
            labels_csv=args.labels,
            metadata_csv=args.metadata,
            missing_metadata="skip" if args.skip_missing_metadata else "error",
            failures=skipped,
        )
    elif args.dataset == "radchestct":
        from silverclip.data.radchestct import ingest_radchestct

        df = ingest_radchestct(args.volumes, args.labels_dir, split=args.split, require_labels=not args.allow_unlabeled)
    else:
        from silverclip.data.manifest import ingest_table

        df = ingest_table(args.table, root=args.root)
    write_manifest(df, args.out)
    print(f"wrote {args.out}: {len(df)} volume(s), {df['patient_id'].nunique()} patient(s)")
    if len(skipped):
        # Skips were asked for explicitly (--skip-missing-metadata): listed, but not an error.
        print(f"left out {len(skipped)} volume(s) without a metadata row:")
        for f in skipped.failures:
            print(f"  - {f.item} ({f.path}): {f.reason}")
    return 0
