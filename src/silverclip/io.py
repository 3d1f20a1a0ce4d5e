"""Atomic file writes and the failure log shared by every long-running stage.

A finished output is either complete on disk or absent: everything is written to a temporary
file in the destination folder and renamed into place (``os.replace`` is atomic on POSIX).

Permissions: a new file gets ``0666 & ~umask``, as ``open()`` would give it (the temporary file's 0600
is not kept); a file that is replaced keeps its mode. Folders: an output *file* named on the command
line must go into an existing folder (:func:`check_output_file`: a typo in its folder is an error, not a
new folder tree); an output *folder* is created with its parents, as ``mkdir -p`` would.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
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
        os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and _is_short_write(e):
            raise OSError(e.errno or errno.ENOSPC, _short_write_message(path, e)) from e
        raise


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it back is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode of the file that ``path`` replaces, else what ``open()`` would create under the umask."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~current_umask()


def apply_umask(path: str | Path) -> None:
    """Give a file another library created with its own mode (safetensors: 0600) the umask's permissions."""
    os.chmod(path, 0o666 & ~current_umask())


def create_file(path: str | Path) -> Path:
    """Create ``path`` empty if it does not exist, with the umask's permissions (for files that another
    library opens, such as SQLite's, which would otherwise pick its own mode)."""
    path = Path(path)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return path


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Check, before any work, that ``path`` can be written as a file: its folder must already exist (it is
    never created for a file path: a typo there is an error), be a folder and be writable."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; the {what} must be a file name")
    parent = path.parent
    if not parent.exists():
        raise FileNotFoundError(
            f"{path}: the folder {parent} does not exist; create it first (silverclip creates no folder "
            f"for the {what} you name)"
        )
    if not parent.is_dir():
        raise NotADirectoryError(f"{path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{path}: the folder {parent} is not writable")
    return path


# numpy's message for a short fwrite (``tofile``/``np.save`` on a full disk): "196608 requested and 14272 written"
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


def _is_short_write(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or bool(_SHORT_WRITE.search(str(e)))


def _short_write_message(path: Path, e: OSError) -> str:
    """``<path>: not written ...: the disk is full (N MB free in <folder>)``, or why else the write stopped."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    m = _SHORT_WRITE.search(str(e))
    detail = f" after {int(m.group(2)):,} of {int(m.group(1)):,} bytes" if m else ""
    where = f"{free / 1e6:,.0f} MB free in {path.parent}" if free is not None else str(path.parent)
    missing = int(m.group(1)) - int(m.group(2)) if m else 0
    if e.errno == errno.EFBIG:
        reason = "the file is larger than this process (ulimit -f) or the file system may write"
    elif e.errno == errno.EDQUOT:
        reason = f"the disk quota is exhausted ({where})"
    elif e.errno == errno.ENOSPC or (free is not None and free < max(missing, 2**20)):
        reason = f"the disk is full ({where})"
    else:
        reason = f"the file system refused the rest: disk full, quota or file-size limit ({where})"
    return f"{path}: not written, the write stopped{detail}: {reason}; make room and rerun to resume"


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
