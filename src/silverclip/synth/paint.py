"""Painting primitives for the phantom: soft-edged shapes, blending and smooth random fields.

Shapes return an *alpha* in [0, 1] (the fraction of a voxel inside the shape) computed from an
approximate signed distance ``sd`` (mm, negative inside) as ``clip(0.5 - sd / voxel, 0, 1)``. This
is a cheap partial-volume model: edges stay smooth at any voxel size, so structures survive
resampling. Everything takes body-frame coordinates ``u, v, w`` (mm) that broadcast to a block.
Written by hand because these are a few lines of numpy each and no imaging library draws
partial-volume primitives on an arbitrary rotated grid.
"""

from __future__ import annotations

import numpy as np


def alpha_from_sd(sd: np.ndarray, voxel: float) -> np.ndarray:
    return np.clip(0.5 - sd / voxel, 0.0, 1.0)


def ellipsoid_sd(u, v, w, c, r) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid with centre ``c`` and radii ``r``."""
    q = np.sqrt(((u - c[0]) / r[0]) ** 2 + ((v - c[1]) / r[1]) ** 2 + ((w - c[2]) / r[2]) ** 2)
    return (q - 1.0) * min(r)


def capsule_sd(u, v, w, p0, p1, radius: float) -> np.ndarray:
    """Signed distance to a cylinder with round caps from ``p0`` to ``p1``."""
    p0 = np.asarray(p0, np.float32)
    d = np.asarray(p1, np.float32) - p0
    dd = float(d @ d) or 1e-6
    du, dv, dw = u - p0[0], v - p0[1], w - p0[2]
    t = np.clip((du * d[0] + dv * d[1] + dw * d[2]) / dd, 0.0, 1.0)
    return np.sqrt((du - t * d[0]) ** 2 + (dv - t * d[1]) ** 2 + (dw - t * d[2]) ** 2) - radius


def blend(vol: np.ndarray, alpha, value, sl=None) -> None:
    """In place: ``vol = vol + alpha * (value - vol)`` over ``vol[sl]`` (whole volume if ``sl`` is None)."""
    target = vol if sl is None else vol[sl]
    target += alpha * (value - target)


def add(vol: np.ndarray, alpha, delta, sl=None) -> None:
    target = vol if sl is None else vol[sl]
    target += alpha * delta


class WaveField:
    """A smooth random field in body-frame mm: a sum of random plane waves.

    Defined in physical space, so every reconstruction of a scan samples the same field whatever its
    spacing. Values are roughly standard normal. ``wavelength`` sets the size of blobs (mm).
    """

    def __init__(self, rng: np.random.Generator, wavelength: float, n_waves: int = 12):
        k = rng.normal(size=(n_waves, 3))
        k /= np.linalg.norm(k, axis=1, keepdims=True)
        scale = rng.uniform(0.7, 1.4, size=(n_waves, 1))
        self.k = (k * scale * 2 * np.pi / wavelength).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, size=n_waves).astype(np.float32)
        self.amp = np.float32(np.sqrt(2.0 / n_waves))

    def __call__(self, u, v, w) -> np.ndarray:
        out = None
        for (ku, kv, kw), ph in zip(self.k, self.phase):
            term = np.cos(u * ku + v * kv + w * kw + ph)
            out = term if out is None else out + term
        return out * self.amp
