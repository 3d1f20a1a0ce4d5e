"""Normal chest anatomy of the phantom, in the body frame (mm; u = patient right, v = anterior,
w = superior, origin at the carina on the body's centre line).

:class:`Anatomy` holds one patient's shape parameters (drawn by :meth:`Anatomy.sample`) and paints
the normal structures in realistic unenhanced-CT values: air -1000, subcutaneous fat -100, muscle
+45, mediastinal fat -90, lung parenchyma about -850 (denser in dependent, posterior lung), heart and
vessels +40, liver +58, spleen +48, cancellous bone +220 with +700 cortex, table.
:meth:`Anatomy.lung_sd` is the signed distance (mm, negative inside) to the lungs; lesions use it to
stay inside the lungs and the sampler uses it to place them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from silverclip.synth.paint import WaveField, alpha_from_sd, blend, capsule_sd, ellipsoid_sd

HU = {
    "air": -1000.0,
    "fat": -100.0,
    "med_fat": -90.0,
    "muscle": 45.0,
    "lung": -855.0,
    "blood": 40.0,
    "liver": 58.0,
    "spleen": 48.0,
    "fluid": 12.0,
    "bone": 220.0,
    "cortex": 700.0,
    "table": 120.0,
}


@dataclass
class Anatomy:
    """Shape parameters of one patient's chest (all mm)."""

    A: float  # body half-width (lateral)
    B: float  # body half-depth (antero-posterior)
    fat: float  # subcutaneous fat thickness
    muscle: float  # chest-wall muscle thickness
    apex: float  # lung apex height
    dome_r: float  # right diaphragm dome height (negative)
    dome_l: float  # left diaphragm dome height
    heart_scale: float  # 1 = normal heart size
    heart_tilt: float  # radians, long axis towards left-anterior
    aorta_r: float
    lung_hu: float  # mean parenchyma value
    gradient: float  # dependent density increase (HU from anterior to posterior)
    rib_period: float
    rib_phase: float
    texture_seed: int

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Anatomy:
        size = float(np.clip(rng.normal(1.0, 0.07), 0.86, 1.18))
        return cls(
            A=160 * size * rng.uniform(0.93, 1.07),
            B=112 * size * rng.uniform(0.9, 1.1),
            fat=rng.uniform(6, 30),
            muscle=rng.uniform(8, 14),
            apex=rng.uniform(120, 145),
            dome_r=-rng.uniform(70, 95),
            dome_l=0.0,  # set below
            heart_scale=rng.uniform(0.93, 1.05),
            heart_tilt=rng.uniform(0.2, 0.45),
            aorta_r=rng.uniform(11, 14.5),
            lung_hu=rng.uniform(-875, -835),
            gradient=rng.uniform(30, 70),
            rib_period=rng.uniform(24, 30),
            rib_phase=rng.uniform(0, 1),
            texture_seed=int(rng.integers(2**31)),
        )._finish(rng)

    def _finish(self, rng: np.random.Generator) -> Anatomy:
        self.dome_l = self.dome_r - rng.uniform(5, 20)
        return self

    # ---- derived landmarks -------------------------------------------------------------------
    @property
    def Ai(self) -> float:  # inner thoracic half-width (inside ribs)
        return self.A - self.fat - self.muscle - 8

    @property
    def Bi(self) -> float:
        return self.B - self.fat - self.muscle - 8

    @property
    def spine(self) -> tuple[float, float]:
        """(v of the vertebral body centre, vertebral body radius)."""
        r = 16.0 * self.B / 112
        return -self.Bi + r * 0.6, r

    @property
    def trachea_v(self) -> float:
        vs, rs = self.spine
        return vs + rs + 30

    def heart(self, scale: float | None = None) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Centre and radii of the heart ellipsoid (radii grow with ``scale``, default heart_scale)."""
        s = self.heart_scale if scale is None else scale
        r = (0.40 * self.Ai * s, 0.52 * self.Bi * s, 48.0 * s)
        c = (-0.2 * self.Ai * s, self.Bi - r[1] - 4, self.dome_l + 0.5 * r[2])
        return c, r

    def aorta_path(self) -> list[tuple[float, float, float]]:
        """Centre line of the thoracic aorta: root, ascending, arch, descending to below the diaphragm."""
        (hu_, hv, hw), (ru, rv, rw) = self.heart()
        vt, vs = self.trachea_v, self.spine[0]
        rs = self.spine[1]
        return [
            (0.05 * self.Ai, hv - 0.1 * rv, hw + 0.75 * rw),
            (0.14 * self.Ai, vt + 28, 18.0),
            (0.05 * self.Ai, vt + 14, 42.0),
            (-0.16 * self.Ai, vt - 4, 42.0),
            (-24.0, vs + rs + 6, 24.0),
            (-20.0, vs + rs + 6, -260.0),
        ]

    def hila(self) -> dict[str, tuple[float, float, float]]:
        vt = self.trachea_v
        return {"right": (34.0, vt - 6, -22.0), "left": (-36.0, vt - 6, -16.0)}

    def diaphragm(self, u, v):
        """Height w of the diaphragm surface under (u, v): two domes, deeper posterior recesses."""
        dome = np.where(u >= 0, self.dome_r, self.dome_l)
        r2 = ((np.abs(u) - 0.45 * self.Ai) / (0.62 * self.Ai)) ** 2 + (v / self.Bi) ** 2
        return dome - 42 * r2 - 28 * np.clip(-v / self.Bi, 0, 1)

    # ---- signed distances --------------------------------------------------------------------
    def cavity_sd(self, u, v, a: float | None = None, b: float | None = None):
        a = self.Ai if a is None else a
        b = self.Bi if b is None else b
        q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        return (q - 1.0) * min(a, b)

    def lung_sd(self, u, v, w):
        """Signed distance (mm, negative inside) to the lungs: cavity minus mediastinum, heart,
        above the diaphragm and below the apical domes."""
        sd = self.cavity_sd(u, v)
        r2 = ((np.abs(u) - 0.52 * self.Ai) / (0.55 * self.Ai)) ** 2 + ((v + 0.1 * self.Bi) / (0.95 * self.Bi)) ** 2
        sd = np.maximum(sd, w - (self.apex - 75 * r2))
        sd = np.maximum(sd, self.diaphragm(u, v) - w)
        vs, rs = self.spine
        post = np.clip((vs + rs + 40 - v) / 25, 0, 1)  # widen the mediastinum behind the heart (aorta, spine)
        upper = np.clip((w - 5) / 25, 0, 1)  # and above the heart (arch, great vessels)
        half = 16 + 20 * post + 10 * upper
        sd = np.maximum(sd, half - np.abs(u + 4))
        c, r = self.heart()
        sd = np.maximum(sd, -ellipsoid_sd(u, v, w, c, tuple(x + 6 for x in r)))
        return sd

    # ---- painting ----------------------------------------------------------------------------
    def paint_body(self, vol: np.ndarray, g) -> None:
        """Table, body (fat, muscle), cavity filled with mediastinal fat, abdomen, lungs with texture."""
        u, v, w, h = g.u, g.v, g.w, g.voxel
        vol.fill(HU["air"])
        # curved table under the patient
        tv = -self.B - 12
        table_sd = np.abs(v - (tv + 0.0008 * u**2)) - 5
        blend(vol, alpha_from_sd(table_sd, h) * np.ones_like(w), HU["table"])
        body = self.cavity_sd(u, v, self.A, self.B)
        blend(vol, alpha_from_sd(body, h) * np.ones_like(w), HU["fat"])
        inner = self.cavity_sd(u, v, self.A - self.fat, self.B - self.fat)
        blend(vol, alpha_from_sd(inner, h) * np.ones_like(w), HU["muscle"])
        cav = self.cavity_sd(u, v)
        blend(vol, alpha_from_sd(cav, h) * np.ones_like(w), HU["med_fat"])
        # upper abdomen below the diaphragm: liver right, stomach and spleen left
        below = alpha_from_sd(w - self.diaphragm(u, v) + 4, h) * alpha_from_sd(cav, h)
        blend(vol, below, 32.0)
        liver = alpha_from_sd(-(u + 0.05 * self.Ai) + 0 * w, h) * below
        blend(vol, liver, HU["liver"])
        spleen_c = (-0.62 * self.Ai, -0.45 * self.Bi, self.dome_l - 45)
        blend(vol, alpha_from_sd(ellipsoid_sd(u, v, w, spleen_c, (28, 40, 50)), h) * below, HU["spleen"])
        st_c = (-0.35 * self.Ai, 0.25 * self.Bi, self.dome_l - 40)
        stomach = alpha_from_sd(ellipsoid_sd(u, v, w, st_c, (40, 35, 38)), h) * below
        blend(vol, stomach, 20.0)
        blend(vol, stomach * alpha_from_sd(st_c[1] + 18 - v, h), HU["air"])  # gas in the non-dependent part
        # lungs: parenchyma with a dependent gradient and vessel-like texture
        lung = alpha_from_sd(self.lung_sd(u, v, w), h)
        rng = np.random.default_rng(self.texture_seed)
        vessels = WaveField(rng, 22.0, 16)(u, v, w)
        dist_hilum = np.minimum(np.abs(np.abs(u) - 35), 200) / self.Ai
        vessel_hu = np.clip(vessels - 1.3, 0, None) * (260 * np.clip(1.2 - dist_hilum, 0.3, 1.0))
        lung_val = self.lung_hu + self.gradient * np.clip(-v / self.Bi, -1, 1) * 0.5 + vessel_hu
        blend(vol, lung, lung_val)
        self.lung_alpha = lung

    def paint_mediastinum(self, vol: np.ndarray, g, pericardial_fluid: float = 0.0) -> None:
        """Heart with epicardial fat (and a pericardial fluid rim ``pericardial_fluid`` mm thick, if
        any), aorta, hilar vessels, trachea and main bronchi, oesophagus."""
        u, v, w, h = g.u, g.v, g.w, g.voxel
        c, r = self.heart()
        t = pericardial_fluid
        blend(vol, alpha_from_sd(ellipsoid_sd(u, v, w, c, tuple(x + 4 + t for x in r)), h), HU["med_fat"])
        if t > 0:
            blend(vol, alpha_from_sd(ellipsoid_sd(u, v, w, c, tuple(x + t for x in r)), h), HU["fluid"])
        blend(vol, alpha_from_sd(ellipsoid_sd(u, v, w, c, r), h), HU["blood"])
        self.paint_aorta(vol, g)
        for hc in self.hila().values():
            box = g.box(hc, 30)
            if box:
                sl, bu, bv, bw = box
                blend(vol, alpha_from_sd(ellipsoid_sd(bu, bv, bw, hc, (13, 16, 20)), h), HU["blood"], sl)
        vt = self.trachea_v
        self.paint_airway(vol, g, (0, vt, self.apex + 60), (0, vt, 0), 9.0, 1.5, HU["muscle"])
        for hc in self.hila().values():
            self.paint_airway(vol, g, (0, vt, 0), (hc[0] * 0.7, vt - 3, hc[2] * 0.8), 6.5, 1.5, HU["muscle"])
        vs, rs = self.spine
        p0, p1 = (-3.0, vs + rs + 12, self.apex + 60), (-6.0, vs + rs + 14, self.dome_l - 5)
        sd = capsule_sd(u, v, w, p0, p1, 7.0)
        blend(vol, alpha_from_sd(sd, h), 35.0)

    def paint_aorta(self, vol: np.ndarray, g) -> None:
        path = self.aorta_path()
        for p0, p1 in zip(path[:-1], path[1:]):
            self._capsule(vol, g, p0, p1, self.aorta_r, HU["blood"])

    def paint_airway(self, vol, g, p0, p1, radius, wall, wall_hu) -> None:
        self._capsule(vol, g, p0, p1, radius + wall, wall_hu)
        self._capsule(vol, g, p0, p1, radius, HU["air"])

    def _capsule(self, vol, g, p0, p1, radius, value, alpha_scale=1.0) -> None:
        c = tuple((a + b) / 2 for a, b in zip(p0, p1))
        half = float(np.linalg.norm(np.subtract(p1, p0))) / 2 + radius
        box = g.box(c, half)
        if box is None:
            return
        sl, bu, bv, bw = box
        blend(vol, alpha_scale * alpha_from_sd(capsule_sd(bu, bv, bw, p0, p1, radius), g.voxel), value, sl)

    def paint_bones(self, vol: np.ndarray, g) -> None:
        """Spine (vertebral bodies with discs, canal, posterior elements), ribs, sternum, scapulae."""
        u, v, w, h = g.u, g.v, g.w, g.voxel
        vs, rs = self.spine
        disc = np.abs(((w / 28.0) % 1.0) - 0.5) < 0.09  # intervertebral discs every 28 mm
        body_sd = np.sqrt(u**2 + (v - vs) ** 2) - rs
        a = alpha_from_sd(body_sd, h)
        blend(vol, a, np.where(disc, 80.0, HU["cortex"]))
        blend(vol, alpha_from_sd(body_sd + 2.5, h) * (~disc), HU["bone"])
        post_sd = np.maximum(np.abs(u) - 7, np.abs(v - (vs - rs - 22)) - 16)
        blend(vol, alpha_from_sd(post_sd, h) * np.ones_like(w), 380.0)
        canal_sd = np.sqrt(u**2 + (v - (vs - rs - 7)) ** 2) - 7
        blend(vol, alpha_from_sd(canal_sd, h) * np.ones_like(w), 20.0)
        # ribs: a ring just inside the chest wall muscle, present in oblique bands along w
        ring_sd = np.abs(self.cavity_sd(u, v, self.Ai + 5, self.Bi + 5)) - 4.0
        ang = np.arctan2(v, np.abs(u))  # ribs descend anteriorly
        phase = (w - 14 * (v / self.Bi) - 6 * np.sin(ang)) / self.rib_period + self.rib_phase
        band = np.abs((phase % 1.0) - 0.5) < 0.2
        top = w < self.apex + 10
        rib_a = alpha_from_sd(ring_sd, h) * band * top * (np.abs(u) > 18)
        blend(vol, rib_a, 450.0)
        # sternum: anterior midline
        st_sd = np.maximum(np.abs(u) - 14, np.abs(v - (self.Bi + 4)) - 6)
        st_sd = np.maximum(st_sd, np.maximum(w - 70, -105 - w))
        blend(vol, alpha_from_sd(st_sd, h), 330.0)
        # scapulae: posterior plates outside the ribs in the upper chest
        sc_sd = np.maximum(np.abs(np.abs(u) - 0.62 * self.A) - 0.22 * self.A, np.abs(v + self.Bi + 12) - 4)
        sc_sd = np.maximum(sc_sd, np.maximum(w - (self.apex - 10), -10 - w))
        blend(vol, alpha_from_sd(sc_sd, h), 400.0)
