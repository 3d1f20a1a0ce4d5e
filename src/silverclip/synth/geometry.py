"""Scan geometry of synthetic volumes: field of view, spacing, orientation, affine, body frame.

Anatomy is generated in *canonical* array order (RAS+: index i towards the patient's Right, j
Anterior, k Superior; world coordinates in mm as NIfTI stores them) and then flipped into one of
several stored orientations, with the NIfTI affine saying which. A reader that reorients by the
affine (``nibabel.as_closest_canonical``) gets the canonical array back; one that trusts array order
gets a flipped patient, as with real CT-RATE files.

Each scan has one :class:`ScanFrame` (field of view, table position, patient placement) shared by its
reconstructions; each reconstruction has its own :class:`VolumeGeometry` (matrix, spacing, orientation).
The body frame (u, v, w) in mm used by the phantom: u towards the patient's right, v anterior, w
superior, origin at the body's centre line at the level of the carina, rotated by the patient's
small roll about the table axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Stored orientations (nibabel axis codes) and how often they are drawn. ('L','P','S') is what a
# DICOM-order array gets (LPS patient axes), the others are common flips seen in converted CT files.
ORIENTATIONS: tuple[tuple[tuple[str, str, str], float], ...] = (
    (("L", "P", "S"), 0.40),
    (("R", "A", "S"), 0.20),
    (("L", "P", "I"), 0.15),
    (("L", "A", "S"), 0.15),
    (("R", "P", "I"), 0.10),
)
_CANONICAL = ("R", "A", "S")


@dataclass(frozen=True)
class ScanFrame:
    """Scan-level placement shared by all reconstructions of a scan (mm, world RAS)."""

    fov: float  # reconstruction diameter (x and y extent)
    z_extent: float  # cranio-caudal coverage
    center: tuple[float, float, float]  # world position of the FOV centre
    body_offset: tuple[float, float]  # body centre line relative to the FOV centre (x, y)
    carina_z: float  # world z of the body frame origin
    roll_deg: float  # patient rotation about the table axis


@dataclass(frozen=True)
class VolumeGeometry:
    """Matrix, spacing and orientation of one stored volume.

    ``shape`` and ``spacing`` are per stored array axis, which are the patient x, y, z axes (only
    flips, no permutations). ``origin`` is the world (RAS mm) position of canonical voxel (0, 0, 0).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    axcodes: tuple[str, str, str]
    origin: tuple[float, float, float]

    @property
    def flips(self) -> tuple[bool, bool, bool]:
        return tuple(c != can for c, can in zip(self.axcodes, _CANONICAL))

    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world (RAS mm) affine of the *stored* array."""
        aff = np.eye(4)
        for ax in range(3):
            n, s, o = self.shape[ax], self.spacing[ax], self.origin[ax]
            if self.flips[ax]:
                aff[ax, ax] = -s
                aff[ax, 3] = o + (n - 1) * s
            else:
                aff[ax, ax] = s
                aff[ax, 3] = o
        return aff

    def to_stored(self, canonical: np.ndarray) -> np.ndarray:
        """Flip a canonical (RAS-ordered) array into this volume's stored orientation."""
        axes = tuple(ax for ax in range(3) if self.flips[ax])
        return np.flip(canonical, axis=axes) if axes else canonical

    def world_axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World coordinates (mm) of canonical voxel centres along x, y, z."""
        return tuple(self.origin[ax] + np.arange(self.shape[ax]) * self.spacing[ax] for ax in range(3))

    def image_position_lps(self) -> tuple[float, float, float]:
        """DICOM ImagePositionPatient of the first slice (top slice, right-anterior corner), LPS mm."""
        x, y, z = self.world_axes()
        return (-float(x.max()), -float(y.max()), float(z.max()))


def sample_frame(rng: np.random.Generator) -> ScanFrame:
    """Field of view of 0.6-0.9 mm x 512 pixels, 260-360 mm coverage, realistic table positions."""
    fov = float(rng.uniform(0.6, 0.9) * 512)
    z_extent = float(rng.uniform(260, 360))
    center = (float(rng.uniform(-12, 12)), float(rng.uniform(-220, 40)), float(rng.uniform(-1300, 80)))
    # coverage starts 140-185 mm above the carina (lung apices at about +120 to +150 mm)
    carina_z = center[2] + z_extent / 2 - float(rng.uniform(140, 185))
    return ScanFrame(
        fov=fov,
        z_extent=z_extent,
        center=center,
        body_offset=(float(rng.uniform(-12, 12)), float(rng.uniform(-15, 15))),
        carina_z=carina_z,
        roll_deg=float(rng.normal(0, 2.0)),
    )


def recon_geometry(
    frame: ScanFrame, shape: tuple[int, int, int], recon: int, rng: np.random.Generator
) -> VolumeGeometry:
    """Geometry of reconstruction ``recon`` (1-based) of a scan.

    Recon 1 has exactly the requested ``shape``; later recons cover the same field of view with a
    different matrix and slice spacing (x/y within 0.8-1.25x, z within 0.67-1.5x), as CT-RATE's
    sharp/soft kernel pairs do. Tiny shapes therefore give coarse voxels with the same anatomy.
    """
    nx, ny, nz = shape
    if recon > 1:
        fxy = float(rng.choice([1.0, 1.0, 0.8, 1.25]))
        fz = float(rng.uniform(0.67, 1.5))
        nx, ny = max(8, round(nx * fxy)), max(8, round(ny * fxy))
        nz = max(8, round(nz * fz))
    sxy = frame.fov / nx
    sz = frame.z_extent / nz
    spacing = (sxy, frame.fov / ny, sz)
    codes = [c for c, _ in ORIENTATIONS]
    p = np.array([w for _, w in ORIENTATIONS])
    axcodes = codes[int(rng.choice(len(codes), p=p / p.sum()))]
    origin = tuple(frame.center[ax] - (n - 1) / 2 * s for ax, (n, s) in enumerate(zip((nx, ny, nz), spacing)))
    return VolumeGeometry((nx, ny, nz), spacing, axcodes, origin)


@dataclass
class BodyGrid:
    """Body-frame coordinates of a canonical voxel grid, for painting anatomy.

    ``u``, ``v`` have shape (nx, ny, 1) and ``w`` shape (1, 1, nz), so expressions broadcast to the
    full (nx, ny, nz) volume. :meth:`box` returns the same for a sub-block around a point, which keeps
    small structures cheap to paint.
    """

    geom: VolumeGeometry
    frame: ScanFrame

    def __post_init__(self) -> None:
        x, y, z = self.geom.world_axes()
        bx = self.frame.center[0] + self.frame.body_offset[0]
        by = self.frame.center[1] + self.frame.body_offset[1]
        th = np.deg2rad(self.frame.roll_deg)
        self._c, self._s = float(np.cos(th)), float(np.sin(th))
        self._b = (bx, by, self.frame.carina_z)
        dx = (x - bx)[:, None].astype(np.float32)
        dy = (y - by)[None, :].astype(np.float32)
        self.u = (self._c * dx + self._s * dy)[:, :, None]
        self.v = (-self._s * dx + self._c * dy)[:, :, None]
        self.w = (z - self.frame.carina_z).astype(np.float32)[None, None, :]
        self.voxel = float(np.mean(self.geom.spacing))
        self.shape = self.geom.shape

    def to_index(self, p: tuple[float, float, float]) -> np.ndarray:
        """Fractional canonical voxel index of body-frame point ``p``."""
        u, v, w = p
        x = self._b[0] + self._c * u - self._s * v
        y = self._b[1] + self._s * u + self._c * v
        z = self._b[2] + w
        return (np.array([x, y, z]) - np.array(self.geom.origin)) / np.array(self.geom.spacing)

    def box(self, center: tuple[float, float, float], radius: float):
        """(slices, u, v, w) of the sub-block within ``radius`` mm (plus a voxel) of ``center``, or None."""
        idx = self.to_index(center)
        half = radius / np.array(self.geom.spacing) + 1.5
        lo = np.maximum(np.floor(idx - half).astype(int), 0)
        hi = np.minimum(np.ceil(idx + half).astype(int) + 1, self.shape)
        if np.any(hi <= lo):
            return None
        sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        return sl, self.u[sl[0], sl[1]], self.v[sl[0], sl[1]], self.w[:, :, sl[2]]
