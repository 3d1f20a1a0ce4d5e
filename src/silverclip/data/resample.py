"""Trilinear resampling of an int16 volume to a target spacing, plus centre crop/pad.

Why hand-written instead of MONAI ``Spacing`` (3.18x the bare read in DESIGN.md) or a plain
``F.interpolate(vol.float(), mode="trilinear")`` (converts the whole volume to float32 first): trilinear
interpolation is separable, so along the slowest memory axis we only gather the two source slices
each output slice needs (int16, zero-copy views of the file buffer) and blend them in float32; the
remaining two axes go through torch's bilinear ``F.interpolate``. The result is the same as torch's
trilinear with ``align_corners=False`` and an exact ``scale_factor`` (tested), at a fraction of the
memory traffic. Canonical-orientation flips/transposes are undone before and re-applied after, on
the small output, so no full-size copy is ever made.

Output voxel ``o`` along an axis samples input coordinate ``(o + 0.5) * out_spacing / in_spacing - 0.5``
(voxel centres; the first output voxel is centred half an output voxel into the volume, as in torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def output_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """Size after resampling: ``floor(n * (spacing / target))`` per axis (at least 1), exactly as torch computes it."""
    return tuple(max(1, int(np.floor(n * (float(s) / float(t))))) for n, s, t in zip(shape, spacing, target))


def _source_index(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's linear source indices for outputs 0..n_out-1: (i0, i1, weight of i1)."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) / scale - 0.5
    src = np.maximum(src, 0.0)
    snapped = np.round(src)
    src = np.where(np.abs(src - snapped) < 1e-6, snapped, src)  # 1 mm -> 3 mm hits whole slices: no blend
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w = (src - i0).astype(np.float32)
    w[i1 == i0] = 0.0
    return i0, i1, w


def resample(array: np.ndarray, spacing: Sequence[float], target: Sequence[float]) -> torch.Tensor:
    """Trilinear resample of a 3D array (any dtype, any numpy view) from ``spacing`` to ``target`` (mm, per axis).

    Returns a float32 tensor of shape ``output_shape(array.shape, spacing, target)`` in the same axis
    order as ``array``. The sampling grid is anchored at the first voxel of the *stored* buffer (the
    file's own voxel order, as if the file were resampled before being reoriented): the result equals
    ``F.interpolate(stored, scale_factor=spacing/target, mode="trilinear", align_corners=False,
    recompute_scale_factor=False)`` followed by the view's flips/transposes. Relative to resampling the
    reoriented copy this shifts the grid by less than one output voxel along flipped axes, and it avoids
    flipping a full-size volume (0.07 s per CT here).
    """
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array, got shape {array.shape}")
    spacing = np.asarray(spacing, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    # Undo view flips (negative strides) and axis permutations so the data is a C-ordered buffer.
    flips = tuple(ax for ax in range(3) if array.strides[ax] < 0)
    base = np.flip(array, flips) if flips else array
    perm = [int(a) for a in np.argsort([-abs(s) for s in base.strides], kind="stable")]
    base = base.transpose(perm)
    if not base.flags.c_contiguous:
        base = np.ascontiguousarray(base)
    scale = spacing[perm] / target[perm]
    n_out = output_shape(base.shape, spacing[perm], target[perm])

    # Slowest axis, on the int16 buffer: only the source slices that are needed are read and converted.
    i0, i1, w = _source_index(base.shape[0], n_out[0], float(scale[0]))
    out = torch.from_numpy(base[i0]).to(torch.float32)
    if np.any(w > 0):
        out.lerp_(torch.from_numpy(base[i1]).to(torch.float32), torch.from_numpy(w).view(-1, 1, 1))
    # The two fast axes: torch's bilinear with the exact scale (the slices act as channels).
    if tuple(n_out[1:]) != tuple(base.shape[1:]) or not np.allclose(scale[1:], 1.0):
        out = F.interpolate(
            out[None],
            scale_factor=(float(scale[1]), float(scale[2])),
            mode="bilinear",
            align_corners=False,
            recompute_scale_factor=False,
        )[0]
    out = out.permute(*np.argsort(perm).tolist())
    return torch.flip(out, flips) if flips else out


def center_crop_pad(array: np.ndarray, shape: Sequence[int], pad_value: float) -> np.ndarray:
    """Centre-crop or pad (with ``pad_value``) each axis of ``array`` to ``shape``; odd remainders go to the end."""
    out = np.full(tuple(shape), pad_value, dtype=array.dtype)
    src, dst = [], []
    for n, t in zip(array.shape, shape):
        if n >= t:
            a = (n - t) // 2
            src.append(slice(a, a + t))
            dst.append(slice(0, t))
        else:
            a = (t - n) // 2
            src.append(slice(0, n))
            dst.append(slice(a, a + n))
    out[tuple(dst)] = array[tuple(src)]
    return out
