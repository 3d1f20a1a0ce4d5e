"""Batch prediction: every scan of a manifest or a folder -> one CSV/JSONL row per scan, resumable.

:func:`collect_scans` lists the scans (a manifest from ``silverclip ingest``, a folder of NIfTI files and/or
DICOM series folders, or single scans); :func:`predict_many` reads and preprocesses them in DataLoader
workers (the checkpoint's preset, as in training), embeds them in batches and writes one row per scan:
``volume_id, path, series_id, status, error``, P(present) per finding (columns named by the finding) and,
when the checkpoint stores decision thresholds (``checkpoint.json`` ``"thresholds": {finding: t}``),
``present:<finding>`` (1 when P >= t). A scan that cannot be read is a row with ``status=failed`` and its
reason, and is listed at the end; it never stops the run.

Resuming: rows already in the output with ``status=ok`` are skipped. The output is first rewritten
atomically without failed or torn rows, then each batch is appended and fsync'ed, so a run killed at any
moment loses at most the batch in flight.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MANIFEST_SUFFIXES = (".csv", ".parquet")
OUTPUT_SUFFIXES = (".csv", ".jsonl")
BASE_COLUMNS = ("volume_id", "path", "series_id", "status", "error")


@dataclass(frozen=True)
class ScanItem:
    volume_id: str
    path: str
    series_id: str = ""
    format: str | None = None
    rescale: tuple[float, float] | None = None
    spacing: tuple[float, float, float] | None = None


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith(NIFTI_SUFFIXES)


def is_series_folder(p: Path) -> bool:
    """A folder whose own files (not NIfTI, not hidden) are taken as one DICOM series."""
    if not p.is_dir():
        return False
    files = [c for c in p.iterdir() if not c.name.startswith(".") and c.is_file()]
    return bool(files) and not any(_is_nifti(c) for c in files)


def is_batch_input(path: str | Path) -> bool:
    """A manifest table, or a folder of scans (not itself one DICOM series folder)."""
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() in MANIFEST_SUFFIXES
    return p.is_dir() and not is_series_folder(p)


def _id_of(p: Path, base: Path) -> str:
    rel = p.relative_to(base).as_posix() if p != base else p.name
    for s in NIFTI_SUFFIXES[::-1]:
        if rel.lower().endswith(s):
            rel = rel[: -len(s)]
            break
    return rel.replace("/", "__") or p.name


def collect_scans(inputs: Sequence[str | Path]) -> list[ScanItem]:
    """Scans of manifests (their ``volume_id``, ``path``, ``series_id``, rescale and spacing), folders (every
    NIfTI file and every DICOM series folder below, ids from the relative path) and single scans."""
    items: list[ScanItem] = []
    for inp in inputs:
        p = Path(inp)
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
            from silverclip.data.manifest import read_manifest

            m = read_manifest(p)
            for row in m.itertuples(index=False):
                rescale = (float(row.rescale_slope), float(row.rescale_intercept)) if bool(row.needs_rescale) else None
                sp = (row.spacing_x, row.spacing_y, row.spacing_z)
                spacing = tuple(float(v) for v in sp) if all(v == v and v > 0 for v in sp) else None
                items.append(
                    ScanItem(
                        row.volume_id,
                        row.path,
                        str(getattr(row, "series_id", "") or ""),
                        row.format,
                        rescale,
                        spacing,  # type: ignore[arg-type]
                    )
                )
        elif p.is_dir() and not is_series_folder(p):
            for dirpath, dirnames, filenames in os.walk(p):
                here = Path(dirpath)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                if is_series_folder(here):
                    items.append(ScanItem(_id_of(here, p), str(here)))
                for name in sorted(filenames):
                    if _is_nifti(here / name):
                        items.append(ScanItem(_id_of(here / name, p), str(here / name)))
        else:
            items.append(ScanItem(_id_of(p, p.parent), str(p)))
    seen: set[str] = set()
    dup = [i.volume_id for i in items if i.volume_id in seen or seen.add(i.volume_id)]  # type: ignore[func-returns-value]
    if dup:
        raise ValueError(f"scan ids must be unique; repeated: {sorted(set(dup))[:5]}")
    return items


class _ScanDataset:
    """``torch`` Dataset: item i -> (i, input tensor (1, X, Y, Z) or None, error message)."""

    def __init__(self, items: Sequence[ScanItem], preset: Any) -> None:
        self.items, self.preset = list(items), preset

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any, str]:
        from silverclip.data.model_input import volume_tensor as model_input
        from silverclip.data.preprocess import preprocess_volume
        from silverclip.data.readers import load_volume

        it = self.items[i]
        try:
            vol = load_volume(it.path, format=it.format, rescale=it.rescale, spacing=it.spacing)
            return i, model_input(preprocess_volume(vol, self.preset), self.preset)[0], ""
        except Exception as e:  # noqa: BLE001 - one unreadable scan becomes a failed row
            msg = " ".join(str(e).split()) or type(e).__name__
            return i, None, msg if isinstance(e, ValueError | OSError | RuntimeError) else f"{type(e).__name__}: {msg}"


def _one_thread(_worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # the workers are the parallelism (as in training's DataLoader workers)


def _collate(batch: list[tuple[int, Any, str]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    import torch

    ok = [(i, x) for i, x, err in batch if x is not None]
    bad = [(i, err) for i, x, err in batch if x is None]
    xs = torch.stack([x for _, x in ok]) if ok else None
    return [i for i, _ in ok], xs, bad


def _read_done(path: Path) -> list[dict[str, Any]]:
    """Complete rows of an earlier run's output (a torn last line, from a kill mid-write, is dropped)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    if path.suffix == ".jsonl":
        rows = []
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows
    return list(csv.DictReader(text.splitlines()))


@dataclass
class BatchResult:
    written: int
    skipped: int
    failures: list[tuple[str, str, str]]  # volume_id, path, reason
    out: Path


def predict_many(
    predictor: Any,
    items: Sequence[ScanItem],
    out: str | Path,
    *,
    batch_size: int = 2,
    workers: int = 0,
    progress: bool = True,
) -> BatchResult:
    """Predict every item not yet in ``out`` (``.csv`` or ``.jsonl``); see the module docstring."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from silverclip.eval.zero_shot import zero_shot_probabilities
    from silverclip.io import atomic_open

    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"{out}: batch predictions are written as .csv or .jsonl")
    findings = list(predictor.findings)
    thresholds = {f: float(t) for f, t in ((predictor.meta or {}).get("thresholds") or {}).items() if f in findings}
    columns = [*BASE_COLUMNS, *findings, *[f"present:{f}" for f in thresholds]]
    jsonl = out.suffix.lower() == ".jsonl"

    previous = [r for r in _read_done(out) if r.get("status") == "ok"]
    done = {str(r.get("volume_id")) for r in previous}
    # Rewrite once, atomically: the finished rows only (no failed or torn rows, which are retried).
    with atomic_open(out, "w", encoding="utf-8", newline="") as f:
        if jsonl:
            for r in previous:
                f.write(json.dumps(r) + "\n")
        else:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(previous)
    todo = [it for it in items if it.volume_id not in done]
    failures: list[tuple[str, str, str]] = []
    if not todo:
        return BatchResult(0, len(items), failures, out)

    def row(it: ScanItem, probs: Any = None, error: str = "") -> dict[str, Any]:
        r: dict[str, Any] = {
            "volume_id": it.volume_id,
            "path": it.path,
            "series_id": it.series_id,
            "status": "ok" if probs is not None else "failed",
            "error": error,
        }
        p = {f: float(v) for f, v in zip(findings, probs)} if probs is not None else {}
        present = {f: int(p[f] >= t) for f, t in thresholds.items()} if p else {}
        if jsonl:
            r["probabilities"] = p
            if thresholds:
                r["present"] = present
        else:
            r.update({f: f"{v:.6f}" for f, v in p.items()})
            r.update({f"present:{f}": v for f, v in present.items()})
        return r

    loader = DataLoader(
        _ScanDataset(todo, predictor.preset),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=_one_thread if workers > 0 else None,
    )
    model = predictor.model
    classifier = predictor.classifier.cpu() if hasattr(predictor.classifier, "cpu") else predictor.classifier
    written = 0
    bar = tqdm(total=len(todo), desc="predict", unit="scan", disable=not progress)
    with open(out, "a", encoding="utf-8", newline="") as f:
        w = None if jsonl else csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        for idx, xs, bad in loader:
            rows = []
            if xs is not None:
                with torch.no_grad():
                    emb = model.encode_image(xs.to(predictor.device)).float().cpu().numpy()
                probs = zero_shot_probabilities(emb, classifier, predictor.logit_scale)
                rows += [row(todo[i], probs[k]) for k, i in enumerate(idx)]
            for i, err in bad:
                failures.append((todo[i].volume_id, todo[i].path, err))
                rows.append(row(todo[i], error=err))
            for r in rows:
                if jsonl:
                    f.write(json.dumps(r) + "\n")
                else:
                    w.writerow(r)  # type: ignore[union-attr]
            f.flush()
            os.fsync(f.fileno())
            written += len(rows)
            bar.update(len(rows))
    bar.close()
    return BatchResult(written, len(items) - len(todo), failures, out)
