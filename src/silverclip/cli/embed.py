"""``silverclip embed``: image and report embeddings of a dataset (plus zero-shot classifiers), written once."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "embed",
        help="embed every cached volume and its report once, for all evaluations",
        description=(
            "Writes OUT/image.npy + image_ids.json, OUT/text.npy + text_ids.json (report embeddings, id = volume id), "
            "OUT/zero_shot/<template set>.npy (18 x 2 x E prompt-pair embeddings) and OUT/meta.json. Volumes are the "
            "centre crop of the cache preset. Rerunning the same command resumes from finished shards."
        ),
    )
    p.add_argument("--checkpoint", required=True, help="CLIP checkpoint folder")
    p.add_argument("--cache", required=True, help="preprocessing cache folder")
    p.add_argument("--manifest", required=True, help="CSV/Parquet with volume_id (+ findings, impressions, split)")
    p.add_argument("--out", required=True, help="embeddings folder to write")
    p.add_argument("--split", help="only manifest rows of this split (e.g. valid)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--include-impressions",
        dest="include_impressions",
        action="store_true",
        default=None,
        help="report text = Findings + Impressions (default: as the checkpoint's CLIP run was trained)",
    )
    g.add_argument("--findings-only", dest="include_impressions", action="store_false", help="report text = Findings")
    p.add_argument("--no-text", action="store_true", help="skip report embeddings")
    p.add_argument("--template-sets", nargs="*", help="zero-shot template sets to store (default: all)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--workers", type=int, default=0, help="loader worker processes (reading and tokenising)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on a GPU")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from silverclip.eval.embeddings import compute_embeddings

    emb, failures = compute_embeddings(
        args.checkpoint,
        args.cache,
        args.manifest,
        args.out,
        template_sets=args.template_sets or None,
        batch_size=args.batch_size,
        num_workers=args.workers,
        precision=args.precision,
        device=args.device,
        texts=not args.no_text,
        include_impressions=args.include_impressions,
        split=args.split,
    )
    print(f"{args.out}: {len(emb.image_ids)} image and {len(emb.text_ids)} report embeddings, dim {emb.image.shape[1]}")
    failures.report()
    return failures.exit_code
