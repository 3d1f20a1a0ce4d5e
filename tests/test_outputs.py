"""Outputs respect the umask, output files are written only into folders that exist, a full disk is named."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from silverclip import io as sio
from silverclip.cli import entry_point

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request: pytest.FixtureRequest):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_follow_the_umask(tmp_path: Path, umask: int) -> None:
    assert sio.current_umask() == umask
    sio.atomic_write_text(tmp_path / "a.txt", "x")
    sio.atomic_save_npy(tmp_path / "a.npy", np.zeros(3, np.int16))
    sio.atomic_to_csv(pd.DataFrame({"a": [1]}), tmp_path / "a.csv")
    for name in ("a.txt", "a.npy", "a.csv"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    (tmp_path / "a.txt").chmod(0o640)  # a file the user chose a mode for keeps it when it is rewritten
    sio.atomic_write_text(tmp_path / "a.txt", "y")
    assert _mode(tmp_path / "a.txt") == 0o640


def test_checkpoint_and_sqlite_cache_follow_the_umask(tmp_path: Path, umask: int) -> None:
    from silverclip.checkpoint import save_checkpoint
    from silverclip.labels.llm_cache import AnswerCache
    from silverclip.models import create_model

    folder = save_checkpoint(tmp_path / "ckpt", create_model("resnet10_3d", widen_factor=0.125), step=0)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "checkpoint.json"}
    for p in files:
        assert _mode(p) == 0o666 & ~umask, p.name
    assert _mode(folder) == 0o777 & ~umask
    with AnswerCache(tmp_path / "cache.sqlite"):
        pass
    assert _mode(tmp_path / "cache.sqlite") == 0o666 & ~umask


def test_synthetic_dataset_follows_the_umask(tmp_path: Path) -> None:
    from silverclip.config import config_from_dict
    from silverclip.synth.dataset import SynthConfig, make_synthetic_ctrate

    old = os.umask(0o002)
    try:
        cfg = config_from_dict(SynthConfig, {"n_patients": 2, "shape": [16, 16, 8], "workers": 1})
        make_synthetic_ctrate(tmp_path / "ds", cfg, progress=False)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "ds").rglob("*") if p.is_file()]
    assert any(p.name.endswith(".nii.gz") for p in files) and any(p.suffix == ".csv" for p in files)
    assert {_mode(p) for p in files} == {0o664}


# ----------------------------------------------------------------------------- where outputs may go
@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "scan.nii.gz", "--checkpoint", "ckpt", "--out", "{missing}/p.json"],
        ["search", "text", "--index", "emb", "--out", "{missing}/hits.json"],
        ["labels", "extract", "--reports", "r.csv", "--out", "{missing}/labels.csv"],
        ["labels", "compare", "a.csv", "b.csv", "--out", "{missing}/diff"],
        ["ingest", "csv", "scans.csv", "--out", "{missing}/manifest.csv"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_an_output_file_in_a_missing_folder_is_refused_first(
    tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str]
) -> None:
    missing = tmp_path / "nonexistent_dir"
    argv = [a.format(missing=missing) for a in argv]
    assert entry_point(argv) == 1
    err = capsys.readouterr().err
    assert "nonexistent_dir does not exist" in err and "Traceback" not in err
    assert not missing.exists()  # nothing was created, and the inputs (which do not exist) were never read


def test_an_output_file_that_is_a_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert entry_point(["labels", "extract", "--reports", "r.csv", "--out", str(tmp_path)]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_an_output_folder_is_created_with_its_parents(tmp_path: Path) -> None:
    from silverclip.data.cache import CacheWriter
    from silverclip.data.presets import load_preset

    CacheWriter(tmp_path / "new" / "deeper" / "cache", load_preset("demo"))
    assert (tmp_path / "new" / "deeper" / "cache" / "preset.json").is_file()


# ----------------------------------------------------------------------------- a full disk
def test_full_disk_names_the_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def short_write(f, *args, **kwargs):
        f.write(b"\x93NUMPY")
        raise OSError("196608 requested and 14272 written")  # what numpy says when the disk fills up

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(np, "save", short_write)
    monkeypatch.setattr(sio.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 8192, 8192))
    target = tmp_path / "volumes" / "v1.npy"
    with pytest.raises(OSError) as info:
        sio.atomic_save_npy(target, np.zeros(10, np.int16))
    assert info.value.errno == errno.ENOSPC
    msg = str(info.value)
    assert str(target) in msg and "the disk is full" in msg and "14,272 of 196,608 bytes" in msg
    assert "requested and" not in msg
    assert not target.exists() and not list(target.parent.iterdir())


SHORT_WRITE = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    from silverclip.io import atomic_save_npy
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    try:
        atomic_save_npy(sys.argv[1], np.zeros(100_000, np.int16))
    except OSError as e:
        print(e)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics")
def test_a_real_short_write_is_one_clear_message(tmp_path: Path) -> None:
    target = tmp_path / "big.npy"
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", SHORT_WRITE, str(target)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(target) in out.stdout and "the write stopped after" in out.stdout
    assert not list(tmp_path.iterdir())
