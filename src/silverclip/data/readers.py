"""Volume readers: NIfTI, DICOM series folders and RAD-ChestCT ``.npz``, all returning one canonical :class:`Volume`.

Canonical convention (see docs/data.md): the array is in HU with axes **(x, y, z)** in nibabel's RAS+
orientation, i.e. index ``i`` grows towards the patient's **R**ight, ``j`` towards **A**nterior and
``k`` towards **S**uperior (head). ``Volume.affine`` maps (i, j, k, 1) of *that* array to RAS+ world mm.

Reorientation is done with :mod:`nibabel.orientations` and is pure numpy views (flips/transposes),
so reading never copies or upcasts the volume: int16 stays int16 (a float64 copy of a CT costs more
than resampling it, see DESIGN.md). Consumers that need a contiguous buffer (preprocessing) undo the
views themselves (``silverclip.data.resample``).

Every error names the file: :class:`VolumeReadError` (a ``ValueError``) for corrupt/unsupported input,
``FileNotFoundError`` for a missing path.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import aff2axcodes, apply_orientation, inv_ornt_aff, io_orientation

log = logging.getLogger(__name__)

#: RAD-ChestCT's public volumes were resampled to 0.8 mm isotropic (Draelos et al. 2021).
RADCHESTCT_SPACING = (0.8, 0.8, 0.8)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
FORMATS = ("nifti", "dicom", "npz")


class VolumeReadError(ValueError):
    """A volume file exists but cannot be turned into a valid 3D HU array; the message names the file."""


@dataclass
class Volume:
    """One CT volume in canonical orientation.

    array: HU, shape (X, Y, Z), int16 (when the values are integral and fit) or float32, axes RAS+
        (may be a non-contiguous numpy view of the file buffer; treat it as read-only).
    spacing: voxel size (x, y, z) in mm of ``array``.
    affine: 4x4 float64, voxel index (i, j, k) of ``array`` -> RAS+ world mm.
    source: the file or folder it came from.
    orientation: axis codes of ``array`` (always "RAS" for readers in this module).
    source_orientation: axis codes of the data as stored (e.g. "LPS" for a DICOM-order NIfTI).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source: str
    orientation: str = "RAS"
    source_orientation: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- helpers


def check_path(path: Path) -> None:
    """Raise, naming ``path``, why it cannot be opened: missing, a broken or looping link, no permission."""
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise VolumeReadError(f"{path}: a loop of symbolic links (it never reaches a file)") from None
        if e.errno == errno.ENOENT and path.is_symlink():
            raise FileNotFoundError(
                f"{path}: broken symbolic link (to {os.readlink(path)}, which does not exist)"
            ) from None
        if e.errno == errno.ENOENT:
            raise FileNotFoundError(f"{path}: no such file or folder") from None
        if e.errno == errno.EACCES:
            raise PermissionError(f"{path}: permission denied") from None
        raise VolumeReadError(f"{path}: cannot be opened ({e.strerror})") from None


def detect_format(path: str | Path) -> str:
    """``nifti`` (.nii/.nii.gz), ``dicom`` (a folder) or ``npz``; raises naming the path otherwise."""
    path = Path(path)
    check_path(path)
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(".npz"):
        return "npz"
    if name.endswith(".dcm"):
        return "dicom"
    raise VolumeReadError(f"{path}: unknown volume format (expected .nii, .nii.gz, .npz or a DICOM folder)")


def _axcodes(affine: np.ndarray) -> str:
    return "".join(c or "?" for c in aff2axcodes(affine))


def canonicalize(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``array`` (voxel->world ``affine``, RAS+ mm) to the closest canonical RAS+ axis order.

    Returns (view, new_affine); no data is copied (numpy flips/transposes only).
    """
    ornt = io_orientation(affine)
    view = apply_orientation(array, ornt)
    new_affine = affine @ inv_ornt_aff(ornt, array.shape[:3])
    return view, new_affine


def _voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    return tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def _with_spacing(affine: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Same directions and origin, voxel sizes replaced by ``spacing`` (x, y, z of the array's axes)."""
    out = affine.astype(np.float64).copy()
    sizes = np.asarray(_voxel_sizes(out))
    sizes[sizes == 0] = 1.0
    out[:3, :3] = out[:3, :3] / sizes * np.asarray(spacing, dtype=np.float64)
    return out


def to_hu(data: np.ndarray, slope: float = 1.0, intercept: float = 0.0) -> np.ndarray:
    """``data * slope + intercept`` as int16 when integral and in range, else float32 (never float64).

    Identity scaling of an int16 array returns it unchanged (no copy).
    """
    slope, intercept = float(slope), float(intercept)
    integral = np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_
    if integral and slope == 1.0 and intercept == round(intercept):
        if data.dtype == np.int16 and intercept == 0:
            return data
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        lo, hi = lo + int(intercept), hi + int(intercept)
        if -32768 <= lo and hi <= 32767:
            if data.dtype == np.int16:
                # In-range sum computed in int16 directly: no int64/float intermediate.
                return np.add(data, np.int16(intercept), dtype=np.int16)
            out = data.astype(np.int16)
            if intercept:
                out += np.int16(intercept)
            return out
    out = data.astype(np.float32)  # copy; float32 is enough for HU
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def _check_array(array: np.ndarray, path: Path) -> np.ndarray:
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim > 3:
        n = int(np.prod(array.shape[3:]))
        raise VolumeReadError(
            f"{path}: a {array.ndim}D image of shape {tuple(array.shape)} ({n} volumes: a time series or "
            "multi-channel file); expected one 3D CT volume"
        )
    if array.ndim != 3:
        raise VolumeReadError(f"{path}: array of shape {tuple(array.shape)} is not 3D (a 2D image?); expected a volume")
    if min(array.shape) < 2:
        raise VolumeReadError(f"{path}: array of shape {tuple(array.shape)} is a 2D image or empty, not a volume")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            raise VolumeReadError(f"{path}: {int(bad.sum())} voxel(s) are NaN or infinite")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise VolumeReadError(f"{path}: unsupported voxel type {array.dtype}")
    return array


def _check_file(path: Path) -> None:
    check_path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise VolumeReadError(f"{path}: empty file (0 bytes)")


# ----------------------------------------------------------------------------------------------- NIfTI


def _decompress(raw: bytes, path: Path) -> bytes:
    # ISA-L's gzip is ~2x faster than zlib on CT volumes (0.40 s vs 0.89 s for 512x512x300 int16 here),
    # and decompression is the floor of the whole preprocessing; fall back to zlib when isal is missing.
    try:
        from isal import igzip

        decompress, errors = igzip.decompress, (EOFError, OSError, ValueError)
    except ImportError:  # pragma: no cover - isal is a dependency
        import gzip

        decompress, errors = gzip.decompress, (EOFError, OSError, zlib.error)
    try:
        return decompress(raw)
    except errors as e:
        raise VolumeReadError(f"{path}: truncated or corrupt gzip stream ({type(e).__name__}: {e})") from None


def read_nifti(
    path: str | Path,
    rescale: tuple[float, float] | None = None,
    fallback_spacing: Sequence[float] | None = None,
) -> Volume:
    """Read a ``.nii``/``.nii.gz`` file into a canonical :class:`Volume`.

    Orientation comes from the header (sform, else qform), never from array order. Header scaling
    (scl_slope/scl_inter) is applied; ``rescale=(slope, intercept)`` is applied on top of it, for
    CT-RATE v1 volumes whose stored values are raw scanner values (HU = value * slope + intercept,
    as CT-CLIP does after nibabel's scaling). ``fallback_spacing`` (x, y, z of the canonical array) replaces
    the header's voxel sizes only when the header carries none (all exactly 1.0 mm).

    The file is decompressed with ISA-L into one buffer and the voxels are a zero-copy view of it
    (nibabel parses the header and affine; ``Nifti1Image.from_bytes`` would add a 0.1 s copy per volume).
    """
    path = Path(path)
    _check_file(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = _decompress(raw, path)
    header_cls = _nifti_header_class(raw, path)
    try:
        header = header_cls.from_fileobj(io.BytesIO(raw), check=False)
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
        affine = header.get_best_affine().astype(np.float64)
        slope, inter = header.get_slope_inter()
    except Exception as e:  # nibabel raises several types on bad headers
        raise VolumeReadError(f"{path}: invalid NIfTI header ({type(e).__name__}: {e})") from None
    count = int(np.prod(shape)) if shape else 0
    needed = offset + count * dtype.itemsize
    if len(raw) < needed:
        raise VolumeReadError(f"{path}: truncated NIfTI data ({len(raw)} bytes, header needs {needed})")
    if len(shape) < 3:
        raise VolumeReadError(f"{path}: array of shape {shape} is not 3D (a 2D image?); expected a volume")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    if dtype.byteorder not in ("=", "|", nib.volumeutils.native_code):
        data = data.astype(dtype.newbyteorder("="))
    data = _check_array(data, path)
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    if rescale is not None:  # (x * s_h + i_h) * s + i
        slope, inter = slope * float(rescale[0]), inter * float(rescale[0]) + float(rescale[1])
    hu = to_hu(data, slope, inter)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeReadError(f"{path}: the header affine is singular or not finite: {affine.tolist()}")
    source_codes = _axcodes(affine)
    array, c_affine = canonicalize(hu, affine)
    if fallback_spacing is not None and np.allclose(_voxel_sizes(c_affine), 1.0, atol=1e-6):
        if all(np.isfinite(v) and v > 0 for v in fallback_spacing):
            log.debug("%s: header has no voxel size; using %s", path, tuple(fallback_spacing))
            c_affine = _with_spacing(c_affine, fallback_spacing)
    return Volume(array, _voxel_sizes(c_affine), c_affine, str(path), "RAS", source_codes, {"format": "nifti"})


def _nifti_header_class(raw: bytes, path: Path) -> type:
    if len(raw) < 348:
        raise VolumeReadError(f"{path}: too short for a NIfTI header ({len(raw)} bytes)")
    for order in ("<", ">"):
        size = int(np.frombuffer(raw, dtype=f"{order}i4", count=1)[0])
        if size == 348:
            return nib.Nifti1Header
        if size == 540:
            return nib.Nifti2Header
    raise VolumeReadError(f"{path}: not a NIfTI file (bad sizeof_hdr)")


# ----------------------------------------------------------------------------------------------- npz


def read_npz(path: str | Path, spacing: Sequence[float] | None = None, key: str = "ct") -> Volume:
    """Read a RAD-ChestCT ``.npz`` (key ``ct``, int16 HU) into a canonical :class:`Volume`.

    Axis assumption (documented in docs/data.md): RAD-ChestCT's preprocessing (github.com/rachellea/
    ct-volume-preprocessing, ``preprocess_volumes.py``) stacks slices with dicom-numpy sorted by
    *descending* position along the slice normal, only accepts ImageOrientationPatient [1,0,0,0,1,0],
    and finally transposes to ``[slices, rows, columns]``. So ``ct[k, j, i]`` has k from head to feet,
    j from anterior to posterior (DICOM rows) and i from the patient's right to left (DICOM columns),
    i.e. axis codes (I, P, L) for (k, j, i). HLIP (github.com/Zch0414/hlip) also treats axis 0 as slices.
    The canonical array is ``ct[::-1, ::-1, ::-1].transpose(2, 1, 0)`` (a view).
    Spacing: 0.8 mm isotropic unless given (x, y, z). The files carry no scanner origin, so the
    affine's origin is the volume corner (0, 0, 0).
    """
    path = Path(path)
    _check_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files:
                raise VolumeReadError(f"{path}: no array {key!r} in the .npz (found {z.files})")
            data = z[key]
    except VolumeReadError:
        raise
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError ...
        raise VolumeReadError(f"{path}: cannot read .npz ({type(e).__name__}: {e})") from None
    data = _check_array(data, path)
    hu = to_hu(data, 1.0, 0.0)
    spacing = tuple(float(v) for v in (spacing if spacing is not None else RADCHESTCT_SPACING))
    if len(spacing) != 3 or not all(np.isfinite(v) and v > 0 for v in spacing):
        raise VolumeReadError(f"{path}: invalid spacing {spacing}")
    array = hu[::-1, ::-1, ::-1].transpose(2, 1, 0)
    affine = np.diag([*spacing, 1.0])
    return Volume(array, spacing, affine, str(path), "RAS", "IPL", {"format": "npz"})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- any


def load_volume(
    path: str | Path,
    format: str | None = None,
    rescale: tuple[float, float] | None = None,
    spacing: Sequence[float] | None = None,
) -> Volume:
    """Read a NIfTI file, a DICOM series folder or a RAD-ChestCT ``.npz`` (auto-detected) as a canonical Volume.

    rescale: (slope, intercept) applied to the stored values (NIfTI only; CT-RATE v1). DICOM always
        applies its own RescaleSlope/Intercept, RAD-ChestCT is already HU.
    spacing: voxel size (x, y, z) in mm: the spacing of an ``.npz`` (default 0.8 mm isotropic), and a
        fallback for NIfTI headers without voxel sizes; ignored for DICOM (the headers are the truth).
    """
    fmt = format or detect_format(path)
    if fmt == "nifti":
        return read_nifti(path, rescale=rescale, fallback_spacing=spacing)
    if fmt == "dicom":
        from silverclip.data.dicom import read_dicom_series

        return read_dicom_series(path)
    if fmt == "npz":
        return read_npz(path, spacing=spacing)
    raise ValueError(f"{path}: unknown format {fmt!r}; use one of {FORMATS}")
