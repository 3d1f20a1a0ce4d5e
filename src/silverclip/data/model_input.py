"""The one path from a cached volume to the model's input tensor: crop (host), normalise and flip (device).

Loader workers only slice: :func:`crop_starts` picks a crop's corner (uniform with a generator, the
centre without), :func:`crop_array` cuts it from the memory-mapped cache and returns the stored integers
(int16 HU, or uint8 window codes of an 8-bit cache, :func:`quantize_window`). A batch of those goes to the
device as is (half the bytes of float32 through shared memory, pinning and PCIe), where
:func:`normalize_batch` maps it onto the preset's ``output_range`` in float32, applies the per-sample flip
decisions drawn by the dataset, and optionally makes it ``channels_last_3d``.

Training, validation, ``silverclip embed`` and ``predict`` all go through these functions, so the
centre crop and the normalisation exist once. The arithmetic equals :meth:`Preset.normalize` (float32,
``(clip(hu, lo, hi) - lo) * (b - a) / (hi - lo) + a``); tests/test_model_input.py checks it bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from silverclip.data.presets import Preset

__all__ = [
    "UINT8_LEVELS",
    "crop_starts",
    "crop_array",
    "center_crop",
    "draw_flips",
    "normalize_batch",
    "quantize_window",
    "dequantize_window",
    "volume_tensor",
]

#: Largest code of an 8-bit cache: the window's width in 255 steps (paper window [-1000, 200]: 4.7 HU).
UINT8_LEVELS = 255


def crop_starts(shape: Sequence[int], crop: Sequence[int], rng: np.random.Generator | None) -> tuple[int, ...]:
    """Corner of a crop: uniform over valid positions with ``rng``, the centre without."""
    starts = []
    for s, c in zip(shape, crop):
        if c > s:
            raise ValueError(f"crop {tuple(crop)} is larger than the cached volume {tuple(shape)}")
        starts.append(int(rng.integers(0, s - c + 1)) if rng is not None else (s - c) // 2)
    return tuple(starts)


def crop_array(
    volume: np.ndarray, crop: Sequence[int], rng: np.random.Generator | None = None, copy: bool = True
) -> np.ndarray:
    """The crop of ``volume`` (X, Y, Z) in its own dtype (random with ``rng``, else centre): a contiguous copy,
    or with ``copy=False`` the strided view (the loader's collate then copies it once, straight into the batch).

    On a memory-mapped volume this reads only the bytes of the crop.
    """
    x0, y0, z0 = crop_starts(volume.shape, crop, rng)
    cx, cy, cz = (int(c) for c in crop)
    view = volume[x0 : x0 + cx, y0 : y0 + cy, z0 : z0 + cz]
    return np.ascontiguousarray(view) if copy else view


def center_crop(volume: np.ndarray, crop: Sequence[int]) -> np.ndarray:
    """The evaluation view: the centre crop (a crop larger than the volume is an error, as in training)."""
    return crop_array(volume, crop, None)


def draw_flips(rng: np.random.Generator) -> np.ndarray:
    """Per-axis flip decisions (3,) bool, each with probability 1/2, drawn after the crop from the same generator."""
    return np.array([rng.random() < 0.5 for _ in range(3)], dtype=bool)


def quantize_window(hu: np.ndarray, window: Sequence[float], levels: int = UINT8_LEVELS) -> np.ndarray:
    """HU -> uint8 codes ``round((clip(hu) - lo) / (hi - lo) * levels)``: the 8-bit cache's storage."""
    lo, hi = (float(w) for w in window)
    x = (np.clip(np.asarray(hu, dtype=np.float32), lo, hi) - lo) * (levels / (hi - lo))
    return np.rint(x).astype(np.uint8)


def dequantize_window(codes: np.ndarray, window: Sequence[float], levels: int = UINT8_LEVELS) -> np.ndarray:
    """uint8 codes -> HU (float32), the inverse of :func:`quantize_window` up to half a step."""
    lo, hi = (float(w) for w in window)
    return np.asarray(codes, dtype=np.float32) * ((hi - lo) / levels) + lo


def normalize_batch(
    images: torch.Tensor,
    preset: Preset,
    flips: torch.Tensor | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Stored crops ``(B, 1, X, Y, Z)`` (int16 HU or uint8 codes, on any device) -> float32 model input.

    ``flips``: (B, 3) bool, flip axis k of sample b where ``flips[b, k]`` (decisions of the dataset's
    per-sample generator). Runs where ``images`` lies (the GPU in training): nothing here syncs with the host.
    A float tensor is taken to be normalised already and is returned as is (flips still apply).
    """
    a, b = (float(v) for v in preset.output_range)
    if images.dtype == torch.uint8:
        x = images.to(torch.float32) * ((b - a) / UINT8_LEVELS) + a
    elif images.dtype in (torch.int16, torch.int32, torch.int64):
        lo, hi = (float(v) for v in preset.window)
        x = (images.to(torch.float32).clamp_(lo, hi) - lo) * ((b - a) / (hi - lo)) + a
    else:
        x = images.to(torch.float32)
    if flips is not None:
        x = _flip_per_sample(x, flips)
    if channels_last and x.ndim == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def _flip_per_sample(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip spatial axis k (tensor dim k + 2) of sample b where ``flips[b, k]``, without reading ``flips`` on the host.

    Each axis: ``where(flag, flipped, x)``, three elementwise selects over the batch (one pass each);
    no ``.item()``, so a CUDA stream never waits for the host.
    """
    flips = flips.to(device=x.device, dtype=torch.bool)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    for k in range(flips.shape[1]):
        x = torch.where(flips[:, k].reshape(shape), x.flip(k + 2), x)
    return x


def volume_tensor(volume: np.ndarray, preset: Preset, device: str | torch.device = "cpu") -> torch.Tensor:
    """One preprocessed volume (``preset.shape``, int16 HU or uint8) -> its centre crop as model input
    ``(1, 1, X, Y, Z)`` float32 on ``device`` (the crop travels as stored integers, normalised there)."""
    crop = torch.from_numpy(center_crop(np.asarray(volume), preset.crop))[None, None]
    return normalize_batch(crop.to(device), preset)
