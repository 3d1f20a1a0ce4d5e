"""Header walk of a DICOM tree: one record per file, kept in a resumable SQLite index.

:func:`walk_tree` lists every file under a root (nested or flat, any names, no extension needed; a DICOMDIR
is just one more file, and not needed), and :func:`index_tree` reads the headers of those not yet in the
index (pydicom, ``stop_before_pixels``), in worker processes, with a progress bar. Each chunk of records is
committed to the SQLite index in one transaction, so a run killed at any moment keeps every finished chunk
and the next run reads only the files that are new or changed (size or modification time). Files without
Study/SeriesInstanceUID (exports anonymised that far) are grouped by their folder. A file that is not DICOM
or cannot be parsed becomes a record with ``status="unreadable"`` and its reason; it never stops the walk.

Identifiers: no patient name, birth date, patient id, accession number or UID is stored. The study, series,
patient and accession values are replaced at read time by keyed hashes (:class:`Pseudonymizer`, HMAC-SHA256
with a secret salt), which group and pair exactly as the raw values would. Only geometry and acquisition
tags (modality, image type, kernel, sizes, spacings, positions, orientation, tilt) are kept, plus the file's
path relative to the root.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from silverclip.io import create_file

INDEX_VERSION = 1
SALT_BYTES = 32

# The only tags read (pydicom ``specific_tags``): what grouping, pairing and series selection need.
HEADER_TAGS = (
    "SOPClassUID",
    "Modality",
    "ImageType",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "AccessionNumber",
    "PatientID",
    "ConvolutionKernel",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "GantryDetectorTilt",
    "NumberOfFrames",
    "InstanceNumber",
)


class Pseudonymizer:
    """Opaque, stable ids from identifying values: ``prefix + HMAC-SHA256(salt, kind:value)[:16]``.

    The same salt gives the same ids on every run (resuming, adding studies); without the salt an id cannot be
    linked back to its UID or patient id, even by trying every value (a plain hash of a medical record number
    could be reversed that way). Keep the salt as secret as the data.
    """

    def __init__(self, salt: bytes) -> None:
        if len(salt) < 16:
            raise ValueError("the pseudonymisation salt must have at least 16 bytes")
        self._salt = salt

    @classmethod
    def from_file(cls, path: str | Path, salt: str | None = None) -> Pseudonymizer:
        """Use ``salt`` (a passphrase) if given, else the salt stored in ``path``, created (random, mode 0600)
        on first use."""
        if salt:
            return cls(hashlib.sha256(salt.encode("utf-8")).digest())
        path = Path(path)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(SALT_BYTES) + "\n")
        return cls(bytes.fromhex(path.read_text().strip()))

    @property
    def fingerprint(self) -> str:
        """Names the salt without revealing it (stored in the index to detect a changed salt)."""
        return self.hash("fingerprint", "silverclip")

    def hash(self, kind: str, value: str) -> str:
        return hmac.new(self._salt, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()[:16]

    def id(self, kind: str, value: str | None, prefix: str = "") -> str:
        """``""`` for an empty value, else ``prefix`` + 16 hex digits."""
        value = "" if value is None else str(value).strip()
        return f"{prefix}{self.hash(kind, value)}" if value else ""


@dataclass
class FileRecord:
    """What the index keeps of one file (no identifying values: ids are pseudonyms)."""

    path: str  # relative to the root, "/"-separated
    size: int
    mtime_ns: int
    status: str  # "ok" (a DICOM object) | "unreadable"
    reason: str = ""
    study: str = ""  # pseudonym of StudyInstanceUID
    series: str = ""  # pseudonym of SeriesInstanceUID
    patient: str = ""  # pseudonym of PatientID
    accession: str = ""  # pseudonym of AccessionNumber
    modality: str = ""
    sop_class: str = ""
    image_type: list[str] = field(default_factory=list)
    series_number: int | None = None
    instance_number: int | None = None
    kernel: str = ""
    rows: int | None = None
    columns: int | None = None
    frames: int | None = None
    pixel_spacing: list[float] | None = None
    slice_thickness: float | None = None
    orientation: list[float] | None = None
    position: list[float] | None = None
    gantry_tilt: float | None = None

    @property
    def is_image(self) -> bool:
        """A slice with the geometry a volume needs (position, orientation, size, pixel spacing)."""
        return (
            self.status == "ok"
            and self.position is not None
            and self.orientation is not None
            and self.pixel_spacing is not None
            and bool(self.rows)
            and bool(self.columns)
        )


def _floats(value: Any, n: int) -> list[float] | None:
    try:
        out = [float(v) for v in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value])]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def read_header(path: Path, rel: str, ids: Pseudonymizer) -> FileRecord:
    """One file -> its :class:`FileRecord`; never raises for a bad file (``status="unreadable"``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        st = path.stat()
    except OSError as e:
        return FileRecord(rel, 0, 0, "unreadable", f"cannot stat ({e.strerror or e})")
    rec = FileRecord(rel, st.st_size, st.st_mtime_ns, "unreadable")
    if st.st_size == 0:
        rec.reason = "empty file (0 bytes)"
        return rec
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except InvalidDicomError:
        rec.reason = "not a DICOM file (no DICM preamble)"
        return rec
    except Exception as e:  # noqa: BLE001 - any parser failure makes the file unreadable, never stops the walk
        rec.reason = f"unreadable DICOM header ({type(e).__name__}: {str(e)[:200]})"
        return rec
    try:
        kernel = ds.get("ConvolutionKernel", "")
        if isinstance(kernel, Sequence) and not isinstance(kernel, str):
            kernel = kernel[0] if len(kernel) else ""  # Siemens: "Br40d\3" -> the kernel name
        rec.study = ids.id("study", ds.get("StudyInstanceUID"), "")
        rec.series = ids.id("series", ds.get("SeriesInstanceUID"), "")
        rec.patient = ids.id("patient", ds.get("PatientID"), "")
        rec.accession = ids.id("accession", ds.get("AccessionNumber"), "")
        rec.modality = _text(ds.get("Modality", "")).upper()
        rec.sop_class = _text(ds.get("SOPClassUID", ""))
        rec.image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        rec.series_number = _int(ds.get("SeriesNumber"))
        rec.instance_number = _int(ds.get("InstanceNumber"))
        rec.kernel = _text(kernel)
        rec.rows, rec.columns = _int(ds.get("Rows")), _int(ds.get("Columns"))
        rec.frames = _int(ds.get("NumberOfFrames"))
        rec.pixel_spacing = _floats(ds.get("PixelSpacing"), 2)
        rec.slice_thickness = _float(ds.get("SliceThickness"))
        rec.orientation = _floats(ds.get("ImageOrientationPatient"), 6)
        rec.position = _floats(ds.get("ImagePositionPatient"), 3)
        rec.gantry_tilt = _float(ds.get("GantryDetectorTilt"))
    except Exception as e:  # noqa: BLE001 - a malformed value (bad DS string, wrong VR) spoils only this file
        return FileRecord(rel, st.st_size, st.st_mtime_ns, "unreadable", f"malformed DICOM header ({e})"[:300])
    if not (rec.modality or rec.sop_class or rec.series or rec.position):
        rec.reason = "no DICOM data elements after the header (truncated or corrupt file)"
        return rec
    if not rec.series or not rec.study:
        # Exports anonymised down to no UIDs: the folder is the series (and the study), as for a series folder.
        folder = "folder:" + Path(rel).parent.as_posix()
        rec.series = rec.series or ids.id("series", folder)
        rec.study = rec.study or ids.id("study", folder)
    rec.status = "ok"
    return rec


def walk_tree(root: str | Path, skip: Iterable[str | Path] = ()) -> Iterator[tuple[Path, str]]:
    """Every regular file under ``root`` (symlinks to files followed, folders not), as ``(path, relative
    path)``, sorted per folder. Hidden files and folders (``.name``) and the paths in ``skip`` are left out."""
    root = Path(root)
    skipped = {Path(p).resolve() for p in skip}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skipped)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = here / name
            if p.is_file():
                yield p, p.relative_to(root).as_posix()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                                  record TEXT NOT NULL);
"""


class HeaderIndex:
    """The SQLite file of :class:`FileRecord` s of one tree (WAL journal; one transaction per chunk)."""

    def __init__(self, path: str | Path, ids: Pseudonymizer) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        create_file(self.path)
        self.db = sqlite3.connect(str(self.path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        want = {"version": str(INDEX_VERSION), "salt": ids.fingerprint}
        if meta and meta != want:
            # Another salt (or an old layout): the stored pseudonyms do not match; start the index afresh.
            self.db.execute("DELETE FROM files")
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(want.items()))

    def stamps(self) -> dict[str, tuple[int, int]]:
        return {p: (s, m) for p, s, m in self.db.execute("SELECT path, size, mtime_ns FROM files")}

    def put(self, records: Sequence[FileRecord]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                [(r.path, r.size, r.mtime_ns, json.dumps(asdict(r))) for r in records],
            )

    def remove(self, paths: Iterable[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])

    def records(self) -> list[FileRecord]:
        return [FileRecord(**json.loads(r)) for (r,) in self.db.execute("SELECT record FROM files ORDER BY path")]

    def close(self) -> None:
        self.db.close()


def _read_chunk(root: str, rels: list[str], salt: bytes) -> list[FileRecord]:
    ids = Pseudonymizer(salt)
    return [read_header(Path(root) / rel, rel, ids) for rel in rels]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def index_tree(
    root: str | Path,
    index: HeaderIndex,
    ids: Pseudonymizer,
    *,
    workers: int = 0,
    chunk_size: int = 64,
    skip: Iterable[str | Path] = (),
    progress: bool = True,
) -> dict[str, int]:
    """Bring ``index`` up to date with the files under ``root``; returns counts (files, read, reused, removed).

    ``workers``: processes reading headers (0: ``min(4, cpus)``; 1: in this process). Files whose size and
    modification time match the index are not read again; files gone from the tree leave the index.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    files = {rel: p for p, rel in walk_tree(root, skip)}
    known = index.stamps()
    gone = [p for p in known if p not in files]
    index.remove(gone)
    todo = []
    for rel, p in files.items():
        try:
            st = p.stat()
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)
        if known.get(rel) != stamp:
            todo.append(rel)
    workers = workers or min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(todo), desc="dicom headers", unit="file", disable=not progress or not todo)
    chunks = list(_chunks(todo, chunk_size))
    salt = ids._salt
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            index.put(_read_chunk(str(root), chunk, salt))
            bar.update(len(chunk))
    else:
        import multiprocessing as mp

        from silverclip.workers import die_with_parent

        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        ) as pool:
            for records in pool.map(_read_chunk, *zip(*[(str(root), c, salt) for c in chunks])):
                index.put(records)
                bar.update(len(records))
    bar.close()
    return {"files": len(files), "read": len(todo), "reused": len(files) - len(todo), "removed": len(gone)}
