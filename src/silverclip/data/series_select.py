"""Choose per study the DICOM series that becomes its volume, with a reason for every choice and rejection.

Criteria come from ``resources/dicom_series.yaml`` (:func:`load_criteria`; a user file overrides any key).
:func:`summarize_series` turns a series' header records (:class:`~silverclip.data.dicom_index.FileRecord`)
into its geometry; :func:`check_series` lists every criterion it fails (modality, scout, slice count, mixed
sizes/pixel spacing/orientation, axial orientation, duplicate positions, missing slices, non-uniform spacing,
gantry tilt, spacing/thickness/pixel-spacing limits, z coverage); :func:`select_series` ranks the series that
pass by the ``prefer`` order and returns one :class:`SeriesDecision` per series.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from silverclip.data.dicom_index import FileRecord

DEFAULT_CRITERIA = "chest_ct"
PREFER_KEYS = ("kernel", "thinnest", "coverage", "series_number")


@dataclass(frozen=True)
class SeriesCriteria:
    name: str
    modalities: tuple[str, ...] = ("CT",)
    reject_image_types: tuple[str, ...] = ("LOCALIZER",)
    min_slices: int = 40
    max_obliquity_deg: float = 10.0
    min_z_extent_mm: float = 200.0
    max_z_extent_mm: float | None = None
    slice_spacing_mm: tuple[float, float] = (0.4, 3.0)
    slice_thickness_mm: tuple[float, float] = (0.4, 3.0)
    pixel_spacing_mm: tuple[float, float] = (0.3, 1.2)
    spacing_tolerance: float = 0.1
    max_gantry_tilt_deg: float = 1.0
    kernel_preference: tuple[str, ...] = ()
    prefer: tuple[str, ...] = PREFER_KEYS

    def kernel_rank(self, kernel: str) -> int:
        for i, pattern in enumerate(self.kernel_preference):
            if re.search(pattern, kernel.strip(), flags=re.IGNORECASE):
                return i
        return len(self.kernel_preference)


def _builtin() -> dict[str, Any]:
    return yaml.safe_load(resources.files("silverclip.resources").joinpath("dicom_series.yaml").read_text())


def load_criteria(source: str | Path | dict | None = None) -> SeriesCriteria:
    """A built-in preset name (default ``chest_ct``), a YAML file of overrides, or a dict of overrides.

    An override file holds the keys to change (``base: <preset>`` picks the preset they change, default
    ``chest_ct``); unknown keys and malformed values are errors naming the file.
    """
    builtin = _builtin()
    where = "criteria"
    if source is None or (isinstance(source, str) and source in builtin):
        name = source or DEFAULT_CRITERIA
        values, base = {}, name
    else:
        if isinstance(source, dict):
            values = dict(source)
        else:
            where = str(source)
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no such series criteria file (or built-in name: {sorted(builtin)})")
            try:
                values = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"{path}: not valid YAML ({e})") from None
            if not isinstance(values, dict):
                raise ValueError(f"{path}: series criteria must be a mapping of keys to values")
        base = str(values.pop("base", DEFAULT_CRITERIA))
        name = f"{base}+{Path(where).name}" if values else base
        if base not in builtin:
            raise ValueError(f"{where}: unknown base {base!r}; built-in criteria: {sorted(builtin)}")
    merged = {**builtin[base], **values}
    known = set(SeriesCriteria.__dataclass_fields__) - {"name"}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"{where}: unknown series criteria key(s) {unknown}; known: {sorted(known)}")
    try:
        kw: dict[str, Any] = {}
        for key, value in merged.items():
            if key in ("modalities", "reject_image_types"):
                kw[key] = tuple(str(v).upper() for v in value)
            elif key in ("kernel_preference", "prefer"):
                kw[key] = tuple(str(v) for v in value)
            elif key in ("slice_spacing_mm", "slice_thickness_mm", "pixel_spacing_mm"):
                lo, hi = (float(v) for v in value)
                kw[key] = (lo, hi)
            elif key == "min_slices":
                kw[key] = int(value)
            elif key == "max_z_extent_mm":
                kw[key] = None if value is None else float(value)
            else:
                kw[key] = float(value)
        for pattern in kw.get("kernel_preference", ()):
            re.compile(pattern)
    except (TypeError, ValueError, re.error) as e:
        raise ValueError(f"{where}: malformed series criteria ({type(e).__name__}: {e})") from None
    bad = [p for p in kw.get("prefer", ()) if p not in PREFER_KEYS]
    if bad:
        raise ValueError(f"{where}: unknown prefer key(s) {bad}; use {list(PREFER_KEYS)}")
    return SeriesCriteria(name=name, **kw)


@dataclass
class SeriesSummary:
    """The geometry of one series, from its header records."""

    study: str
    series: str
    files: list[FileRecord]  # image slices, ordered along the slice normal (then every other object)
    n_objects: int
    n_images: int
    modality: str
    image_type: str
    kernel: str
    series_number: int | None
    sizes: list[tuple[int, int]]  # distinct (rows, columns)
    pixel_spacings: list[tuple[float, float]]  # distinct (row, column) spacing
    orientations: int  # distinct orientations
    normal: tuple[float, float, float] | None
    obliquity_deg: float | None  # angle between the slice normal and the head-foot axis
    positions: list[float]  # along the normal, sorted
    slice_spacing: float | None  # median step
    slice_thickness: float | None
    z_extent: float | None
    tilt_deg: float | None  # max(GantryDetectorTilt, stack shear angle)
    frames: int | None
    patient: str = ""
    accession: str = ""
    folders: list[str] = field(default_factory=list)

    def table_row(self) -> dict[str, Any]:
        def fmt(v: float | None, nd: int = 3) -> float | None:
            return None if v is None else round(float(v), nd)

        return {
            "series_id": self.series,
            "series_number": self.series_number,
            "modality": self.modality,
            "image_type": self.image_type,
            "kernel": self.kernel,
            "objects": self.n_objects,
            "slices": self.n_images,
            "rows_columns": " ".join(f"{r}x{c}" for r, c in self.sizes),
            "pixel_spacing_mm": " ".join(f"{a:g}x{b:g}" for a, b in self.pixel_spacings),
            "slice_spacing_mm": fmt(self.slice_spacing),
            "slice_thickness_mm": fmt(self.slice_thickness),
            "z_extent_mm": fmt(self.z_extent, 1),
            "obliquity_deg": fmt(self.obliquity_deg, 1),
            "tilt_deg": fmt(self.tilt_deg, 2),
            "folders": " | ".join(self.folders),
        }


def _most_common(values: Sequence[Any]) -> Any:
    values = [v for v in values if v not in (None, "")]
    return Counter(values).most_common(1)[0][0] if values else None


def summarize_series(records: Sequence[FileRecord]) -> SeriesSummary:
    """Geometry of one series (all ``records`` share study and series pseudonyms)."""
    images = [r for r in records if r.is_image]
    others = [r for r in records if not r.is_image]
    first = records[0]
    normal = obliquity = None
    positions: list[float] = []
    tilt = None
    iops = {tuple(round(v, 4) for v in r.orientation) for r in images if r.orientation}
    if images:
        iop = np.array(images[0].orientation, dtype=float)
        n = np.cross(iop[:3], iop[3:])
        if np.linalg.norm(n) > 0.5:
            n = n / np.linalg.norm(n)
            normal = tuple(float(v) for v in n)
            obliquity = float(np.degrees(np.arccos(min(1.0, abs(n[2])))))
            ipp = np.array([r.position for r in images], dtype=float)
            proj = ipp @ n
            order = np.argsort(proj, kind="stable")
            images = [images[i] for i in order]
            positions = [float(v) for v in proj[order]]
            if len(images) > 1:
                stack = ipp[order[-1]] - ipp[order[0]]
                if np.linalg.norm(stack) > 1e-6:
                    cos = abs(float(stack @ n)) / float(np.linalg.norm(stack))
                    tilt = float(np.degrees(np.arccos(min(1.0, cos))))
    gantry = [abs(r.gantry_tilt) for r in images if r.gantry_tilt is not None]
    if gantry:
        tilt = max(tilt or 0.0, max(gantry))
    steps = np.diff(positions) if len(positions) > 1 else np.array([])
    spacing = float(np.median(steps)) if len(steps) else None
    thickness = _most_common([r.slice_thickness for r in images])
    folders = sorted({str(Path(r.path).parent.as_posix()) for r in records})
    return SeriesSummary(
        study=first.study,
        series=first.series,
        files=images + others,
        n_objects=len(records),
        n_images=len(images),
        modality=_most_common([r.modality for r in records]) or "",
        image_type="\\".join(_most_common([tuple(r.image_type) for r in records]) or ()),
        kernel=_most_common([r.kernel for r in images]) or "",
        series_number=_most_common([r.series_number for r in records]),
        sizes=sorted({(int(r.rows), int(r.columns)) for r in images}),  # type: ignore[arg-type]
        pixel_spacings=sorted({(round(r.pixel_spacing[0], 4), round(r.pixel_spacing[1], 4)) for r in images}),  # type: ignore[index]
        orientations=len(iops),
        normal=normal,
        obliquity_deg=obliquity,
        positions=positions,
        slice_spacing=spacing,
        slice_thickness=thickness,
        z_extent=(positions[-1] - positions[0]) if len(positions) > 1 else (0.0 if positions else None),
        tilt_deg=tilt,
        frames=_most_common([r.frames for r in images]),
        patient=_most_common([r.patient for r in records]) or "",
        accession=_most_common([r.accession for r in records]) or "",
        folders=folders,
    )


def _outside(value: float, limits: tuple[float, float]) -> bool:
    return not (limits[0] - 1e-6 <= value <= limits[1] + 1e-6)


def check_series(s: SeriesSummary, c: SeriesCriteria) -> list[str]:
    """Every criterion ``s`` fails, as short reasons (empty: the series fits)."""
    reasons: list[str] = []
    if s.modality not in c.modalities:
        reasons.append(f"modality {s.modality or 'unknown'} is not {'/'.join(c.modalities)}")
    scout = sorted(set(s.image_type.split("\\")) & set(c.reject_image_types))
    if scout:
        reasons.append(f"ImageType {s.image_type} ({', '.join(scout).lower()})")
    if s.n_images == 0:
        reasons.append(f"no image slices ({s.n_objects} object(s) without image geometry)")
        return reasons
    if s.frames and s.frames > 1:
        reasons.append(f"multi-frame DICOM ({s.frames} frames per file) is not read")
    if s.n_images < c.min_slices:
        reasons.append(f"{s.n_images} slice(s) < {c.min_slices}")
    if len(s.sizes) > 1:
        reasons.append(f"mixed image sizes {', '.join(f'{r}x{col}' for r, col in s.sizes)}")
    if len(s.pixel_spacings) > 1:
        reasons.append(f"mixed pixel spacings {', '.join(f'{a:g}x{b:g}' for a, b in s.pixel_spacings)} mm")
    if s.orientations > 1:
        reasons.append(f"mixed orientations ({s.orientations})")
    if s.obliquity_deg is None:
        reasons.append("invalid ImageOrientationPatient")
        return reasons
    if s.obliquity_deg > c.max_obliquity_deg:
        axis = int(np.argmax(np.abs(s.normal))) if s.normal else 2
        plane = {0: "sagittal", 1: "coronal", 2: "oblique axial"}[axis]
        reasons.append(f"not axial: {plane} (slice normal {s.obliquity_deg:.0f} deg from head-foot)")
    steps = np.diff(s.positions)
    if len(steps):
        dup = int((steps < 1e-3).sum())
        if dup:
            reasons.append(f"{dup} duplicate slice position(s) (several acquisitions in one series?)")
        real = steps[steps >= 1e-3]
        med = float(np.median(real)) if len(real) else 0.0
        if med > 0:
            multiples = np.round(real / med)
            gaps = (multiples >= 2) & (np.abs(real - multiples * med) <= c.spacing_tolerance * med * multiples)
            if gaps.any():
                missing = int((multiples[gaps] - 1).sum())
                k = int(np.argmax(real * gaps))
                reasons.append(f"{missing} missing slice(s) (gap of {real[k]:.2f} mm, median step {med:.2f} mm)")
            uneven = ~gaps & (np.abs(real - med) > c.spacing_tolerance * med)
            if uneven.any():
                reasons.append(
                    f"non-uniform slice spacing (steps {float(real.min()):.2f}-{float(real.max()):.2f} mm, "
                    f"median {med:.2f} mm)"
                )
    if s.tilt_deg is not None and s.tilt_deg > c.max_gantry_tilt_deg:
        reasons.append(f"gantry tilt {s.tilt_deg:.1f} deg > {c.max_gantry_tilt_deg:g}")
    if s.slice_spacing is not None and s.slice_spacing >= 1e-3 and _outside(s.slice_spacing, c.slice_spacing_mm):
        lo, hi = c.slice_spacing_mm
        reasons.append(f"slice spacing {s.slice_spacing:.2f} mm outside [{lo:g}, {hi:g}]")
    if s.slice_thickness is not None and _outside(s.slice_thickness, c.slice_thickness_mm):
        lo, hi = c.slice_thickness_mm
        reasons.append(f"slice thickness {s.slice_thickness:.2f} mm outside [{lo:g}, {hi:g}]")
    bad_px = [p for p in s.pixel_spacings if _outside(p[0], c.pixel_spacing_mm) or _outside(p[1], c.pixel_spacing_mm)]
    if bad_px:
        lo, hi = c.pixel_spacing_mm
        reasons.append(f"pixel spacing {bad_px[0][0]:g}x{bad_px[0][1]:g} mm outside [{lo:g}, {hi:g}]")
    if s.z_extent is not None:
        if s.z_extent < c.min_z_extent_mm:
            reasons.append(f"z coverage {s.z_extent:.1f} mm < {c.min_z_extent_mm:g} mm (not a full chest)")
        elif c.max_z_extent_mm is not None and s.z_extent > c.max_z_extent_mm:
            reasons.append(f"z coverage {s.z_extent:.1f} mm > {c.max_z_extent_mm:g} mm")
    return reasons


@dataclass
class SeriesDecision:
    summary: SeriesSummary
    decision: str  # "chosen" | "candidate" (fits, ranked lower) | "rejected"
    reason: str


def _rank_key(s: SeriesSummary, c: SeriesCriteria) -> tuple:
    parts: dict[str, Any] = {
        "kernel": c.kernel_rank(s.kernel),
        "thinnest": s.slice_spacing if s.slice_spacing is not None else math.inf,
        "coverage": -(s.z_extent or 0.0),
        "series_number": s.series_number if s.series_number is not None else math.inf,
    }
    return (*[parts[k] for k in c.prefer], s.series)


def _describe(s: SeriesSummary, c: SeriesCriteria) -> str:
    rank = c.kernel_rank(s.kernel)
    kernel = f"kernel {s.kernel or 'unknown'} (preference {rank + 1} of {len(c.kernel_preference) + 1})"
    spacing = f"{s.slice_spacing:.2f} mm" if s.slice_spacing is not None else "? mm"
    extent = f"{s.z_extent:.0f} mm" if s.z_extent is not None else "? mm"
    return f"{kernel}, {s.n_images} slices of {spacing}, {extent} coverage"


def select_series(series: Sequence[SeriesSummary], criteria: SeriesCriteria) -> list[SeriesDecision]:
    """One decision per series of one study: at most one ``chosen``, the rest ``candidate`` or ``rejected``."""
    fits, out = [], []
    for s in series:
        reasons = check_series(s, criteria)
        if reasons:
            out.append(SeriesDecision(s, "rejected", "; ".join(reasons)))
        else:
            fits.append(s)
    fits.sort(key=lambda s: _rank_key(s, criteria))
    order = ", ".join(criteria.prefer)
    for i, s in enumerate(fits):
        if i == 0:
            others = f"; ranked first of {len(fits)} fitting series by {order}" if len(fits) > 1 else ""
            out.append(SeriesDecision(s, "chosen", f"fits all criteria: {_describe(s, criteria)}{others}"))
        else:
            reason = f"fits, ranked {i + 1} of {len(fits)} by {order}: {_describe(s, criteria)}"
            out.append(SeriesDecision(s, "candidate", f"{reason} (chosen: series {fits[0].series})"))
    return out
