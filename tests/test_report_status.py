"""Flagged reports (issue 11.6), the keyword backend, and the labeller registry as the pipeline uses it.

Empty, whitespace-only and non-English reports must not get confident all-negative labels silently:
they are flagged (``report_status`` column, a summary line), left unlabelled (masked in pre-training)
unless ``--include-flagged``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from silverclip.cli import main
from silverclip.cli.labels import BACKEND_CHOICES
from silverclip.config import ConfigError
from silverclip.findings import FINDINGS
from silverclip.labels.backends import BackendOptions, backend_names, label_reports
from silverclip.labels.keyword import KeywordLabeler
from silverclip.labels.report_status import EMPTY, NOT_ENGLISH, OK, report_status, report_statuses
from silverclip.labels.rules import RuleLabeler
from silverclip.labels.table import read_labels, to_targets
from silverclip.pipeline.config import LabelsStageConfig
from silverclip.train.data import load_label_table

NOT_ENGLISH_REPORTS = {
    "turkish": "Sağ akciğer üst lob apikal segmentte 4 mm çaplı nodül izlenmiştir. Perikardiyal efüzyon saptanmadı.",
    "german": "Im rechten Oberlappen zeigt sich ein 4 mm großer Rundherd. Kein Pleuraerguss, kein Perikarderguss.",
    "spanish": "No se observa derrame pleural. El corazón es de tamaño normal y no hay adenopatías significativas.",
    "chinese": "右肺上叶见一枚4mm结节，纵隔未见肿大淋巴结，心包未见积液。",
}


def test_statuses(shared_data) -> None:
    df = pd.read_csv(shared_data / "ctrate_reports_manual" / "reports_manual_labels.csv")
    assert set(report_statuses(dict(zip(df["AccessionNo"], df["report_text"]))).unique()) == {OK}  # all 800 English
    for text in ("", "   \n\t ", None, float("nan"), "..."):
        assert report_status(text) == EMPTY
    for text in NOT_ENGLISH_REPORTS.values():
        assert report_status(text) == NOT_ENGLISH
    for text in ("Cardiomegaly.", "Bilateral pleural effusion. Bibasal atelectasis. Centrilobular emphysema."):
        assert report_status(text) == OK  # short telegraphic English is English


def test_extract_flags_instead_of_inventing_negatives(tmp_path, capsys) -> None:
    texts = {"ok": "Bilateral pleural effusion is observed.", "blank": "  ", **NOT_ENGLISH_REPORTS}
    src = tmp_path / "reports.csv"
    pd.DataFrame({"AccessionNo": list(texts), "report_text": list(texts.values())}).to_csv(src, index=False)
    out = tmp_path / "labels.csv"
    assert main(["labels", "extract", "--reports", str(src), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "flagged 5 of 6 report(s) (1 empty, 4 not english)" in printed and "--include-flagged" in printed
    raw = pd.read_csv(out).set_index("VolumeName")
    assert raw["report_status"].to_dict() == {
        "ok": "ok",
        "blank": "empty",
        **dict.fromkeys(NOT_ENGLISH_REPORTS, "not_english"),
    }
    labels = read_labels(out)
    assert labels.loc["ok", "Pleural effusion"] == 1
    assert labels.drop(index="ok").isna().all().all()  # no invented negatives
    # What pre-training makes of it: flagged rows carry no weight in the loss.
    _, weights = to_targets(load_label_table(out).to_numpy())
    assert weights[0].all() and not weights[1:].any()

    assert (
        main(["labels", "extract", "--reports", str(src), "--out", str(out), "--no-progress", "--include-flagged"]) == 0
    )
    assert "labelled anyway" in capsys.readouterr().out
    labels = read_labels(out)
    assert labels.notna().all().all() and (labels.loc["blank"] == 0).all()  # what the user asked for


def test_keyword_backend_ignores_negation() -> None:
    text = "No pleural effusion was detected. Possible consolidation. Heart size increased."
    keyword, _, evidence = KeywordLabeler().label(text)
    rules, _, _ = RuleLabeler().label(text)
    assert keyword["Pleural effusion"] == 1 and rules["Pleural effusion"] == 0
    assert keyword["Consolidation"] == 1 and rules["Consolidation"] == -1
    assert keyword["Cardiomegaly"] == rules["Cardiomegaly"] == 1
    assert keyword["Emphysema"] == 0 and evidence["Pleural effusion"] == ["No pleural effusion was detected."]
    assert keyword["Lung opacity"] == 0  # consolidation is only weak evidence of an opacity: not a keyword hit


def test_registry_matches_the_cli_and_the_pipeline_config() -> None:
    assert set(backend_names()) == set(BACKEND_CHOICES) == {"rules", "keyword", "llm", "cascade"}
    result = label_reports("keyword", {"a": "No pleural effusion.", "b": ""}, BackendOptions(progress=False))
    assert result.labels.loc["a", "Pleural effusion"] == 1 and np.isnan(result.labels.loc["b"]).all()
    assert result.status.to_dict() == {"a": "ok", "b": "empty"} and list(result.labels.columns) == list(FINDINGS)
    with pytest.raises(ValueError, match="unknown labeller backend"):
        label_reports("magic", {"a": "x"})
    for backend in ("keyword", "rules", "gold"):
        LabelsStageConfig(backend=backend).validate()
    LabelsStageConfig(
        backend="cascade", llm={"base_url": "http://127.0.0.1:8000/v1"}, cascade={"context": "sentences"}
    ).validate()
    with pytest.raises(ConfigError, match="base_url is required"):
        LabelsStageConfig(backend="cascade").validate()
    with pytest.raises(ConfigError, match="labels.cascade"):
        LabelsStageConfig(
            backend="cascade", llm={"base_url": "http://127.0.0.1/v1"}, cascade={"open_statuses": ["x"]}
        ).validate()
    with pytest.raises(ConfigError, match="credentials"):
        LabelsStageConfig(backend="llm", llm={"base_url": "http://u:sk-secret@127.0.0.1/v1"}).validate()


def test_pipeline_labels_stage_masks_flagged_reports_for_pre_training(tmp_path) -> None:
    """``silverclip run`` with ``labels.backend: keyword``: a blanked training report is an empty, masked row."""
    import json

    from pipeline_fixtures import tiny_config
    from silverclip.data.manifest import read_manifest, write_manifest
    from silverclip.train.data import LabeledVolumeDataset

    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, run, labels={"backend": "keyword"})
    assert main(["run", str(cfg), "--until", "preprocess"]) == 0
    manifest_path = json.loads((run / "stages" / "data.json").read_text())["outputs"]["train_manifest"]
    manifest = read_manifest(manifest_path)
    blank = str(manifest["volume_id"].iloc[0])
    manifest.loc[manifest.index[0], ["findings", "impressions"]] = ""
    write_manifest(manifest, manifest_path)
    assert main(["run", str(cfg), "--until", "labels"]) == 0
    silver = run / "labels" / "silver_keyword_train.csv"
    status = pd.read_csv(silver).set_index("VolumeName")["report_status"]
    assert status[blank] == "empty" and (status.drop(index=blank) == "ok").all()
    table = load_label_table(silver)
    assert table.loc[blank].isna().all() and table.drop(index=blank).notna().all().all()
    outputs = json.loads((run / "stages" / "labels.json").read_text())["outputs"]
    assert outputs["flagged_reports"] == 1 and outputs["backend"] == "keyword"

    from silverclip.data.cache import VolumeCache

    cache = VolumeCache(json.loads((run / "stages" / "preprocess.json").read_text())["outputs"]["cache"])
    data = LabeledVolumeDataset(cache, table, train=True)  # what pre-training builds from the table
    row = list(table.index).index(blank)
    assert not data.weights[row].any() and data.weights[np.arange(len(table)) != row].all()
