"""A synthetic chest CT: one scan's case (anatomy + findings) and its rendering into a volume.

:func:`sample_case` turns a label vector into a :class:`Case`: the patient's anatomy and, for every
positive finding, the parameters of its correlate (see :mod:`silverclip.synth.lesions`). The case is
shared by all reconstructions of the scan and by the report writer. :func:`render` draws the case on
one reconstruction's grid and applies the reconstruction kernel (blur), quantum noise and a small
calibration drift, returning int16 HU in canonical (RAS) order, axes (x, y, z).

Lesion masks (``render(..., masks={})``): the voxels each positive finding changed when it was painted, by at
least a quarter of that finding's largest change and 5 HU (before blur and noise; later structures painted on
top are not removed). Cardiomegaly's mask is the heart, pericardial effusion's the fluid rim around it.
:func:`mask_bits` packs them into one int32 array, bit ``i`` for ``FINDINGS[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from silverclip.findings import FINDING_KEYS
from silverclip.synth.anatomy import Anatomy
from silverclip.synth.geometry import BodyGrid, ScanFrame, VolumeGeometry
from silverclip.synth.lesions import PAINTERS, SAMPLERS
from silverclip.synth.lesions_lung import paint_airways
from silverclip.synth.lesions_mediastinum import node_stations, paint_nodes
from silverclip.synth.paint import alpha_from_sd, ellipsoid_sd

HU_MIN, HU_MAX = -1024, 3071


@dataclass
class Case:
    """One scan: gold labels (18, FINDINGS order), anatomy, per-finding lesion parameters."""

    labels: np.ndarray
    anatomy: Anatomy
    findings: dict[str, dict] = field(default_factory=dict)  # finding key -> parameters (positives only)
    difficulty: dict[str, float] = field(default_factory=dict)  # finding key -> effective difficulty
    normal_nodes: tuple[list[str], list[float]] = ((), ())

    def has(self, key: str) -> bool:
        return key in self.findings


def sample_case(labels: np.ndarray, difficulty: float, rng: np.random.Generator, jitter: float = 0.15) -> Case:
    """Draw anatomy and lesion parameters for a scan whose gold labels are ``labels``.

    Each positive finding gets its own effective difficulty ``clip(difficulty + U(-jitter, jitter))``
    so a dataset mixes obvious and subtle cases around the requested level.
    """
    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape != (len(FINDING_KEYS),):
        raise ValueError(f"labels must have shape ({len(FINDING_KEYS)},), got {labels.shape}")
    anat = Anatomy.sample(rng)
    case = Case(labels=labels, anatomy=anat)
    # normal small lymph nodes in everyone: enlarged ones must be told apart by size
    names = list(node_stations(anat))
    k = int(rng.integers(2, 5))
    case.normal_nodes = ([str(x) for x in rng.choice(names, size=k, replace=False)], rng.uniform(2.5, 4.5, k).tolist())
    # the heart size changes the lungs' shape, so cardiomegaly goes first
    order = sorted(range(len(FINDING_KEYS)), key=lambda i: FINDING_KEYS[i] != "cardiomegaly")
    for i in order:
        key = FINDING_KEYS[i]
        d = float(np.clip(difficulty + rng.uniform(-jitter, jitter), 0.0, 1.0))
        if not labels[i]:
            continue
        case.difficulty[key] = d
        case.findings[key] = SAMPLERS[key](anat, d, rng)
        if key == "cardiomegaly":
            anat.heart_scale *= case.findings[key]["factor"]
    return case


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    diff = np.abs(after - before)
    top = float(diff.max()) if diff.size else 0.0
    return diff > max(5.0, 0.25 * top) if top > 5.0 else np.zeros(diff.shape, bool)


def _paint(masks: dict[str, np.ndarray] | None, key: str, vol: np.ndarray, g, anat, p) -> None:
    if masks is None:
        PAINTERS[key](vol, g, anat, p)
        return
    before = vol.copy()
    PAINTERS[key](vol, g, anat, p)
    masks[key] = _changed(before, vol)


def mask_bits(masks: dict[str, np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """One int32 array: bit ``i`` set where finding ``FINDING_KEYS[i]`` (= ``FINDINGS[i]``) was drawn."""
    out = np.zeros(shape, np.int32)
    for i, key in enumerate(FINDING_KEYS):
        if key in masks:
            out |= masks[key].astype(np.int32) << i
    return out


def render(
    case: Case,
    geom: VolumeGeometry,
    frame: ScanFrame,
    rng: np.random.Generator,
    sharpness: float = 1.0,
    noise_scale: float = 1.0,
    masks: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Draw ``case`` on ``geom``'s canonical grid; returns int16 HU of shape ``geom.shape`` (x, y, z, RAS).

    ``sharpness`` 1 = lung kernel (little blur, more noise), 0 = soft tissue kernel. ``noise_scale``
    multiplies the quantum noise (difficulty raises it). ``masks``: a dict filled with each positive finding's
    lesion mask (bool, canonical, finding key -> array); the volume is the same with or without it.
    """
    g = BodyGrid(geom, frame)
    anat, f = case.anatomy, case.findings
    vol = np.empty(geom.shape, dtype=np.float32)
    anat.paint_body(vol, g)
    # lung parenchyma: diffuse patterns first, focal lesions on top, fluid last
    for key in ("mosaic_attenuation_pattern", "emphysema", "interlobular_septal_thickening", "lung_opacity"):
        if key in f:
            _paint(masks, key, vol, g, anat, f[key])
    peri_b, ect = f.get("peribronchial_thickening"), f.get("bronchiectasis")
    if masks is not None and (peri_b or ect):
        base = vol.copy()
        paint_airways(base, g, anat, None, None)
        for key, args in (("peribronchial_thickening", (peri_b, None)), ("bronchiectasis", (None, ect))):
            if key in f:
                one = vol.copy()
                paint_airways(one, g, anat, *args)
                masks[key] = _changed(base, one)
    paint_airways(vol, g, anat, peri_b, ect)
    for key in ("pulmonary_fibrotic_sequela", "consolidation", "lung_nodule", "atelectasis", "pleural_effusion"):
        if key in f:
            _paint(masks, key, vol, g, anat, f[key])
    peri = f.get("pericardial_effusion", {}).get("thickness", 0.0)
    anat.paint_mediastinum(vol, g, pericardial_fluid=peri)
    if masks is not None and ("cardiomegaly" in f or peri > 0):
        c, r = anat.heart()
        heart = alpha_from_sd(ellipsoid_sd(g.u, g.v, g.w, c, r), g.voxel) >= 0.5
        if "cardiomegaly" in f:
            masks["cardiomegaly"] = heart
        if peri > 0:
            rim = alpha_from_sd(ellipsoid_sd(g.u, g.v, g.w, c, tuple(x + peri for x in r)), g.voxel) >= 0.5
            masks["pericardial_effusion"] = rim & ~heart
    paint_nodes(vol, g, anat, *case.normal_nodes)
    for key in (
        "lymphadenopathy",
        "hiatal_hernia",
        "coronary_artery_wall_calcification",
        "arterial_wall_calcification",
    ):
        if key in f:
            _paint(masks, key, vol, g, anat, f[key])
    anat.paint_bones(vol, g)
    if "medical_material" in f:
        _paint(masks, "medical_material", vol, g, anat, f["medical_material"])
    # reconstruction kernel, calibration drift and quantum noise
    blur_mm = 0.5 + 1.5 * (1.0 - sharpness)
    sigma = [blur_mm / s for s in geom.spacing]
    vol = ndimage.gaussian_filter(vol, sigma=sigma, mode="nearest", truncate=3.0)
    vol = vol * np.float32(rng.uniform(0.985, 1.015)) + np.float32(rng.uniform(-8, 8))
    noise_hu = (rng.uniform(14, 28) if sharpness > 0.5 else rng.uniform(6, 14)) * noise_scale
    noise = rng.standard_normal(geom.shape, dtype=np.float32)
    if sharpness <= 0.5:  # soft kernels give smoother, correlated noise
        noise = ndimage.gaussian_filter(noise, 0.7) * np.float32(2.0)
    vol += noise * np.float32(noise_hu)
    return np.clip(np.rint(vol), HU_MIN, HU_MAX).astype(np.int16)
