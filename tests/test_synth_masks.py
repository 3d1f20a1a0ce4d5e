"""Lesion masks of the synthetic generator: written next to every volume, in its geometry, where the finding is."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from silverclip.data.provenance import is_synthetic_scan
from silverclip.eval.pointing import read_mask, synth_split
from silverclip.findings import FINDING_KEYS, FINDINGS
from silverclip.synth.dataset import SynthConfig, make_synthetic_ctrate
from silverclip.synth.geometry import recon_geometry, sample_frame
from silverclip.synth.phantom import mask_bits, render, sample_case


def test_masks_cover_what_each_finding_painted() -> None:
    rng = np.random.default_rng(3)
    labels = np.zeros(len(FINDINGS), np.uint8)
    for key in ("medical_material", "lung_nodule", "pleural_effusion", "cardiomegaly", "bronchiectasis"):
        labels[FINDING_KEYS.index(key)] = 1
    case = sample_case(labels, 0.0, rng)
    frame = sample_frame(np.random.default_rng(4))
    geom = recon_geometry(frame, (64, 64, 48), 1, np.random.default_rng(5))
    masks: dict = {}
    with_masks = render(case, geom, frame, np.random.default_rng(6), masks=masks)
    plain = render(case, geom, frame, np.random.default_rng(6))
    assert np.array_equal(with_masks, plain)  # tracking the masks does not change the volume
    assert set(masks) == {"medical_material", "lung_nodule", "pleural_effusion", "cardiomegaly", "bronchiectasis"}
    for key, m in masks.items():
        assert 0 < m.sum() < 0.3 * m.size, key
    metal = masks["medical_material"]
    assert np.median(plain[metal]) > 1000 and np.median(plain[~metal]) < 200  # the device is where the mask is
    fluid = masks["pleural_effusion"]
    assert -50 < np.median(plain[fluid]) < 60
    bits = mask_bits(masks, plain.shape)
    assert np.array_equal((bits >> FINDING_KEYS.index("lung_nodule")) & 1, masks["lung_nodule"])


def test_dataset_writes_a_mask_per_volume(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    cfg = dict(n_patients=4, shape=(32, 32, 24), seed=1, valid_fraction=0.5, second_recon_prob=0.0)
    assert len(make_synthetic_ctrate(root, SynthConfig(**cfg), progress=False)) == 0
    vols = pd.read_csv(root / "synth_info" / "volumes.csv")
    labels = pd.concat(
        [pd.read_csv(root / "multi_abnormality_labels" / f"{s}_predicted_labels.csv") for s in ("train", "valid")]
    ).set_index("VolumeName")
    for row in vols.itertuples():
        img, mask = nib.load(root / row.path), nib.load(root / row.mask_path)
        assert img.shape == mask.shape and np.allclose(img.affine, mask.affine)
        bits = read_mask(root / row.mask_path)
        drawn = [f for i, f in enumerate(FINDINGS) if ((bits >> i) & 1).any()]
        positive = [f for f in FINDINGS if labels.loc[row.VolumeName, f] == 1]
        assert set(drawn) <= set(positive) and len(drawn) >= len(positive) - 1, (drawn, positive)
        assert is_synthetic_scan(root / row.path)
    volumes, gold = synth_split(root, "valid")
    assert volumes and all(v[0].startswith("valid_") for v in volumes) and set(gold.index) >= {v[0] for v in volumes}
    # a volume whose mask was lost (or a dataset made before masks existed) gets it on the next run, volume unchanged
    first = root / vols["mask_path"].iloc[0]
    before = (root / vols["path"].iloc[0]).read_bytes()
    first.unlink()
    assert len(make_synthetic_ctrate(root, SynthConfig(**cfg), progress=False)) == 0
    assert first.is_file() and (root / vols["path"].iloc[0]).read_bytes() == before


def test_add_masks_to_a_dataset_made_before_masks(tmp_path: Path) -> None:
    import shutil

    from silverclip.eval.pointing import add_masks, synth_masks

    root = tmp_path / "ds"
    cfg = dict(n_patients=3, shape=(32, 32, 24), seed=2, valid_fraction=0.34, second_recon_prob=0.0)
    assert len(make_synthetic_ctrate(root, SynthConfig(**cfg), progress=False)) == 0
    masks = synth_masks(root)
    reference = {v: read_mask(p) for v, p in masks.items()}
    shutil.rmtree(root / "synth_info" / "masks")
    table = root / "synth_info" / "volumes.csv"
    pd.read_csv(table).drop(columns=["mask_path"]).to_csv(table, index=False)  # the old layout
    assert synth_masks(root) == {}
    n_valid = sum(v.startswith("valid_") for v in reference)
    assert add_masks(root, "valid") == n_valid
    again = synth_masks(root)
    assert set(again) == {v for v in reference if v.startswith("valid_")}
    assert all(np.array_equal(read_mask(p), reference[v]) for v, p in again.items())


def test_pointing_game_counts_hits_against_the_masks(tmp_path: Path, monkeypatch) -> None:
    """With stand-in saliency maps (the finding's own mask: a hit; its complement: a miss) the game counts exactly."""
    import silverclip.eval.saliency as saliency
    from silverclip.data.presets import Preset
    from silverclip.data.readers import load_volume
    from silverclip.eval.pointing import pointing_game

    root = tmp_path / "ds"
    cfg = dict(n_patients=5, shape=(32, 32, 24), seed=4, valid_fraction=0.6, second_recon_prob=0.5)
    assert len(make_synthetic_ctrate(root, SynthConfig(**cfg), progress=False)) == 0
    volumes, gold = synth_split(root, "valid")
    masks = {vid: m for vid, _, m in volumes}
    hit_findings = set(FINDINGS[::2])

    def fake(predictor, volume, findings, layer="layer3"):
        vid = Path(volume.source).name[: -len(".nii.gz")]
        bits = load_volume(masks[vid]).array  # canonical, as the maps are
        maps = {}
        for f in findings:
            inside = ((bits >> FINDINGS.index(f)) & 1).astype(np.float32)
            maps[f] = inside if f in hit_findings else 1.0 - inside
        return {}, maps

    monkeypatch.setattr(saliency, "saliency_maps", fake)

    class Stub:
        preset = Preset(
            name="s", spacing=(12.0, 12.0, 12.0), window=(-1000, 200), shape=(32, 32, 24), crop=(32, 32, 24)
        )

    res = pointing_game(Stub(), volumes, gold)
    expected = []
    for vid, _, m in volumes:
        bits = read_mask(m)
        for f in FINDINGS:
            if gold.loc[vid, f] == 1 and ((bits >> FINDINGS.index(f)) & 1).any():
                expected.append(f in hit_findings)
    assert res["n_trials"] == len(expected) > 3
    assert res["hit_rate"] == pytest.approx(np.mean(expected))
    assert {f for f, r in res["per_finding"].items() if r["hit_rate"] == 1.0} <= hit_findings
    assert 0 < res["chance"] < 0.5 and not res["failures"]
