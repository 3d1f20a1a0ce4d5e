"""Run folders: every stage writes its outputs, resolved config and code version into one folder."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from silverclip import __version__
from silverclip.config import save_config
from silverclip.io import atomic_write_json


def code_version() -> dict[str, str]:
    """Package version and, when running from a git checkout, the commit (with ``-dirty``)."""
    info = {"silverclip": __version__}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0 and commit.stdout.strip():
            info["git"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def prepare_run_dir(run_dir: str | Path, config: Any, name: str = "config") -> Path:
    """Create ``run_dir`` and save ``<name>.yaml`` (resolved config) and ``version.json`` in it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / f"{name}.yaml")
    atomic_write_json(run_dir / "version.json", code_version())
    return run_dir
