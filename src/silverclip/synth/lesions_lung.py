"""Lung findings: parenchymal lesions, diffuse patterns and the segmental airways.

Nodule, opacity, consolidation, atelectasis, emphysema, fibrotic sequela, mosaic attenuation, septal
thickening, and the bronchi (normal, peribronchial thickening, bronchiectasis). Samplers and painters
follow the contract in :mod:`silverclip.synth.lesions`. Everything painted here is multiplied by the
lung alpha so it stays inside the lungs.
"""

from __future__ import annotations

import numpy as np

from silverclip.synth.anatomy import Anatomy
from silverclip.synth.paint import WaveField, add, alpha_from_sd, blend, capsule_sd, ellipsoid_sd
from silverclip.synth.placement import lerp, lobe_of, pick_sides, sample_lung_points, side_of


def _lung_blend(vol, g, anat, center, radius, alpha_fn, value, mode="blend"):
    box = g.box(center, radius)
    if box is None:
        return
    sl, bu, bv, bw = box
    a = alpha_fn(bu, bv, bw) * anat.lung_alpha[sl]
    (blend if mode == "blend" else add)(vol, a, value, sl)


# ---- 8. Emphysema -------------------------------------------------------------------------------
def sample_emphysema(anat, d, rng):
    n = int(round(lerp(45, 12, d) * rng.uniform(0.8, 1.2)))
    holes = sample_lung_points(anat, rng, n, 4.0, zone="upper" if rng.random() < 0.7 else "any")
    radii = (lerp(8.5, 4.0, d) * rng.uniform(0.7, 1.3, n)).tolist()
    bullae = []
    if rng.random() < lerp(0.7, 0.1, d):
        bullae = sample_lung_points(anat, rng, int(rng.integers(1, 3)), 10.0, zone="upper")
    return {
        "holes": holes,
        "radii": radii,
        "bullae": bullae,
        "bulla_r": lerp(26, 14, d),
        "darken": lerp(45, 12, d),
        "type": "bullous" if bullae else "centrilobular",
    }


def paint_emphysema(vol, g, anat, p):
    upper = np.clip((g.w + 40) / 80, 0, 1)
    add(vol, anat.lung_alpha * upper, -p["darken"])
    for c, r in zip(p["holes"], p["radii"]):
        _lung_blend(
            vol,
            g,
            anat,
            c,
            r + 2,
            lambda u, v, w, c=c, r=r: alpha_from_sd(ellipsoid_sd(u, v, w, c, (r, r, r)), g.voxel),
            -995.0,
        )
    for c in p["bullae"]:
        r = p["bulla_r"]
        _lung_blend(
            vol,
            g,
            anat,
            c,
            r + 2,
            lambda u, v, w, c=c, r=r: alpha_from_sd(ellipsoid_sd(u, v, w, c, (r, r, r)), g.voxel),
            -1000.0,
        )


# ---- 9. Atelectasis -----------------------------------------------------------------------------
def sample_atelectasis(anat, d, rng):
    kind = "linear" if rng.random() < 0.55 else "basal"
    sides = pick_sides(rng, 0.45)
    bands = []
    for s in sides:
        c = sample_lung_points(anat, rng, 1, 12.0, zone="lower", side=s)[0]
        tilt = rng.normal(0, 0.35, 2)
        bands.append((c, (float(tilt[0]), float(tilt[1]), 1.0)))
    return {
        "kind": kind,
        "sides": sides,
        "bands": bands,
        "thickness": lerp(11, 4.5, d),
        "depth": lerp(24, 10, d),
        "hu": lerp(25, -250, d),
    }


def paint_atelectasis(vol, g, anat, p):
    if p["kind"] == "linear":
        for c, n in p["bands"]:
            n = np.asarray(n) / np.linalg.norm(n)
            R = 38.0

            def plate(u, v, w, c=c, n=n, R=R):
                du, dv, dw = u - c[0], v - c[1], w - c[2]
                along = du * n[0] + dv * n[1] + dw * n[2]
                perp = np.sqrt(np.maximum(du**2 + dv**2 + dw**2 - along**2, 0))
                return alpha_from_sd(np.maximum(np.abs(along) - p["thickness"] / 2, perp - R), g.voxel)

            _lung_blend(vol, g, anat, c, R + 4, plate, p["hu"])
        return
    # basal: dependent subsegmental collapse along the posterior diaphragm
    u, v, w = g.u, g.v, g.w
    sel = np.zeros_like(u)
    for s in p["sides"]:
        sel = np.maximum(sel, (u >= 0) if s == "right" else (u < 0))
    near = alpha_from_sd(w - anat.diaphragm(u, v) - p["depth"], g.voxel)
    post = alpha_from_sd(v + 0.35 * anat.Bi, g.voxel * 3)
    blend(vol, anat.lung_alpha * near * post * sel, p["hu"])


# ---- 10. Lung nodule ----------------------------------------------------------------------------
def sample_lung_nodule(anat, d, rng):
    k = int(rng.choice([1, 2, 3, 4], p=[0.55, 0.25, 0.12, 0.08]))
    r = (lerp(9.5, 3.5, d) * rng.uniform(0.8, 1.25, k)).tolist()
    cs = sample_lung_points(anat, rng, k, 8.0)
    solid = rng.random() < 0.75
    hu = lerp(40, -120, d) if solid else lerp(-350, -550, d)
    i = int(np.argmax(r))
    return {
        "centers": cs,
        "radii": r,
        "hu": hu,
        "solid": solid,
        "size_mm": round(2 * r[i]),
        "side": side_of(cs[i][0]),
        "lobe": lobe_of(anat, cs[i]),
        "count": k,
    }


def paint_lung_nodule(vol, g, anat, p):
    for c, r in zip(p["centers"], p["radii"]):
        _lung_blend(
            vol,
            g,
            anat,
            c,
            r + 2,
            lambda u, v, w, c=c, r=r: alpha_from_sd(ellipsoid_sd(u, v, w, c, (r, r, r)), g.voxel),
            p["hu"],
        )


# ---- 11. Lung opacity (ground glass) ------------------------------------------------------------
def sample_lung_opacity(anat, d, rng):
    k = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    cs = sample_lung_points(anat, rng, k, 10.0, zone="peripheral" if rng.random() < 0.6 else "any")
    return {
        "centers": cs,
        "radii": (lerp(42, 18, d) * rng.uniform(0.8, 1.2, k)).tolist(),
        "delta": lerp(330, 140, d),
        "seed": int(rng.integers(2**31)),
        "side": "bilateral" if len({side_of(c[0]) for c in cs}) > 1 else side_of(cs[0][0]),
        "lobe": lobe_of(anat, cs[0]),
    }


def paint_lung_opacity(vol, g, anat, p):
    field = WaveField(np.random.default_rng(p["seed"]), 18.0, 8)
    for c, r in zip(p["centers"], p["radii"]):

        def patch(u, v, w, c=c, r=r):
            return alpha_from_sd(ellipsoid_sd(u, v, w, c, (r, r * 0.9, r * 1.1)) + 6 * field(u, v, w), g.voxel * 2)

        _lung_blend(vol, g, anat, c, r * 1.2 + 8, patch, p["delta"], mode="add")


# ---- 12. Pulmonary fibrotic sequela -------------------------------------------------------------
def sample_pulmonary_fibrotic_sequela(anat, d, rng):
    k = int(rng.integers(2, 5))
    starts = sample_lung_points(anat, rng, k, 3.0, zone="upper" if rng.random() < 0.7 else "peripheral")
    bands = []
    for s in starts:
        hil = anat.hila()[side_of(s[0])]
        vec = np.subtract(hil, s)
        vec = vec / (np.linalg.norm(vec) + 1e-6) + rng.normal(0, 0.3, 3)
        vec /= np.linalg.norm(vec)
        L = lerp(75, 30, d) * rng.uniform(0.8, 1.2)
        bands.append((s, tuple(float(x) for x in np.add(s, vec * L))))
    return {
        "bands": bands,
        "r": lerp(4.5, 1.6, d),
        "hu": lerp(-40, -420, d),
        "side": side_of(starts[0][0]),
        "lobe": lobe_of(anat, starts[0]),
    }


def paint_pulmonary_fibrotic_sequela(vol, g, anat, p):
    for p0, p1 in p["bands"]:
        c = tuple((a + b) / 2 for a, b in zip(p0, p1))
        half = float(np.linalg.norm(np.subtract(p1, p0))) / 2 + p["r"] + 2
        _lung_blend(
            vol,
            g,
            anat,
            c,
            half,
            lambda u, v, w, p0=p0, p1=p1: alpha_from_sd(capsule_sd(u, v, w, p0, p1, p["r"]), g.voxel),
            p["hu"],
        )


# ---- 14. Mosaic attenuation pattern -------------------------------------------------------------
def sample_mosaic_attenuation_pattern(anat, d, rng):
    return {"delta": lerp(110, 40, d), "seed": int(rng.integers(2**31)), "wavelength": rng.uniform(40, 60)}


def paint_mosaic_attenuation_pattern(vol, g, anat, p):
    f = WaveField(np.random.default_rng(p["seed"]), p["wavelength"], 10)(g.u, g.v, g.w)
    add(vol, anat.lung_alpha, p["delta"] * np.tanh(3 * f))


# ---- 15/17. Airways: peribronchial thickening and bronchiectasis --------------------------------
def bronchi(anat: Anatomy) -> list[tuple[tuple[float, float, float], tuple[float, float, float]]]:
    """Segmental bronchi: straight segments from each hilum towards the lobes."""
    out = []
    for side, h in anat.hila().items():
        s = 1 if side == "right" else -1
        dirs = [
            (0.45 * s, -0.15, 0.9),
            (0.8 * s, 0.5, 0.1),
            (0.5 * s, -0.5, -0.7),
            (0.8 * s, -0.1, -0.6),
            (0.2 * s, 0.75, -0.4),
        ]
        for dvec in dirs:
            dvec = np.asarray(dvec) / np.linalg.norm(dvec)
            L = 0.55 * anat.Ai + 20
            out.append((h, tuple(float(x) for x in np.add(h, dvec * L))))
    return out


def sample_peribronchial_thickening(anat, d, rng):
    return {"wall": lerp(5.0, 2.2, d), "hu": lerp(30, -150, d)}


def sample_bronchiectasis(anat, d, rng):
    return {"lumen": lerp(9.0, 5.0, d), "extend": lerp(1.35, 1.1, d), "side": pick_sides(rng, 0.6)}


def paint_airways(vol, g, anat, peri: dict | None, ectasis: dict | None) -> None:
    """Normal segmental bronchi (3.5 mm lumen, thin wall) or their abnormal versions."""
    wall_t = peri["wall"] if peri else 1.2
    wall_hu = peri["hu"] if peri else -150.0
    for h, e in bronchi(anat):
        side = side_of(e[0])
        lumen, end = 3.5, e
        if ectasis and side in ectasis["side"]:
            lumen = ectasis["lumen"]
            end = tuple(float(a + (b - a) * ectasis["extend"]) for a, b in zip(h, e))
        c = tuple((a + b) / 2 for a, b in zip(h, end))
        half = float(np.linalg.norm(np.subtract(end, h))) / 2 + lumen + wall_t + 2
        outer = lumen + wall_t
        _lung_blend(
            vol,
            g,
            anat,
            c,
            half,
            lambda u, v, w, h=h, end=end, outer=outer: alpha_from_sd(capsule_sd(u, v, w, h, end, outer), g.voxel),
            wall_hu,
        )
        _lung_blend(
            vol,
            g,
            anat,
            c,
            half,
            lambda u, v, w, h=h, end=end, lumen=lumen: alpha_from_sd(capsule_sd(u, v, w, h, end, lumen), g.voxel),
            -990.0,
        )


# ---- 16. Consolidation --------------------------------------------------------------------------
def sample_consolidation(anat, d, rng):
    k = int(rng.choice([1, 2], p=[0.7, 0.3]))
    cs = sample_lung_points(anat, rng, k, 12.0, zone="lower" if rng.random() < 0.65 else "any")
    return {
        "centers": cs,
        "radii": (lerp(38, 16, d) * rng.uniform(0.85, 1.15, k)).tolist(),
        "hu": lerp(35, -250, d),
        "bronchogram": bool(rng.random() < lerp(0.8, 0.3, d)),
        "seed": int(rng.integers(2**31)),
        "side": side_of(cs[0][0]),
        "lobe": lobe_of(anat, cs[0]),
    }


def paint_consolidation(vol, g, anat, p):
    field = WaveField(np.random.default_rng(p["seed"]), 24.0, 8)
    for c, r in zip(p["centers"], p["radii"]):

        def patch(u, v, w, c=c, r=r):
            return alpha_from_sd(ellipsoid_sd(u, v, w, c, (r, r * 0.85, r * 1.15)) + 5 * field(u, v, w), g.voxel)

        _lung_blend(vol, g, anat, c, r * 1.2 + 6, patch, p["hu"])
        if p["bronchogram"]:
            p0 = (c[0], c[1] - 0.6 * r, c[2] + 0.6 * r)
            p1 = (c[0], c[1] + 0.5 * r, c[2] - 0.5 * r)
            _lung_blend(
                vol,
                g,
                anat,
                c,
                r * 1.2,
                lambda u, v, w, p0=p0, p1=p1: alpha_from_sd(capsule_sd(u, v, w, p0, p1, 2.5), g.voxel) * 0.8,
                -800.0,
            )


# ---- 18. Interlobular septal thickening ---------------------------------------------------------
def sample_interlobular_septal_thickening(anat, d, rng):
    return {
        "spacing": rng.uniform(14, 20),
        "thickness": lerp(3.5, 2.0, d),
        "delta": lerp(420, 180, d),
        "seed": int(rng.integers(2**31)),
        "zone": "basal" if rng.random() < 0.7 else "diffuse",
    }


def paint_interlobular_septal_thickening(vol, g, anat, p):
    u, v, w = g.u, g.v, g.w
    rng = np.random.default_rng(p["seed"])
    warp = [WaveField(rng, 40.0, 6) for _ in range(3)]
    P = p["spacing"]
    dist = None
    for coord, f in zip((u, v, w), warp):
        x = (coord + 4.0 * f(u, v, w)) / P
        dd = np.abs(x - np.round(x)) * P  # distance to the nearest septal plane along this axis
        dist = dd if dist is None else np.minimum(dist, dd)
    septa = alpha_from_sd(dist - p["thickness"] / 2, g.voxel * 0.5)
    periph = np.clip((anat.lung_sd(u, v, w) + 45) / 20, 0, 1)  # subpleural 45 mm
    zone = np.clip((20 - w) / 40, 0, 1) if p["zone"] == "basal" else 1.0
    add(vol, anat.lung_alpha * periph * zone * septa, p["delta"])
