"""The 18 CT-RATE findings as visible correlates in the phantom.

For each finding key (``silverclip.findings.FINDING_KEYS``) a *sampler* draws the lesion's parameters
for one scan (``sample_<key>(anat, d, rng) -> dict``; also read by the report writer: side, lobe,
size, device) and a *painter* draws it (``paint_<key>(vol, g, anat, p)``). ``d`` in [0, 1] is the
effective difficulty: 0 gives large, high-contrast lesions, 1 small, low-contrast ones. Sizes are in
mm and chosen so that at ``difficulty=0`` every correlate spans several 6 mm voxels (the ``demo``
preset). Lung lesions are multiplied by the lung alpha so they stay inside the lungs.
"""

from __future__ import annotations

import numpy as np

from silverclip.synth.anatomy import HU, Anatomy
from silverclip.synth.paint import WaveField, add, alpha_from_sd, blend, capsule_sd, ellipsoid_sd


def lerp(easy: float, hard: float, d: float) -> float:
    return float(easy + (hard - easy) * d)


def side_of(u: float) -> str:
    return "right" if u >= 0 else "left"


def lobe_of(anat: Anatomy, p) -> str:
    u, v, w = p
    if w > 15:
        return "upper"
    if u >= 0 and v > 0.1 * anat.Bi and w > -45:
        return "middle"
    if u < 0 and v > 0.1 * anat.Bi and w > -45:
        return "lingula"
    return "lower"


def sample_lung_points(anat: Anatomy, rng, n: int, margin: float, zone: str = "any", side: str | None = None):
    """``n`` points inside the lungs at least ``margin`` mm from their boundary.

    zone: ``upper`` / ``lower`` / ``peripheral`` / ``any`` biases where they fall.
    """
    out: list[tuple[float, float, float]] = []
    for _ in range(60):
        m = 256
        u = rng.uniform(-anat.Ai, anat.Ai, m)
        if side == "right":
            u = np.abs(u)
        elif side == "left":
            u = -np.abs(u)
        v = rng.uniform(-anat.Bi, anat.Bi, m)
        w = rng.uniform(anat.dome_l - 50, anat.apex, m)
        sd = anat.lung_sd(u, v, w)
        ok = sd < -margin
        if zone == "upper":
            ok &= w > 10
        elif zone == "lower":
            ok &= w < -25
        elif zone == "peripheral":
            ok &= sd > -margin - 25
        for i in np.flatnonzero(ok):
            out.append((float(u[i]), float(v[i]), float(w[i])))
            if len(out) == n:
                return out
        margin *= 0.8  # small lungs: relax rather than fail
    while len(out) < n:  # fall back to the lung centres
        out.append((0.5 * anat.Ai * (1 if rng.random() < 0.5 else -1), 0.0, -20.0))
    return out


def _sides(rng, p_bilateral: float) -> list[str]:
    if rng.random() < p_bilateral:
        return ["right", "left"]
    return ["right" if rng.random() < 0.55 else "left"]


def _lung_blend(vol, g, anat, center, radius, alpha_fn, value, mode="blend"):
    box = g.box(center, radius)
    if box is None:
        return
    sl, bu, bv, bw = box
    a = alpha_fn(bu, bv, bw) * anat.lung_alpha[sl]
    (blend if mode == "blend" else add)(vol, a, value, sl)


# ---- 1. Medical material ------------------------------------------------------------------------
def sample_medical_material(anat, d, rng):
    device = str(
        rng.choice(
            ["port catheter", "sternotomy wires", "pacemaker", "central venous catheter"], p=[0.35, 0.25, 0.2, 0.2]
        )
    )
    return {
        "device": device,
        "side": "right" if rng.random() < 0.6 else "left",
        "hu": lerp(3000, 1400, d),
        "wire_r": lerp(2.6, 1.2, d),
        "size": lerp(1.0, 0.65, d),
    }


def paint_medical_material(vol, g, anat, p):
    s = 1 if p["side"] == "right" else -1
    hu, wr, k = p["hu"], p["wire_r"], p["size"]
    vt = anat.trachea_v
    (hc, hv, hw), (ru, rv, rw) = anat.heart()
    svc = (s * 0.12 * anat.Ai + (1 - s) * 0.1 * anat.Ai, vt + 24, 25.0)
    ra = (0.05 * anat.Ai, hv, hw + 0.3 * rw)
    pocket = (s * 0.55 * anat.A, anat.B - anat.fat * 0.55, 80.0)
    dev = p["device"]
    if dev == "sternotomy wires":
        for i in range(5):
            w = 50 - 30 * i
            anat._capsule(vol, g, (-16, anat.Bi + 2, w), (16, anat.Bi + 2, w), wr * 1.2, hu)
        return
    if dev == "port catheter":
        box = g.box(pocket, 20 * k + 6)
        if box:
            sl, bu, bv, bw = box
            sd = np.maximum(np.sqrt((bu - pocket[0]) ** 2 + (bw - pocket[2]) ** 2) - 14 * k, np.abs(bv - pocket[1]) - 5)
            blend(vol, alpha_from_sd(sd, g.voxel), hu, sl)
        path = [pocket, svc, ra]
    elif dev == "pacemaker":
        pocket = (-0.55 * anat.A, anat.B - anat.fat * 0.55, 80.0)
        box = g.box(pocket, 30 * k + 6)
        if box:
            sl, bu, bv, bw = box
            sd = np.maximum(np.abs(bu - pocket[0]) - 22 * k, np.abs(bv - pocket[1]) - 5)
            sd = np.maximum(sd, np.abs(bw - pocket[2]) - 18 * k)
            blend(vol, alpha_from_sd(sd, g.voxel), hu, sl)
        rv_apex = (hc - 0.3 * ru, hv + 0.5 * rv, hw - 0.4 * rw)
        path = [pocket, (0.1 * anat.Ai, vt + 24, 25.0), ra, rv_apex]
    else:  # central venous catheter from the neck
        path = [(s * 0.3 * anat.Ai, vt + 12, anat.apex + 60), svc, ra]
    for p0, p1 in zip(path[:-1], path[1:]):
        anat._capsule(vol, g, p0, p1, wr, hu)


# ---- 2. Arterial wall calcification -------------------------------------------------------------
def sample_arterial_wall_calcification(anat, d, rng):
    path = np.array(anat.aorta_path())
    seg_len = np.linalg.norm(np.diff(path, axis=0), axis=1)
    n = int(round(lerp(14, 3, d) * rng.uniform(0.8, 1.25)))
    spots = []
    for _ in range(n):
        i = int(rng.choice(len(seg_len), p=seg_len / seg_len.sum()))
        c = path[i] + rng.uniform(0.05, 0.95) * (path[i + 1] - path[i])
        dirn = np.cross(path[i + 1] - path[i], rng.normal(size=3))
        dirn /= np.linalg.norm(dirn) + 1e-9
        spots.append(tuple(float(x) for x in c + dirn * anat.aorta_r * 0.95))
    return {"spots": spots, "r": lerp(4.5, 1.8, d), "hu": lerp(1000, 320, d), "extent": "diffuse" if n > 8 else "focal"}


def _paint_spots(vol, g, spots, r, hu):
    for c in spots:
        box = g.box(c, r + 2)
        if box:
            sl, bu, bv, bw = box
            blend(vol, alpha_from_sd(ellipsoid_sd(bu, bv, bw, c, (r, r, r)), g.voxel), hu, sl)


def paint_arterial_wall_calcification(vol, g, anat, p):
    _paint_spots(vol, g, p["spots"], p["r"], p["hu"])


# ---- 3. Cardiomegaly (applied through Anatomy.heart_scale) ----------------------------------------
def sample_cardiomegaly(anat, d, rng):
    return {"factor": lerp(1.36, 1.14, d) * rng.uniform(0.97, 1.03)}


# ---- 4. Pericardial effusion (painted by Anatomy.paint_mediastinum through the thickness) --------
def sample_pericardial_effusion(anat, d, rng):
    return {"thickness": lerp(15, 5, d) * rng.uniform(0.85, 1.15)}


# ---- 5. Coronary artery wall calcification ------------------------------------------------------
def sample_coronary_artery_wall_calcification(anat, d, rng):
    n = max(1, int(round(lerp(7, 2, d) * rng.uniform(0.8, 1.25))))
    return {
        "n": n,
        "r": lerp(4.5, 2.0, d),
        "hu": lerp(1000, 320, d),
        "phi": rng.uniform(-0.4, 1.2, n).tolist(),
        "theta": rng.uniform(-0.1, 0.55, n).tolist(),
    }


def paint_coronary_artery_wall_calcification(vol, g, anat, p):
    (cu, cv, cw), (ru, rv, rw) = anat.heart()
    spots = []
    for phi, th in zip(p["phi"], p["theta"]):  # atrioventricular groove / anterior interventricular groove
        spots.append(
            (
                cu + 0.97 * ru * np.cos(th) * np.sin(phi) * -1,
                cv + 0.97 * rv * np.cos(th) * np.cos(phi),
                cw + 0.97 * rw * np.sin(th),
            )
        )
    _paint_spots(vol, g, spots, p["r"], p["hu"])


# ---- 6. Hiatal hernia ---------------------------------------------------------------------------
def sample_hiatal_hernia(anat, d, rng):
    r = lerp(32, 15, d) * rng.uniform(0.85, 1.15)
    return {"r": r, "air": bool(rng.random() < lerp(0.9, 0.5, d)), "level": rng.uniform(-0.2, 0.5)}


def paint_hiatal_hernia(vol, g, anat, p):
    vs, rs = anat.spine
    r = p["r"]
    c = (-10.0, vs + rs + 16 + 0.3 * r, anat.dome_l + 0.55 * r)
    radii = (r * 1.1, r * 0.85, r)
    box = g.box(c, r * 1.2 + 4)
    if box is None:
        return
    sl, bu, bv, bw = box
    blend(vol, alpha_from_sd(ellipsoid_sd(bu, bv, bw, c, radii), g.voxel), 45.0, sl)
    inner = alpha_from_sd(ellipsoid_sd(bu, bv, bw, c, tuple(x - 3 for x in radii)), g.voxel)
    blend(vol, inner, 18.0, sl)
    if p["air"]:  # gas in the non-dependent (anterior) part: an air-fluid level
        blend(vol, inner * alpha_from_sd(c[1] + p["level"] * radii[1] - bv, g.voxel), HU["air"], sl)


# ---- 7. Lymphadenopathy -------------------------------------------------------------------------
def node_stations(anat: Anatomy) -> dict[str, tuple[float, float, float]]:
    vt = anat.trachea_v
    hila = anat.hila()
    ax = anat.Ai + 8 + anat.muscle + 0.4 * anat.fat
    return {
        "right paratracheal": (20.0, vt, 32.0),
        "aortopulmonary window": (-18.0, vt + 12, 18.0),
        "subcarinal": (0.0, vt - 3, -24.0),
        "prevascular": (2.0, vt + 40, 32.0),
        "right hilar": (hila["right"][0] + 14, hila["right"][1] + 20, hila["right"][2] + 6),
        "left hilar": (hila["left"][0] - 14, hila["left"][1] + 20, hila["left"][2] + 6),
        "right axillary": (ax, 0.1 * anat.Bi, 70.0),
        "left axillary": (-ax, 0.1 * anat.Bi, 70.0),
    }


def sample_lymphadenopathy(anat, d, rng):
    names = list(node_stations(anat))
    k = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.2, 0.15]))
    chosen = [str(x) for x in rng.choice(names, size=k, replace=False)]
    radii = [lerp(13, 7, d) * rng.uniform(0.85, 1.15) for _ in chosen]
    return {"stations": chosen, "radii": radii, "largest_mm": round(2 * max(radii))}


def paint_nodes(vol, g, anat, stations, radii, rng_jitter=None):
    st = node_stations(anat)
    for name, r in zip(stations, radii):
        c = st[name]
        box = g.box(c, r * 1.3 + 3)
        if box:
            sl, bu, bv, bw = box
            blend(vol, alpha_from_sd(ellipsoid_sd(bu, bv, bw, c, (r, r * 0.85, r * 1.2)), g.voxel), 38.0, sl)


def paint_lymphadenopathy(vol, g, anat, p):
    paint_nodes(vol, g, anat, p["stations"], p["radii"])


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
    sides = _sides(rng, 0.45)
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


# ---- 13. Pleural effusion -----------------------------------------------------------------------
def sample_pleural_effusion(anat, d, rng):
    return {
        "sides": _sides(rng, 0.5),
        "depth": lerp(48, 14, d) * rng.uniform(0.85, 1.15),
        "height": lerp(150, 70, d),
        "hu": rng.uniform(4, 18),
    }


def paint_pleural_effusion(vol, g, anat, p):
    u, v, w = g.u, g.v, g.w
    wall = -anat.Bi * np.sqrt(np.clip(1 - (u / anat.Ai) ** 2, 0, 1))  # posterior chest wall under u
    taper = np.clip(1 - (w - anat.diaphragm(u, v)) / p["height"], 0, 1) ** 0.6
    sd = (v - wall) - p["depth"] * taper
    sel = np.zeros_like(u)
    for s in p["sides"]:
        sel = np.maximum(sel, (u >= 0) if s == "right" else (u < 0))
    # the fluid fills the pleural space: lung plus its thin margin against the chest wall
    blend(vol, alpha_from_sd(sd, g.voxel) * np.clip(anat.lung_alpha * 1.5, 0, 1) * sel, p["hu"])


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
    return {"lumen": lerp(9.0, 5.0, d), "extend": lerp(1.35, 1.1, d), "side": _sides(rng, 0.6)}


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


SAMPLERS = {
    "medical_material": sample_medical_material,
    "arterial_wall_calcification": sample_arterial_wall_calcification,
    "cardiomegaly": sample_cardiomegaly,
    "pericardial_effusion": sample_pericardial_effusion,
    "coronary_artery_wall_calcification": sample_coronary_artery_wall_calcification,
    "hiatal_hernia": sample_hiatal_hernia,
    "lymphadenopathy": sample_lymphadenopathy,
    "emphysema": sample_emphysema,
    "atelectasis": sample_atelectasis,
    "lung_nodule": sample_lung_nodule,
    "lung_opacity": sample_lung_opacity,
    "pulmonary_fibrotic_sequela": sample_pulmonary_fibrotic_sequela,
    "pleural_effusion": sample_pleural_effusion,
    "mosaic_attenuation_pattern": sample_mosaic_attenuation_pattern,
    "peribronchial_thickening": sample_peribronchial_thickening,
    "consolidation": sample_consolidation,
    "bronchiectasis": sample_bronchiectasis,
    "interlobular_septal_thickening": sample_interlobular_septal_thickening,
}
