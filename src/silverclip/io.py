"""Atomic file writes and the failure log shared by every long-running stage.

A finished output is either complete on disk or absent: everything is written to a temporary
file in the destination folder and renamed into place (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success rename it over ``path``; on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, default=_json_default) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def atomic_to_csv(df: Any, path: str | Path, **kwargs: Any) -> None:
    """Write a pandas DataFrame as CSV atomically (``index=False`` unless given)."""
    kwargs.setdefault("index", False)
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        df.to_csv(f, **kwargs)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@dataclass
class Failure:
    item: str
    path: str
    reason: str


@dataclass
class FailureLog:
    """Collects per-item failures so that one bad volume/report never stops a run of thousands.

    Usage: ``log.add(item_id, path, reason)`` inside the loop; at the end ``log.report()`` prints
    every failure and ``log.exit_code`` is 1 if there were any.
    """

    stage: str
    failures: list[Failure] = field(default_factory=list)

    def add(self, item: str, path: str | Path, reason: str | BaseException) -> None:
        if isinstance(reason, BaseException):
            reason = f"{type(reason).__name__}: {reason}"
        self.failures.append(Failure(str(item), str(path), str(reason)))

    def __len__(self) -> int:
        return len(self.failures)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def write(self, path: str | Path) -> None:
        atomic_write_json(path, {"stage": self.stage, "failures": [asdict(f) for f in self.failures]})

    def report(self, stream: IO | None = None) -> None:
        if not self.failures:
            return
        stream = stream or sys.stderr  # resolved at call time, so redirected/captured stderr is honoured
        print(f"\n{self.stage}: {len(self.failures)} item(s) failed:", file=stream)
        for f in self.failures:
            print(f"  - {f.item} ({f.path}): {f.reason}", file=stream)
