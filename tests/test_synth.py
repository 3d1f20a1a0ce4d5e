"""Synthetic CT-RATE-format dataset: layout, schemas, determinism, label statistics, visible findings,
report wording, v1/v2 storage, metadata geometry, resume and the CLI."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from silverclip.findings import FINDING_KEYS, FINDINGS
from silverclip.synth.dataset import REPORT_COLUMNS, SynthConfig, make_synthetic_ctrate, plan_dataset, render_job
from silverclip.synth.geometry import BodyGrid, recon_geometry, sample_frame
from silverclip.synth.labels import LabelSampler, build_pattern_table, load_pattern_table, table_from_frame
from silverclip.synth.phantom import render, sample_case
from silverclip.synth.reports import write_report

TINY = dict(n_patients=8, shape=(32, 32, 24), seed=5, extra_scan_prob=0.6, second_recon_prob=0.8, valid_fraction=0.25)
NAME_RE = re.compile(r"^(train|valid)_(\d+)_([a-z])_(\d+)\.nii\.gz$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    failures = make_synthetic_ctrate(out, SynthConfig(**TINY), progress=False)
    assert len(failures) == 0
    return out


def _csvs(root: Path) -> dict[str, Path]:
    return {
        "train_reports": root / "radiology_text_reports/train_reports.csv",
        "valid_reports": root / "radiology_text_reports/validation_reports.csv",
        "train_labels": root / "multi_abnormality_labels/train_predicted_labels.csv",
        "valid_labels": root / "multi_abnormality_labels/valid_predicted_labels.csv",
        "train_meta": root / "metadata/train_metadata.csv",
        "valid_meta": root / "metadata/validation_metadata.csv",
    }


def _volume(root: Path, name: str) -> nib.Nifti1Image:
    m = NAME_RE.match(name)
    split, pid, scan = m.group(1), m.group(2), m.group(3)
    folder = f"{split}_fixed" if (root / "dataset" / f"{split}_fixed").exists() else split
    return nib.load(root / "dataset" / folder / f"{split}_{pid}" / f"{split}_{pid}_{scan}" / name)


def test_layout_and_csv_schemas_match_ctrate(tiny, shared_data):
    csvs = _csvs(tiny)
    real_labels = pd.read_csv(shared_data / "ctrate_labels/train_labels.csv", nrows=1).columns.tolist()
    real_meta = pd.read_csv(shared_data / "ctrate_labels/valid_metadata.csv", nrows=1).columns.tolist()
    for key, path in csvs.items():
        df = pd.read_csv(path)
        expected = real_labels if "labels" in key else real_meta if "meta" in key else list(REPORT_COLUMNS)
        assert df.columns.tolist() == expected, path
        split = "train" if key.startswith("train") else "valid"
        assert df["VolumeName"].str.match(rf"^{split}_\d+_[a-z]_\d+\.nii\.gz$").all()
    files = sorted(p.relative_to(tiny / "dataset").as_posix() for p in (tiny / "dataset").rglob("*.nii.gz"))
    for rel in files:
        folder, patient, scan, name = rel.split("/")
        split = folder.removesuffix("_fixed")
        m = NAME_RE.match(name)
        assert m and m.group(1) == split and patient == f"{split}_{m.group(2)}"
        assert scan == f"{patient}_{m.group(3)}"
    names = {r.split("/")[-1] for r in files}
    listed = set(pd.read_csv(csvs["train_labels"]).VolumeName) | set(pd.read_csv(csvs["valid_labels"]).VolumeName)
    assert listed == names
    for a, b in (("train_reports", "train_meta"), ("valid_reports", "valid_meta")):
        assert pd.read_csv(csvs[a]).VolumeName.tolist() == pd.read_csv(csvs[b]).VolumeName.tolist()
    # several scans per patient and several reconstructions per scan exist
    parsed = [NAME_RE.match(n).groups() for n in names]
    assert any(s != "a" for _, _, s, _ in parsed) and any(r == "2" for *_, r in parsed)
    # reconstructions of one scan share labels and report
    lab = pd.read_csv(csvs["train_labels"]).set_index("VolumeName")
    rep = pd.read_csv(csvs["train_reports"]).set_index("VolumeName")
    scan = lab.index.str.replace(r"_\d+\.nii\.gz$", "", regex=True)
    assert (lab.groupby(scan).nunique() <= 1).all().all()
    assert (rep.groupby(rep.index.str.replace(r"_\d+\.nii\.gz$", "", regex=True)).Findings_EN.nunique() == 1).all()
    assert set(np.unique(lab.to_numpy())) <= {0, 1}


def test_deterministic_and_seed_sensitive(tiny, tmp_path):
    again = tmp_path / "again"
    make_synthetic_ctrate(again, SynthConfig(**TINY), progress=False)
    for key, path in _csvs(tiny).items():
        assert path.read_bytes() == _csvs(again)[key].read_bytes(), key
    for p in (tiny / "dataset").rglob("*.nii.gz"):
        q = again / p.relative_to(tiny)
        assert p.read_bytes() == q.read_bytes()  # gzip timestamp zeroed: byte-identical files
    other = tmp_path / "other"
    make_synthetic_ctrate(other, SynthConfig(**{**TINY, "seed": 6, "n_patients": 2}), progress=False)
    a = pd.read_csv(_csvs(tiny)["train_reports"]).Findings_EN.iloc[0]
    b = pd.read_csv(_csvs(other)["train_reports"]).Findings_EN.iloc[0]
    assert a != b


def _real_first_scans(shared_data: Path) -> np.ndarray:
    df = pd.read_csv(shared_data / "ctrate_labels/train_labels.csv")
    scan = df.VolumeName.str.replace(r"_\d+\.nii\.gz$", "", regex=True)
    df = df.assign(scan=scan, patient=scan.str.replace(r"_[a-z]+$", "", regex=True)).drop_duplicates("scan")
    df = df.sort_values(["patient", "scan"]).drop_duplicates("patient")
    return df[list(FINDINGS)].to_numpy(float)


def test_label_frequencies_and_cooccurrence_follow_ctrate(shared_data):
    real = _real_first_scans(shared_data)
    rng = np.random.default_rng(0)
    sampler = LabelSampler()
    synth = np.stack([sampler.first(rng) for _ in range(20000)]).astype(float)
    assert np.abs(synth.mean(0) - real.mean(0)).max() < 0.015
    c_real, c_syn = np.corrcoef(real.T), np.corrcoef(synth.T)
    assert np.abs(c_syn - c_real).max() < 0.04
    # the check has teeth: independent draws with the right marginals miss the co-occurrences
    indep = (rng.random(synth.shape) < real.mean(0)).astype(float)
    assert np.abs(np.corrcoef(indep.T) - c_real).max() > 0.2
    # follow-up scans stay correlated with the previous scan, as in CT-RATE
    pairs = [sampler.patient(2, rng) for _ in range(3000)]
    agree = np.mean([np.mean(a == b) for a, b in pairs])
    assert agree > 0.8


def test_shipped_pattern_table_is_derived_from_ctrate(shared_data):
    rebuilt = table_from_frame(build_pattern_table(shared_data / "ctrate_labels/train_labels.csv"))
    shipped = load_pattern_table()
    assert np.array_equal(rebuilt.first, shipped.first) and np.allclose(rebuilt.first_p, shipped.first_p)
    assert np.array_equal(rebuilt.next, shipped.next)
    path = Path(__file__).resolve().parents[1] / "src/silverclip/resources/synth/label_patterns.csv"
    assert path.stat().st_size < 300_000


# finding -> (range of the median HU of changed voxels, extra check on the changed voxels' body-frame position)
EXPECT = {
    "medical_material": ((300, 4000), None),
    "arterial_wall_calcification": ((120, 1500), None),
    "cardiomegaly": ((-40, 90), None),
    "pericardial_effusion": ((-40, 50), None),
    "coronary_artery_wall_calcification": ((120, 1500), None),
    "hiatal_hernia": ((-1000, 80), lambda u, v, w: abs(np.median(u)) < 40 and np.median(v) < 0),
    "lymphadenopathy": ((-60, 90), None),
    "emphysema": ((-1024, -880), None),
    "atelectasis": ((-450, 80), None),
    "lung_nodule": ((-650, 80), None),  # solid or subsolid
    "lung_opacity": ((-760, -250), None),
    "pulmonary_fibrotic_sequela": ((-700, 60), None),
    "pleural_effusion": ((-40, 50), lambda u, v, w: np.median(v) < -20 and np.median(w) < 0),
    "mosaic_attenuation_pattern": ((-1000, -600), None),
    "peribronchial_thickening": ((-500, 80), None),
    "consolidation": ((-350, 80), None),
    "bronchiectasis": ((-1024, 80), None),
    "interlobular_septal_thickening": ((-800, -250), None),
}


@pytest.mark.parametrize("difficulty", [0.0, 1.0])
def test_each_finding_has_a_visible_correlate(difficulty):
    """Same seed with and without one finding: the volumes differ where and how the finding should
    (demo-scale voxels, about 6 mm). At difficulty 1 the change is smaller than at 0."""
    frame = sample_frame(np.random.default_rng(1))
    geom = recon_geometry(frame, (64, 64, 48), 1, np.random.default_rng(2))
    grid = BodyGrid(geom, frame)

    def vol(k: int | None) -> np.ndarray:
        labels = np.zeros(18, np.uint8)
        if k is not None:
            labels[k] = 1
        case = sample_case(labels, difficulty, np.random.default_rng(3), jitter=0.0)
        return render(case, geom, frame, np.random.default_rng(4)).astype(np.float32)

    base = vol(None)
    for k, key in enumerate(FINDING_KEYS):
        v = vol(k)
        diff = np.clip(v, -1000, 400) - np.clip(base, -1000, 400)
        changed = np.abs(diff) > (30 if difficulty else 100)
        assert changed.sum() >= (1 if difficulty else 3), f"{key}: no visible change"
        lo, hi = EXPECT[key][0]
        med = float(np.median(v[changed]))
        if difficulty == 0:
            assert lo <= med <= hi, f"{key}: changed voxels have median {med} HU, expected [{lo}, {hi}]"
            where = EXPECT[key][1]
            if where is not None:
                u, vv, w = (np.broadcast_to(a, geom.shape)[changed] for a in (grid.u, grid.v, grid.w))
                assert where(u, vv, w), f"{key}: change in the wrong place"
        if key == "emphysema":
            assert diff[changed].mean() < 0
        if key in ("lung_nodule", "consolidation", "lung_opacity", "pleural_effusion", "atelectasis"):
            assert diff[changed].mean() > 0


def test_lesion_registry_covers_every_finding():
    """Every finding has a sampler; every one drawn in the volume by a per-key painter has one in PAINTERS
    (the rest are drawn by Anatomy or by the airway painter), and each is defined in its region module."""
    from silverclip.synth import lesions_lung, lesions_mediastinum
    from silverclip.synth.lesions import PAINTERS, SAMPLERS

    assert list(SAMPLERS) == list(FINDING_KEYS)
    not_keyed = {"cardiomegaly", "pericardial_effusion", "peribronchial_thickening", "bronchiectasis"}
    assert set(PAINTERS) == set(FINDING_KEYS) - not_keyed
    for key, fn in [*SAMPLERS.items(), *PAINTERS.items()]:
        assert fn.__module__ in (lesions_lung.__name__, lesions_mediastinum.__name__), key
        assert fn.__name__.endswith(key), (key, fn.__name__)


def test_difficulty_makes_findings_smaller():
    frame = sample_frame(np.random.default_rng(1))
    geom = recon_geometry(frame, (48, 48, 36), 1, np.random.default_rng(2))
    labels = np.zeros(18, np.uint8)
    labels[FINDING_KEYS.index("lung_nodule")] = 1
    size = {}
    for d in (0.0, 1.0):
        base = render(sample_case(labels * 0, d, np.random.default_rng(3), 0.0), geom, frame, np.random.default_rng(4))
        les = render(sample_case(labels, d, np.random.default_rng(3), 0.0), geom, frame, np.random.default_rng(4))
        size[d] = np.abs(les.astype(float) - base).sum()
    assert size[1.0] < 0.5 * size[0.0]


KEYWORDS = {
    "medical_material": r"\bport\b|catheter|pacemaker|sternotomy|suture material",
    "arterial_wall_calcification": r"(calcif|atherom).*aort",
    "cardiomegaly": r"cardiomegaly|heart is enlarged",
    "pericardial_effusion": r"pericardial (effusion|fluid)",
    "coronary_artery_wall_calcification": r"coronary",
    "hiatal_hernia": r"hiatal hernia",
    "lymphadenopathy": r"lymph nodes in pathological size were|enlarged lymph nodes in the|lymphadenopathy",
    "emphysema": r"emphysem",
    "atelectasis": r"atelectasis",
    "lung_nodule": r"\bnodules?\b",
    "lung_opacity": r"ground.glass",
    "pulmonary_fibrotic_sequela": r"fibrotic|sequelae",
    "pleural_effusion": r"pleural effusion",
    "mosaic_attenuation_pattern": r"mosaic",
    "peribronchial_thickening": r"peribronchial|bronchial wall thickening",
    "consolidation": r"consolidation",
    "bronchiectasis": r"bronchiectasis",
    "interlobular_septal_thickening": r"septal",
}
NEGATED = re.compile(r"\bno\b|\bnot\b|cannot|possible|questionable|\?", re.I)


def _sentences(text: str) -> list[str]:
    # parenthetical questions ("(small airway disease? small vessel disease?)") do not hedge the finding
    return [re.sub(r"\([^)]*\?[^)]*\)", "", s) for s in re.split(r"(?<=[.?])\s+(?=[A-Z\"])", text) if s]


def test_reports_assert_positives_and_never_affirm_negatives():
    sampler = LabelSampler()
    rng = np.random.default_rng(0)
    negated_any = 0
    for _ in range(150):
        labels = sampler.first(rng)
        case = sample_case(labels, 0.3, rng)
        rep = write_report(case, rng, report_noise=0.0)
        sents = _sentences(rep.findings)
        negated_any += sum(v == "negated" for v in rep.status.values())
        for i, key in enumerate(FINDING_KEYS):
            hits = [s for s in sents if re.search(KEYWORDS[key], s, re.I)]
            affirmed = [s for s in hits if not NEGATED.search(s)]
            if labels[i]:
                assert affirmed, f"{key} positive but not stated: {rep.findings}"
                assert rep.status[key] == "positive"
            else:
                assert not affirmed, f"{key} absent but affirmed: {affirmed}"
        if not labels.any():
            assert "normal" in rep.impressions.lower() or "no significant" in rep.impressions.lower()
    assert negated_any > 150  # stock negations such as "No pleural effusion was observed" are used


def test_report_noise_produces_imperfect_reports():
    sampler = LabelSampler()
    rng = np.random.default_rng(1)
    counts = {"omitted": 0, "hedged": 0, "spurious": 0}
    imperfect = 0
    for _ in range(200):
        case = sample_case(sampler.first(rng), 0.3, rng)
        rep = write_report(case, rng, report_noise=0.5)
        bad = [k for k, v in rep.status.items() if v in counts]
        imperfect += bool(bad)
        for k in bad:
            counts[rep.status[k]] += 1
            noun_hit = re.search(KEYWORDS[k], rep.findings, re.I)
            if rep.status[k] == "omitted":
                assert (
                    not noun_hit
                    or all(NEGATED.search(s) for s in _sentences(rep.findings) if re.search(KEYWORDS[k], s, re.I))
                    or k == "lung_nodule"
                )
            else:
                assert re.search(r"cannot be excluded|possible|suggestive|questionable", rep.findings, re.I)
    assert 0.3 < imperfect / 200 < 0.7
    assert all(c > 5 for c in counts.values())


def test_v1_raw_values_and_metadata_consistency(tiny, tmp_path):
    v1 = tmp_path / "v1"
    make_synthetic_ctrate(v1, SynthConfig(**{**TINY, "format_version": 1}), progress=False)
    assert (v1 / "dataset/train").is_dir() and not (v1 / "dataset/train_fixed").exists()
    meta = pd.concat([pd.read_csv(p) for p in (_csvs(v1)["train_meta"], _csvs(v1)["valid_meta"])])
    assert set(meta.RescaleIntercept) <= {-1024, -8192} and (meta.RescaleSlope == 1).all()
    for row in meta.itertuples():
        raw = np.asarray(_volume(v1, row.VolumeName).dataobj)
        hu = np.asarray(_volume(tiny, row.VolumeName).dataobj)
        assert raw.dtype == np.int16 and hu.dtype == np.int16
        assert np.array_equal(raw.astype(np.int32) * row.RescaleSlope + row.RescaleIntercept, hu)
        assert raw.min() >= 0 and hu.min() < -900  # air: raw >= 0 in v1, about -1000 HU in v2


def test_metadata_geometry_matches_the_nifti_headers(tiny):
    vols = pd.read_csv(tiny / "synth_info/volumes.csv").set_index("VolumeName")
    meta = pd.concat([pd.read_csv(p) for p in (_csvs(tiny)["train_meta"], _csvs(tiny)["valid_meta"])])
    jobs = {j.name: j for j in plan_dataset(SynthConfig(**TINY)).jobs}
    seen_codes = set()
    for row in meta.itertuples():
        img = _volume(tiny, row.VolumeName)
        xy = [float(x) for x in row.XYSpacing.strip("[]").split(",")]
        zooms = img.header.get_zooms()
        assert np.allclose([xy[1], xy[0], row.ZSpacing], zooms, atol=1e-4)
        assert (row.Columns, row.Rows, row.NumberofSlices) == img.shape
        codes = nib.aff2axcodes(img.affine)
        assert "".join(codes) == vols.loc[row.VolumeName, "axcodes"]
        seen_codes.add(codes)
        # orientation from the affine: reoriented to RAS, every volume is the phantom as drawn (canonical
        # order) at the right world position, whatever flips it was stored with
        job = jobs[row.VolumeName.removesuffix(".nii.gz")]
        can_img = nib.as_closest_canonical(img)
        drawn = render_job(dataclasses.replace(job, geom=dataclasses.replace(job.geom, axcodes=("R", "A", "S"))))
        assert np.array_equal(np.asarray(can_img.dataobj), drawn)
        assert np.allclose(can_img.affine[:3, 3], job.geom.origin, atol=1e-3)
        assert xy[0] * row.Rows == pytest.approx(row.ReconstructionDiameter, rel=0.01)
    assert len(seen_codes) >= 2


def test_resume_skips_complete_volumes_and_rejects_other_settings(tmp_path):
    out = tmp_path / "ds"
    cfg = SynthConfig(n_patients=2, shape=(24, 24, 16), seed=1)
    make_synthetic_ctrate(out, cfg, progress=False)
    files = sorted((out / "dataset").rglob("*.nii.gz"))
    keep, gone = files[0], files[-1]
    before = keep.stat().st_mtime_ns
    data = gone.read_bytes()
    gone.unlink()
    make_synthetic_ctrate(out, cfg, progress=False)
    assert keep.stat().st_mtime_ns == before and gone.read_bytes() == data
    with pytest.raises(ValueError, match="other settings"):
        make_synthetic_ctrate(out, SynthConfig(n_patients=3, shape=(24, 24, 16), seed=1), progress=False)


def test_cli_end_to_end(tmp_path):
    from silverclip.cli import main

    out = tmp_path / "cli"
    rc = main(
        [
            "synth",
            "--out",
            str(out),
            "--n-patients",
            "3",
            "--shape",
            "24,24,16",
            "--seed",
            "2",
            "--difficulty",
            "0.5",
            "--quiet",
            "report_noise=0.2",
        ]
    )
    assert rc == 0
    assert (out / "multi_abnormality_labels/train_predicted_labels.csv").is_file()
    assert "report_noise: 0.2" in (out / "synth_info/config.yaml").read_text()
