"""Volume readers: real DICOM/NIfTI samples, canonical orientation, RAD-ChestCT axes, broken inputs."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from silverclip.data.readers import VolumeReadError, detect_format, load_volume, read_npz

LIDC = "ct_samples/lidc_idri"
TOTALSEG = "ct_samples/totalsegmentator"


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype=None) -> Path:
    img = nib.Nifti1Image(array, affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    nib.save(img, str(path))
    return path


def phantom(shape=(40, 36, 20), seed=0) -> np.ndarray:
    """Asymmetric int16 content so that any wrong flip/transpose changes the array."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1500, size=shape).astype(np.int16)


# --------------------------------------------------------------------------- real samples


def test_lidc_dicom_and_nifti_give_same_hu_and_geometry(shared_data):
    dcm = load_volume(shared_data / LIDC / "LIDC-IDRI-0001")
    nii = load_volume(shared_data / LIDC / "LIDC-IDRI-0001_16slices_HU.nii.gz")
    assert dcm.shape == nii.shape == (512, 512, 16)
    assert dcm.array.dtype == nii.array.dtype == np.int16
    np.testing.assert_array_equal(dcm.array, nii.array)
    np.testing.assert_allclose(dcm.affine, nii.affine, atol=1e-3)
    np.testing.assert_allclose(dcm.spacing, (0.703125, 0.703125, 2.5), atol=1e-5)
    # Both are stored in DICOM order (L, P, S) and come out RAS+: positive diagonal affine.
    assert dcm.source_orientation == nii.source_orientation == "LPS"
    assert dcm.orientation == "RAS" and np.all(np.diag(dcm.affine)[:3] > 0)
    # HU: air/lung well below -500, soft tissue around 0..100, bone up to ~3000, padding -2048 outside the FOV.
    a = dcm.array
    assert a.min() >= -3024 and a.max() <= 4000
    assert (a < -500).mean() > 0.3 and ((a > -100) & (a < 200)).mean() > 0.1
    # Canonical orientation: the first slice (k=0) is the most inferior (z = -132.5 mm in RAS/LPS).
    assert dcm.affine[2, 3] == pytest.approx(-132.5, abs=1e-3)


def test_lidc_0003_dicom(shared_data):
    v = load_volume(shared_data / LIDC / "LIDC-IDRI-0003")
    assert v.shape == (512, 512, 11) and v.array.dtype == np.int16
    assert v.spacing[2] == pytest.approx(2.5, abs=1e-3)


def test_totalsegmentator_int32_nifti_becomes_int16_hu(shared_data):
    path = shared_data / TOTALSEG / "example_ct.nii.gz"
    v = load_volume(path)
    assert v.shape == (122, 101, 112) and v.array.dtype == np.int16
    assert v.spacing == pytest.approx((3.0, 3.0, 3.0))
    ref = nib.as_closest_canonical(nib.load(str(path))).get_fdata()
    np.testing.assert_array_equal(v.array, ref)  # same values and same canonical array as nibabel
    assert -1300 <= v.array.min() and v.array.max() < 4000  # resampled test file: slight undershoot


def test_totalsegmentator_dicom_uint16_with_intercept(shared_data):
    v = load_volume(shared_data / TOTALSEG / "example_ct_dicom")
    assert v.shape == (512, 512, 20) and v.array.dtype == np.int16
    assert v.array.min() == -1024  # stored 0 + RescaleIntercept -1024
    assert v.spacing == pytest.approx((0.9765625, 0.9765625, 2.0), abs=1e-4)
    assert v.source_orientation == "LPS"


# --------------------------------------------------------------------------- orientation


def test_any_stored_orientation_gives_the_same_canonical_array(tmp_path):
    ras = phantom()
    aff = np.diag([0.7, 0.8, 2.0, 1.0])
    aff[:3, 3] = [-10, 20, -30]
    a = load_volume(save_nifti(tmp_path / "ras.nii.gz", ras, aff))
    # Same voxels stored L/P (DICOM order): flip x and y, and move the origin to the other corner.
    lps_aff = aff.copy()
    lps_aff[:3, :2] *= -1
    lps_aff[:3, 3] = aff[:3, :3] @ [ras.shape[0] - 1, ras.shape[1] - 1, 0] + aff[:3, 3]
    b = load_volume(save_nifti(tmp_path / "lps.nii.gz", ras[::-1, ::-1].copy(), lps_aff))
    # Same voxels stored as (z, x, y): permute the affine's columns.
    zxy_aff = np.eye(4)
    zxy_aff[:3, :3] = aff[:3, [2, 0, 1]]
    zxy_aff[:3, 3] = aff[:3, 3]
    c = load_volume(save_nifti(tmp_path / "zxy.nii", ras.transpose(2, 0, 1).copy(), zxy_aff))
    for v in (a, b, c):
        np.testing.assert_array_equal(v.array, ras)
        np.testing.assert_allclose(v.affine, aff, atol=1e-5)
        assert v.spacing == pytest.approx((0.7, 0.8, 2.0))
    assert (a.source_orientation, b.source_orientation, c.source_orientation) == ("RAS", "LPS", "SRA")


def test_reader_matches_nibabel_and_keeps_int16_without_copy(tmp_path):
    arr = phantom()
    path = save_nifti(tmp_path / "v.nii.gz", arr, np.diag([-1.0, 1.0, 1.5, 1.0]))
    v = load_volume(path)
    ref = nib.as_closest_canonical(nib.load(str(path)))
    np.testing.assert_array_equal(v.array, np.asanyarray(ref.dataobj))
    np.testing.assert_allclose(v.affine, ref.affine)
    assert v.array.dtype == np.int16 and not v.array.flags.owndata  # a view of the decompressed buffer


def test_rescale_override_for_ctrate_v1(tmp_path):
    raw = (phantom() + 1024).astype(np.int16)  # raw scanner values, CT-RATE v1 style
    path = save_nifti(tmp_path / "v1.nii.gz", raw, np.eye(4))
    v = load_volume(path, rescale=(1.0, -1024.0))
    assert v.array.dtype == np.int16
    np.testing.assert_array_equal(v.array, raw.astype(np.int32) - 1024)
    w = load_volume(path, rescale=(0.5, -1024.0))
    assert w.array.dtype == np.float32
    np.testing.assert_allclose(w.array, raw * 0.5 - 1024)


def test_header_without_spacing_uses_fallback(tmp_path):
    path = save_nifti(tmp_path / "nospacing.nii.gz", phantom(), np.eye(4))
    assert load_volume(path).spacing == pytest.approx((1.0, 1.0, 1.0))
    assert load_volume(path, spacing=(0.75, 0.75, 1.5)).spacing == pytest.approx((0.75, 0.75, 1.5))
    real = save_nifti(tmp_path / "spacing.nii.gz", phantom(), np.diag([0.5, 0.5, 2.0, 1.0]))
    assert load_volume(real, spacing=(0.75, 0.75, 1.5)).spacing == pytest.approx((0.5, 0.5, 2.0))  # header wins


def test_radchestct_npz_axis_convention(tmp_path):
    # RAD-ChestCT: ct[k, j, i], k head->feet, j anterior->posterior, i patient's right->left.
    ct = np.full((20, 30, 40), -1000, dtype=np.int16)
    ct[0, 0, 0] = 500  # most superior, most anterior, patient's right
    ct[19, 29, 39] = 700  # most inferior, most posterior, patient's left
    np.savez_compressed(tmp_path / "trn00001.npz", ct=ct)
    v = load_volume(tmp_path / "trn00001.npz")
    assert v.shape == (40, 30, 20) and v.spacing == (0.8, 0.8, 0.8)
    # RAS+: i grows to the right, j to anterior, k to superior.
    assert v.array[39, 29, 19] == 500 and v.array[0, 0, 0] == 700
    assert read_npz(tmp_path / "trn00001.npz", spacing=(1, 1, 2)).spacing == (1.0, 1.0, 2.0)


def test_detect_format(tmp_path, shared_data):
    assert detect_format(shared_data / LIDC / "LIDC-IDRI-0001") == "dicom"
    assert detect_format(shared_data / TOTALSEG / "example_ct.nii.gz") == "nifti"
    (tmp_path / "x.npz").write_bytes(b"x")
    assert detect_format(tmp_path / "x.npz") == "npz"
    (tmp_path / "x.mha").write_bytes(b"x")
    with pytest.raises(VolumeReadError, match="x.mha"):
        detect_format(tmp_path / "x.mha")


# --------------------------------------------------------------------------- broken inputs


def test_truncated_nii_gz(tmp_path):
    good = save_nifti(tmp_path / "good.nii.gz", phantom(), np.eye(4))
    data = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(VolumeReadError, match=r"truncated\.nii\.gz.*(truncated|corrupt)"):
        load_volume(bad)


def test_truncated_uncompressed_nii(tmp_path):
    good = save_nifti(tmp_path / "good.nii", phantom(), np.eye(4))
    bad = tmp_path / "short.nii"
    bad.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(VolumeReadError, match=r"short\.nii: truncated"):
        load_volume(bad)


def test_empty_file(tmp_path):
    for name in ("empty.nii.gz", "empty.npz"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(VolumeReadError, match=f"{name}: empty file"):
            load_volume(tmp_path / name)


def test_not_gzip_and_not_nifti(tmp_path):
    p = tmp_path / "garbage.nii.gz"
    p.write_bytes(gzip.compress(b"not a nifti header" * 10))
    with pytest.raises(VolumeReadError, match="garbage.nii.gz"):
        load_volume(p)


def test_2d_arrays(tmp_path):
    save_nifti(tmp_path / "flat.nii.gz", phantom((40, 40, 1))[..., 0], np.eye(4))
    with pytest.raises(VolumeReadError, match=r"flat\.nii\.gz.*(2D|shape)"):
        load_volume(tmp_path / "flat.nii.gz")
    save_nifti(tmp_path / "oneslice.nii.gz", phantom((40, 40, 1)), np.eye(4))
    with pytest.raises(VolumeReadError, match=r"oneslice\.nii\.gz.*2D"):
        load_volume(tmp_path / "oneslice.nii.gz")
    np.savez(tmp_path / "flat.npz", ct=np.zeros((40, 40), np.int16))
    with pytest.raises(VolumeReadError, match=r"flat\.npz.*3D"):
        load_volume(tmp_path / "flat.npz")


def test_nan_voxels(tmp_path):
    arr = phantom().astype(np.float32)
    arr[3, 4, 5] = np.nan
    save_nifti(tmp_path / "nan.nii.gz", arr, np.eye(4))
    with pytest.raises(VolumeReadError, match=r"nan\.nii\.gz: 1 voxel\(s\) are NaN"):
        load_volume(tmp_path / "nan.nii.gz")


def test_missing_path_and_npz_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.nii.gz"):
        load_volume(tmp_path / "nowhere.nii.gz")
    np.savez(tmp_path / "wrongkey.npz", volume=phantom())
    with pytest.raises(VolumeReadError, match=r"wrongkey\.npz: no array 'ct'"):
        load_volume(tmp_path / "wrongkey.npz")


@pytest.fixture()
def lidc_copy(shared_data, tmp_path) -> Path:
    dst = tmp_path / "series"
    shutil.copytree(shared_data / LIDC / "LIDC-IDRI-0001", dst)
    return dst


def test_dicom_missing_slice(lidc_copy):
    (lidc_copy / "z-112.500000.dcm").unlink()
    with pytest.raises(VolumeReadError, match=r"series: missing slices.*gap of 5\.000 mm"):
        load_volume(lidc_copy)


def test_dicom_duplicate_slice(lidc_copy):
    shutil.copy(lidc_copy / "z-100.000000.dcm", lidc_copy / "copy.dcm")
    with pytest.raises(VolumeReadError, match="series: duplicate slice position"):
        load_volume(lidc_copy)


def test_dicom_inconsistent_geometry(lidc_copy):
    import pydicom

    f = lidc_copy / "z-105.000000.dcm"
    ds = pydicom.dcmread(f)
    ds.PixelSpacing = [0.8, 0.8]
    ds.save_as(f)
    with pytest.raises(VolumeReadError, match="series: inconsistent DICOM geometry, PixelSpacing"):
        load_volume(lidc_copy)


def test_dicom_empty_and_single_slice(tmp_path, shared_data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeReadError, match="empty: empty folder"):
        load_volume(tmp_path / "empty")
    (tmp_path / "one").mkdir()
    shutil.copy(shared_data / LIDC / "LIDC-IDRI-0001" / "z-100.000000.dcm", tmp_path / "one")
    with pytest.raises(VolumeReadError, match="one: a single DICOM slice"):
        load_volume(tmp_path / "one")
