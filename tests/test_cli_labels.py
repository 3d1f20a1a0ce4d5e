"""``silverclip labels extract|evaluate|compare`` end to end on a few real CT-RATE reports."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from silverclip.cli import main
from silverclip.findings import FINDINGS
from silverclip.labels.table import read_labels


@pytest.fixture()
def reports(shared_data, tmp_path):
    """12 real reports in CT-RATE's reports layout (VolumeName, Findings_EN, Impressions_EN)."""
    df = pd.read_csv(shared_data / "ctrate_reports_manual" / "reports_manual_labels.csv").iloc[:12]
    text = df["report_text"].str.split('"', n=1)
    ctrate = pd.DataFrame(
        {
            "VolumeName": [f"{a}_a_1.nii.gz" for a in df["AccessionNo"]],
            "ClinicalInformation_EN": "",
            "Technique_EN": "",
            "Findings_EN": text.str[0],
            "Impressions_EN": text.str[1].fillna(""),
        }
    )
    path = tmp_path / "reports.csv"
    ctrate.to_csv(path, index=False)
    gold = df[list(FINDINGS)].copy()
    gold.insert(0, "VolumeName", ctrate["VolumeName"])
    gold_path = tmp_path / "gold.csv"
    gold.to_csv(gold_path, index=False)
    return path, gold_path


def test_extract_evaluate_compare(reports, tmp_path, capsys) -> None:
    rpath, gold_path = reports
    out = tmp_path / "out" / "rules.csv"
    out.parent.mkdir()  # an output file goes into an existing folder (silverclip.io.check_output_file)
    assert main(["labels", "extract", "--reports", str(rpath), "--out", str(out), "--no-progress"]) == 0
    labels = pd.read_csv(out)
    assert list(labels.columns) == ["VolumeName", *FINDINGS, "report_status"]
    assert (labels["report_status"] == "ok").all()
    assert labels["VolumeName"].iloc[0].endswith(".nii.gz") and len(labels) == 12
    assert set(labels[list(FINDINGS)].stack().unique()) <= {-1, 0, 1}
    probs = read_labels(tmp_path / "out" / "rules_probs.csv")
    assert probs.shape == (12, 18) and ((probs >= 0) & (probs <= 1)).all().all()
    evidence = [json.loads(line) for line in (tmp_path / "out" / "rules.evidence.jsonl").read_text().splitlines()]
    assert len(evidence) == 12 and evidence[0]["id"] == labels["VolumeName"].iloc[0]

    ev_dir = tmp_path / "metrics"
    assert main(["labels", "evaluate", "--pred", str(out), "--gold", str(gold_path), "--out", str(ev_dir)]) == 0
    metrics = json.loads((ev_dir / "metrics.json").read_text())
    assert metrics["n_reports"] == 12 and metrics["per_finding"]["Pleural effusion"]["auc_source"] == "prob"
    assert "| **macro** |" in (ev_dir / "metrics.md").read_text()

    # compare against a copy with one label flipped: exactly that disagreement, with evidence on the rules side
    other = pd.read_csv(out)
    other.loc[1, "Pleural effusion"] = 1 - abs(int(other.loc[1, "Pleural effusion"]))
    other_path = tmp_path / "other.csv"
    other.to_csv(other_path, index=False)
    prefix = tmp_path / "diff"
    assert main(["labels", "compare", str(out), str(other_path), "--reports", str(rpath), "--out", str(prefix)]) == 0
    diff = pd.read_csv(tmp_path / "diff.csv", keep_default_na=False)
    assert len(diff) == 1 and diff.loc[0, "finding"] == "Pleural effusion"
    assert "effusion" in diff.loc[0, "evidence_a"].lower()  # from rules.evidence.jsonl
    assert "effusion" in diff.loc[0, "evidence_b"].lower()  # no evidence file: sentences from the report
    assert "Pleural effusion" in (tmp_path / "diff.md").read_text()


def test_evaluate_reports_missing_ids(reports, tmp_path) -> None:
    rpath, gold_path = reports
    out = tmp_path / "rules.csv"
    assert main(["labels", "extract", "--reports", str(rpath), "--out", str(out), "--no-progress", "--limit", "5"]) == 0
    with pytest.raises(ValueError, match="7 reference id"):
        main(["labels", "evaluate", "--pred", str(out), "--gold", str(gold_path)])
    assert main(["labels", "evaluate", "--pred", str(out), "--gold", str(gold_path), "--allow-subset"]) == 0


def test_generic_columns_and_bad_layout(tmp_path) -> None:
    path = tmp_path / "generic.csv"
    pd.DataFrame({"rid": ["r1", "r2"], "body": ["Cardiomegaly.", "No pleural effusion."]}).to_csv(path, index=False)
    out = tmp_path / "g.csv"
    with pytest.raises(ValueError, match="unknown reports layout"):
        main(["labels", "extract", "--reports", str(path), "--out", str(out)])
    args = [
        "labels",
        "extract",
        "--reports",
        str(path),
        "--out",
        str(out),
        "--id-column",
        "rid",
        "--text-columns",
        "body",
    ]
    assert main([*args, "--no-progress"]) == 0
    labels = read_labels(out)
    assert labels.loc["r1", "Cardiomegaly"] == 1 and labels.loc["r2", "Pleural effusion"] == 0


def test_extract_llm_backend_is_wired_and_guarded(reports, tmp_path, capsys) -> None:
    """--backend llm reaches the LLM labeller; a remote endpoint is refused before any request."""
    rpath, _ = reports
    out = tmp_path / "llm.csv"
    args = ["labels", "extract", "--reports", str(rpath), "--out", str(out), "--backend", "llm"]
    assert main([*args, "--base-url", "https://api.example.com/v1", "--limit", "1", "--no-progress"]) == 2
    assert "RemoteEndpointError" in capsys.readouterr().err
    assert not out.exists()
