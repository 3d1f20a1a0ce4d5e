"""Saliency maps: mapped back through the preprocessing onto the input's voxels, written in its geometry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from silverclip.cli import main
from silverclip.data.preprocess import preprocess_volume
from silverclip.data.presets import Preset
from silverclip.data.readers import load_volume
from silverclip.eval.embeddings import center_crop
from silverclip.eval.saliency import crop_to_volume, to_file_geometry

PRESET = Preset(name="t", spacing=(6.0, 6.0, 6.0), window=(-1000.0, 1000.0), shape=(20, 16, 12), crop=(16, 12, 10))


def _ramp_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An LPS-ordered NIfTI (x and y flipped, z-fastest transposed) of 2.5 x 3.5 x 5 mm voxels whose HU is a linear
    function of the world position: mapping the preprocessed volume back must give the same function."""
    shape = (30, 48, 28)  # stored axes: (z, y, x) flipped as in LPS DICOM order
    affine = np.array([[0, 0, -2.5, 60.0], [0, -3.5, 0, 80.0], [5.0, 0, 0, -70.0], [0, 0, 0, 1]])
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    hu = (4.0 * xyz[..., 0] - 3.0 * xyz[..., 1] + 2.0 * xyz[..., 2]).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, affine), path)
    return hu, affine


def test_crop_maps_back_onto_the_input_grid(tmp_path: Path) -> None:
    path = tmp_path / "ramp.nii.gz"
    hu, affine = _ramp_nifti(path)
    vol = load_volume(path)
    assert vol.array.strides[0] < 0  # the reader's canonical view is flipped: the hard case of resample()
    crop = center_crop(preprocess_volume(vol, PRESET), PRESET.crop).astype(np.float32)
    back = crop_to_volume(crop + 5000.0, vol, PRESET)  # + 5000: tells "outside the crop" (0) from data
    stored, aff = to_file_geometry(back, vol)
    assert stored.shape == hu.shape and np.allclose(aff, affine)
    seen = stored > 2500
    # every voxel that lies inside the crop's field of view (two output voxels from its border) was seen
    assert 0.1 < seen.mean() < 0.25  # about 11/11 x 12/28 x 10/25 of the 6 mm grid lies in the crop
    # away from the scan's own border (where the 6 mm grid ends in padding), linear data comes back as it went in
    interior = np.zeros_like(seen)
    interior[3:-3, 3:-3, 3:-3] = True
    err = np.abs(stored - 5000.0 - hu)[seen & interior]
    assert err.size > 1000 and np.percentile(err, 95) < 30 and np.median(err) < 2, np.percentile(err, [50, 95, 99])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from silverclip.checkpoint import save_checkpoint
    from silverclip.models import create_model
    from test_inference import TINY_CLIP

    torch.manual_seed(0)
    model = create_model(**TINY_CLIP)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip", model, preset="demo", task="clip")


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_predict_saliency_writes_maps_in_the_scans_geometry(checkpoint, shared_data, tmp_path, kind) -> None:
    lidc = shared_data / "ct_samples" / "lidc_idri"
    scan = lidc / ("LIDC-IDRI-0001_16slices_HU.nii.gz" if kind == "nifti" else "LIDC-IDRI-0001")
    out, js = tmp_path / "sal", tmp_path / "p.json"
    argv = ["predict", str(scan), "--checkpoint", str(checkpoint), "--saliency", str(out), "--out", str(js)]
    assert main([*argv, "--findings", "Lung nodule,Emphysema"]) == 0
    maps = json.loads(js.read_text())["saliency"]["maps"]
    assert sorted(maps) == ["Emphysema", "Lung nodule"]
    img = nib.load(maps["Lung nodule"])
    if kind == "nifti":
        ref = nib.load(scan)
        assert img.shape == ref.shape and np.allclose(img.affine, ref.affine)
    else:
        vol = load_volume(scan)
        assert img.shape == vol.shape and np.allclose(img.affine, vol.affine)
    data = np.asarray(img.dataobj)
    # a voxel-precise map loses some of its peak to the trilinear mapping back onto the finer scan grid
    assert 0.0 <= data.min() and data.max() <= 1.0 + 1e-6 and data.max() > 0.1 and (data > 0).mean() > 0.01
    png = out / "LIDC-IDRI-0001_16slices_HU_saliency.png" if kind == "nifti" else out / "LIDC-IDRI-0001_saliency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_without_saliency_does_not_import_monai() -> None:
    import subprocess

    code = (
        "import sys, silverclip.cli.predict, silverclip.inference, silverclip.eval.zero_shot;"
        "print('monai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
