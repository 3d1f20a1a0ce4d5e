"""predict / search / embed / evaluate end to end with a tiny randomly initialised CLIP checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from silverclip.cli import main
from silverclip.data.presets import load_preset
from silverclip.findings import FINDINGS
from silverclip.io import atomic_save_npy, atomic_write_json

TINY_CLIP = {
    "name": "clip",
    "image": {"name": "resnet10_3d", "widen_factor": 0.125},
    "text": {
        "name": "hf_text",
        "name_or_path": "offline",
        "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    },
    "embed_dim": 16,
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from silverclip.checkpoint import save_checkpoint
    from silverclip.models import create_model

    torch.manual_seed(0)
    model = create_model(**TINY_CLIP)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip", model, preset="demo", task="clip")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    from silverclip.inference import load

    return load(checkpoint)


def test_predict_dicom_and_nifti_agree(predictor, shared_data):
    lidc = shared_data / "ct_samples" / "lidc_idri"
    dicom, nifti = lidc / "LIDC-IDRI-0001", lidc / "LIDC-IDRI-0001_16slices_HU.nii.gz"
    e_dicom, e_nifti = predictor.embed(dicom), predictor.embed(nifti)
    assert np.allclose(e_dicom, e_nifti, atol=1e-5)
    p_dicom = predictor.predict(dicom, ["pneumothorax"])
    p_nifti = predictor.predict(nifti, ["pneumothorax"])
    assert list(p_dicom) == [*FINDINGS, "pneumothorax"]
    for f in p_dicom:
        assert 0 <= p_dicom[f] <= 1
        assert p_dicom[f] == pytest.approx(p_nifti[f], abs=1e-5)
    # a different scan gives a different embedding (the check above is not vacuous)
    other = predictor.embed(lidc / "LIDC-IDRI-0003")
    assert not np.allclose(other, e_dicom, atol=1e-4)


def test_predict_cli_writes_json(checkpoint, shared_data, tmp_path, capsys):
    scan = shared_data / "ct_samples" / "lidc_idri" / "LIDC-IDRI-0001_16slices_HU.nii.gz"
    out = tmp_path / "preds.json"
    rc = main(["predict", str(scan), "--checkpoint", str(checkpoint), "--finding", "rib fracture", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert list(res["probabilities"]) == list(FINDINGS) and "rib fracture" in res["extra_findings"]
    assert res["preset"] == "demo"
    assert "Lung nodule" in capsys.readouterr().out
    rc = main(["predict", str(tmp_path / "missing.nii.gz"), "--checkpoint", str(checkpoint)])
    assert rc == 1  # a bad scan is reported, not a crash


def test_cold_predict_imports_only_what_it_needs(predictor, checkpoint, shared_data, tmp_path):
    """With the zero-shot classifier cached (by ``load`` above), a fresh ``predict`` builds only the image half
    of the model: no MONAI, transformers, pandas, scikit-learn or matplotlib import, the same probabilities."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from silverclip.inference import load

    scan = shared_data / "ct_samples" / "lidc_idri" / "LIDC-IDRI-0001_16slices_HU.nii.gz"
    out = tmp_path / "p.json"
    code = (
        "import sys, json; from silverclip.cli import main; "
        f"rc = main(['predict', {str(scan)!r}, '--checkpoint', {str(checkpoint)!r}, '--out', {str(out)!r}]); "
        "heavy = ('monai', 'transformers', 'pandas', 'sklearn', 'matplotlib', 'scipy.stats'); "
        "print(json.dumps([rc, sorted(m for m in heavy if m in sys.modules)]))"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [0, []]
    probs = json.loads(out.read_text())["probabilities"]
    ref = predictor.predict(scan)
    assert probs == pytest.approx({f: ref[f] for f in FINDINGS}, abs=1e-6)
    cached = load(checkpoint)
    assert not hasattr(cached.model, "encode_text")  # the image half only
    assert cached.predict(scan, ["rib fracture"])["rib fracture"] == pytest.approx(
        predictor.predict(scan, ["rib fracture"])["rib fracture"], abs=1e-6
    )  # free text loads the text tower on demand
    assert hasattr(cached.model, "encode_text")


def _tiny_dataset(root, n_scans=6):
    preset = load_preset("demo")
    cache = root / "cache"
    atomic_write_json(cache / "preset.json", preset.to_dict())
    rng = np.random.default_rng(0)
    rows = []
    for s in range(n_scans):
        for r in (1, 2):
            vid = f"valid_{s}_a_{r}"
            vol = rng.integers(-1000, 200, size=preset.shape).astype(np.int16)
            atomic_save_npy(cache / "volumes" / f"{vid}.npy", vol)
            rows.append(
                {"volume_id": vid, "split": "valid", "findings": f"Report {s}: nodule {s % 3}.", "impressions": ""}
            )
    rows.append({"volume_id": "valid_99_a_1", "split": "valid", "findings": "never cached", "impressions": ""})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    labels = pd.DataFrame((rng.random((len(rows), 18)) < 0.4).astype(int), columns=list(FINDINGS))
    labels.insert(0, "VolumeName", [r["volume_id"] + ".nii.gz" for r in rows])
    labels.to_csv(root / "labels.csv", index=False)
    return cache, manifest, root / "labels.csv"


def test_embed_resume_evaluate_search(checkpoint, tmp_path, monkeypatch):
    from silverclip.checkpoint import load_model
    from silverclip.eval.embeddings import compute_embeddings, load_embeddings

    cache, manifest, labels = _tiny_dataset(tmp_path)
    emb_dir = tmp_path / "emb"

    # First run dies after 2 image batches: finished shards survive.
    model, _ = load_model(checkpoint)
    real = model.encode_image
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("simulated crash")
        return real(x)

    monkeypatch.setattr(model, "encode_image", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        compute_embeddings(model, cache, manifest, emb_dir, batch_size=2, shard_size=2, progress=False)
    assert not (emb_dir / "meta.json").exists()
    monkeypatch.setattr(model, "encode_image", real)

    # The CLI resumes: only the remaining volumes are encoded; the uncached one is a reported failure.
    rc = main(
        [
            "embed",
            "--checkpoint",
            str(checkpoint),
            "--cache",
            str(cache),
            "--manifest",
            str(manifest),
            "--out",
            str(emb_dir),
            "--batch-size",
            "2",
        ]
    )
    assert rc == 1
    emb = load_embeddings(emb_dir)
    assert sorted(emb.image_ids) == sorted(f"valid_{s}_a_{r}" for s in range(6) for r in (1, 2))
    assert sorted(emb.text_ids) == sorted(emb.image_ids)
    assert emb.classifier("ctclip").shape == (18, 2, 16)
    assert json.loads((emb_dir / "failures.json").read_text())["failures"][0]["item"] == "valid_99_a_1"
    assert not (emb_dir / "parts").exists()
    # resumed embeddings equal a fresh computation
    fresh, _ = compute_embeddings(model, cache, manifest, tmp_path / "fresh", batch_size=3, progress=False)
    order = [fresh.image_ids.index(i) for i in emb.image_ids]
    assert np.allclose(emb.image, fresh.image[order], atol=1e-5)

    out = tmp_path / "eval"
    zero_shot = ["evaluate", "zero-shot", "--embeddings", str(emb_dir), "--labels", str(labels), "--n-boot", "20"]
    assert main([*zero_shot, "--out", str(out / "zs")]) == 0
    assert (out / "zs" / "roc_curves.png").is_file() and (out / "zs" / "zero_shot.md").is_file()
    val = ["--val-embeddings", str(emb_dir), "--val-labels", str(labels)]
    assert main([*zero_shot, *val, "--out", str(out / "zs2")]) == 0
    assert (
        main(
            [
                "evaluate",
                "retrieval",
                "--embeddings",
                str(emb_dir),
                "--labels",
                str(labels),
                "--manifest",
                str(manifest),
                "--recall-mode",
                "per-scan",
                "--out",
                str(out / "ret"),
            ]
        )
        == 0
    )
    ret = json.loads((out / "ret" / "retrieval.json").read_text())
    assert set(ret["image_to_image"]["map"]) == {"1", "5", "10", "50"}
    assert ret["report_to_image"]["recall"]["100"] == 1.0  # K >= gallery size: every report finds its scan
    assert ret["report_to_image"]["mode"] == "per-scan" and ret["report_to_image"]["n_gallery"] == 12
    assert "Example image queries" in (out / "ret" / "retrieval.md").read_text()

    hits_file = tmp_path / "hits.json"
    assert main(["search", "nodule", "--index", str(emb_dir), "--k", "3", "--out", str(hits_file)]) == 0
    hits = json.loads(hits_file.read_text())["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
