"""Killing preprocessing: its workers die with it, and the next run repairs the cache's index and temporaries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from silverclip.data.cache import VolumeCache
from silverclip.data.manifest import empty_row, write_manifest
from silverclip.data.preprocess import preprocess_manifest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _manifest(tmp_path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "scans").mkdir()
    rows = []
    for i in range(n):
        path = tmp_path / "scans" / f"v{i:03d}.nii.gz"
        arr = rng.integers(-1000, 400, (24, 24, 12)).astype(np.int16)
        nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.5, 3.0, 1.0])), str(path))
        rows.append(empty_row(f"v{i:03d}", path))
    return write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _workers(pid: int) -> list[int]:
    """The spawned multiprocessing workers among the children of ``pid``."""
    out = []
    for child in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killing_preprocess_kills_its_workers(tmp_path: Path, sig: signal.Signals) -> None:
    manifest = _manifest(tmp_path, 60)
    cmd = [sys.executable, "-m", "silverclip.cli", "preprocess", "--manifest", str(manifest), "--preset", "demo"]
    cmd += ["--out", str(tmp_path / "cache"), "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 300  # seconds normally; generous for a busy machine
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            workers = _workers(proc.pid)
            if len(workers) == 2 and list((tmp_path / "cache" / "volumes").glob("*.npy")):
                break  # both workers started and at work
        assert len(workers) == 2 and proc.poll() is None, "the worker processes never started"
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [w for w in workers if _alive(w)]
        assert not left, f"worker processes {left} outlived their killed parent"
    finally:
        for pid in {proc.pid, *workers, *_children(proc.pid)}:  # whatever happened, leave nothing running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


KILL_MID_RUN = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from silverclip.data import preprocess as pp

    real, done = pp._process_one, []

    def process(task, *args):
        row = real(task, *args)
        done.append(task["volume_id"])
        if len(done) == 3:  # three volumes are written; the kill comes while the fourth is half-written
            def half_then_kill(f, *a, **k):
                f.write(b"\\x93NUMPY half a volume")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            np.save = half_then_kill
        return row

    pp._process_one = process
    pp.preprocess_manifest(sys.argv[1], "demo", sys.argv[2], workers=1, progress=False)
    """
)


def test_resume_after_a_kill_rebuilds_the_index_and_removes_temporaries(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, 6)
    cache_dir = tmp_path / "cache"
    script = tmp_path / "kill_mid_run.py"
    script.write_text(KILL_MID_RUN)
    proc = subprocess.run([sys.executable, str(script), str(manifest), str(cache_dir)], env=_env(), timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert len(VolumeCache(cache_dir).ids()) == 3 and not (cache_dir / "index.csv").exists()
    assert len(list((cache_dir / "volumes").glob(".*.tmp"))) == 1  # the half-written volume

    log = preprocess_manifest(manifest, "demo", cache_dir, workers=1, progress=False)
    assert log.exit_code == 0
    ids = [f"v{i:03d}" for i in range(6)]
    assert VolumeCache(cache_dir).ids() == ids
    index = pd.read_csv(cache_dir / "index.csv", dtype={"volume_id": str})
    assert index["volume_id"].tolist() == ids  # the rows of the volumes written before the kill are back
    assert (index["source_shape"] == "24x24x12").all() and index["source"].str.endswith(".nii.gz").all()
    assert not list(cache_dir.rglob(".*.tmp"))  # no temporary file left behind


def test_temporaries_of_other_writers_are_kept_until_stale(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, 2)
    cache_dir = tmp_path / "cache"
    preprocess_manifest(manifest, "demo", cache_dir, progress=False)
    other = cache_dir / "volumes" / ".other_shard.npy.abc123.tmp"  # another shard may be writing it right now
    old = cache_dir / "volumes" / ".crashed_shard.npy.def456.tmp"
    for f in (other, old):
        f.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    preprocess_manifest(manifest, "demo", cache_dir, progress=False)
    assert other.exists() and not old.exists()
