"""Findings outside the lung parenchyma: heart, pericardium, vessels, lymph nodes, hernia, pleura, devices.

Medical material, arterial and coronary calcification, cardiomegaly and pericardial effusion (sampled
here, painted by :class:`~silverclip.synth.anatomy.Anatomy`), hiatal hernia, lymph nodes (normal and
enlarged) and pleural effusion. Samplers and painters follow the contract in
:mod:`silverclip.synth.lesions`.
"""

from __future__ import annotations

import numpy as np

from silverclip.synth.anatomy import HU, Anatomy
from silverclip.synth.paint import alpha_from_sd, blend, ellipsoid_sd
from silverclip.synth.placement import lerp, pick_sides


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


# ---- 13. Pleural effusion -----------------------------------------------------------------------
def sample_pleural_effusion(anat, d, rng):
    return {
        "sides": pick_sides(rng, 0.5),
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
