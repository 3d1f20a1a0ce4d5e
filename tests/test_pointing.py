"""The pointing game's premise: a model that has learned a visible finding looks at it.

A ResNet pre-trained for ~20 s on phantoms where only a metal device decides the label (tests/test_learning.py)
is explained with Grad-CAM on a new phantom holding one device, written as an x-flipped NIfTI: the saliency
peak, mapped back onto the file's voxels, lies inside the device's mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from silverclip.checkpoint import load_model
from silverclip.cli import main
from silverclip.data.preprocess import preprocess_volume
from silverclip.data.readers import load_volume
from silverclip.eval.embeddings import model_input
from silverclip.eval.saliency import FindingScores, choose_layer, crop_to_volume, gradcam, to_file_geometry
from test_learning import PRESET, _dataset, _phantom


@pytest.fixture(scope="module")
def learned(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("learn")
    cache, train, valid = _dataset(tmp, n_train=160, n_val=64)
    run = tmp / "run"
    argv = ["pretrain", "--cache", str(cache), "--labels", str(train), "--val-labels", str(valid), "--out", str(run)]
    overrides = [
        "model=resnet18_3d",
        'model_kwargs={"widen_factor": 0.125}',
        "data.batch_size=8",
        "train.epochs=24",
        "train.lr=1e-3",
        "train.warmup_steps=5",
        "train.progress=false",
        "train.precision=fp32",
    ]
    assert main([*argv, *overrides]) == 0
    val = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in x]
    assert val[-1]["auc/Medical material"] >= 0.9  # it has learned the device
    return run / "last"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_saliency_peak_lies_inside_the_device(learned: Path, tmp_path: Path, seed: int) -> None:
    model, _ = load_model(learned)
    arr = _phantom(np.random.default_rng(seed), metal=True)
    mask = arr >= 990  # the device: 3000 HU clipped to the window; ribs are 450 HU
    assert 5 < mask.sum() < 200
    # stored with the x axis flipped (as an LAS file would be): the map must come back in the file's voxel order
    affine = np.diag([-6.0, 6.0, 6.0, 1.0])
    affine[0, 3] = 6.0 * (arr.shape[0] - 1)
    stored = arr[::-1]
    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(stored), affine), path)
    volume = load_volume(path)
    x = model_input(preprocess_volume(volume, PRESET), PRESET)
    scorer = FindingScores(model.eval())
    assert choose_layer(scorer, x) == "layer2"  # 4x4x3 at this 28x28x20 crop (layer3 would be 2x2x2)
    cam = gradcam(scorer, x, 0)
    sal, aff = to_file_geometry(crop_to_volume(cam, volume, PRESET), volume)
    assert sal.shape == stored.shape and np.allclose(aff, affine)
    peak = np.unravel_index(int(np.argmax(sal)), sal.shape)
    assert mask[::-1][peak], (peak, np.argwhere(mask[::-1]).mean(0))
