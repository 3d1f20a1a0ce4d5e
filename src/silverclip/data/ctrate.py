"""CT-RATE dataset adapter: the downloaded folder -> a manifest (``silverclip.data.manifest``).

Layout (HuggingFace ``ibrahimhamamci/CT-RATE``; ``root`` may be the repository folder or its
``dataset/`` folder)::

    dataset/{train,valid}/<split>_<pid>/<split>_<pid>_<scan>/<split>_<pid>_<scan>_<recon>.nii.gz   # v1
    dataset/{train,valid}_fixed/...same names...                                                  # v2
    dataset/radiology_text_reports/{train,validation}_reports.csv   VolumeName, ..., Findings_EN, Impressions_EN
    dataset/multi_abnormality_labels/{train,valid}_predicted_labels.csv   VolumeName + 18 findings
    dataset/metadata/{train,validation}_metadata.csv   VolumeName, XYSpacing "[0.75, 0.75]", ZSpacing,
                                                       RescaleSlope, RescaleIntercept, ...
    no_chest_*.txt (anywhere in the first two levels): volume names that are not chest CTs, excluded

v1 vs v2: volumes from ``<split>/`` store raw scanner values and get ``needs_rescale=True`` (HU = value *
RescaleSlope + RescaleIntercept from the metadata); volumes from ``<split>_fixed/`` are already HU and
get ``needs_rescale=False`` so they are never rescaled twice. ``version="auto"`` takes ``_fixed`` when
it exists.

Missing metadata row (documented choice): an error naming the metadata CSV and the volumes, because
without it a v1 volume cannot be converted to HU; ``missing_metadata="skip"`` instead drops those
volumes and records each one in the given FailureLog. A missing report row gives empty text; a missing
label row gives NaN labels.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from silverclip.data.manifest import ManifestError, empty_row, validate_manifest
from silverclip.findings import FINDINGS
from silverclip.io import FailureLog
from silverclip.labels.table import volume_id as strip_suffix

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid"}
_REPORT_NAMES = {"train": ["train_reports.csv"], "valid": ["validation_reports.csv", "valid_reports.csv"]}
_LABEL_NAMES = {
    "train": ["train_predicted_labels.csv", "train_labels.csv"],
    "valid": ["valid_predicted_labels.csv", "validation_predicted_labels.csv", "valid_labels.csv"],
}
_META_NAMES = {"train": ["train_metadata.csv"], "valid": ["validation_metadata.csv", "valid_metadata.csv"]}
_SUBDIRS = ("", "radiology_text_reports", "multi_abnormality_labels", "metadata")


def _dataset_dir(root: Path) -> Path:
    return root / "dataset" if (root / "dataset").is_dir() else root


def _find_csv(base: Path, names: list[str]) -> Path | None:
    for parent in (base, base.parent):
        for sub in _SUBDIRS:
            for name in names:
                p = parent / sub / name
                if p.is_file():
                    return p
    return None


def parse_spacing(value: object) -> tuple[float, ...]:
    """``"[0.75, 0.75]"`` / ``"0.75"`` / ``0.75`` -> tuple of floats (CT-RATE metadata stores lists as strings)."""
    if isinstance(value, int | float | np.floating):
        return (float(value),)
    text = str(value).strip()
    parsed = ast.literal_eval(text) if text.startswith(("[", "(")) else float(text)
    if isinstance(parsed, list | tuple):
        return tuple(float(v) for v in parsed)
    return (float(parsed),)


def read_ctrate_metadata(path: str | Path) -> pd.DataFrame:
    """Metadata CSV -> frame indexed by volume id with spacing_x/y/z, rescale_slope, rescale_intercept.

    XYSpacing is DICOM PixelSpacing ``[row spacing, column spacing]``: columns run along x, so
    spacing_x = XYSpacing[1], spacing_y = XYSpacing[0] (they are equal in practice).
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"VolumeName": str}, low_memory=False)
    except Exception as e:
        raise ManifestError(f"{path}: cannot read CT-RATE metadata ({type(e).__name__}: {e})") from None
    need = ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: CT-RATE metadata lacks column(s) {missing}")
    rows = {}
    for i, r in enumerate(df[need].itertuples(index=False)):
        vid = strip_suffix(r.VolumeName)
        try:
            xy = parse_spacing(r.XYSpacing)
            xy = (xy[0], xy[0]) if len(xy) == 1 else xy
            rows[vid] = {
                "spacing_x": xy[1],
                "spacing_y": xy[0],
                "spacing_z": float(r.ZSpacing),
                "rescale_slope": float(r.RescaleSlope),
                "rescale_intercept": float(r.RescaleIntercept),
            }
        except (ValueError, SyntaxError, TypeError, IndexError) as e:
            raise ManifestError(f"{path}: row {i + 2} ({r.VolumeName}): cannot parse spacing/rescale ({e})") from None
    out = pd.DataFrame.from_dict(rows, orient="index")
    if df["VolumeName"].map(strip_suffix).duplicated().any():
        dup = df["VolumeName"][df["VolumeName"].map(strip_suffix).duplicated()].tolist()[:5]
        raise ManifestError(f"{path}: duplicate VolumeName(s) {dup}")
    return out


def read_no_chest(paths: list[Path]) -> set[str]:
    """Volume ids listed in ``no_chest_*.txt`` files (one name per line; blank lines and ``#`` ignored)."""
    ids: set[str] = set()
    for p in paths:
        for line in p.read_text().splitlines():
            token = line.strip().split(",")[0].strip()
            if token and not token.startswith("#") and token != "VolumeName":
                ids.add(strip_suffix(Path(token).name))
    return ids


def _find_no_chest(base: Path) -> list[Path]:
    found: set[Path] = set()
    for parent in (base, base.parent):
        found.update(parent.glob("no_chest*.txt"))
        found.update(parent.glob("*/no_chest*.txt"))
    return sorted(found)


def list_ctrate_volumes(volumes_dir: Path) -> list[Path]:
    """All ``<pid>/<scan>/<name>.nii.gz`` (or ``.nii``) files under a split folder, sorted."""
    files = [*volumes_dir.glob("*/*/*.nii.gz"), *volumes_dir.glob("*/*/*.nii")]
    return sorted(files, key=lambda p: p.name)


def ingest_ctrate(
    root: str | Path,
    split: str = "valid",
    version: str = "auto",
    reports_csv: str | Path | None = None,
    labels_csv: str | Path | None = None,
    metadata_csv: str | Path | None = None,
    missing_metadata: str = "error",
    failures: FailureLog | None = None,
) -> pd.DataFrame:
    """Build the manifest of one CT-RATE split (``train`` or ``valid``) from a downloaded/synthetic folder.

    version: ``auto`` (``<split>_fixed`` if present, else ``<split>``), ``v1`` or ``v2``.
    missing_metadata: ``error`` (default) or ``skip`` (drop and record in ``failures``).
    CSV locations are found in the standard layout unless given. Returns a validated manifest with the
    18 finding columns when a labels CSV is found.
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"unknown CT-RATE split {split!r}; use train or valid")
    split = SPLITS[split]
    if missing_metadata not in ("error", "skip"):
        raise ValueError("missing_metadata must be 'error' or 'skip'")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: CT-RATE folder not found")
    base = _dataset_dir(root)
    v1_dir, v2_dir = base / split, base / f"{split}_fixed"
    if version == "auto":
        version = "v2" if v2_dir.is_dir() else "v1"
    if version not in ("v1", "v2"):
        raise ValueError(f"version must be auto, v1 or v2, not {version!r}")
    volumes_dir = v2_dir if version == "v2" else v1_dir
    if not volumes_dir.is_dir():
        raise FileNotFoundError(f"{volumes_dir}: CT-RATE {version} volume folder for split {split!r} not found")
    files = list_ctrate_volumes(volumes_dir)
    if not files:
        raise ManifestError(f"{volumes_dir}: no .nii.gz volumes in <patient>/<scan>/ sub-folders")

    meta_path = Path(metadata_csv) if metadata_csv else _find_csv(base, _META_NAMES[split])
    if meta_path is None:
        raise FileNotFoundError(
            f"{base}: CT-RATE metadata CSV for {split!r} not found (looked for {_META_NAMES[split]})"
        )
    meta = read_ctrate_metadata(meta_path)
    reports_path = Path(reports_csv) if reports_csv else _find_csv(base, _REPORT_NAMES[split])
    labels_path = Path(labels_csv) if labels_csv else _find_csv(base, _LABEL_NAMES[split])
    reports = _read_reports(reports_path) if reports_path else None
    labels = _read_ctrate_labels(labels_path) if labels_path else None
    if reports is None:
        log.warning("%s: no reports CSV found; report text left empty", base)
    excluded = read_no_chest(_find_no_chest(base))

    rows, missing = [], []
    for f in files:
        vid = strip_suffix(f.name)
        if vid in excluded:
            continue
        if vid not in meta.index:
            missing.append((vid, f))
            continue
        row = empty_row(
            vid,
            f,
            patient_id=f.parent.parent.name,
            scan_id=f.parent.name,
            split=split,
            format="nifti",
            needs_rescale=version == "v1",
            **meta.loc[vid].to_dict(),
        )
        if reports is not None and vid in reports.index:
            row["findings"], row["impressions"] = reports.loc[vid, "Findings_EN"], reports.loc[vid, "Impressions_EN"]
        if labels is not None:
            row.update(labels.loc[vid].to_dict() if vid in labels.index else dict.fromkeys(FINDINGS, np.nan))
        rows.append(row)
    if missing:
        names = [v for v, _ in missing]
        if missing_metadata == "error":
            raise ManifestError(
                f"{meta_path}: no metadata row for {len(names)} volume(s) {names[:10]}"
                f"{' ...' if len(names) > 10 else ''}; "
                "their rescale slope/intercept and spacing are unknown (use missing_metadata='skip' to leave them out)"
            )
        for vid, f in missing:
            log.warning("%s: skipped, no row in %s", f, meta_path)
            if failures is not None:
                failures.add(vid, f, f"no metadata row in {meta_path}")
    if excluded:
        log.info("%s: excluded %d non-chest volume(s) listed in no_chest files", base, len(excluded))
    if not rows:
        raise ManifestError(f"{volumes_dir}: no volumes left after exclusions/skips")
    return validate_manifest(pd.DataFrame(rows), f"CT-RATE {split} at {root}")


def _read_reports(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise ManifestError(f"{path}: cannot read reports CSV ({type(e).__name__}: {e})") from None
    need = ["VolumeName", "Findings_EN", "Impressions_EN"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: reports CSV lacks column(s) {missing}")
    df.index = df["VolumeName"].map(strip_suffix)
    if df.index.duplicated().any():
        raise ManifestError(f"{path}: duplicate VolumeName(s) {df.index[df.index.duplicated()].tolist()[:5]}")
    return df[need[1:]]


def _read_ctrate_labels(path: Path) -> pd.DataFrame:
    from silverclip.labels.table import read_labels

    labels = read_labels(path)
    labels.index = labels.index.map(strip_suffix)
    return labels
