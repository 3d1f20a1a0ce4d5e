"""Cold start of ``silverclip predict`` on one scan against importing torch + nibabel and reading that scan.

    python benchmarks/cold_start.py [--repeats 5] [--scan FILE] [--checkpoint DIR] [--preset paper] [--tiny]

Both commands run in fresh processes, interleaved, ``--repeats`` times each (after one untimed warm-up
run of each, which also fills the zero-shot classifier cache of the checkpoint); printed: the median wall
time and the median CPU time (user + sys of the child), both commands and their ratio. Goal (issue 13):
predict within 2.0x of the baseline. CPU time is the fairer number on a machine shared with other jobs.

- baseline: ``python -c "import torch, nibabel; nibabel.load(scan).get_fdata()"``;
- predict: ``python -m silverclip.cli predict SCAN --checkpoint C`` (prints 18 probabilities).

Without ``--checkpoint`` a randomly initialised CLIP checkpoint is written to a temporary folder: a
``resnet18_3d`` image tower and the offline MiniLM text tower (``--tiny``: a ResNet-10 at 1/8 width and a
one-layer BERT), with ``--preset``. Default scan: ct_samples' LIDC-IDRI-0001 NIfTI (512x512x16).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCAN = ROOT.parent / "shared" / "data" / "ct_samples" / "lidc_idri" / "LIDC-IDRI-0001_16slices_HU.nii.gz"


def make_checkpoint(folder: Path, preset: str, tiny: bool) -> Path:
    import torch

    from silverclip.checkpoint import save_checkpoint
    from silverclip.models import create_model

    if tiny:
        cfg = {
            "name": "clip",
            "image": {"name": "resnet10_3d", "widen_factor": 0.125},
            "text": {
                "name_or_path": "offline",
                "config": {
                    "hidden_size": 32,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 64,
                },  # noqa: E501
            },
            "embed_dim": 16,
        }
    else:
        cfg = {"name": "clip", "image": {"name": "resnet18_3d"}, "text": {"name_or_path": "offline"}, "embed_dim": 512}
    torch.manual_seed(0)
    return save_checkpoint(folder / "clip", create_model(**cfg), preset=preset, task="clip")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scan", type=Path, default=DEFAULT_SCAN)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--tiny", action="store_true", help="tiny random checkpoint (no --checkpoint)")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        env.setdefault("SILVERCLIP_CACHE_DIR", str(Path(tmp) / "cache"))
        ckpt = args.checkpoint or make_checkpoint(Path(tmp), args.preset, args.tiny)
        scan = str(args.scan)
        baseline = [sys.executable, "-c", f"import torch, nibabel; nibabel.load({scan!r}).get_fdata()"]
        predict = [sys.executable, "-m", "silverclip.cli", "predict", scan, "--checkpoint", str(ckpt)]
        timed(baseline, env), timed(predict, env)  # warm-up: disk cache, zero-shot classifier cache
        runs: dict[str, list[tuple[float, float]]] = {"baseline": [], "predict": []}
        for _ in range(args.repeats):
            runs["baseline"].append(timed(baseline, env))
            runs["predict"].append(timed(predict, env))
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in runs.items()}
    print(f"scan {args.scan.name}, checkpoint {'tiny' if args.tiny else ckpt}, {args.repeats} repeats, median")
    print(f"{'':<40} {'wall s':>8} {'cpu s':>8}")
    print(f"{'import torch, nibabel + read (baseline)':<40} {med['baseline'][0]:8.2f} {med['baseline'][1]:8.2f}")
    print(f"{'silverclip predict':<40} {med['predict'][0]:8.2f} {med['predict'][1]:8.2f}")
    print(
        f"{'ratio (goal <= 2.0)':<40} {med['predict'][0] / med['baseline'][0]:8.2f} "
        f"{med['predict'][1] / med['baseline'][1]:8.2f}"
    )


if __name__ == "__main__":
    main()
