"""RAD-ChestCT dataset adapter: a folder of ``.npz`` volumes + the 84-abnormality label CSVs -> a manifest.

Volumes are named by ``NoteAcc_DEID`` (``trn00001.npz``, ``val...``, ``tst...``), int16 HU at 0.8 mm
isotropic (their array axis order is documented in :func:`silverclip.data.readers.read_npz`). Labels:
``imgtrain.csv`` / ``imgvalid.csv`` / ``imgtest.csv`` (``NoteAcc_DEID`` + 84 columns 0/1, one row per
scan), ``Summary_3630.csv`` (``MRN_DEID`` = patient, ``Set_Assigned``/``Subset_Assigned``).

All 84 columns are kept under their own names (e.g. ``atelectasis``, ``calcification``); mapping them
onto CT-RATE's findings is the evaluation's job (``silverclip.eval``), not this adapter's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from silverclip.data.manifest import ManifestError, empty_row, validate_manifest
from silverclip.data.readers import RADCHESTCT_SPACING

log = logging.getLogger(__name__)

LABEL_FILES = {"train": "imgtrain.csv", "valid": "imgvalid.csv", "test": "imgtest.csv"}
SUMMARY_FILE = "Summary_3630.csv"
ID_COLUMN = "NoteAcc_DEID"
N_LABELS = 84


def read_radchestct_labels(labels_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """All label CSVs in ``labels_dir`` -> (frame indexed by NoteAcc_DEID with a ``split`` column, label names).

    Raises ManifestError naming the file when a CSV lacks the id column, has a different set of label
    columns than the others, repeats an id, or holds values other than 0/1.
    """
    labels_dir = Path(labels_dir)
    frames, columns = [], None
    for split, name in LABEL_FILES.items():
        p = labels_dir / name
        if not p.is_file():
            continue
        df = pd.read_csv(p, dtype={ID_COLUMN: str})
        if ID_COLUMN not in df.columns:
            raise ManifestError(f"{p}: no {ID_COLUMN} column")
        cols = [c for c in df.columns if c != ID_COLUMN]
        if columns is None:
            columns = cols
        elif cols != columns:
            raise ManifestError(f"{p}: label columns differ from the other RAD-ChestCT label files")
        if df[ID_COLUMN].duplicated().any():
            raise ManifestError(f"{p}: duplicate {ID_COLUMN} {df[ID_COLUMN][df[ID_COLUMN].duplicated()].tolist()[:5]}")
        values = df[cols].to_numpy(dtype=float)
        if not np.isin(values[~np.isnan(values)], (0.0, 1.0)).all():
            raise ManifestError(f"{p}: RAD-ChestCT labels must be 0/1")
        df["split"] = split
        frames.append(df.set_index(ID_COLUMN))
    if not frames:
        raise FileNotFoundError(f"{labels_dir}: none of {list(LABEL_FILES.values())} found")
    out = pd.concat(frames)
    if out.index.duplicated().any():
        raise ManifestError(
            f"{labels_dir}: scan(s) in several label files: {out.index[out.index.duplicated()].tolist()[:5]}"
        )
    if len(columns) != N_LABELS:
        log.warning("%s: expected %d RAD-ChestCT label columns, found %d", labels_dir, N_LABELS, len(columns))
    return out, list(columns)


def ingest_radchestct(
    volumes_dir: str | Path,
    labels_dir: str | Path,
    split: str | None = None,
    spacing: tuple[float, float, float] = RADCHESTCT_SPACING,
    require_labels: bool = True,
) -> pd.DataFrame:
    """Manifest of the RAD-ChestCT ``.npz`` volumes found (recursively) under ``volumes_dir``.

    split: keep only ``train``/``valid``/``test`` scans (by label file), or all when None.
    require_labels: a volume without a label row is an error (else its labels are NaN, split empty).
    The 84 label columns follow the manifest columns; ``patient_id`` comes from Summary_3630.csv when
    present (else the scan id). No report text (RAD-ChestCT's reports are not public).
    """
    volumes_dir = Path(volumes_dir)
    if not volumes_dir.is_dir():
        raise FileNotFoundError(f"{volumes_dir}: RAD-ChestCT volume folder not found")
    labels, label_cols = read_radchestct_labels(labels_dir)
    summary_path = Path(labels_dir) / SUMMARY_FILE
    patients = {}
    if summary_path.is_file():
        summary = pd.read_csv(summary_path, dtype=str)
        patients = dict(zip(summary["NoteAcc_DEID"], summary["MRN_DEID"]))
    files = sorted(volumes_dir.rglob("*.npz"), key=lambda p: p.name)
    if not files:
        raise ManifestError(f"{volumes_dir}: no .npz volumes found")
    rows, unlabeled = [], []
    for f in files:
        vid = f.name[: -len(".npz")]
        if vid in labels.index:
            lab = labels.loc[vid]
            s, values = lab["split"], lab[label_cols].to_dict()
        else:
            unlabeled.append(vid)
            s, values = "", dict.fromkeys(label_cols, np.nan)
        if split is not None and s != split:
            continue
        rows.append(
            empty_row(
                vid,
                f,
                patient_id=patients.get(vid, vid),
                split=s,
                format="npz",
                spacing_x=spacing[0],
                spacing_y=spacing[1],
                spacing_z=spacing[2],
                **values,
            )
        )
    if unlabeled and require_labels:
        raise ManifestError(
            f"{labels_dir}: no label row for {len(unlabeled)} volume(s) {unlabeled[:10]} in {volumes_dir}"
        )
    if not rows:
        raise ManifestError(f"{volumes_dir}: no volumes for split {split!r}")
    return validate_manifest(pd.DataFrame(rows), f"RAD-ChestCT at {volumes_dir}")
