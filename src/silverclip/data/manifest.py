"""The manifest: one row per volume, the table every dataset adapter produces and preprocessing reads.

Columns (docs/architecture.md, docs/data.md)::

    volume_id, patient_id, scan_id, split, path, format,        # format: nifti | dicom | npz
    findings, impressions,                                       # report text, may be empty
    spacing_x, spacing_y, spacing_z,                             # mm, from metadata; NaN when unknown
    rescale_slope, rescale_intercept, needs_rescale,             # needs_rescale: CT-RATE v1 raw values
    [18 finding columns, 1/0/-1, optional]  [any extra columns, kept]

Stored as CSV or Parquet (chosen by the file suffix). :func:`ingest_table` turns a user's own CSV/Parquet
list of scans (at least a ``path`` column) into a manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from silverclip.findings import FINDINGS
from silverclip.io import atomic_open, atomic_to_csv
from silverclip.labels.table import volume_id as strip_suffix

ID_COLUMNS = ("volume_id", "patient_id", "scan_id", "split")
REQUIRED_COLUMNS = (
    *ID_COLUMNS,
    "path",
    "format",
    "findings",
    "impressions",
    "spacing_x",
    "spacing_y",
    "spacing_z",
    "rescale_slope",
    "rescale_intercept",
    "needs_rescale",
)
LABEL_COLUMNS = tuple(FINDINGS)
FORMATS = ("nifti", "dicom", "npz")
_TEXT = ("volume_id", "patient_id", "scan_id", "split", "path", "format", "findings", "impressions")
_FLOAT = ("spacing_x", "spacing_y", "spacing_z", "rescale_slope", "rescale_intercept")


class ManifestError(ValueError):
    """An invalid manifest; the message names the file (or source) and the problem."""


def format_of(path: str | Path) -> str:
    """The manifest ``format`` of a path by its name: ``.nii``/``.nii.gz`` -> nifti, ``.npz`` -> npz, else dicom."""
    name = str(path).lower().rstrip("/")
    if name.endswith((".nii.gz", ".nii")):
        return "nifti"
    if name.endswith(".npz"):
        return "npz"
    return "dicom"  # a series folder (or a .dcm file inside one)


def _as_bool(values: pd.Series, source: str) -> pd.Series:
    mapping = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "1.0": True, "0.0": False}
    if values.dtype == bool:
        return values
    out = values.map(lambda v: v if isinstance(v, bool | np.bool_) else mapping.get(str(v).strip().lower()))
    if out.isna().any():
        bad = values[out.isna()].unique().tolist()[:5]
        raise ManifestError(f"{source}: needs_rescale must be true/false, found {bad}")
    return out.astype(bool)


def validate_manifest(df: pd.DataFrame, source: str | Path = "manifest") -> pd.DataFrame:
    """Check and normalise a manifest; returns it with canonical column order and dtypes.

    Raises ManifestError naming ``source`` for: missing columns, empty/duplicate volume ids, ids
    that are not usable as file names, unknown formats, empty paths, non-numeric spacing/rescale,
    label values outside {1, 0, -1}.
    """
    source = str(source)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{source}: missing manifest column(s) {missing}")
    df = df.copy()
    for col in _TEXT:
        df[col] = df[col].astype(object).where(df[col].notna(), "").astype(str)
    ids = df["volume_id"]
    if (ids == "").any():
        raise ManifestError(f"{source}: {int((ids == '').sum())} row(s) with an empty volume_id")
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise ManifestError(f"{source}: duplicate volume_id(s) {dup[:10]}{' ...' if len(dup) > 10 else ''}")
    bad_ids = [v for v in ids if "/" in v or "\\" in v or v.startswith(".")]
    if bad_ids:
        raise ManifestError(f"{source}: volume ids must be usable as file names, found {bad_ids[:5]}")
    bad_fmt = sorted(set(df["format"]) - set(FORMATS))
    if bad_fmt:
        raise ManifestError(f"{source}: unknown format(s) {bad_fmt}; use one of {list(FORMATS)}")
    if (df["path"] == "").any():
        raise ManifestError(f"{source}: empty path for {df.loc[df['path'] == '', 'volume_id'].tolist()[:5]}")
    for col in _FLOAT:
        try:
            df[col] = pd.to_numeric(df[col]).astype(float)
        except (ValueError, TypeError) as e:
            raise ManifestError(f"{source}: column {col} must be numeric ({e})") from None
    df["needs_rescale"] = _as_bool(df["needs_rescale"], source)
    for col in [c for c in LABEL_COLUMNS if c in df.columns]:
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = set(vals.dropna().unique().tolist()) - {1.0, 0.0, -1.0}
        if bad:
            raise ManifestError(f"{source}: label column {col!r} has values {sorted(bad)} outside 1/0/-1")
        df[col] = vals
    ordered = list(REQUIRED_COLUMNS) + [c for c in LABEL_COLUMNS if c in df.columns]
    rest = [c for c in df.columns if c not in ordered]
    return df[ordered + rest].reset_index(drop=True)


def read_table(
    path: str | Path, text_columns: tuple[str, ...] = _TEXT, float_columns: tuple[str, ...] = ()
) -> pd.DataFrame:
    """A manifest-like table from ``.csv`` or ``.parquet``: text columns as strings (empty cells stay ``""``,
    ids keep leading zeros), empty ``float_columns`` cells as NaN. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(
            path,
            dtype={c: str for c in text_columns},
            keep_default_na=False,
            na_values={c: [""] for c in float_columns},
        )
    except Exception as e:  # pandas raises many types for bad files
        raise ManifestError(f"{path}: cannot read manifest ({type(e).__name__}: {e})") from None


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest written by :func:`write_manifest` (``.csv`` or ``.parquet``)."""
    return validate_manifest(read_table(path, _TEXT, _FLOAT), path)


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Validate and write atomically; Parquet when ``path`` ends in ``.parquet``, else CSV."""
    path = Path(path)
    df = validate_manifest(df, path)
    if path.suffix == ".parquet":
        with atomic_open(path, "wb") as f:
            df.to_parquet(f, index=False)
    else:
        atomic_to_csv(df, path)
    return path


def empty_row(volume_id: str, path: str | Path, **values: object) -> dict:
    """A manifest row with defaults (ids derived CT-RATE-style where possible, NaN spacing, no rescale)."""
    row: dict = {
        "volume_id": volume_id,
        "patient_id": volume_id,
        "scan_id": volume_id,
        "split": "",
        "path": str(path),
        "format": format_of(path),
        "findings": "",
        "impressions": "",
        "spacing_x": np.nan,
        "spacing_y": np.nan,
        "spacing_z": np.nan,
        "rescale_slope": 1.0,
        "rescale_intercept": 0.0,
        "needs_rescale": False,
    }
    row.update(values)
    return row


def ingest_table(path: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """A user's own CSV/Parquet list of scans -> manifest.

    Needs a ``path`` column (NIfTI file, DICOM series folder or ``.npz``; relative paths are taken
    relative to ``root``, default the table's folder). Every other manifest column is optional:
    ``volume_id`` defaults to the file/folder name without suffix, ``patient_id``/``scan_id`` to the
    volume id, ``format`` to the path's type, report text to empty, spacing to NaN (read from the
    file), rescale to none. Finding columns and extra columns are kept.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: scan list not found")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:
        raise ManifestError(f"{path}: cannot read scan list ({type(e).__name__}: {e})") from None
    if "path" not in df.columns:
        raise ManifestError(f"{path}: a scan list needs a 'path' column (found {list(df.columns)})")
    base = Path(root) if root is not None else path.parent
    paths = [str(p if Path(p).is_absolute() else base / p) for p in df["path"].astype(str)]
    rows = []
    for i, p in enumerate(paths):
        vid = str(df["volume_id"].iloc[i]) if "volume_id" in df.columns else strip_suffix(Path(p.rstrip("/")).name)
        rows.append(empty_row(vid, p))
    out = pd.DataFrame(rows)
    for col in df.columns:
        if col == "path":
            continue
        values = df[col].replace("", np.nan) if col in _FLOAT or col in LABEL_COLUMNS else df[col]
        if col in REQUIRED_COLUMNS:
            out[col] = (
                values.where(values.notna() & (values.astype(str) != ""), out[col]) if col != "volume_id" else values
            )
        else:
            out[col] = values.to_numpy()
    return validate_manifest(out, path)
