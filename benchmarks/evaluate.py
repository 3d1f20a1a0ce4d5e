"""Benchmark: a full zero-shot + retrieval evaluation of 3,000 volumes from stored embeddings, against
CT-CLIP's per-prompt re-encoding (the image encoder runs once per finding's prompt pair per volume).

What is MEASURED here:
- the evaluation from stored embeddings (load, zero-shot probabilities, per-finding metrics, 1,000
  scan-level bootstrap replicates, MAP@1/5/10/50, Recall@5/10/50/100 in both directions, reports),
  on random but realistic data: 3,000 volume ids and label rows drawn from CT-RATE's real validation
  labels, 512-d embeddings carrying a label signal, reports per volume;
- the time of one image-encoder pass of a small real 3D ResNet-18 (the paper's architecture) on small
  volumes (the ``demo`` preset crop, 56 x 56 x 40), batch 1, and a short run of both strategies on
  ``--n-measure`` volumes (ours: 1 pass per volume; per-prompt: 18 passes per volume).
What is EXTRAPOLATED: the image-encoder time for all 3,000 volumes = passes x measured time per pass.
Real presets (192 x 192 x 96 crops) make each pass ~100x slower, which only widens the ratio.

Run: ``python benchmarks/evaluate.py`` (1-2 minutes on 2 shared cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from silverclip.eval.embeddings import Embeddings, load_embeddings, save_embeddings
from silverclip.eval.retrieval import evaluate_retrieval
from silverclip.eval.zero_shot import evaluate_zero_shot
from silverclip.findings import FINDINGS

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SILVERCLIP_SHARED_DATA", ROOT.parent / "shared" / "data"))


def realistic_data(n: int, dim: int, seed: int = 0) -> tuple[Embeddings, pd.DataFrame]:
    """CT-RATE validation ids/labels (first n rows) and 512-d embeddings with a label signal."""
    labels = pd.read_csv(SHARED / "ctrate_labels" / "valid_labels.csv").iloc[:n].set_index("VolumeName")
    ids = [v.replace(".nii.gz", "") for v in labels.index]
    y = labels[list(FINDINGS)].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    finding_dirs = rng.normal(size=(18, dim))
    scan_noise = {}
    img, txt = [], []
    for i, vid in enumerate(ids):
        scan = vid.rsplit("_", 1)[0]
        s = scan_noise.setdefault(scan, rng.normal(size=dim))  # reconstructions of a scan look alike
        # weights chosen so that AUC / MAP / Recall land near published values rather than at 1.0
        img.append(y[i] @ finding_dirs * 0.05 + 0.3 * s + rng.normal(size=dim))
        txt.append(y[i] @ finding_dirs * 0.05 + 0.3 * s + rng.normal(size=dim))
    norm = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    cls = np.stack([finding_dirs, -finding_dirs], 1) / np.sqrt(dim)
    cls = cls / np.linalg.norm(cls, axis=-1, keepdims=True)
    meta = {"logit_scale": 14.3, "findings": list(FINDINGS), "default_template_set": "ctclip"}
    emb = Embeddings(ids, norm(np.array(img)), ids, norm(np.array(txt)), {"ctclip": cls.astype(np.float32)}, meta)
    return emb, labels


def time_encoder(n_measure: int, repeats: int = 3) -> dict[str, float]:
    from silverclip.models import create_model

    torch.manual_seed(0)
    enc = create_model("resnet18_3d", num_classes=0).eval()
    x = torch.randn(1, 1, 56, 56, 40)
    with torch.no_grad():
        enc.forward_features(x)  # warm-up
        per_pass = []
        for _ in range(repeats):
            t = time.perf_counter()
            enc.forward_features(x)
            per_pass.append(time.perf_counter() - t)
        vols = [torch.randn(1, 1, 56, 56, 40) for _ in range(n_measure)]
        t = time.perf_counter()
        for v in vols:  # ours: one pass per volume; the embedding is then scored against all 18 pairs
            enc.forward_features(v)
        ours = time.perf_counter() - t
        t = time.perf_counter()
        for v in vols:  # CT-CLIP: one image pass per finding prompt pair
            for _ in FINDINGS:
                enc.forward_features(v)
        per_prompt = time.perf_counter() - t
    return {"per_pass_s": statistics.median(per_pass), "ours_s": ours, "per_prompt_s": per_prompt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--n-measure", type=int, default=1, help="volumes actually encoded by both strategies")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    emb, labels = realistic_data(args.n, args.dim)
    with tempfile.TemporaryDirectory() as tmp:
        save_embeddings(Path(tmp) / "emb", emb)
        labels_csv = Path(tmp) / "labels.csv"
        labels.reset_index().to_csv(labels_csv, index=False)
        t0 = time.perf_counter()
        stored = load_embeddings(Path(tmp) / "emb")
        zs = evaluate_zero_shot(stored, labels_csv, Path(tmp) / "zs", n_boot=args.n_boot)
        t1 = time.perf_counter()
        ret = evaluate_retrieval(stored, labels_csv, Path(tmp) / "ret")
        t2 = time.perf_counter()
    eval_s = t2 - t0
    enc = time_encoder(args.n_measure)

    n, f = args.n, len(FINDINGS)
    ours_passes = n  # silverclip embed: one image pass per volume, reused by zero-shot and retrieval
    ctclip_passes = n * f + n  # zero-shot: one pass per finding per volume; retrieval: one more latent pass
    ours_total = ours_passes * enc["per_pass_s"] + eval_s
    ctclip_total = ctclip_passes * enc["per_pass_s"] + eval_s  # same metric code credited to the baseline

    print(f"data: {n} volumes ({zs['n_units']} scans) with CT-RATE validation labels, {args.dim}-d embeddings")
    print("\nMEASURED")
    print(
        f"  evaluation from stored embeddings: {eval_s:.1f} s  (zero-shot incl. {args.n_boot} bootstrap "
        f"replicates {t1 - t0:.1f} s, retrieval {t2 - t1:.1f} s)"
    )
    print(
        f"    mean AUC {zs['metrics']['mean']['auc']:.3f}; MAP@50 {ret['image_to_image']['map'][50]:.3f}; "
        f"report-to-image R@100 {ret['report_to_image']['recall'][100]:.3f}"
    )
    print(f"  one image-encoder pass (ResNet-18 3D, 1x56x56x40, batch 1): {enc['per_pass_s'] * 1000:.1f} ms")
    print(
        f"  {args.n_measure} volumes encoded: once each {enc['ours_s']:.2f} s ({args.n_measure} passes) vs "
        f"per prompt {enc['per_prompt_s']:.2f} s ({args.n_measure * f} passes): "
        f"{enc['per_prompt_s'] / enc['ours_s']:.1f}x"
    )
    print("\nEXTRAPOLATED to the full evaluation (passes x measured time per pass + measured evaluation time)")
    print(f"  ours (embed once):      {ours_passes:>6} image passes, {ours_total:8.1f} s")
    print(f"  per-prompt re-encoding: {ctclip_passes:>6} image passes, {ctclip_total:8.1f} s")
    print(
        f"\nratio (per-prompt re-encoding / stored embeddings): passes {ctclip_passes / ours_passes:.1f}x, "
        f"time {ctclip_total / ours_total:.1f}x"
    )


if __name__ == "__main__":
    main()
