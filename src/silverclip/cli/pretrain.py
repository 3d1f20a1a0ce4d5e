"""``silverclip pretrain``: supervised multi-label pre-training of the 3D image encoder on a labels CSV."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from silverclip.train.config import add_stage_arguments

    p = subparsers.add_parser(
        "pretrain",
        help="supervised pre-training of the 3D image encoder on silver or gold labels",
        description=(
            "Multi-label BCE on the 18 findings of a labels CSV (CT-RATE format) over volumes of a preprocessing "
            "cache. Defaults: resnet18_3d, AdamW lr 1e-4 wd 1e-4, cosine to 1e-6, uncertain labels masked. "
            "Rerunning the same command resumes an interrupted run. Prints the best checkpoint folder."
        ),
    )
    p.add_argument("--labels", help="labels CSV of the training volumes (VolumeName + 18 findings, 1/0/-1)")
    p.add_argument("--val-labels", help="labels CSV of the validation volumes (per-finding AUC each epoch)")
    p.add_argument("--uncertain-policy", choices=["mask", "positive", "negative"], help="meaning of -1 labels")
    add_stage_arguments(p, example="train.epochs=5")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from silverclip.train import run_pretrain
    from silverclip.train.config import PretrainConfig, config_from_args

    flags = [f"uncertain_policy={args.uncertain_policy}"] if args.uncertain_policy else []
    cfg = config_from_args(PretrainConfig, args, ("labels", "val_labels"), flags)
    print(run_pretrain(cfg))
    return 0
