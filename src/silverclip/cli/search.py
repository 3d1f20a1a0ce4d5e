"""``silverclip search "text" --index EMB --checkpoint CKPT``: the volumes closest to a text query."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search",
        help="find the volumes of an embeddings index closest to a text query",
        description="Ranks the image embeddings of INDEX (silverclip embed) by cosine similarity to the query text.",
    )
    p.add_argument("text", help="free-text query, e.g. 'bilateral pleural effusion'")
    p.add_argument("--index", required=True, help="embeddings folder")
    p.add_argument("--checkpoint", help="checkpoint that made the index (default: the one recorded in the index)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", help="JSON file to write the hits to")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from silverclip.eval.embeddings import load_embeddings
    from silverclip.inference import load
    from silverclip.io import atomic_write_json, check_output_file

    if args.out:
        check_output_file(args.out)
    index = load_embeddings(args.index)
    checkpoint = args.checkpoint or index.meta.get("checkpoint")
    if not checkpoint:
        raise SystemExit(f"{args.index} records no checkpoint: pass --checkpoint")
    hits = load(checkpoint, device=args.device).search(args.text, index, k=args.k)
    for h in hits:
        print(f"{h['rank']:>3}  {h['score']:.4f}  {h['id']}")
    if args.out:
        atomic_write_json(args.out, {"query": args.text, "index": str(args.index), "hits": hits})
    return 0
