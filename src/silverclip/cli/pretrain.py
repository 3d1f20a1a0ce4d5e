"""``silverclip pretrain``: supervised multi-label pre-training of the 3D image encoder on a labels CSV."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="supervised pre-training of the 3D image encoder on silver or gold labels",
        description=(
            "Multi-label BCE on the 18 findings of a labels CSV (CT-RATE format) over volumes of a preprocessing "
            "cache. Defaults: resnet18_3d, AdamW lr 1e-4 wd 1e-4, cosine to 1e-6, uncertain labels masked. "
            "Rerunning the same command resumes an interrupted run. Prints the best checkpoint folder."
        ),
    )
    p.add_argument("--cache", help="preprocessing cache folder (silverclip preprocess)")
    p.add_argument("--labels", help="labels CSV of the training volumes (VolumeName + 18 findings, 1/0/-1)")
    p.add_argument("--val-labels", help="labels CSV of the validation volumes (per-finding AUC each epoch)")
    p.add_argument("--val-cache", help="cache of the validation volumes (default: --cache)")
    p.add_argument("--out", help="run folder (checkpoints last/ and best/, metrics, resolved config)")
    p.add_argument("--uncertain-policy", choices=["mask", "positive", "negative"], help="meaning of -1 labels")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_true", default=None, help="resume from last/ (default)")
    g.add_argument("--restart", dest="resume", action="store_false", help="ignore last/ and start over")
    p.add_argument("config", nargs="*", help="optional config YAML, then key=value overrides (e.g. train.epochs=5)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from silverclip.config import load_config
    from silverclip.train import run_pretrain
    from silverclip.train.config import PretrainConfig, path_override, split_cli_args

    path, overrides = split_cli_args(args.config)
    flags = []
    for key, value in (
        ("cache", args.cache),
        ("labels", args.labels),
        ("val_labels", args.val_labels),
        ("val_cache", args.val_cache),
        ("out", args.out),
    ):
        flags += path_override(key, value)
    if args.uncertain_policy:
        flags.append(f"uncertain_policy={args.uncertain_policy}")
    if args.resume is not None:
        flags.append(f"train.resume={str(args.resume).lower()}")
    cfg = load_config(PretrainConfig, path, overrides + flags)
    print(run_pretrain(cfg))
    return 0
