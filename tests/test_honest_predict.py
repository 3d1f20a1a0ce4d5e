"""Honest predictions: thresholds and provenance in the checkpoint, present/absent in predict, the synthetic warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from silverclip.checkpoint import read_checkpoint_meta, record_calibration
from silverclip.cli import main
from silverclip.data.provenance import is_synthetic_scan, training_provenance
from silverclip.findings import FINDINGS
from test_inference import TINY_CLIP


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from silverclip.checkpoint import save_checkpoint
    from silverclip.models import create_model

    torch.manual_seed(0)
    model = create_model(**TINY_CLIP)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip", model, preset="demo", task="clip")


def _synthetic_nifti(tmp: Path) -> Path:
    from silverclip.synth.dataset import nifti_bytes

    path = tmp / "synth.nii.gz"
    arr = np.full((40, 40, 30), -1000, np.int16)
    arr[10:30, 10:30, 5:25] = 40
    path.write_bytes(nifti_bytes(arr, np.diag([6.0, 6.0, 6.0, 1.0])))
    return path


def test_calibration_is_validated_and_read_back(checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    ckpt = tmp_path / "c"
    shutil.copytree(checkpoint, ckpt)
    with pytest.raises(ValueError, match="thresholds are numbers in"):
        record_calibration(ckpt, thresholds={"Lung nodule": 1.5})
    with pytest.raises(ValueError, match="provenance"):
        record_calibration(ckpt, provenance={"dataset": ["nested"]})
    record_calibration(ckpt, thresholds={"Lung nodule": 0.25}, provenance={"dataset": "x", "synthetic": True})
    meta = read_checkpoint_meta(ckpt)
    assert meta["thresholds"] == {"Lung nodule": 0.25} and meta["provenance"]["synthetic"] is True
    # a hand-edited checkpoint.json with a bad threshold is refused when opened
    bad = json.loads((ckpt / "checkpoint.json").read_text())
    bad["thresholds"]["Lung nodule"] = "0.3; rm -rf /"
    (ckpt / "checkpoint.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="threshold of 'Lung nodule'"):
        read_checkpoint_meta(ckpt)


def test_synthetic_marker_and_provenance(tmp_path: Path, shared_data: Path) -> None:
    synth = _synthetic_nifti(tmp_path)
    assert is_synthetic_scan(synth)
    real = shared_data / "ct_samples" / "lidc_idri" / "LIDC-IDRI-0001_16slices_HU.nii.gz"
    assert not is_synthetic_scan(real) and not is_synthetic_scan(real.parent / "LIDC-IDRI-0001")
    assert training_provenance("synth", preset="demo")["synthetic"] is True
    assert training_provenance("manifest", root=tmp_path / "t.csv", first_volume=synth)["synthetic"] is True
    assert training_provenance("manifest", root=tmp_path / "t.csv", first_volume=real)["synthetic"] is False


def test_predict_prints_verdicts_at_thresholds_and_warns_on_real_scans(
    checkpoint: Path, tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    from silverclip.inference import load

    ckpt = tmp_path / "c"
    shutil.copytree(checkpoint, ckpt)
    real = shared_data / "ct_samples" / "lidc_idri" / "LIDC-IDRI-0001_16slices_HU.nii.gz"
    probs = load(ckpt).predict(real)
    # thresholds straddling the model's own probabilities: half the findings present, half absent
    thresholds = {f: min(1.0, probs[f] + 1e-3) if i % 2 else max(0.0, probs[f] - 1e-3) for i, f in enumerate(FINDINGS)}
    provenance = training_provenance("synth", preset="demo")
    record_calibration(ckpt, thresholds=thresholds, provenance=provenance)
    out = tmp_path / "p.json"
    assert main(["predict", str(real), "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "trained on synthetic volumes" in captured.err
    res = json.loads(out.read_text())
    assert res["present"] == {f: i % 2 == 0 for i, f in enumerate(FINDINGS)}
    assert res["thresholds"] == pytest.approx(thresholds) and res["provenance"]["synthetic"] is True
    line = next(x for x in captured.out.splitlines() if x.strip().startswith(FINDINGS[0]))
    assert "PRESENT" in line and f"{thresholds[FINDINGS[0]]:.4f}" in line
    # a synthetic scan: no warning
    assert main(["predict", str(_synthetic_nifti(tmp_path)), "--checkpoint", str(ckpt)]) == 0
    assert "WARNING" not in capsys.readouterr().err
    # an uncalibrated checkpoint says so instead of inventing a threshold
    assert main(["predict", str(real), "--checkpoint", str(checkpoint)]) == 0
    assert "no threshold in the checkpoint" in capsys.readouterr().out


def test_load_scores_with_the_template_set_the_thresholds_were_chosen_with(checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    from silverclip.inference import load

    ckpt = tmp_path / "c"
    shutil.copytree(checkpoint, ckpt)
    record_calibration(ckpt, thresholds={"Lung nodule": 0.25}, template_set="ctrate")
    for _ in range(2):  # the first load fills the classifier cache, the second reads it
        model = load(ckpt)
        assert model.template_set == "ctrate" and model.thresholds == {"Lung nodule": 0.25}
    asked = load(ckpt, template_set="ctclip")  # another set asked for: its classifier, the thresholds dropped
    assert asked.template_set == "ctclip" and asked.thresholds == {}
