"""``silverclip predict SCAN --checkpoint CKPT``: P(present) of each finding for one NIfTI file or DICOM folder.

Batch mode (a manifest or a folder of scans): :func:`silverclip.batch_predict.predict_many`, one row per scan.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="zero-shot finding probabilities for your own scan",
        description=(
            "SCAN is a NIfTI file or a DICOM series folder. It is preprocessed with the preset stored in the "
            "checkpoint, centre-cropped and embedded once; P(present) comes from the zero-shot prompt pairs. "
            "Batch mode: SCAN is a manifest (.csv/.parquet from `silverclip ingest`) or a folder of scans (NIfTI "
            "files and/or DICOM series folders); --out (.csv or .jsonl) gets one row per scan; rerun to resume."
        ),
    )
    p.add_argument("scan", nargs="+", help="NIfTI file(s) or DICOM series folder(s); or a manifest / folder of scans")
    p.add_argument("--checkpoint", required=True, help="CLIP checkpoint folder")
    p.add_argument("--finding", action="append", default=[], help="extra free-text finding (repeatable)")
    p.add_argument("--templates", help="prompt template set (default: prompts.yaml's default)")
    p.add_argument("--out", help="JSON file to write (one scan: an object; several: a list)")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--saliency",
        metavar="DIR",
        help="write saliency maps (NIfTI in the scan's geometry) and a PNG montage per scan into DIR",
    )
    p.add_argument(
        "--saliency-method",
        choices=["smoothgrad", "gradcam"],
        default="smoothgrad",
        help="MONAI's SmoothGrad (default: voxel-precise) or Grad-CAM (one ResNet stage: coarse at 6 mm voxels)",
    )
    p.add_argument(
        "--findings",
        help="comma-separated findings to explain with --saliency (default: those predicted present)",
    )
    p.add_argument("--batch-size", type=int, default=2, help="batch mode: scans per forward pass")
    p.add_argument("--workers", type=int, default=0, help="batch mode: DataLoader workers reading scans")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from silverclip.inference import load
    from silverclip.io import FailureLog, atomic_write_json, check_output_file

    if args.out:
        check_output_file(args.out)  # before the work, not after it
    from silverclip.batch_predict import is_batch_input

    if any(is_batch_input(s) for s in args.scan):
        return _run_batch(args)
    model = load(args.checkpoint, device=args.device, template_set=args.templates)
    failures = FailureLog("predict")
    results = []
    for scan in args.scan:
        try:
            probs = model.predict(scan, args.finding)
        except Exception as e:  # one unreadable scan does not stop the others
            failures.add(scan, scan, e)
            continue
        results.append(
            {
                "scan": str(scan),
                "checkpoint": str(args.checkpoint),
                "preset": model.preset.name,
                "template_set": model.template_set,
                "probabilities": {f: probs[f] for f in model.findings},
                "extra_findings": {f: probs[f] for f in args.finding},
                "present": {f: v for f, v in model.decide(probs).items() if f in model.findings},
                "thresholds": model.thresholds,
                "provenance": model.provenance,
            }
        )
        warning = model.domain_warning(scan)
        if warning:
            results[-1]["warning"] = warning
            print(f"WARNING: {warning}", file=sys.stderr)
        print(f"\n{scan}")
        print("\n".join(model.prediction_lines(probs, args.finding)))
        if args.saliency:
            from silverclip.eval.saliency import explain_scan

            asked = [f.strip() for f in args.findings.split(",") if f.strip()] if args.findings else None
            try:
                results[-1]["saliency"] = explain_scan(model, scan, args.saliency, asked, method=args.saliency_method)
            except Exception as e:  # a failed map is listed like a failed scan
                failures.add(scan, scan, e)
                continue
            print(f"  saliency: {results[-1]['saliency']['montage']}")
    if args.out and results:
        atomic_write_json(args.out, results[0] if len(args.scan) == 1 else results)
    failures.report()
    return failures.exit_code


def _run_batch(args: argparse.Namespace) -> int:
    from silverclip.batch_predict import collect_scans, predict_many
    from silverclip.inference import load

    if not args.out:
        raise ValueError("batch prediction (a manifest or a folder of scans) needs --out predictions.csv|.jsonl")
    if args.finding:
        raise ValueError("--finding works for single scans only")
    if args.saliency:
        raise ValueError("--saliency works for single scans only (one map per scan and finding)")
    items = collect_scans(args.scan)
    model = load(args.checkpoint, device=args.device, template_set=args.templates)
    res = predict_many(model, items, args.out, batch_size=args.batch_size, workers=args.workers)
    print(f"wrote {res.written} row(s) to {res.out}; {res.skipped} scan(s) already there (resumed)")
    if res.failures:
        print(f"\npredict: {len(res.failures)} scan(s) failed (rows with status=failed in {res.out}):")
        for vid, path, reason in res.failures:
            print(f"  - {vid} ({path}): {reason}")
    return 1 if res.failures else 0
