"""Manifest schema, CT-RATE / RAD-ChestCT / user-table adapters, on the real CSVs in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from silverclip.cli import main
from silverclip.data.ctrate import ingest_ctrate, parse_spacing, read_ctrate_metadata
from silverclip.data.manifest import (
    REQUIRED_COLUMNS,
    ManifestError,
    empty_row,
    ingest_table,
    read_manifest,
    validate_manifest,
    write_manifest,
)
from silverclip.data.radchestct import ingest_radchestct, read_radchestct_labels
from silverclip.findings import FINDINGS
from silverclip.io import FailureLog

METADATA = "ctrate_labels/valid_metadata.csv"
LABELS = "ctrate_labels/valid_labels.csv"
RADCHEST = "radchestct_labels"


def tiny_nifti(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), value, np.int16), np.eye(4)), str(path))
    return path


def ctrate_tree(root: Path, names: list[str], folder: str = "valid", reports: bool = True) -> Path:
    """A CT-RATE-layout folder: dataset/<folder>/<pid>/<scan>/<name>.nii.gz (+ a reports CSV)."""
    for name in names:
        pid, scan = "_".join(name.split("_")[:2]), "_".join(name.split("_")[:3])
        tiny_nifti(root / "dataset" / folder / pid / scan / f"{name}.nii.gz")
    if reports:
        rep = pd.DataFrame(
            {
                "VolumeName": [f"{n}.nii.gz" for n in names],
                "ClinicalInformation_EN": "",
                "Technique_EN": "",
                "Findings_EN": [f"findings of {n}" for n in names],
                "Impressions_EN": [f"impression of {n}" for n in names],
            }
        )
        (root / "dataset" / "radiology_text_reports").mkdir(parents=True, exist_ok=True)
        rep.to_csv(root / "dataset" / "radiology_text_reports" / "validation_reports.csv", index=False)
    return root


# --------------------------------------------------------------------------- CT-RATE


def test_parse_spacing():
    assert parse_spacing("[0.75, 0.75]") == (0.75, 0.75)
    assert parse_spacing("1.5") == (1.5,)
    assert parse_spacing(0.7) == (0.7,)


def test_real_valid_metadata(shared_data):
    meta = read_ctrate_metadata(shared_data / METADATA)
    assert len(meta) == 3039
    r = meta.loc["valid_1_a_1"]
    assert (r.spacing_x, r.spacing_y, r.spacing_z) == (0.341796875, 0.341796875, 1.5)
    assert (r.rescale_slope, r.rescale_intercept) == (1.0, -1024.0)
    assert meta["spacing_z"].between(0.1, 10).all() and meta["spacing_x"].between(0.1, 2).all()


def test_ingest_ctrate_v1_with_real_csvs(shared_data, tmp_path):
    names = ["valid_1_a_1", "valid_1_a_2", "valid_2_a_1"]
    root = ctrate_tree(tmp_path, names)
    df = ingest_ctrate(root, "valid", metadata_csv=shared_data / METADATA, labels_csv=shared_data / LABELS)
    assert list(df.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert df["volume_id"].tolist() == names
    assert df["patient_id"].tolist() == ["valid_1", "valid_1", "valid_2"]
    assert df["scan_id"].tolist() == ["valid_1_a", "valid_1_a", "valid_2_a"]
    assert (df["split"] == "valid").all() and (df["format"] == "nifti").all()
    assert df["needs_rescale"].all()  # v1 folder: raw values
    assert (
        df.loc[0, "findings"] == "findings of valid_1_a_1" and df.loc[2, "impressions"] == "impression of valid_2_a_1"
    )
    assert df.loc[1, "spacing_z"] == 0.75 and df.loc[0, "rescale_intercept"] == -1024
    real = pd.read_csv(shared_data / LABELS).set_index("VolumeName")
    assert list(df.columns[len(REQUIRED_COLUMNS) : len(REQUIRED_COLUMNS) + 18]) == list(FINDINGS)
    for n in names:
        assert (
            df.set_index("volume_id").loc[n, list(FINDINGS)].tolist()
            == real.loc[f"{n}.nii.gz", list(FINDINGS)].tolist()
        )
    assert df.loc[0, "Lung nodule"] == 1


def test_ingest_ctrate_v2_fixed_folder_is_not_rescaled(shared_data, tmp_path):
    root = ctrate_tree(tmp_path, ["valid_1_a_1"], folder="valid")
    ctrate_tree(tmp_path, ["valid_1_a_1", "valid_2_a_1"], folder="valid_fixed", reports=False)
    (root / "dataset" / "metadata").mkdir()
    (root / "dataset" / "metadata" / "validation_metadata.csv").write_bytes((shared_data / METADATA).read_bytes())
    df = ingest_ctrate(root / "dataset", "valid")  # auto -> v2, CSVs found in the standard layout
    assert not df["needs_rescale"].any() and len(df) == 2
    assert all("valid_fixed" in p for p in df["path"])
    v1 = ingest_ctrate(root, "valid", version="v1")
    assert v1["needs_rescale"].all() and len(v1) == 1


def test_ingest_ctrate_excludes_no_chest(shared_data, tmp_path):
    root = ctrate_tree(tmp_path, ["valid_1_a_1", "valid_1_a_2", "valid_2_a_1"])
    (root / "dataset" / "no_chest_valid.txt").write_text("# not chest\nvalid_1_a_2.nii.gz\n\n")
    df = ingest_ctrate(root, "valid", metadata_csv=shared_data / METADATA)
    assert df["volume_id"].tolist() == ["valid_1_a_1", "valid_2_a_1"]


def test_ingest_ctrate_missing_metadata_row(shared_data, tmp_path):
    root = ctrate_tree(tmp_path, ["valid_1_a_1", "valid_99999_a_1"])
    with pytest.raises(
        ManifestError, match=r"valid_metadata\.csv: no metadata row for 1 volume\(s\) \['valid_99999_a_1'\]"
    ):
        ingest_ctrate(root, "valid", metadata_csv=shared_data / METADATA)
    log = FailureLog("ingest")
    df = ingest_ctrate(root, "valid", metadata_csv=shared_data / METADATA, missing_metadata="skip", failures=log)
    assert df["volume_id"].tolist() == ["valid_1_a_1"]
    assert [f.item for f in log.failures] == ["valid_99999_a_1"] and "valid_99999_a_1.nii.gz" in log.failures[0].path


def test_ingest_ctrate_bad_metadata_value(tmp_path):
    root = ctrate_tree(tmp_path, ["valid_1_a_1"])
    meta = tmp_path / "meta.csv"
    meta.write_text(
        "VolumeName,XYSpacing,ZSpacing,RescaleSlope,RescaleIntercept\nvalid_1_a_1.nii.gz,[0.7; 0.7],1,1,-1024\n"
    )
    with pytest.raises(ManifestError, match=r"meta\.csv: row 2 \(valid_1_a_1\.nii\.gz\)"):
        ingest_ctrate(root, "valid", metadata_csv=meta)


def test_cli_ingest_ctrate(shared_data, tmp_path, capsys):
    root = ctrate_tree(tmp_path, ["valid_1_a_1", "valid_2_a_1"])
    out = tmp_path / "m.csv"
    rc = main(
        [
            "ingest",
            "ctrate",
            str(root),
            "--split",
            "valid",
            "--metadata",
            str(shared_data / METADATA),
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and "2 volume(s), 2 patient(s)" in capsys.readouterr().out
    assert read_manifest(out)["volume_id"].tolist() == ["valid_1_a_1", "valid_2_a_1"]
    rc = main(["ingest", "ctrate", str(tmp_path / "nope"), "--out", str(out)])
    assert rc == 1 and "nope" in capsys.readouterr().err


# --------------------------------------------------------------------------- RAD-ChestCT


def test_real_radchestct_label_columns(shared_data):
    labels, cols = read_radchestct_labels(shared_data / RADCHEST)
    assert len(cols) == 84 and len(labels) == 2286 + 984 + 360
    assert {"atelectasis", "calcification", "emphysema", "nodule", "pleural_effusion"} <= set(cols)
    assert labels["split"].value_counts().to_dict() == {"train": 2286, "valid": 984, "test": 360}


def test_ingest_radchestct(shared_data, tmp_path):
    train = pd.read_csv(shared_data / RADCHEST / "imgtrain.csv")
    test = pd.read_csv(shared_data / RADCHEST / "imgtest.csv")
    ids = [train["NoteAcc_DEID"][0], train["NoteAcc_DEID"][1], test["NoteAcc_DEID"][0]]
    (tmp_path / "vols" / "sub").mkdir(parents=True)
    for i, vid in enumerate(ids):
        np.savez_compressed(tmp_path / "vols" / ("sub" if i else "") / f"{vid}.npz", ct=np.zeros((4, 8, 8), np.int16))
    df = ingest_radchestct(tmp_path / "vols", shared_data / RADCHEST)
    assert sorted(df["volume_id"]) == sorted(ids) and (df["format"] == "npz").all()
    assert (df[["spacing_x", "spacing_y", "spacing_z"]] == 0.8).all().all() and not df["needs_rescale"].any()
    label_cols = [c for c in train.columns if c != "NoteAcc_DEID"]
    assert len(label_cols) == 84 and set(label_cols) <= set(df.columns)
    got = df.set_index("volume_id")
    for vid, src in ((ids[0], train), (ids[2], test)):
        np.testing.assert_array_equal(
            got.loc[vid, label_cols].to_numpy(float), src.set_index("NoteAcc_DEID").loc[vid, label_cols].to_numpy(float)
        )
    assert got.loc[ids[2], "split"] == "test"
    summary = pd.read_csv(shared_data / RADCHEST / "Summary_3630.csv").set_index("NoteAcc_DEID")
    assert got.loc[ids[0], "patient_id"] == summary.loc[ids[0], "MRN_DEID"]
    assert ingest_radchestct(tmp_path / "vols", shared_data / RADCHEST, split="test")["volume_id"].tolist() == [ids[2]]
    np.savez(tmp_path / "vols" / "unknown001.npz", ct=np.zeros((4, 8, 8), np.int16))
    with pytest.raises(ManifestError, match=r"no label row for 1 volume\(s\) \['unknown001'\]"):
        ingest_radchestct(tmp_path / "vols", shared_data / RADCHEST)


# --------------------------------------------------------------------------- schema and user tables


def _manifest(n=3) -> pd.DataFrame:
    return pd.DataFrame([empty_row(f"v{i}", f"/data/v{i}.nii.gz") for i in range(n)])


def test_validate_duplicate_ids_and_missing_columns():
    df = _manifest()
    df.loc[2, "volume_id"] = "v0"
    with pytest.raises(ManifestError, match=r"my\.csv: duplicate volume_id\(s\) \['v0'\]"):
        validate_manifest(df, "my.csv")
    with pytest.raises(ManifestError, match=r"my\.csv: missing manifest column\(s\) \['needs_rescale'\]"):
        validate_manifest(_manifest().drop(columns=["needs_rescale"]), "my.csv")
    bad = _manifest()
    bad.loc[0, "format"] = "mha"
    with pytest.raises(ManifestError, match="unknown format"):
        validate_manifest(bad, "my.csv")
    bad = _manifest()
    bad["Cardiomegaly"] = [1, 0, 2]
    with pytest.raises(ManifestError, match="Cardiomegaly"):
        validate_manifest(bad, "my.csv")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_manifest_roundtrip(tmp_path, suffix):
    df = _manifest()
    df["Cardiomegaly"] = [1, 0, np.nan]
    df.loc[1, "needs_rescale"] = True
    df.loc[1, "spacing_z"] = 1.25
    path = write_manifest(df, tmp_path / f"m{suffix}")
    back = read_manifest(path)
    assert back["volume_id"].tolist() == ["v0", "v1", "v2"]
    assert back["needs_rescale"].tolist() == [False, True, False]
    assert back.loc[1, "spacing_z"] == 1.25 and np.isnan(back.loc[0, "spacing_z"])
    assert back["Cardiomegaly"].tolist()[:2] == [1, 0] and np.isnan(back.loc[2, "Cardiomegaly"])


def test_read_manifest_duplicate_ids_names_file(tmp_path):
    df = _manifest()
    df.loc[1, "volume_id"] = "v0"
    df.to_csv(tmp_path / "dups.csv", index=False)
    with pytest.raises(ManifestError, match=r"dups\.csv: duplicate volume_id"):
        read_manifest(tmp_path / "dups.csv")


def test_ingest_user_table(tmp_path, shared_data):
    tiny_nifti(tmp_path / "scans" / "a.nii.gz")
    lidc = shared_data / "ct_samples/lidc_idri/LIDC-IDRI-0001"
    pd.DataFrame(
        {"path": ["scans/a.nii.gz", str(lidc)], "patient_id": ["p1", ""], "Cardiomegaly": ["1", ""], "note": ["x", "y"]}
    ).to_csv(tmp_path / "mine.csv", index=False)
    df = ingest_table(tmp_path / "mine.csv")
    assert df["volume_id"].tolist() == ["a", "LIDC-IDRI-0001"]
    assert df["format"].tolist() == ["nifti", "dicom"]
    assert df["path"][0] == str(tmp_path / "scans" / "a.nii.gz")
    assert df["patient_id"].tolist() == ["p1", "LIDC-IDRI-0001"]
    assert df.loc[0, "Cardiomegaly"] == 1 and np.isnan(df.loc[1, "Cardiomegaly"]) and df["note"].tolist() == ["x", "y"]
    out = tmp_path / "m.parquet"
    assert main(["ingest", "csv", str(tmp_path / "mine.csv"), "--out", str(out)]) == 0
    assert read_manifest(out)["volume_id"].tolist() == ["a", "LIDC-IDRI-0001"]
    pd.DataFrame({"file": ["a.nii.gz"]}).to_csv(tmp_path / "nopath.csv", index=False)
    with pytest.raises(ManifestError, match=r"nopath\.csv: a scan list needs a 'path' column"):
        ingest_table(tmp_path / "nopath.csv")
