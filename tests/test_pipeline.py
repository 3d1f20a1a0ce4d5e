"""``silverclip run`` end to end on a tiny config: completeness, stage skipping, kill-and-resume, ablation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_fixtures import tiny_config
from silverclip.cli import main
from silverclip.findings import FINDINGS

STAGES = ("data", "preprocess", "labels", "pretrain", "clip", "embed", "evaluate")


def _check_complete(run: Path) -> dict:
    for stage in STAGES:
        assert (run / "stages" / f"{stage}.json").is_file(), f"stage {stage} has no completion marker"
    summary = json.loads((run / "summary.json").read_text())
    zs = summary["evaluation"]["zero_shot"]
    assert 0.0 <= zs["auc"] <= 1.0
    assert set(summary["evaluation"]["retrieval"]["map"]) == {"1", "5", "10", "50"}
    assert (run / "report.md").read_text().startswith("# silverclip run")
    assert (run / "eval" / "zero_shot" / "roc_curves.png").is_file()
    assert (run / "config.yaml").is_file() and (run / "version.json").is_file()
    labels = (run / "labels" / "silver_rules_train.csv").read_text().splitlines()
    assert labels[0].split(",")[1:] == [*FINDINGS, "report_status"]  # the labeller's status of each report
    for name in ("pretrain", "clip"):
        assert (run / name / "best" / "model.safetensors").is_file()
    return summary


@pytest.mark.slow
def test_run_end_to_end_then_skips_completed_stages(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, run)
    assert main(["run", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "zero-shot mean AUC" in out and "Report:" in out and str(run / "report.html") in out
    summary = _check_complete(run)
    assert summary["labels"]["quality"]["auc"] > 0.8  # rules vs gold on synthetic reports
    stamps = {s: (run / "stages" / f"{s}.json").stat().st_mtime_ns for s in STAGES}
    assert main(["run", str(cfg)]) == 0
    assert "already complete" in capsys.readouterr().out
    assert stamps == {s: (run / "stages" / f"{s}.json").stat().st_mtime_ns for s in STAGES}
    # a changed config for a completed stage is refused, not silently mixed
    with pytest.raises(RuntimeError, match="different config"):
        main(["run", str(cfg), "preprocess.workers=2"])


@pytest.mark.slow
def test_run_killed_mid_stage_resumes_to_complete_outputs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, run)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "silverclip.cli", "run", str(cfg)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    # kill it inside the CLIP stage, after its first checkpoint, when pre-training is complete
    deadline = time.time() + 300
    clip_last = run / "clip" / "last"
    while time.time() < deadline and not clip_last.is_dir():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    assert clip_last.is_dir(), "the run never reached the CLIP stage"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "stages" / "pretrain.json").is_file()
    assert not (run / "stages" / "clip.json").is_file()
    pre_stamp = (run / "stages" / "pretrain.json").stat().st_mtime_ns
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[pretrain] already complete" in resumed.stdout
    assert (run / "stages" / "pretrain.json").stat().st_mtime_ns == pre_stamp
    _check_complete(run)
    metrics = (run / "clip" / "metrics.jsonl").read_text()
    assert metrics  # training log kept across the interruption


def test_until_stops_after_the_named_stage(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, run)
    assert main(["run", str(cfg), "--until", "labels"]) == 0
    assert (run / "stages" / "labels.json").is_file()
    assert not (run / "stages" / "pretrain.json").exists()
    with pytest.raises(ValueError, match="unknown stage"):
        main(["run", str(cfg), "--until", "nonsense"])


def test_torchrun_requires_prepared_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path, tmp_path / "run")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="--until labels"):
        main(["run", str(cfg)])


def test_bad_pipeline_config_names_the_key(tmp_path: Path) -> None:
    from silverclip.config import ConfigError

    cfg = tiny_config(tmp_path, tmp_path / "run")
    with pytest.raises(ConfigError, match="sourc"):
        main(["run", str(cfg), "sourc.kind=synth"])
    with pytest.raises(ConfigError, match="labels.llm.base_url"):
        main(["run", str(cfg), "labels.backend=llm"])


@pytest.mark.slow
def test_ablation_table_over_arms_and_seeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "abl"
    cfg = tiny_config(tmp_path, run)
    assert main(["ablate", str(cfg)]) == 0
    records = json.loads((run / "ablation.json").read_text())
    assert {(r["arm"], r["seed"]) for r in records} == {(a, s) for a in ("scratch", "gold", "rules") for s in (0, 1)}
    for r in records:
        assert {"zero_shot_auc", "map_at_50", "r2i_recall_at_100", "r2i_gallery", "seconds"} <= set(r)
        assert (r["pretrain_val_auc"] is None) == (r["arm"] == "scratch")
    results = json.loads((run / "results.json").read_text())
    agg = results["aggregate"]
    for arm in ("gold", "rules"):
        diff = agg[arm]["diff_vs_scratch"]["zero_shot_auc"]
        paired = [
            r["zero_shot_auc"] - s["zero_shot_auc"]
            for r in records
            for s in records
            if r["arm"] == arm and s["arm"] == "scratch" and r["seed"] == s["seed"]
        ]
        assert diff["mean"] == pytest.approx(sum(paired) / len(paired))
    # the scratch arm got the pre-training epochs on top of CLIP's (equal budget)
    clip_cfg = (run / "arms" / "scratch_seed0" / "clip" / "config.yaml").read_text()
    assert "epochs: 4" in clip_cfg
    md = (run / "results.md").read_text()
    assert "(a) CLIP from scratch" in md and "| rules |" in md and "silverclip ablate" in md
    assert (run / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # rerun: everything is complete and reused
    assert main(["ablate", str(cfg)]) == 0
    assert json.loads((run / "ablation.json").read_text()) == records
    # the committed copy re-renders into a page, replacing only the marked block
    page = tmp_path / "results.md"
    page.write_text(
        "# Results\n\nhand-written diagnosis\n\n<!-- ablation:begin -->\nOLD-BLOCK\n<!-- ablation:end -->\ntail\n"
    )
    assert main(["ablate", "--render", str(run / "ablation.json"), "--out", str(page)]) == 0
    text = page.read_text()
    assert "hand-written diagnosis" in text and text.endswith("tail\n") and "OLD-BLOCK" not in text
    assert "(b) pre-trained on gold labels - scratch" in text and (tmp_path / "results.png").is_file()


def test_external_radchestct_stage(tmp_path: Path, shared_data: Path) -> None:
    """The RAD-ChestCT external stage on a few fake .npz volumes named like real scans, with their real labels."""
    import numpy as np
    import pandas as pd

    from silverclip.config import load_config
    from silverclip.pipeline.config import PipelineConfig
    from silverclip.pipeline.run import Pipeline

    labels_dir = shared_data / "radchestct_labels"
    ids = pd.read_csv(labels_dir / "imgtest.csv")["NoteAcc_DEID"].head(6).tolist()
    vols = tmp_path / "npz"
    vols.mkdir()
    rng = np.random.default_rng(0)
    for vid in ids:
        np.savez_compressed(vols / f"{vid}.npz", ct=rng.integers(-1000, 300, size=(40, 48, 48)).astype(np.int16))
    run = tmp_path / "run"
    cfg_path = tiny_config(tmp_path, run)
    assert main(["run", str(cfg_path)]) == 0
    cfg = load_config(
        PipelineConfig,
        cfg_path,
        ["external.enabled=true", f"external.volumes={vols}", f"external.labels={labels_dir}", "external.split=test"],
    )
    ckpt = json.loads((run / "stages" / "clip.json").read_text())["outputs"]["checkpoint"]
    out = Pipeline(cfg).external(ckpt, run / "external")
    res = json.loads((run / "external" / "zero_shot" / "zero_shot.json").read_text())
    assert res["protocol"] == "radchestct" and res["n_volumes"] == 6
    assert "Mosaic attenuation pattern" not in res["findings"] and len(res["findings"]) == 16
    assert set(out["retrieval"]["map"]) == {"1", "5", "10", "50"}


def test_pipeline_continues_from_and_evaluates_final_weights(tmp_path: Path) -> None:
    """best/ is chosen on the evaluation split, so the pipeline must use last/ (no label leak into selection)."""
    run = tmp_path / "run"
    assert main(["run", str(tiny_config(tmp_path, run)), "--until", "embed"]) == 0
    pre = json.loads((run / "stages" / "pretrain.json").read_text())["outputs"]["checkpoint"]
    clip = json.loads((run / "stages" / "clip.json").read_text())["outputs"]["checkpoint"]
    assert pre == str(run / "pretrain" / "last") and clip == str(run / "clip" / "last")
    emb_meta = json.loads((run / "embeddings" / "valid" / "meta.json").read_text())
    assert emb_meta["checkpoint"] == clip
    clip_cfg = (run / "clip" / "config.yaml").read_text()
    assert f"init: {pre}" in clip_cfg
