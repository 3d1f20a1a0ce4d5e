"""The pre-training path learns: a trivially visible finding reaches a high validation AUC in seconds.

Not a timing test: it guards the whole learning path (cache -> loader -> crop/normalise -> model -> masked BCE
-> optimizer/schedule -> validation AUC) against changes that silently stop learning (a broken normalisation,
a detached head, a schedule at zero, labels misaligned with volumes), which every other test would miss.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from silverclip.cli import main
from silverclip.data.cache import PRESET_FILE, VOLUMES_DIR
from silverclip.data.presets import Preset
from silverclip.findings import FINDINGS
from silverclip.io import atomic_save_npy, atomic_write_json

PRESET = Preset(
    name="tiny-wide", spacing=(6.0, 6.0, 6.0), window=(-1000.0, 1000.0), shape=(32, 32, 24), crop=(28, 28, 20)
)


def _phantom(rng: np.random.Generator, metal: bool) -> np.ndarray:
    """A chest-like phantom: air, a soft-tissue body with two lungs, bright rib-like spots, noise; optionally
    one metal device (radius 2.2-2.8 voxels, 3000 HU, like a pacemaker generator at 6 mm voxels) in the body."""
    x, y, z = np.meshgrid(*(np.arange(s) - s / 2 + 0.5 for s in PRESET.shape), indexing="ij")
    a, b = rng.uniform(12, 15), rng.uniform(9, 12)
    body = (x / a) ** 2 + (y / b) ** 2 < 1
    vol = np.where(body, 40.0, -1000.0)
    for side in (-1, 1):
        lung = ((x - side * a * 0.45) / (a * 0.38)) ** 2 + (y / (b * 0.7)) ** 2 + (z / 14) ** 2 < 1
        vol[lung] = -850.0
    for _ in range(12):  # ribs / bone: bright spots near the body wall
        t = rng.uniform(0, 2 * np.pi)
        c = (0.92 * a * np.cos(t), 0.92 * b * np.sin(t), rng.uniform(-10, 10))
        vol[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < 1.5] = 450.0
    if metal:
        t = rng.uniform(0, 2 * np.pi)
        r = rng.uniform(0.2, 0.8)
        c = (r * a * np.cos(t) * 0.5, r * b * np.sin(t), rng.uniform(-8, 8))
        vol[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < rng.uniform(5.0, 8.0)] = 3000.0
    vol += rng.normal(0, 20, vol.shape)
    return np.clip(vol, *PRESET.window).astype(np.int16)


def _dataset(tmp: Path, n_train: int, n_val: int) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    cache = tmp / "cache"
    atomic_write_json(cache / PRESET_FILE, PRESET.to_dict())
    tables = []
    for split, n in (("train", n_train), ("valid", n_val)):
        ids = [f"{split}_{i}_a_1" for i in range(n)]
        labels = np.full((n, len(FINDINGS)), -1)  # the other findings: uncertain, i.e. left out of loss and AUC
        labels[:, 0] = np.arange(n) % 2  # Medical material, balanced
        for vid, lab in zip(ids, labels):
            atomic_save_npy(cache / VOLUMES_DIR / f"{vid}.npy", _phantom(rng, bool(lab[0])))
        df = pd.DataFrame(labels, columns=list(FINDINGS))
        df.insert(0, "VolumeName", [f"{v}.nii.gz" for v in ids])
        tables.append(df)
    tables[0].to_csv(tmp / "train.csv", index=False)
    tables[1].to_csv(tmp / "valid.csv", index=False)
    return cache, tmp / "train.csv", tmp / "valid.csv"


def train_metal_detector(tmp: Path) -> Path:
    """Pre-train an eighth-width ResNet-18 on 160 phantoms (half with a metal device) for 14 epochs,
    validated on 64: the run folder (also used by tests/test_pointing.py)."""
    cache, train, valid = _dataset(tmp, n_train=160, n_val=64)
    run = tmp / "run"
    argv = ["pretrain", "--cache", str(cache), "--labels", str(train), "--val-labels", str(valid), "--out", str(run)]
    overrides = [
        "model=resnet18_3d",
        'model_kwargs={"widen_factor": 0.125}',
        "data.batch_size=8",
        "train.epochs=14",
        "train.lr=1e-3",
        "train.warmup_steps=5",
        "train.progress=false",
        "train.precision=fp32",
    ]
    assert main([*argv, *overrides]) == 0
    return run


def test_pretraining_learns_a_visible_finding(tmp_path: Path) -> None:
    run = train_metal_detector(tmp_path)
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    aucs = [round(v["auc/Medical material"], 3) for v in val]
    print("validation AUC per epoch:", aucs)
    assert val[-1]["auc/Medical material"] >= 0.9, aucs
    assert val[-1]["mean_auc"] == val[-1]["auc/Medical material"]  # masked findings are not averaged
