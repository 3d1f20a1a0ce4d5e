"""User errors on the command line: one clear line on stderr and exit status 2 (command line, config) or 1,
the traceback only with -v; the whole pipeline config is checked before the first stage runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from silverclip.cli import entry_point, main
from silverclip.config import ConfigError
from silverclip.data.preprocess import preprocess_path
from silverclip.data.readers import VolumeReadError, load_volume

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_fixtures import tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_TEXT = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 37}


def _error_line(err: str, stage: str) -> str:
    """The one error line; nothing that looks like a traceback around it."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"silverclip {stage}: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from silverclip.checkpoint import save_checkpoint
    from silverclip.models import create_model

    model = create_model("clip", image={"name": "resnet10_3d", "widen_factor": 0.125}, text={"config": TINY_TEXT})
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip", model, preset="demo", step=1)


# ------------------------------------------------------------------ issue 11.9: the whole config, first
@pytest.mark.parametrize("until", [None, "labels"])
@pytest.mark.parametrize(
    "override, key",
    [
        ("pretrain.train.epoch=1", "train.epoch"),
        ("clip.data.batch_sise=2", "data.batch_sise"),
        ("clip.data.batch_size=0", "data.batch_size must be >= 1"),
        ("source.synth.n_patiens=3", "n_patiens"),
        ("preprocess.preset=nonesuch", "nonesuch"),
    ],
)
def test_run_checks_every_stage_config_before_the_first_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture, override: str, key: str, until: str | None
) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, run)
    argv = ["run", str(cfg), override] + (["--until", until] if until else [])
    assert entry_point(argv) == 2
    assert key in _error_line(capsys.readouterr().err, "run")
    assert not run.exists(), "a stage ran before the config error was reported"
    with pytest.raises(ConfigError, match=key.split(".")[-1].split(" ")[0]):
        main(argv)  # the same check for Python callers, as an exception


def test_ablate_checks_every_stage_config_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "abl"
    cfg = tiny_config(tmp_path, run)
    assert entry_point(["ablate", str(cfg), "pretrain.train.epoch=1"]) == 2
    assert "train.epoch" in _error_line(capsys.readouterr().err, "ablate")
    assert not run.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_run_refuses_a_missing_gpu_before_the_first_stage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path, run)
    assert entry_point(["run", str(cfg), "clip.train.device=cuda"]) == 2
    assert "clip.train.device" in _error_line(capsys.readouterr().err, "run")
    assert not run.exists()


# ------------------------------------------------------------------ issue 11.11: one line, exit 1 or 2
def test_bad_checkpoint_and_tampered_checkpoint_on_predict(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 30), np.int16), np.diag([1.5, 1.5, 3.0, 1])), str(scan))
    assert entry_point(["predict", str(scan), "--checkpoint", str(tmp_path)]) == 1
    assert "not a checkpoint folder" in _error_line(capsys.readouterr().err, "predict")

    import shutil

    tampered = tmp_path / "tampered"
    shutil.copytree(checkpoint, tampered)
    marker = tmp_path / "MARKER"
    code = tmp_path / "code"
    code.mkdir()
    (code / "tokenization_x.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    tok = {"tokenizer_class": "XTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}}
    (code / "tokenizer_config.json").write_text(json.dumps(tok))
    meta = json.loads((tampered / "checkpoint.json").read_text())
    meta["model_config"]["text"] = {"name_or_path": str(code), "trust_remote_code": True}
    meta["text_files"] = {}
    (tampered / "checkpoint.json").write_text(json.dumps(meta))
    assert entry_point(["predict", str(scan), "--checkpoint", str(tampered)]) == 1
    assert "has no files in the checkpoint" in _error_line(capsys.readouterr().err, "predict")
    assert not marker.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_on_a_cpu_machine(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 30), np.int16), np.eye(4)), str(scan))
    assert entry_point(["predict", str(scan), "--checkpoint", str(checkpoint), "--device", "cuda"]) == 1
    line = _error_line(capsys.readouterr().err, "predict")
    assert "device 'cuda'" in line and "CUDA" in line and "pin_memory" not in line


def test_synth_folder_of_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ds"
    base = ["synth", "--out", str(out), "--shape", "16,16,8", "--quiet"]
    assert entry_point([*base, "--n-patients", "2"]) == 0
    capsys.readouterr()
    assert entry_point([*base, "--n-patients", "3"]) == 1
    assert "other settings" in _error_line(capsys.readouterr().err, "synth")


def test_labels_extract_input_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_reports.csv"
    assert entry_point(["labels", "extract", "--reports", str(missing), "--out", str(tmp_path / "l.csv")]) == 1
    assert "no_reports.csv" in _error_line(capsys.readouterr().err, "labels")


def test_verbose_adds_the_traceback_before_or_after_the_stage(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tiny_config(tmp_path, tmp_path / "run")
    for argv in (["-v", "run", str(cfg), "pretrain.train.epoch=1"], ["run", str(cfg), "pretrain.train.epoch=1", "-v"]):
        assert entry_point(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and "silverclip run: error: in section pretrain" in err


def test_the_installed_command_and_python_m_use_the_entry_point(tmp_path: Path) -> None:
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["silverclip"] == "silverclip.cli:entry_point"
    cfg = tiny_config(tmp_path, tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "silverclip.cli", "run", str(cfg), "pretrain.train.epoch=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "train.epoch" in _error_line(proc.stderr, "run")


# ------------------------------------------------------------------ the messages themselves
def _nifti(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))
    return path


def test_a_4d_nifti_is_called_4d(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "fmri.nii.gz", np.zeros((10, 10, 10, 3), np.int16))
    with pytest.raises(VolumeReadError, match=r"fmri\.nii\.gz: a 4D image .*3 volumes") as e:
        load_volume(path)
    assert "2D" not in str(e.value)
    single = _nifti(tmp_path / "single.nii.gz", np.zeros((10, 10, 10, 1), np.int16))
    assert load_volume(single).shape == (10, 10, 10)  # a trailing axis of one is still one volume


def test_symlink_loop_and_broken_link_are_named(tmp_path: Path) -> None:
    loop = tmp_path / "loop.nii.gz"
    os.symlink(loop, loop)
    with pytest.raises(VolumeReadError, match=r"loop\.nii\.gz: a loop of symbolic links"):
        load_volume(loop)
    broken = tmp_path / "broken.nii.gz"
    os.symlink(tmp_path / "gone.nii.gz", broken)
    with pytest.raises(FileNotFoundError, match=r"broken\.nii\.gz: broken symbolic link .*gone\.nii\.gz"):
        load_volume(broken)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_volume(tmp_path / "missing.nii.gz")


def test_a_5x5x5_volume_is_named_not_a_torch_error(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "tiny.nii.gz", np.zeros((5, 5, 5), np.int16))
    with pytest.raises(VolumeReadError, match=r"tiny\.nii\.gz: 5x5x5 voxels of 1x1x1 mm are smaller than one 6x6x6"):
        preprocess_path(path, "demo")


def test_predict_lists_each_bad_scan_with_its_reason(checkpoint: Path, tmp_path: Path, capsys) -> None:
    four_d = _nifti(tmp_path / "fmri.nii.gz", np.zeros((10, 10, 10, 3), np.int16))
    tiny = _nifti(tmp_path / "tiny.nii.gz", np.zeros((5, 5, 5), np.int16))
    loop = tmp_path / "loop.nii.gz"
    os.symlink(loop, loop)
    assert entry_point(["predict", str(four_d), str(tiny), str(loop), "--checkpoint", str(checkpoint)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "3 item(s) failed" in err
    assert "a 4D image" in err and "smaller than one 6x6x6 mm voxel" in err and "a loop of symbolic links" in err
