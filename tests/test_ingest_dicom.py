"""``silverclip ingest dicom`` on a messy PACS-like tree built from the real DICOM series in ct_samples/.

The tree (written by the test with pydicom, other UIDs than the originals):

- study A (LIDC-IDRI-0001, flat in the root, file names without extension): the series (STANDARD kernel), a
  LUNG-kernel copy (fits, ranked lower), a one-slice scout, a thick-slice copy (every 4th slice, 10 mm), an
  SR document;
- study B (LIDC-IDRI-0003, nested folders): the series (B30f), a copy with a missing slice, a tilted copy
  (GantryDetectorTilt + sheared positions), a copy with one slice of another size;
- study C: TotalSegmentator's series without Study/SeriesInstanceUID (grouped by its folder), no report;
- a text file, a corrupt DICOM (preamble + garbage), a truncated slice, an empty file.

Every object carries a fake patient name, birth date and patient id, which must appear in no output.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from silverclip.cli import main
from silverclip.data.manifest import read_manifest
from test_inference import TINY_CLIP

NAME, BIRTH, MRN = "Doe^Jane^Testpatient", "19450317", "MRN-0042-SECRET"
CRITERIA = "min_slices: 8\nmin_z_extent_mm: 20\nslice_spacing_mm: [0.4, 3.0]\nslice_thickness_mm: [0.4, 3.5]\n"


def _slices(folder: Path) -> list[pydicom.Dataset]:
    ds = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    return sorted(ds, key=lambda d: float(d.ImagePositionPatient[2]))


def _write(
    slices: list[pydicom.Dataset], dest: list[Path], study: str, accession: str, patient: tuple[str, str], **tags
) -> str:
    series = generate_uid()
    for ds, path in zip(slices, dest):
        ds = ds.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.AccessionNumber, ds.PatientName, ds.PatientID, ds.PatientBirthDate = accession, patient[0], patient[1], BIRTH
        for k, v in tags.items():
            setattr(ds, k, v)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    return series


def _sr(path: Path, study: str, accession: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SR", study, generate_uid()
    ds.AccessionNumber, ds.PatientName, ds.PatientID, ds.PatientBirthDate = accession, NAME, MRN, BIRTH
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def tree(tmp_path_factory, shared_data) -> dict:
    root = tmp_path_factory.mktemp("pacs")
    lidc = shared_data / "ct_samples" / "lidc_idri"
    a, b = _slices(lidc / "LIDC-IDRI-0001"), _slices(lidc / "LIDC-IDRI-0003")
    rng = np.random.default_rng(0)

    def flat(n: int) -> list[Path]:  # PACS dumps: random names, no extension
        return [root / f"{rng.integers(1 << 40):010x}" for _ in range(n)]

    study_a, study_b = generate_uid(), generate_uid()
    p1, p2 = (NAME, MRN), ("Roe^Richard^Testpatient", "MRN-0043-SECRET")
    uids = {
        "A": _write(a, flat(16), study_a, "ACC-1001", p1, ConvolutionKernel="STANDARD", SeriesNumber=2),
        "A_lung": _write(a, flat(16), study_a, "ACC-1001", p1, ConvolutionKernel="LUNG", SeriesNumber=3),
        "A_scout": _write(a[:1], flat(1), study_a, "ACC-1001", p1, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]),
        "A_thick": _write(a[::4], flat(4), study_a, "ACC-1001", p1, SliceThickness="10.0", SeriesNumber=5),
    }
    _sr(root / "SR0001", study_a, "ACC-1001")
    nested = root / "DICOM" / "PAT00002" / "ST000001"
    uids["B"] = _write(b, [nested / "SE000001" / f"IM{i:05d}" for i in range(11)], study_b, "ACC-1002", p2,
                       ConvolutionKernel="B30f")  # fmt: skip
    gap = b[:5] + b[6:]
    uids["B_gap"] = _write(gap, [nested / "SE000002" / f"IM{i:05d}" for i in range(10)], study_b, "ACC-1002", p2)
    tilted = []
    for k, ds in enumerate(b):
        ds = ds.copy()
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * 2.5 * math.tan(math.radians(20)), z]
        ds.GantryDetectorTilt = "20"
        tilted.append(ds)
    uids["B_tilt"] = _write(tilted, [nested / "SE000003" / f"IM{i:05d}" for i in range(11)], study_b, "ACC-1002", p2)
    mixed = [ds.copy() for ds in b]
    small = mixed[3]
    small.PixelData = small.pixel_array[::2, ::2].copy().tobytes()
    small.Rows, small.Columns = 256, 256
    small.PixelSpacing = [float(v) * 2 for v in small.PixelSpacing]
    uids["B_mixed"] = _write(mixed, [nested / "SE000004" / f"IM{i:05d}" for i in range(11)], study_b, "ACC-1002", p2)
    shutil.copytree(shared_data / "ct_samples" / "totalsegmentator" / "example_ct_dicom", root / "other" / "exam3")
    (root / "README.txt").write_text(f"export of {NAME}\n")
    (root / "corrupt").write_bytes(b"\0" * 128 + b"DICM" + bytes(rng.integers(0, 256, 600, dtype=np.uint8)))
    first = next(p for p in sorted(root.iterdir()) if p.is_file() and len(p.name) == 10)
    (root / "truncated").write_bytes(first.read_bytes()[:200])
    (root / "empty").write_bytes(b"")
    reports = root.parent / "reports.csv"
    pd.DataFrame(
        {
            "AccessionNumber": ["ACC-1002", "ACC-1001", "ACC-9999"],
            "PatientName": [p2[0], NAME, NAME],  # a column the manifest must not copy
            "findings": ["Right lower lobe nodule.", "No effusion. Emphysema.", "Unrelated."],
            "impressions": ["Nodule.", "Emphysema.", ""],
        }
    ).to_csv(reports, index=False)
    criteria = root.parent / "criteria.yaml"
    criteria.write_text(CRITERIA)
    studies = {"A": study_a, "B": study_b}
    return {"root": root, "reports": reports, "criteria": criteria, "uids": uids, "studies": studies}


def _pseudo(out_dir: Path, kind: str, uid: str) -> str:
    from silverclip.data.dicom_index import Pseudonymizer

    return Pseudonymizer.from_file(out_dir / "manifest_ingest" / "salt").hash(kind, uid)


@pytest.fixture(scope="module")
def ingested(tree, tmp_path_factory) -> dict:
    out_dir = tmp_path_factory.mktemp("out")
    out = out_dir / "manifest.csv"
    argv = ["ingest", "dicom", str(tree["root"]), "--reports", str(tree["reports"]), "--out", str(out)]
    assert main([*argv, "--criteria", str(tree["criteria"]), "--workers", "2"]) == 0
    return {"out": out, "dir": out_dir, "argv": argv}


def test_series_chosen_and_rejected_with_reasons(tree, ingested) -> None:
    sel = pd.read_csv(ingested["dir"] / "manifest_ingest" / "series_selection.csv", dtype=str, keep_default_na=False)
    by = {k: sel[sel["series_id"] == _pseudo(ingested["dir"], "series", u)] for k, u in tree["uids"].items()}
    assert all(len(v) == 1 for v in by.values()), sel
    row = {k: v.iloc[0] for k, v in by.items()}
    assert row["A"]["decision"] == "chosen" and "kernel STANDARD (preference 1" in row["A"]["reason"]
    assert "16 slices of 2.50 mm" in row["A"]["reason"]
    assert row["A_lung"]["decision"] == "candidate" and "kernel LUNG (preference 2" in row["A_lung"]["reason"]
    assert row["A_scout"]["decision"] == "rejected" and "localizer" in row["A_scout"]["reason"]
    assert "1 slice(s) < 8" in row["A_scout"]["reason"]
    thick = row["A_thick"]["reason"]
    assert "slice spacing 10.00 mm outside [0.4, 3]" in thick and "slice thickness 10.00 mm" in thick
    assert row["B"]["decision"] == "chosen" and "kernel B30f" in row["B"]["reason"]
    assert row["B_gap"]["decision"] == "rejected" and "1 missing slice(s) (gap of 5.00 mm" in row["B_gap"]["reason"]
    assert row["B_tilt"]["decision"] == "rejected" and "gantry tilt 20.0 deg" in row["B_tilt"]["reason"]
    assert "mixed image sizes 256x256, 512x512" in row["B_mixed"]["reason"]
    sr = sel[sel["modality"] == "SR"].iloc[0]
    assert (
        sr["decision"] == "rejected" and "modality SR is not CT" in sr["reason"] and "no image slices" in sr["reason"]
    )
    # study C: no UIDs, grouped by its folder; its 20 slices of 3 mm cover 57 mm: chosen
    folder_c = sel[sel["folders"] == "other/exam3"].iloc[0]
    assert folder_c["decision"] == "chosen" and folder_c["slices"] == "20" and folder_c["report"] == "no"
    assert set(sel["decision"]) == {"chosen", "candidate", "rejected"}
    unreadable = pd.read_csv(ingested["dir"] / "manifest_ingest" / "unreadable.csv")
    reasons = dict(zip(unreadable["path"], unreadable["reason"]))
    assert set(reasons) == {"README.txt", "corrupt", "truncated", "empty"}
    assert "not a DICOM file" in reasons["README.txt"] and "empty file" in reasons["empty"]


def test_default_criteria_reject_partial_chests(tree, tmp_path) -> None:
    """The built-in chest_ct criteria need a full chest: none of these excerpts qualifies, each says why."""
    out = tmp_path / "m.csv"
    assert main(["ingest", "dicom", str(tree["root"]), "--out", str(out), "--workers", "1"]) == 1
    sel = pd.read_csv(tmp_path / "m_ingest" / "series_selection.csv", dtype=str, keep_default_na=False)
    assert set(sel["decision"]) == {"rejected", "study skipped"}
    assert sel["reason"].str.contains("mm < 200 mm \\(not a full chest\\)").sum() >= 8
    assert not out.exists()


def test_reports_paired_and_manifest(tree, ingested) -> None:
    m = read_manifest(ingested["out"])
    assert len(m) == 3 and set(m["format"]) == {"dicom"}
    a = m[m["volume_id"] == "s" + _pseudo(ingested["dir"], "study", tree["studies"]["A"])]
    assert (
        len(a) == 1 and a.iloc[0]["findings"] == "No effusion. Emphysema." and a.iloc[0]["impressions"] == "Emphysema."
    )
    assert a.iloc[0]["spacing_z"] == pytest.approx(2.5) and a.iloc[0]["spacing_x"] == pytest.approx(0.703125)
    assert (m["findings"] == "Right lower lobe nodule.").sum() == 1
    assert (m["findings"] == "").sum() == 1  # study C has no report
    assert (
        m["volume_id"].str.fullmatch(r"s[0-9a-f]{16}").all()
        and m["patient_id"].str.fullmatch(r"p[0-9a-f]{16}|s.*").all()
    )
    assert m["patient_id"].nunique() == 3
    links = sorted((Path(a.iloc[0]["path"])).iterdir())
    assert len(links) == 16 and all(p.is_symlink() for p in links)


def test_resume_reuses_the_index(tree, ingested, capsys) -> None:
    before = ingested["out"].read_text()
    assert main([*ingested["argv"], "--criteria", str(tree["criteria"])]) == 0
    out = capsys.readouterr().out
    n_files = sum(1 for p in tree["root"].rglob("*") if p.is_file())
    assert f"read 0 file header(s), {n_files} from the index" in out
    assert "1 report row(s) match no study" in out and "1 chosen study has no report" in out
    assert ingested["out"].read_text() == before


def test_no_identifying_values_in_outputs(tree, ingested) -> None:
    files = [ingested["out"], *(ingested["dir"] / "manifest_ingest").rglob("*")]
    files = [p for p in files if p.is_file() and not p.is_symlink()]
    assert len(files) >= 4
    secrets = [NAME, "Doe", "Testpatient", BIRTH, MRN, "MRN-0043", "ACC-100", "1.3.6.1.4.1.14519"]
    secrets += [*tree["uids"].values(), *tree["studies"].values()]
    for p in files:
        data = p.read_bytes()
        for s in secrets:
            assert s.encode() not in data, f"{s!r} found in {p}"
    # nor in the names of the link folders
    assert not any(s in str(p) for p in (ingested["dir"] / "manifest_ingest").rglob("*") for s in secrets[:6])


def test_manifest_runs_through_preprocess(tree, ingested, tmp_path) -> None:
    cache = tmp_path / "cache"
    assert main(["preprocess", "--manifest", str(ingested["out"]), "--preset", "demo", "--out", str(cache)]) == 0
    ids = set(read_manifest(ingested["out"])["volume_id"])
    assert {p.name.split(".")[0] for p in cache.rglob("*.npy")} >= ids


def test_batch_predict_manifest_and_folder(tree, ingested, tmp_path, shared_data, capsys) -> None:
    """The ingested manifest through batch predict: one row per scan, resumable, a failure is a row and listed."""
    from silverclip.checkpoint import save_checkpoint
    from silverclip.inference import load
    from silverclip.models import create_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", create_model(**TINY_CLIP), preset="demo", task="clip")
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(ingested["out"]), "--checkpoint", str(ckpt), "--out", str(preds)]) == 0
    df = pd.read_csv(preds, dtype={"volume_id": str})
    m = read_manifest(ingested["out"])
    assert list(df["volume_id"]) == list(m["volume_id"]) and (df["status"] == "ok").all()
    assert list(df["series_id"]) == list(m["series_id"])
    assert df["Lung nodule"].between(0, 1).all() and not any(c.startswith("present:") for c in df.columns)
    # the batch numbers equal single-scan predictions of the same series
    single = load(ckpt).predict(m.iloc[0]["path"])
    assert df.iloc[0]["Emphysema"] == pytest.approx(single["Emphysema"], abs=1e-5)
    assert "wrote 3 row(s)" in capsys.readouterr().out
    assert main(["predict", str(ingested["out"]), "--checkpoint", str(ckpt), "--out", str(preds)]) == 0
    assert "wrote 0 row(s)" in capsys.readouterr().out and len(pd.read_csv(preds)) == 3

    # a folder: a NIfTI file, a DICOM series folder and a broken NIfTI; thresholds give present/absent columns
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    meta["thresholds"] = {"Emphysema": 0.5, "Lung nodule": 0.0}
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    lidc = shared_data / "ct_samples" / "lidc_idri"
    shutil.copy(lidc / "LIDC-IDRI-0001_16slices_HU.nii.gz", folder / "a.nii.gz")
    shutil.copytree(lidc / "LIDC-IDRI-0003", folder / "sub" / "series3")
    (folder / "broken.nii.gz").write_bytes(b"not a nifti")
    out = tmp_path / "folder.jsonl"
    assert (
        main(
            [
                "predict",
                str(folder),
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--workers",
                "1",
            ]
        )
        == 1
    )
    rows = {r["volume_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {"a", "broken", "sub__series3"}
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["error"]
    assert rows["a"]["present"]["Lung nodule"] == 1 and set(rows["a"]["present"]) == {"Emphysema", "Lung nodule"}
    assert rows["a"]["present"]["Emphysema"] == int(rows["a"]["probabilities"]["Emphysema"] >= 0.5)
    assert "1 scan(s) failed" in capsys.readouterr().out


def test_criteria_file_overrides_and_errors(tmp_path) -> None:
    from silverclip.data.series_select import load_criteria

    default = load_criteria()
    assert default.name == "chest_ct" and default.min_z_extent_mm == 200 and default.kernel_rank("B30f") == 0
    assert default.kernel_rank("B70f") == 1 and default.kernel_rank("XYZ") == 2
    mine = tmp_path / "mine.yaml"
    mine.write_text("kernel_preference: ['^LUNG$', '^STANDARD$']\nprefer: [thinnest, kernel]\n")
    c = load_criteria(mine)
    assert c.kernel_rank("LUNG") == 0 and c.prefer == ("thinnest", "kernel") and c.min_slices == default.min_slices
    for text, match in [("min_slice: 3\n", "unknown series criteria key"), ("prefer: [newest]\n", "unknown prefer")]:
        mine.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_criteria(mine)
