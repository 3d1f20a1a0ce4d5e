"""``silverclip clip``: CLIP training of (volume, report) pairs, image tower from a pre-training checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
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
    p.add_argument("--cache", help="preprocessing cache folder")
    p.add_argument("--manifest", help="CSV/Parquet with volume_id, findings, impressions (+ split, 18 finding columns)")
    p.add_argument("--val-manifest", help="validation manifest (default: rows of --manifest whose split is valid)")
    p.add_argument("--val-cache", help="cache of the validation volumes (default: --cache)")
    p.add_argument("--val-labels", help="labels CSV for zero-shot AUC when the manifest has no finding columns")
    p.add_argument("--init", help="pre-training checkpoint folder for the image tower (omit: from scratch)")
    p.add_argument("--text-model", help="Hugging Face name or local path (default: offline packaged BERT)")
    p.add_argument("--include-impressions", action="store_true", default=None, help="text = Findings + Impressions")
    p.add_argument("--out", help="run folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=None, help="resume from last/ (default)")
    g.add_argument("--restart", dest="resume", action="store_false", help="ignore last/ and start over")
    p.add_argument("config", nargs="*", help="optional config YAML, then key=value overrides (e.g. train.lr=2e-5)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from silverclip.config import load_config
    from silverclip.train import run_clip
    from silverclip.train.config import ClipConfig, path_override, split_cli_args

    path, overrides = split_cli_args(args.config)
    flags = []
    for key, value in (
        ("cache", args.cache),
        ("manifest", args.manifest),
        ("val_manifest", args.val_manifest),
        ("val_cache", args.val_cache),
        ("val_labels", args.val_labels),
        ("init", args.init),
        ("text_model", args.text_model),
        ("out", args.out),
    ):
        flags += path_override(key, value)
    if args.include_impressions:
        flags.append("include_impressions=true")
    if args.resume is not None:
        flags.append(f"train.resume={str(args.resume).lower()}")
    cfg = load_config(ClipConfig, path, overrides + flags)
    print(run_clip(cfg))
    return 0
