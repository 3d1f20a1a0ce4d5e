"""Resampling against torch's trilinear, presets, and the cached/resumable/sharded preprocessing run."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from silverclip.cli import main
from silverclip.data.cache import VolumeCache
from silverclip.data.manifest import empty_row, write_manifest
from silverclip.data.preprocess import in_shard, parse_shard, preprocess_manifest, preprocess_path, preprocess_volume
from silverclip.data.presets import load_preset
from silverclip.data.readers import Volume
from silverclip.data.resample import center_crop_pad, output_shape, resample

DEMO = load_preset("demo")  # 6 mm, 64x64x48


def trilinear(stored: np.ndarray, spacing, target) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(stored, dtype=np.float32))[None, None]
    scale = tuple(float(s) / float(t) for s, t in zip(spacing, target))
    y = F.interpolate(x, scale_factor=scale, mode="trilinear", align_corners=False, recompute_scale_factor=False)
    return y[0, 0].numpy()


VIEWS = {
    "identity": (lambda a: a, (0, 1, 2)),
    "flip0": (lambda a: a[::-1], (0, 1, 2)),
    "lps_like": (lambda a: a.transpose(2, 1, 0)[::-1, :, ::-1], (2, 1, 0)),
    "fortran": (lambda a: a.T[:, ::-1], (2, 1, 0)),
}


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize(
    "spacing,target",
    [((0.7, 0.8, 1.0), (1.5, 1.5, 3.0)), ((3.0, 3.0, 3.0), (1.5, 1.5, 3.0)), ((0.5, 2, 1), (1, 1, 2.5))],
)
def test_resample_equals_torch_trilinear_on_the_stored_buffer(view, spacing, target):
    stored = np.random.default_rng(1).integers(-1000, 1000, (30, 25, 20)).astype(np.int16)
    fn, perm = VIEWS[view]
    arr = fn(stored)
    out = resample(arr, spacing, target).numpy()
    # Reference: torch trilinear of the stored buffer (spacing permuted into stored axis order), then the view.
    sp, tg = [0.0] * 3, [0.0] * 3
    for vax, sax in enumerate(perm):
        sp[sax], tg[sax] = spacing[vax], target[vax]
    ref = fn(trilinear(stored, sp, tg))
    assert out.shape == ref.shape == output_shape(arr.shape, spacing, target)
    np.testing.assert_allclose(out, ref, atol=5e-3)


def test_resample_preserves_physical_size():
    arr = np.zeros((100, 80, 60), np.int16)
    arr[20:60, 10:50, 15:45] = 100  # 40 x 40 x 30 voxels at (0.5, 0.75, 1.0) mm = 20 x 30 x 30 mm
    out = resample(arr, (0.5, 0.75, 1.0), (1.0, 1.5, 3.0)).numpy()
    assert out.shape == (50, 40, 20)
    inside = out > 50
    assert inside.any(0).any(1).sum() == pytest.approx(20, abs=1)  # x extent in 1 mm voxels
    assert inside.any(0).any(0).sum() == pytest.approx(10, abs=1)  # z extent in 3 mm voxels


def test_center_crop_pad():
    a = np.arange(5 * 4 * 3).reshape(5, 4, 3)
    out = center_crop_pad(a, (3, 6, 3), pad_value=-1)
    assert out.shape == (3, 6, 3)
    np.testing.assert_array_equal(out[:, 1:5, :], a[1:4])
    assert (out[:, 0] == -1).all() and (out[:, 5] == -1).all()


def test_preprocess_volume_window_shape_and_pad():
    arr = np.full((40, 40, 20), 3000, np.int16)  # bright block that overflows the window
    arr[:, :, :10] = -3000
    vol = Volume(arr, (6.0, 6.0, 6.0), np.diag([6.0, 6.0, 6.0, 1.0]), "mem")
    out = preprocess_volume(vol, DEMO)
    assert out.shape == DEMO.shape and out.dtype == np.int16
    assert out.min() == DEMO.window[0] and out.max() == DEMO.window[1]  # clipped to the window (pad -1000 inside)
    assert (out[:12] == -1000).all()  # 40 voxels centred in 64: 12 of padding each side
    np.testing.assert_array_equal(out[12:52, 12:52, 14:24], -1000)
    np.testing.assert_array_equal(out[12:52, 12:52, 24:34], DEMO.window[1])
    normed = DEMO.normalize(out)
    assert normed.min() == -1.0 and normed.max() == 1.0


def test_lidc_dicom_and_nifti_preprocess_identically(shared_data):
    lidc = shared_data / "ct_samples/lidc_idri"
    a = preprocess_path(lidc / "LIDC-IDRI-0001", "demo")
    b = preprocess_path(lidc / "LIDC-IDRI-0001_16slices_HU.nii.gz", "demo")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (64, 64, 48) and (a > -1000).sum() > 1000  # the body is there


def test_shards_partition_ids():
    ids = [f"train_{i}_a_1" for i in range(200)]
    parts = [{v for v in ids if in_shard(v, (i, 3))} for i in range(3)]
    assert set().union(*parts) == set(ids) and sum(len(p) for p in parts) == len(ids)
    assert all(len(p) > 30 for p in parts)
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "a/b", "1"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


# --------------------------------------------------------------------------- dataset run with broken files


def _nifti(path: Path, arr: np.ndarray, spacing=(1.5, 1.5, 3.0)) -> Path:
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))
    return path


@pytest.fixture()
def folder_with_broken_files(tmp_path) -> Path:
    """3 good tiny volumes (one needing v1 rescale) + truncated, empty, NaN and 2D files; returns the manifest."""
    d = tmp_path / "scans"
    d.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        arr = rng.integers(-1000, 400, (40, 40, 20)).astype(np.int16)
        rows.append(empty_row(f"good{i}", _nifti(d / f"good{i}.nii.gz", arr)))
    raw = np.full((40, 40, 20), 24, np.int16)  # raw value 24 -> HU -1000 with intercept -1024
    rows.append(empty_row("raw_v1", _nifti(d / "raw_v1.nii.gz", raw), needs_rescale=True, rescale_intercept=-1024.0))
    good = (d / "good0.nii.gz").read_bytes()
    (d / "truncated.nii.gz").write_bytes(good[: len(good) // 3])
    (d / "empty.nii.gz").write_bytes(b"")
    nan = rng.normal(size=(40, 40, 20)).astype(np.float32)
    nan[0, 0, 0] = np.nan
    _nifti(d / "nan.nii.gz", nan)
    _nifti(d / "flat.nii.gz", np.zeros((40, 40), np.int16))
    for name in ("truncated", "empty", "nan", "flat"):
        rows.append(empty_row(name, d / f"{name}.nii.gz"))
    rows.append(empty_row("missing", d / "missing.nii.gz"))
    return write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")


BAD = {"truncated": "truncated", "empty": "empty file", "nan": "NaN", "flat": "2D", "missing": "no such file"}


def test_preprocess_run_finishes_good_lists_bad_and_resumes(folder_with_broken_files, tmp_path):
    cache_dir = tmp_path / "cache"
    log = preprocess_manifest(folder_with_broken_files, "demo", cache_dir, workers=1, progress=False)
    assert log.exit_code == 1
    assert sorted(f.item for f in log.failures) == sorted(BAD)
    for f in log.failures:
        assert BAD[f.item] in f.reason and f.item in f.reason + f.path  # reason + the file it concerns
    cache = VolumeCache(cache_dir)
    assert cache.ids() == ["good0", "good1", "good2", "raw_v1"] and cache.preset.name == "demo"
    assert cache.load("good0").shape == DEMO.shape and cache.load("good0").dtype == np.int16
    assert (cache.load("raw_v1") == -1000).all()  # slope/intercept applied (24 - 1024), pad also -1000
    failures = json.loads((cache_dir / "failures.json").read_text())["failures"]
    assert sorted(f["item"] for f in failures) == sorted(BAD)
    index = pd.read_csv(cache_dir / "index.csv")
    assert index["volume_id"].tolist() == cache.ids() and index["source_shape"][0] == "40x40x20"

    # Resume: nothing already cached is rewritten; the bad ones are tried (and listed) again.
    mtimes = {v: cache.path(v).stat().st_mtime_ns for v in cache.ids()}
    log2 = preprocess_manifest(folder_with_broken_files, "demo", cache_dir, workers=1, progress=False)
    assert sorted(f.item for f in log2.failures) == sorted(BAD)
    assert {v: cache.path(v).stat().st_mtime_ns for v in cache.ids()} == mtimes
    assert not list((cache_dir / "volumes").glob(".*tmp"))  # no temporary files left behind


def test_preprocess_refuses_a_cache_of_another_preset(folder_with_broken_files, tmp_path):
    preprocess_manifest(folder_with_broken_files, "demo", tmp_path / "c", progress=False, limit=1)
    with pytest.raises(ValueError, match="built with preset 'demo'"):
        preprocess_manifest(folder_with_broken_files, "paper", tmp_path / "c", progress=False)


def test_preprocess_shards_and_worker_processes(folder_with_broken_files, tmp_path):
    cache_dir = tmp_path / "cache"
    # Shard 0 in a pool of 2 spawned workers, shard 1 in this process.
    logs = [
        preprocess_manifest(folder_with_broken_files, "demo", cache_dir, workers=2 - i, shard=(i, 2), progress=False)
        for i in range(2)
    ]
    assert all(len(log) for log in logs)  # both shards got some of the broken files
    assert sorted(f.item for log in logs for f in log.failures) == sorted(BAD)
    assert VolumeCache(cache_dir).ids() == ["good0", "good1", "good2", "raw_v1"]
    # Both shards' failures are kept in failures.json; the index covers both shards.
    failures = json.loads((cache_dir / "failures.json").read_text())["failures"]
    assert sorted(f["item"] for f in failures) == sorted(BAD)
    assert len(pd.read_csv(cache_dir / "index.csv")) == 4
    # Same result as one in-process run.
    single = tmp_path / "single"
    preprocess_manifest(folder_with_broken_files, "demo", single, workers=1, progress=False)
    for v in VolumeCache(single).ids():
        np.testing.assert_array_equal(VolumeCache(single).load(v), VolumeCache(cache_dir).load(v))


def test_cli_preprocess_exit_status_and_listing(folder_with_broken_files, tmp_path, capfd):
    out = tmp_path / "cli_cache"
    rc = main(
        [
            "preprocess",
            "--manifest",
            str(folder_with_broken_files),
            "--preset",
            "demo",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    err = capfd.readouterr().err
    assert rc == 1
    assert "5 item(s) failed" in err and "truncated.nii.gz" in err and "empty.nii.gz" in err
    assert VolumeCache(out).ids() == ["good0", "good1", "good2", "raw_v1"]
    good_only = pd.read_csv(folder_with_broken_files)
    good_only = good_only[good_only["volume_id"].str.startswith("good")]
    write_manifest(good_only, tmp_path / "good.csv")
    rc = main(
        ["preprocess", "--manifest", str(tmp_path / "good.csv"), "--preset", "demo", "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    rc = main(["preprocess", "--manifest", str(tmp_path / "nope.csv"), "--preset", "demo", "--out", str(out)])
    assert rc == 1 and "nope.csv" in capfd.readouterr().err
