"""Where lesions go and how big they are: shared by the lesion samplers of every region.

``d`` in [0, 1] is a finding's effective difficulty; :func:`lerp` maps it between the easy and the hard
value of a parameter. Positions are body-frame mm ``(u, v, w)`` (u > 0 is the patient's right).
"""

from __future__ import annotations

import numpy as np

from silverclip.synth.anatomy import Anatomy


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


def pick_sides(rng, p_bilateral: float) -> list[str]:
    if rng.random() < p_bilateral:
        return ["right", "left"]
    return ["right" if rng.random() < 0.55 else "left"]
