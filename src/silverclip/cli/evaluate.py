"""``silverclip evaluate zero-shot|retrieval``: evaluations from stored embeddings (no model needed)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="zero-shot diagnosis and retrieval from stored embeddings")
    sub = p.add_subparsers(dest="task", metavar="TASK")

    z = sub.add_parser(
        "zero-shot",
        help="per-finding AUC / F1 / accuracy / precision with bootstrap intervals",
        description=(
            "Default mode: thresholds chosen on --val-embeddings/--val-labels (Youden's J or F1), binary F1. "
            "ctclip-compatible: CT-CLIP's threshold rule on the test labels themselves and class-weighted F1. "
            "Labels: a CT-RATE labels CSV (18 findings) or a RAD-ChestCT CSV (mapped onto 16 findings)."
        ),
    )
    z.add_argument("--embeddings", required=True, help="embeddings folder (silverclip embed)")
    z.add_argument("--labels", required=True, help="labels CSV (CT-RATE format or RAD-ChestCT)")
    z.add_argument("--val-embeddings", help="embeddings of a separate split to choose thresholds on")
    z.add_argument("--val-labels", help="labels of that split")
    z.add_argument("--mode", choices=["default", "ctclip-compatible"], default="default")
    z.add_argument("--threshold-method", choices=["youden", "f1"], default="youden")
    z.add_argument("--templates", help="template set stored in the embeddings (default: the embeddings' default)")
    z.add_argument("--protocol", choices=["auto", "ctrate", "radchestct"], default="auto")
    z.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (scans resampled)")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument(
        "--min-positives",
        type=int,
        default=1,
        help="findings with fewer positive (or negative) volumes are reported as not estimable, not averaged",
    )
    z.add_argument("--out", required=True, help="report folder")
    z.set_defaults(func=_zero_shot)

    r = sub.add_parser(
        "retrieval",
        help="image-to-image MAP@K, report-to-image / image-to-report Recall@K",
        description=(
            "MAP@K as CT-CLIP defines it (gallery = volumes with a positive label, Jaccard of labels per hit); "
            "Recall@K with reports and volumes matched by volume id. --recall-mode per-volume counts only the "
            "query's own volume, per-scan any reconstruction of its scan."
        ),
    )
    r.add_argument("--embeddings", required=True)
    r.add_argument("--labels", required=True)
    r.add_argument("--exclude", choices=["none", "self", "scan"], default="none", help="MAP@K self-exclusion")
    r.add_argument("--recall-mode", choices=["per-volume", "per-scan"], default="per-volume")
    r.add_argument("--manifest", help="manifest with report texts, to show them in the example queries")
    r.add_argument("--protocol", choices=["auto", "ctrate", "radchestct"], default="auto")
    r.add_argument("--out", required=True)
    r.set_defaults(func=_retrieval)

    g = sub.add_parser(
        "pointing",
        help="pointing game: how often a finding's saliency peak lies inside its synthetic lesion mask",
        description="Needs a CLIP checkpoint and a synthetic dataset folder (silverclip synth) with lesion masks.",
    )
    g.add_argument("--checkpoint", required=True, help="CLIP checkpoint folder")
    g.add_argument("--data", required=True, help="synthetic dataset folder (a run's data/ folder)")
    g.add_argument("--split", choices=["train", "valid"], default="valid")
    g.add_argument("--max-volumes", type=int, help="only the first N volumes of the split")
    g.add_argument("--device", default="cpu")
    g.add_argument("--out", required=True, help="report folder")
    g.set_defaults(func=_pointing)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _zero_shot(args: argparse.Namespace) -> int:
    from silverclip.eval.zero_shot import evaluate_zero_shot

    if bool(args.val_embeddings) != bool(args.val_labels):
        raise SystemExit("--val-embeddings and --val-labels go together")
    res = evaluate_zero_shot(
        args.embeddings,
        args.labels,
        args.out,
        val_embeddings=args.val_embeddings,
        val_labels=args.val_labels,
        mode=args.mode,
        template_set=args.templates,
        threshold_method=args.threshold_method,
        protocol=args.protocol,
        n_boot=args.n_boot,
        seed=args.seed,
        min_positives=args.min_positives,
    )
    m, b = res["metrics"]["mean"], res["bootstrap"]
    print(
        f"zero-shot ({res['protocol']}, {res['mode']}, {int(m['n_findings'])} findings): mean AUC {m['auc']:.4f} "
        f"[{b['lower']['mean/auc']:.4f}, {b['upper']['mean/auc']:.4f}], F1 {m['f1']:.4f}, "
        f"accuracy {m['accuracy']:.4f}, precision {m['precision']:.4f} -> {args.out}/zero_shot.md"
    )
    for w in res["warnings"]:
        print(f"warning: {w}")
    return 0


def _retrieval(args: argparse.Namespace) -> int:
    from silverclip.eval.retrieval import evaluate_retrieval
    from silverclip.train.data import read_report_manifest, report_text

    texts = None
    if args.manifest:
        df = read_report_manifest(args.manifest, require=())
        texts = {vid: report_text(row, include_impressions=True) for vid, row in df.iterrows()}
    res = evaluate_retrieval(
        args.embeddings,
        args.labels,
        args.out,
        protocol=args.protocol,
        exclude=args.exclude,
        recall_mode=args.recall_mode,
        texts=texts,
    )
    maps = ", ".join(f"@{k} {v:.4f}" for k, v in res["image_to_image"]["map"].items())
    print(f"image-to-image MAP{maps} (exclude={args.exclude})")
    for key in ("report_to_image", "image_to_report"):
        if key in res:
            rec = ", ".join(f"@{k} {v:.4f}" for k, v in res[key]["recall"].items())
            print(f"{key} Recall{rec} ({args.recall_mode}, gallery {res[key]['n_gallery']} volumes)")
    print(f"-> {args.out}/retrieval.md")
    return 0


def _pointing(args: argparse.Namespace) -> int:
    from silverclip.eval.pointing import pointing_markdown, run_pointing_game

    result = run_pointing_game(args.checkpoint, args.data, args.out, args.split, args.max_volumes, args.device)
    print(pointing_markdown(result))
    return 0
