"""``silverclip ingest {ctrate,radchestct,csv,dicom} ... --out manifest.csv``: a dataset -> the manifest table."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="build a manifest (one row per volume) from CT-RATE, RAD-ChestCT, your own scan list or DICOM tree",
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

    d = sub.add_parser(
        "dicom",
        help="a tree of DICOM files (PACS export): one series per study, paired with reports",
        description=(
            "Walks ROOT (any layout), reads headers only, chooses per study the series that fits the criteria "
            "(resources/dicom_series.yaml, or --criteria) and writes the manifest, plus <work>/series_selection.csv "
            "(every choice and rejection with its reasons) and <work>/unreadable.csv. Resumable: rerun to continue. "
            "No patient name, birth date, patient id, accession number or UID is written (docs/data.md)."
        ),
    )
    d.add_argument("root", help="folder holding the DICOM files (nested or flat, any file names)")
    d.add_argument("--reports", help="CSV/Parquet of reports keyed by accession number (or StudyInstanceUID)")
    d.add_argument("--report-key", help="key column of --reports (default: AccessionNumber, accession, ...)")
    d.add_argument("--findings-column", help="report text column (default: findings, Findings_EN, report_text ...)")
    d.add_argument("--impressions-column", help="impressions column (default: impressions, Impressions_EN ...)")
    d.add_argument("--id-column", help="your own volume ids in --reports (default: volume_id if present)")
    d.add_argument("--patient-column", help="your own patient ids in --reports (default: patient_id if present)")
    d.add_argument("--require-report", action="store_true", help="leave out studies without a report")
    d.add_argument("--criteria", help="series criteria: YAML file of overrides, or a built-in name (default chest_ct)")
    d.add_argument("--work", help="work folder: index, salt, series links, tables (default <out stem>_ingest/)")
    d.add_argument(
        "--salt", help="secret for the opaque ids (default: random, kept in <work>/salt); or SILVERCLIP_ID_SALT"
    )
    d.add_argument("--workers", type=int, default=0, help="header-reading processes (default: min(4, cpus))")
    _common(d)


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
    elif args.dataset == "dicom":
        return _ingest_dicom(args)
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


def _ingest_dicom(args: argparse.Namespace) -> int:
    import os

    from silverclip.data.dicom_ingest import ingest_dicom
    from silverclip.data.manifest import write_manifest

    res = ingest_dicom(
        args.root,
        args.out,
        args.reports,
        criteria=args.criteria,
        work_dir=args.work,
        salt=args.salt or os.environ.get("SILVERCLIP_ID_SALT"),
        workers=args.workers,
        report_key=args.report_key,
        findings_column=args.findings_column,
        impressions_column=args.impressions_column,
        id_column=args.id_column,
        patient_column=args.patient_column,
        require_report=args.require_report,
    )
    c = res.counts
    print(
        f"read {c['read']} file header(s), {c['reused']} from the index; {c['studies']} stud(ies), "
        f"{c['series']} series, {c['unreadable']} unreadable file(s) (listed in {res.work_dir / 'unreadable.csv'})"
    )
    for note in res.notes:
        print(note)
    skipped = res.selection[res.selection["decision"] == "study skipped"]
    for _, row in skipped.iterrows():
        print(f"  - study {row['study_id']}: {row['reason']}")
    if res.manifest.empty:
        print(f"no study has a series fitting the criteria: see {res.work_dir / 'series_selection.csv'}")
        return 1
    write_manifest(res.manifest, args.out)
    print(
        f"wrote {args.out}: {len(res.manifest)} volume(s), {res.manifest['patient_id'].nunique()} patient(s); "
        f"choices and rejections in {res.work_dir / 'series_selection.csv'}"
    )
    return 0
