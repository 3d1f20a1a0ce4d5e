"""``silverclip ingest dicom``: a PACS export (any tree of DICOM files) + a reports table -> the manifest.

Steps: the header index of the tree (:mod:`silverclip.data.dicom_index`, resumable, parallel), grouping by
study and series, the choice of one series per study (:mod:`silverclip.data.series_select`), pairing with
the reports by accession number (or study UID), and the outputs:

- the manifest (``format=dicom``; ``path`` is a folder of symbolic links to the chosen series' slices,
  ``<work>/series/<volume_id>/``, so the manifest never names your folders, and a series spread over several
  folders or sharing one with other series reads as one volume);
- ``<work>/series_selection.csv``: one row per series with its decision (chosen / candidate / rejected) and
  the reasons, plus one row per study without a fitting series;
- ``<work>/unreadable.csv``: every file that is not DICOM or could not be parsed, with the reason.

Identifiers (docs/data.md): ``volume_id``/``patient_id`` are the user's own (columns of the reports table)
or opaque pseudonyms (``s`` / ``p`` + 16 hex digits of a keyed hash of StudyInstanceUID / PatientID, see
:class:`~silverclip.data.dicom_index.Pseudonymizer`). No DICOM value that identifies a patient (names, birth
dates, patient ids, accession numbers, UIDs, descriptions) is copied into any output. The salt lives in
``<work>/salt`` unless given; keep the work folder private (it also holds paths of your tree).
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from silverclip.data.dicom_index import FileRecord, HeaderIndex, Pseudonymizer, index_tree
from silverclip.data.manifest import LABEL_COLUMNS, empty_row
from silverclip.data.series_select import SeriesCriteria, SeriesDecision, load_criteria, select_series, summarize_series
from silverclip.io import atomic_to_csv

ACCESSION_COLUMNS = ("AccessionNumber", "accession_number", "accession", "AccessionNo", "Accession")
STUDY_UID_COLUMNS = ("StudyInstanceUID", "study_instance_uid", "study_uid")
FINDINGS_COLUMNS = ("findings", "Findings_EN", "Findings", "report_text", "report", "text")
IMPRESSIONS_COLUMNS = ("impressions", "Impressions_EN", "Impressions", "impression")
SELECTION_FILE = "series_selection.csv"
UNREADABLE_FILE = "unreadable.csv"


@dataclass
class IngestResult:
    manifest: pd.DataFrame
    selection: pd.DataFrame
    unreadable: pd.DataFrame
    work_dir: Path
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # report pairing problems, one line each


def default_work_dir(manifest: str | Path) -> Path:
    """``<manifest folder>/<manifest stem>_ingest``."""
    manifest = Path(manifest)
    stem = manifest.name.split(".")[0] or "manifest"
    return manifest.parent / f"{stem}_ingest"


def _pick(columns: Sequence[str], wanted: Sequence[str], given: str | None, what: str, source: str) -> str | None:
    if given:
        if given not in columns:
            raise ValueError(f"{source}: no {what} column {given!r} (columns: {list(columns)})")
        return given
    return next((c for c in wanted if c in columns), None)


@dataclass
class Reports:
    """The reports table, keyed by pseudonymised accession number or study UID (the raw keys are not kept)."""

    by_key: dict[str, dict[str, Any]]
    key_kind: str  # "accession" | "study"
    notes: list[str]
    used: set[str] = field(default_factory=set)


def read_reports(
    path: str | Path,
    ids: Pseudonymizer,
    *,
    key_column: str | None = None,
    findings_column: str | None = None,
    impressions_column: str | None = None,
    id_column: str | None = None,
    patient_column: str | None = None,
) -> Reports:
    """Read a reports CSV/Parquet: a key (accession number or StudyInstanceUID), report text, and optionally
    the user's own ids (``volume_id``, ``patient_id``) and the 18 finding labels. Other columns are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: reports table not found")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for bad files
        raise ValueError(f"{path}: cannot read the reports table ({type(e).__name__}: {e})") from None
    cols = list(df.columns)
    key = _pick(cols, ACCESSION_COLUMNS + STUDY_UID_COLUMNS, key_column, "key", str(path))
    if key is None:
        raise ValueError(
            f"{path}: no accession number or study UID column (looked for "
            f"{list(ACCESSION_COLUMNS + STUDY_UID_COLUMNS)}); name it with --report-key"
        )
    kind = "study" if key in STUDY_UID_COLUMNS or "uid" in key.lower() else "accession"
    fcol = _pick(cols, FINDINGS_COLUMNS, findings_column, "findings", str(path))
    icol = _pick(cols, IMPRESSIONS_COLUMNS, impressions_column, "impressions", str(path))
    vcol = _pick(cols, ("volume_id",), id_column, "id", str(path))
    pcol = _pick(cols, ("patient_id",), patient_column, "patient id", str(path))
    labels = [c for c in LABEL_COLUMNS if c in cols]
    by_key: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    empty, dup = [], []
    for i, row in enumerate(df.to_dict("records")):
        raw = str(row[key]).strip()
        if not raw:
            empty.append(i + 2)
            continue
        h = ids.hash(kind, raw)
        if h in by_key:
            dup.append(i + 2)
            continue
        rec = {
            "findings": str(row[fcol]) if fcol else "",
            "impressions": str(row[icol]) if icol else "",
            "row": i + 2,
        }
        if vcol and str(row[vcol]).strip():
            rec["volume_id"] = str(row[vcol]).strip()
        if pcol and str(row[pcol]).strip():
            rec["patient_id"] = str(row[pcol]).strip()
        for c in labels:
            rec[c] = row[c]
        by_key[h] = rec
    if empty:
        notes.append(f"reports: {len(empty)} row(s) without a {key} (lines {_lines(empty)}) ignored")
    if dup:
        notes.append(f"reports: {len(dup)} row(s) repeat an earlier {key} (lines {_lines(dup)}); the first is used")
    return Reports(by_key, kind, notes)


def _lines(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")


def _link_series(folder: Path, root: Path, files: Sequence[FileRecord]) -> None:
    """``folder`` holds exactly one symbolic link per slice (``0001.dcm`` ...), pointing into ``root``."""
    want = {f"{i + 1:04d}.dcm": (root / r.path).resolve() for i, r in enumerate(files)}
    if folder.is_dir():
        have = {p.name: Path(os.readlink(p)) if p.is_symlink() else None for p in folder.iterdir()}
        if have == want:
            return
        shutil.rmtree(folder)
    tmp = folder.parent / f".{folder.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name, target in want.items():
        os.symlink(target, tmp / name)
    os.replace(tmp, folder)


def ingest_dicom(
    root: str | Path,
    out: str | Path,
    reports: str | Path | None = None,
    *,
    criteria: str | Path | dict | SeriesCriteria | None = None,
    work_dir: str | Path | None = None,
    salt: str | None = None,
    workers: int = 0,
    progress: bool = True,
    report_key: str | None = None,
    findings_column: str | None = None,
    impressions_column: str | None = None,
    id_column: str | None = None,
    patient_column: str | None = None,
    require_report: bool = False,
) -> IngestResult:
    """Index ``root``, choose one series per study, pair with ``reports`` and build the manifest rows.

    Writes the selection table, the unreadable-file list and the series link folders into ``work_dir``
    (default :func:`default_work_dir` of ``out``); the caller writes the manifest (``write_manifest``).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    work = Path(work_dir) if work_dir else default_work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    crit = criteria if isinstance(criteria, SeriesCriteria) else load_criteria(criteria)
    ids = Pseudonymizer.from_file(work / "salt", salt)
    index = HeaderIndex(work / "dicom_index.sqlite", ids)
    try:
        counts = index_tree(root, index, ids, workers=workers, progress=progress, skip=[work])
        records = index.records()
    finally:
        index.close()
    rep = (
        read_reports(
            reports,
            ids,
            key_column=report_key,
            findings_column=findings_column,
            impressions_column=impressions_column,
            id_column=id_column,
            patient_column=patient_column,
        )
        if reports
        else None
    )

    unreadable = pd.DataFrame(
        [{"path": r.path, "reason": r.reason} for r in records if r.status != "ok"], columns=["path", "reason"]
    )
    by_study: dict[str, dict[str, list[FileRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.status == "ok":
            by_study[r.study][r.series].append(r)

    rows, table, notes = [], [], list(rep.notes if rep else [])
    no_report = 0
    series_dir = work / "series"
    used_ids: set[str] = set()
    for study in sorted(by_study):
        summaries = [summarize_series(by_study[study][s]) for s in sorted(by_study[study])]
        decisions = select_series(summaries, crit)
        chosen = next((d for d in decisions if d.decision == "chosen"), None)
        accession = next((s.accession for s in summaries if s.accession), "")
        patient = next((s.patient for s in summaries if s.patient), "")
        report = None
        if rep is not None:
            key = accession if rep.key_kind == "accession" else _study_key(study)
            report = rep.by_key.get(key) if key else None
            if report is not None:
                rep.used.add(key)
        volume_id = (report or {}).get("volume_id") or f"s{study}"
        patient_id = (report or {}).get("patient_id") or (f"p{patient}" if patient else volume_id)
        if "/" in volume_id or "\\" in volume_id or volume_id.startswith("."):
            notes.append(f"reports: line {report['row']}: volume_id {volume_id!r} is not a file name; s{study} used")
            volume_id = f"s{study}"
        if volume_id in used_ids:
            notes.append(f"reports: volume_id {volume_id!r} names two studies; the second is s{study}")
            volume_id = f"s{study}"
        used_ids.add(volume_id)
        paired = "yes" if report is not None else ("no" if rep is not None else "")
        skip = None
        if chosen is None:
            skip = f"none of {len(summaries)} series fits the criteria {crit.name!r}"
        elif report is None and rep is not None:
            no_report += 1
            if require_report:
                skip = "no report for this study (--require-report)"
        for d in decisions:
            table.append(_table_row(study, volume_id if d is chosen and not skip else "", paired, d))
        if skip:
            table.append(
                {"study_id": study, "volume_id": "", "decision": "study skipped", "report": paired, "reason": skip}
            )
            continue
        s = chosen.summary
        images = [f for f in s.files if f.is_image]
        link = series_dir / volume_id
        _link_series(link, root, images)
        px = images[0].pixel_spacing or s.pixel_spacings[0]
        row = empty_row(
            volume_id,
            link,
            patient_id=patient_id,
            scan_id=volume_id,
            format="dicom",
            # canonical (x, y, z): columns run along x, rows along y for an axial series
            spacing_x=float(px[1]),
            spacing_y=float(px[0]),
            spacing_z=float(s.slice_spacing) if s.slice_spacing else np.nan,
        )
        if report is not None:
            row["findings"], row["impressions"] = report["findings"], report["impressions"]
            for c in LABEL_COLUMNS:
                if c in report:
                    row[c] = report[c]
        row["series_id"] = s.series
        rows.append(row)
    # link folders of volumes no longer chosen go
    if series_dir.is_dir():
        keep = {r["volume_id"] for r in rows}
        for p in series_dir.iterdir():
            if p.name not in keep:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if rep is not None:
        unused = sorted(v["row"] for k, v in rep.by_key.items() if k not in rep.used)
        if unused:
            notes.append(f"reports: {len(unused)} report row(s) match no study in the tree (lines {_lines(unused)})")
        if no_report:
            notes.append(
                f"reports: {no_report} chosen stud{'y has' if no_report == 1 else 'ies have'} no report"
                + (" (left out: --require-report)" if require_report else " (kept with empty report text)")
            )
    manifest = pd.DataFrame(rows)
    if manifest.empty:
        manifest = pd.DataFrame(columns=list(empty_row("x", "x")) + ["series_id"])
    for c in LABEL_COLUMNS:
        if c in manifest.columns:
            manifest[c] = pd.to_numeric(manifest[c], errors="coerce")
    selection = pd.DataFrame(table, columns=_SELECTION_COLUMNS)
    for col in ("series_number", "objects", "slices"):
        selection[col] = pd.array(selection[col].tolist(), dtype="Int64")
    atomic_to_csv(selection, work / SELECTION_FILE)
    atomic_to_csv(unreadable, work / UNREADABLE_FILE)
    counts.update(
        studies=len(by_study),
        series=sum(len(v) for v in by_study.values()),
        volumes=len(rows),
        unreadable=len(unreadable),
    )
    return IngestResult(manifest, selection, unreadable, work, counts, notes)


def _study_key(study: str) -> str:
    # Reports keyed by StudyInstanceUID are hashed with kind "study", like the index's study pseudonym.
    return study


_SELECTION_COLUMNS = [
    "study_id",
    "volume_id",
    "decision",
    "reason",
    "report",
    "series_id",
    "series_number",
    "modality",
    "image_type",
    "kernel",
    "objects",
    "slices",
    "rows_columns",
    "pixel_spacing_mm",
    "slice_spacing_mm",
    "slice_thickness_mm",
    "z_extent_mm",
    "obliquity_deg",
    "tilt_deg",
    "folders",
]


def _table_row(study: str, volume_id: str, paired: str, d: SeriesDecision) -> dict[str, Any]:
    return {
        "study_id": study,
        "volume_id": volume_id,
        "decision": d.decision,
        "reason": d.reason,
        "report": paired,
        **d.summary.table_row(),
    }
