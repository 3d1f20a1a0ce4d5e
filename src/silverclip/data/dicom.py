"""DICOM series folder -> canonical :class:`~silverclip.data.readers.Volume` (pydicom for parsing).

Slices are ordered by ImagePositionPatient projected on the slice normal (row cosine x column cosine),
never by file name or InstanceNumber. RescaleSlope/RescaleIntercept are applied per slice. The affine
is built from ImageOrientationPatient, PixelSpacing and the first/last positions (so a gantry tilt
shows up as a shear, not as a wrong spacing), converted from DICOM's LPS to RAS+ and reoriented to
the same canonical (x, y, z) RAS+ array as the NIfTI reader.

The geometry checks (one series, same size/spacing/orientation, evenly spaced collinear slices) are
hand-written because they are where real series go wrong and each failure must name the folder and
the problem; SimpleITK's series reader would silently accept gaps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from silverclip.data.readers import Volume, VolumeReadError, _axcodes, _voxel_sizes, canonicalize

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _read_slices(folder: Path, series_uid: str | None) -> list:
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise VolumeReadError(f"{folder}: empty folder, no DICOM files")
    slices, skipped = [], 0
    for f in files:
        if f.stat().st_size == 0:
            raise VolumeReadError(f"{folder}: empty file {f.name} (0 bytes) in the DICOM series")
        try:
            ds = pydicom.dcmread(f)
        except InvalidDicomError:
            skipped += 1  # not DICOM (README, DICOMDIR index ...): ignore
            continue
        except Exception as e:
            raise VolumeReadError(f"{f}: unreadable DICOM file ({type(e).__name__}: {e})") from None
        if "PixelData" not in ds or "ImagePositionPatient" not in ds:
            skipped += 1
            continue
        slices.append((f, ds))
    if not slices:
        raise VolumeReadError(f"{folder}: no DICOM image slices found ({skipped} other file(s))")
    by_series: dict[str, list] = {}
    for f, ds in slices:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((f, ds))
    if series_uid is not None:
        if series_uid not in by_series:
            raise VolumeReadError(f"{folder}: series {series_uid} not found (have {sorted(by_series)})")
        return by_series[series_uid]
    if len(by_series) > 1:
        counts = {k: len(v) for k, v in by_series.items()}
        raise VolumeReadError(f"{folder}: contains {len(by_series)} series {counts}; pass series_uid to choose one")
    return next(iter(by_series.values()))


def read_dicom_series(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read a folder holding one DICOM series (or the folder of a given ``.dcm`` file) as a canonical Volume.

    Raises VolumeReadError naming the folder on: no slices, several series, a single slice,
    inconsistent Rows/Columns/PixelSpacing/ImageOrientationPatient, duplicate positions, missing
    slices (a gap > 1.5x the median step) or positions off the slice line, undecodable pixel data.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such DICOM folder")
    if path.is_file():
        import pydicom

        series_uid = series_uid or str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID", ""))
        path = path.parent
    slices = _read_slices(path, series_uid)
    if len(slices) < 2:
        raise VolumeReadError(f"{path}: a single DICOM slice is a 2D image, not a volume")

    f0, ds0 = slices[0]
    for name in ("Rows", "Columns"):
        values = {int(ds.get(name, -1)) for _, ds in slices}
        if len(values) > 1:
            raise VolumeReadError(
                f"{path}: inconsistent DICOM geometry, {name} differs between slices: {sorted(values)}"
            )
    try:
        spacing_rc = np.array([[float(v) for v in ds.PixelSpacing] for _, ds in slices])
        iop = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in slices])
        ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in slices])
    except (AttributeError, TypeError, ValueError) as e:
        raise VolumeReadError(f"{path}: missing or invalid PixelSpacing/ImageOrientationPatient ({e})") from None
    if not np.allclose(spacing_rc, spacing_rc[0], atol=1e-4):
        raise VolumeReadError(f"{path}: inconsistent DICOM geometry, PixelSpacing differs between slices")
    if not np.allclose(iop, iop[0], atol=1e-4):
        raise VolumeReadError(f"{path}: inconsistent DICOM geometry, ImageOrientationPatient differs between slices")
    row_cos, col_cos = iop[0, :3], iop[0, 3:]
    normal = np.cross(row_cos, col_cos)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3:
        raise VolumeReadError(f"{path}: ImageOrientationPatient {iop[0].tolist()} is not two orthonormal cosines")

    pos = ipp @ normal
    order = np.argsort(pos, kind="stable")
    pos, ipp = pos[order], ipp[order]
    slices = [slices[i] for i in order]
    steps = np.diff(pos)
    if np.any(steps < 1e-3):
        k = int(np.argmin(steps))
        raise VolumeReadError(
            f"{path}: duplicate slice position {pos[k]:.3f} mm ({slices[k][0].name}, {slices[k + 1][0].name})"
        )
    median = float(np.median(steps))
    if np.any(np.abs(steps - median) > 0.5 * median):
        k = int(np.argmax(np.abs(steps - median)))
        raise VolumeReadError(
            f"{path}: missing slices or uneven spacing: gap of {steps[k]:.3f} mm between positions "
            f"{pos[k]:.3f} and {pos[k + 1]:.3f} (median step {median:.3f} mm)"
        )
    n = len(slices)
    step = (ipp[-1] - ipp[0]) / (n - 1)
    off_line = np.linalg.norm(ipp - (ipp[0] + np.arange(n)[:, None] * step), axis=1)
    if off_line.max() > 0.2 * np.linalg.norm(step):
        raise VolumeReadError(f"{path}: inconsistent DICOM geometry, slice positions are not on a line")

    rows, cols = int(ds0.Rows), int(ds0.Columns)
    planes, integral = [], True
    for f, ds in slices:
        try:
            px = ds.pixel_array
        except Exception as e:
            raise VolumeReadError(f"{f}: cannot decode DICOM pixel data ({type(e).__name__}: {e})") from None
        if px.shape != (rows, cols):
            raise VolumeReadError(f"{f}: pixel array shape {px.shape} != (Rows, Columns) {(rows, cols)}")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
        if slope == 1.0 and inter == round(inter) and np.issubdtype(px.dtype, np.integer):
            planes.append(px.astype(np.int32) + int(inter))
        else:
            integral = False
            planes.append(px.astype(np.float32) * np.float32(slope) + np.float32(inter))
    lo = min(float(p.min()) for p in planes)
    hi = max(float(p.max()) for p in planes)
    dtype = np.int16 if integral and -32768 <= lo and hi <= 32767 else np.float32
    stack = np.empty((n, rows, cols), dtype=dtype)  # (k, j, i): slice, row, column
    for k, p in enumerate(planes):
        stack[k] = p
    data = stack.transpose(2, 1, 0)  # (i, j, k) view

    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing_rc[0, 1]  # i walks along a row: column spacing
    lps[:3, 1] = col_cos * spacing_rc[0, 0]  # j walks down a column: row spacing
    lps[:3, 2] = step
    lps[:3, 3] = ipp[0]
    affine = LPS_TO_RAS @ lps
    array, c_affine = canonicalize(data, affine)
    meta = {"format": "dicom", "series_uid": str(ds0.get("SeriesInstanceUID", "")), "n_slices": n}
    return Volume(array, _voxel_sizes(c_affine), c_affine, str(path), "RAS", _axcodes(affine), meta)
