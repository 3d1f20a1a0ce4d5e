"""``silverclip synth``: write a synthetic dataset in CT-RATE's layout (see docs/synthetic.md)."""

from __future__ import annotations

import argparse


def _shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--shape needs three sizes like 64,64,48, got {text!r}")
    return tuple(parts)


def register(subparsers) -> None:
    p = subparsers.add_parser("synth", help="write a synthetic CT-RATE-format dataset", description=__doc__)
    p.add_argument("--out", required=True, help="output folder (the dataset root)")
    p.add_argument("--config", default=None, help="YAML file with SynthConfig fields")
    p.add_argument("--n-patients", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--shape", type=_shape, default=None, help="x,y,z voxels of reconstruction 1 (default 64,64,48)")
    p.add_argument("--difficulty", type=float, default=None, help="0 = obvious lesions, 1 = subtle")
    p.add_argument("--valid-fraction", type=float, default=None)
    p.add_argument("--report-noise", type=float, default=None, help="fraction of imperfect reports")
    p.add_argument("--format-version", type=int, choices=(1, 2), default=None, help="2: HU (default), 1: raw values")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key=value overrides of SynthConfig fields")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from silverclip.config import load_config
    from silverclip.synth.dataset import SynthConfig, make_synthetic_ctrate

    flags = {
        "n_patients": args.n_patients,
        "seed": args.seed,
        "shape": list(args.shape) if args.shape else None,
        "difficulty": args.difficulty,
        "valid_fraction": args.valid_fraction,
        "report_noise": args.report_noise,
        "format_version": args.format_version,
        "workers": args.workers,
    }
    overrides = list(args.overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(SynthConfig, args.config, overrides)
    failures = make_synthetic_ctrate(args.out, cfg, progress=not args.quiet)
    failures.report()
    if not failures:
        print(f"synthetic CT-RATE dataset written to {args.out}")
    return failures.exit_code
