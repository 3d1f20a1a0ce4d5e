"""Shared fixtures: paths to the real reference data in ../shared/data and offline settings."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Nothing in the test-suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The zero-shot classifier cache of `silverclip.inference.load` goes to a temporary folder, not ~/.cache.
os.environ.setdefault("SILVERCLIP_CACHE_DIR", tempfile.mkdtemp(prefix="silverclip-test-cache-"))

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SILVERCLIP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (read-only real reference data). Its absence is an error, not a skip."""
    assert SHARED_DATA.is_dir(), f"reference data folder {SHARED_DATA} is missing (set SILVERCLIP_SHARED_DATA)"
    return SHARED_DATA
