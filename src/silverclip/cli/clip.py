"""``silverclip clip``: CLIP training of (volume, report) pairs, image tower from a pre-training checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from silverclip.train.config import add_stage_arguments

    p = subparsers.add_parser(
        "clip",
        help="CLIP training on volumes and report texts",
        description=(
            "Symmetric InfoNCE between a 3D image tower (initialised from --init, a pre-training checkpoint, or "
            "from scratch) and a Hugging Face text tower (text = Findings, optionally + Impressions). Defaults: "
            "lr 1e-5, gradient clipping 1.0; validation report-to-image Recall@K and zero-shot AUC each epoch. "
            "Rerunning the same command resumes an interrupted run. Prints the best checkpoint folder."
        ),
    )
    p.add_argument("--manifest", help="CSV/Parquet with volume_id, findings, impressions (+ split, 18 finding columns)")
    p.add_argument("--val-manifest", help="validation manifest (default: rows of --manifest whose split is valid)")
    p.add_argument("--val-labels", help="labels CSV for zero-shot AUC when the manifest has no finding columns")
    p.add_argument("--init", help="pre-training checkpoint folder for the image tower (omit: from scratch)")
    p.add_argument("--text-model", help="Hugging Face name or local path (default: offline packaged BERT)")
    p.add_argument("--include-impressions", action="store_true", default=None, help="text = Findings + Impressions")
    add_stage_arguments(p, example="train.lr=2e-5")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from silverclip.train import run_clip
    from silverclip.train.config import ClipConfig, config_from_args

    flags = ["include_impressions=true"] if args.include_impressions else []
    keys = ("manifest", "val_manifest", "val_labels", "init", "text_model")
    cfg = config_from_args(ClipConfig, args, keys, flags)
    print(run_clip(cfg))
    return 0
