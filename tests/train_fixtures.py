"""Tiny synthetic training data shared by the training tests: a cache, a labels CSV and a report manifest.

12 volumes of 32x32x24 (a tiny preset with 24x24x16 crops), CT-RATE-style ids ``train_<p>_a_1``;
volumes 0-7 are training, 8-11 validation (``split`` column of the manifest, separate labels CSV).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from silverclip.data.cache import PRESET_FILE, VOLUMES_DIR
from silverclip.data.presets import Preset
from silverclip.findings import FINDINGS
from silverclip.io import atomic_save_npy, atomic_write_json

TINY_PRESET = Preset(
    name="tiny", spacing=(6.0, 6.0, 6.0), window=(-1000.0, 200.0), shape=(32, 32, 24), crop=(24, 24, 16)
)
N_TRAIN, N_VAL = 8, 4

# Small models so that a step takes milliseconds on CPU.
TINY_IMAGE = {"widen_factor": 0.125}
TINY_TEXT = {"config": {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}}


def ids(n: int = N_TRAIN + N_VAL) -> list[str]:
    return [f"train_{i}_a_1" for i in range(n)]


def make_cache(root: Path, n: int = N_TRAIN + N_VAL, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    atomic_write_json(root / PRESET_FILE, TINY_PRESET.to_dict())
    for vid in ids(n):
        vol = rng.integers(-1000, 201, size=TINY_PRESET.shape).astype(np.int16)
        atomic_save_npy(root / VOLUMES_DIR / f"{vid}.npy", vol)
    return root


def make_labels(path: Path, volume_ids: list[str], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    values = rng.choice([1, 0, 0, -1], size=(len(volume_ids), len(FINDINGS)))
    values[0], values[1] = 1, 0  # both classes of every finding present
    df = pd.DataFrame(values, columns=list(FINDINGS))
    df.insert(0, "VolumeName", [f"{v}.nii.gz" for v in volume_ids])
    df.to_csv(path, index=False)
    return path


def make_manifest(path: Path, n: int = N_TRAIN + N_VAL, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    words = ["nodule", "effusion", "emphysema", "atelectasis", "normal", "opacity", "calcification", "hernia"]
    rows = []
    for i, vid in enumerate(ids(n)):
        rows.append(
            {
                "volume_id": vid,
                "split": "train" if i < N_TRAIN else "valid",
                "findings": "Findings: " + " ".join(rng.choice(words, size=6)) + ".",
                "impressions": "Impression: " + str(rng.choice(words)) + ".",
            }
        )
    df = pd.DataFrame(rows)
    labels = rng.choice([1, 0], size=(n, len(FINDINGS)))
    labels[N_TRAIN], labels[N_TRAIN + 1] = 1, 0
    for j, f in enumerate(FINDINGS):
        df[f] = labels[:, j]
    df.to_csv(path, index=False)
    return path


def make_all(tmp: Path) -> dict[str, Path]:
    cache = make_cache(tmp / "cache")
    all_ids = ids()
    return {
        "cache": cache,
        "labels": make_labels(tmp / "train_labels.csv", all_ids[:N_TRAIN]),
        "val_labels": make_labels(tmp / "valid_labels.csv", all_ids[N_TRAIN:], seed=1),
        "manifest": make_manifest(tmp / "manifest.csv"),
    }
