"""The pointing game's premise: a model that has learned a visible finding looks at it.

A ResNet pre-trained for ~20 s on phantoms where only a metal device decides the label (tests/test_learning.py)
is explained with Grad-CAM on new phantoms holding one device each, written as x-flipped NIfTI files: the saliency
peak, mapped back onto the file's voxels, lies inside the device's mask (at least 4 of 5 phantoms; chance ~1/200).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from silverclip.checkpoint import load_model
from silverclip.data.preprocess import preprocess_volume
from silverclip.data.readers import load_volume
from silverclip.eval.embeddings import model_input
from silverclip.eval.saliency import FindingScores, choose_layer, crop_to_volume, gradcam, saliency, to_file_geometry
from test_learning import PRESET, _phantom, train_metal_detector


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("learn")
    run = train_metal_detector(tmp)
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert val[-1]["auc/Medical material"] >= 0.9  # it has learned the device
    return run / "last"


def _device_phantom(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A training-like phantom without a device, plus one device (3000 HU) of radius 3 voxels in the body:
    ``(HU, device mask)``. Larger than the training devices (radius ~2) so that a 4x4x3 Grad-CAM cell can point
    at it; the learned concept (a metal blob) is the same."""
    rng = np.random.default_rng(seed)
    arr = _phantom(rng, metal=False).astype(np.float32)
    x, y, z = np.meshgrid(*(np.arange(s) - s / 2 + 0.5 for s in PRESET.shape), indexing="ij")
    c = (rng.uniform(-4, 4), rng.uniform(-3, 3), rng.uniform(-4, 4))
    mask = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < 9.0
    arr[mask] = 3000.0
    return np.clip(arr, *PRESET.window).astype(np.int16), mask


@pytest.mark.slow
def test_saliency_peak_lies_inside_the_device(learned: Path, tmp_path: Path) -> None:
    model, _ = load_model(learned)
    scorer = FindingScores(model.eval())
    hits, chance, cam_hits = [], [], []
    for seed in range(11, 16):
        arr, mask = _device_phantom(seed)
        # stored with the x axis flipped (as an LAS file would be): the map must come back in the file's voxel order
        affine = np.diag([-6.0, 6.0, 6.0, 1.0])
        affine[0, 3] = 6.0 * (arr.shape[0] - 1)
        path = tmp_path / f"phantom{seed}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(arr[::-1]), affine), path)
        volume = load_volume(path)
        x = model_input(preprocess_volume(volume, PRESET), PRESET)
        assert choose_layer(scorer, x) == "layer2"  # 4x4x3 at this 28x28x20 crop (layer3 would be 2x2x2)
        sal, aff = to_file_geometry(crop_to_volume(saliency(scorer, x, 0), volume, PRESET), volume)  # SmoothGrad
        assert sal.shape == arr.shape and np.allclose(aff, affine)
        peak = np.unravel_index(int(np.argmax(sal)), sal.shape)
        hits.append(bool(mask[::-1][peak]))
        cam, _ = to_file_geometry(crop_to_volume(gradcam(scorer, x, 0), volume, PRESET), volume)
        cam_hits.append(bool(mask[::-1][np.unravel_index(int(np.argmax(cam)), cam.shape)]))
        chance.append(float(mask.mean()))
    # the pointing game on five phantoms: a random peak would hit about 1 time in 200
    assert max(chance) < 0.01
    assert sum(hits) >= 4, hits
    print("pointing game on 5 phantoms: SmoothGrad", sum(hits), "Grad-CAM", sum(cam_hits))  # measured: 5 and 0
