"""Saliency maps of a finding, in the scan's own geometry: where the image tower looks when it scores a finding.

The score explained is the finding's zero-shot log-odds, ``logit_scale * <image embedding, pos - neg>``
(``log P(present) - log P(absent)`` of :func:`silverclip.eval.zero_shot.zero_shot_probabilities`), i.e. the image
embedding projected on the finding's prompt-pair direction; for a supervised model (a ResNet with a head) the
finding's logit. The map is, by default (``smoothgrad``), MONAI's SmoothGrad (``monai.visualize.SmoothGrad``: the
gradient of the score with respect to the input voxels, averaged over 16 noisy copies of the input), its absolute
value scaled to [0, 1]; ``gradcam`` gives MONAI's Grad-CAM (``monai.visualize.GradCAM``, the gradient-weighted
activations of one ResNet stage: by default (``auto``) the deepest whose feature map keeps at least 3 voxels along
every axis) upsampled to the input crop. Measured (tests/test_pointing.py: a ResNet that learnt a 3000 HU device,
five phantoms with one device each): the SmoothGrad and plain-gradient peaks lie inside the device 5 times of 5,
Grad-CAM's 0 of 5 at layer1, layer2 or layer3 (its peaks sit at the crop's corners: at 6 mm voxels a stage's
feature map is 4x4x3 or coarser, and the zero padding of the borders dominates its gradient-weighted
activations), hence the default.

:func:`crop_to_volume` then maps the crop back through the preprocessing (centre crop, centre crop/pad,
trilinear resampling of :mod:`silverclip.data.resample`, including its grid anchored at the stored buffer's
first voxel) onto the voxels of the scan as read (canonical RAS), and :func:`to_file_geometry` undoes the
canonical reorientation for a NIfTI input, so the written map has the input file's shape and affine and
overlays in 3D Slicer or ITK-SNAP. For a DICOM series the map has the geometry of the series as read (its
canonical RAS array and affine). Voxels the model never saw (cropped away) are 0.

MONAI is imported here only, i.e. only when a saliency map is asked for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

DEFAULT_LAYER = "auto"
#: saliency methods: ``smoothgrad`` (default, voxel-precise) or ``gradcam`` (one ResNet stage, coarse)
METHODS = ("smoothgrad", "gradcam")
DEFAULT_METHOD = "smoothgrad"
SMOOTHGRAD_SAMPLES = 16
#: ``auto`` picks the deepest ResNet stage whose feature map keeps at least this many voxels along every axis
MIN_CAM_SIZE = 3
STAGES = ("layer4", "layer3", "layer2", "layer1")


class FindingScores(nn.Module):
    """``x (B, 1, X, Y, Z) -> (B, F)`` scores of the findings: the zero-shot log-odds for a CLIP model
    (``directions`` (F, E) = positive minus negative prompt embedding), the head's logits otherwise."""

    def __init__(self, model: nn.Module, directions: torch.Tensor | None = None, scale: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.scale = float(scale)
        self.register_buffer("directions", directions if directions is not None else torch.empty(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.directions.numel():
            return self.scale * self.model.encode_image(x) @ self.directions.T
        return self.model(x)


def _layer_name(module: nn.Module, layer: str) -> str:
    names = [n for n, _ in module.named_modules() if n == layer or n.endswith(f".{layer}")]
    if not names:
        raise ValueError(f"the model has no layer named {layer!r} to compute Grad-CAM on")
    return min(names, key=len)


@torch.no_grad()
def choose_layer(scorer: nn.Module, x: torch.Tensor, min_size: int = MIN_CAM_SIZE) -> str:
    """The deepest of ``layer4 .. layer1`` whose output keeps ``min_size`` voxels along every axis for ``x``."""
    modules = dict(scorer.named_modules())
    names = {s: _layer_name(scorer, s) for s in STAGES if any(n == s or n.endswith(f".{s}") for n in modules)}
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        modules[n].register_forward_hook(lambda _m, _i, out, s=s: shapes.__setitem__(s, tuple(out.shape[2:])))
        for s, n in names.items()
    ]
    try:
        scorer.eval()(x)  # inference mode: a batch of one through BatchNorm
    finally:
        for h in hooks:
            h.remove()
    for s in STAGES:
        if s in shapes and min(shapes[s]) >= min_size:
            return s
    return next((s for s in reversed(STAGES) if s in shapes), STAGES[-1])


def gradcam(scorer: nn.Module, x: torch.Tensor, index: int, layer: str = DEFAULT_LAYER) -> np.ndarray:
    """Grad-CAM of score ``index`` of ``scorer`` for one input ``x`` (1, 1, X, Y, Z) -> (X, Y, Z) in [0, 1].

    ``layer``: a stage name (``layer3``) or ``auto`` (:func:`choose_layer`)."""
    from monai.visualize import GradCAM

    scorer.eval()  # MONAI restores the module's own training flag afterwards: keep it (and every layer) at eval
    if layer == "auto":
        layer = choose_layer(scorer, x)
    cam = GradCAM(nn_module=scorer, target_layers=_layer_name(scorer, layer))
    with torch.enable_grad():
        out = cam(x, class_idx=index)
    return out[0, 0].detach().float().cpu().numpy()


def smoothgrad(scorer: nn.Module, x: torch.Tensor, index: int, n_samples: int = SMOOTHGRAD_SAMPLES) -> np.ndarray:
    """MONAI's SmoothGrad of score ``index`` for one input ``x`` (1, 1, X, Y, Z) -> |gradient| (X, Y, Z) in [0, 1]."""
    from monai.visualize import SmoothGrad

    scorer.eval()
    with torch.enable_grad():
        g = SmoothGrad(scorer, n_samples=n_samples, stdev_spread=0.1, verbose=False)(x, index=index)
    g = np.abs(g[0, 0].detach().float().cpu().numpy())
    top = float(g.max())
    return g / top if top > 0 else g


def saliency(
    scorer: nn.Module, x: torch.Tensor, index: int, method: str = DEFAULT_METHOD, layer: str = DEFAULT_LAYER
) -> np.ndarray:
    """The saliency map (X, Y, Z) in [0, 1] of score ``index`` for ``x`` by ``method`` (:data:`METHODS`)."""
    if method == "smoothgrad":
        return smoothgrad(scorer, x, index)
    if method == "gradcam":
        return gradcam(scorer, x, index, layer)
    raise ValueError(f"unknown saliency method {method!r}; choose one of {', '.join(METHODS)}")


# ------------------------------------------------------------------------------------- back to the scan
def _axis_weights(n_in: int, s_in: float, s_out: float, flipped: bool, n_shape: int, n_crop: int) -> np.ndarray:
    """(n_in, n_crop) linear-interpolation weights from the model's crop back to the input voxels of one axis."""
    from silverclip.data.resample import output_shape

    n_out = output_shape((n_in,), (s_in,), (s_out,))[0]
    idx = np.arange(n_in, dtype=np.float64)
    stored = n_in - 1 - idx if flipped else idx
    o = (stored + 0.5) * (s_in / s_out) - 0.5  # inverse of resample()'s (o + 0.5) * out / in - 0.5
    if flipped:
        o = n_out - 1 - o
    # centre_crop_pad(n_out -> n_shape), then center_crop(n_shape -> n_crop)
    offset = (n_out - n_shape) // 2 if n_out >= n_shape else -((n_shape - n_out) // 2)
    offset += max((n_shape - n_crop) // 2, 0)
    q = o - offset
    w = np.zeros((n_in, n_crop), np.float32)
    inside = (q >= -0.5) & (q <= n_crop - 0.5)
    qc = np.clip(q, 0, n_crop - 1)
    i0 = np.floor(qc).astype(int)
    i1 = np.minimum(i0 + 1, n_crop - 1)
    f = (qc - i0).astype(np.float32)
    rows = np.nonzero(inside)[0]
    np.add.at(w, (rows, i0[rows]), 1 - f[rows])
    np.add.at(w, (rows, i1[rows]), f[rows])
    return w


def crop_to_volume(cam: np.ndarray, volume: Any, preset: Any) -> np.ndarray:
    """A map on the model's input crop -> float32 map on ``volume.array``'s voxels (canonical, ``volume.shape``).

    Separable: per axis, the trilinear weights that place each input voxel in the resampled, cropped grid.
    """
    arr = volume.array
    out = np.asarray(cam, np.float32)
    for ax in range(3):
        w = _axis_weights(
            arr.shape[ax],
            float(volume.spacing[ax]),
            float(preset.spacing[ax]),
            arr.strides[ax] < 0,
            int(preset.shape[ax]),
            int(min(preset.crop[ax], preset.shape[ax])),
        )
        out = np.moveaxis(np.tensordot(w, out, axes=([1], [ax])), 0, ax)
    return np.ascontiguousarray(out, dtype=np.float32)


def to_file_geometry(canonical: np.ndarray, volume: Any) -> tuple[np.ndarray, np.ndarray]:
    """(array, affine) of a canonical map in the input's own geometry: for a NIfTI input the file's voxel
    order and header affine (the inverse of the reader's reorientation); otherwise the volume as read."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation, ornt_transform

    if (volume.meta or {}).get("format") != "nifti":
        return canonical, np.asarray(volume.affine, np.float64)
    header = nib.load(volume.source).header
    affine = header.get_best_affine().astype(np.float64)
    ras = io_orientation(np.eye(4))
    stored = apply_orientation(canonical, ornt_transform(ras, io_orientation(affine)))
    return np.ascontiguousarray(stored), affine


# ------------------------------------------------------------------------------------- files
def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "finding"


def scan_stem(path: str | Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".npz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    from silverclip.io import atomic_write_bytes

    img = nib.Nifti1Image(np.asarray(array, np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"silverclip saliency map"
    import gzip

    atomic_write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=4, mtime=0))
    return path


def orthogonal_slices(array: np.ndarray, center: Sequence[int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of a canonical (RAS, x y z) array through ``center``, oriented for
    display (anterior up in axial, superior up in coronal/sagittal; patient's right on the viewer's left)."""
    x, y, z = (int(c) for c in center)
    axial = np.flipud(array[:, :, z].T)[:, ::-1]
    coronal = np.flipud(array[:, y, :].T)[:, ::-1]
    sagittal = np.flipud(array[x, :, :].T)
    return [axial, coronal, sagittal]


def plot_montage(
    path: Path,
    hu: np.ndarray,
    spacing: Sequence[float],
    maps: dict[str, np.ndarray],
    titles: dict[str, str],
    window: tuple[float, float] = (-1000.0, 600.0),
) -> Path:
    """PNG: one row per finding, three orthogonal slices through the map's peak, the map over the CT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from silverclip.io import atomic_open

    sx, sy, sz = (float(s) for s in spacing)
    aspects = [sy / sx, sz / sx, sz / sy]
    rows = max(1, len(maps))
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3.1 * rows), squeeze=False)
    for r, (name, m) in enumerate(maps.items() or [("", np.zeros_like(hu, np.float32))]):
        peak = np.unravel_index(int(np.argmax(m)), m.shape)
        for c, (img, ov, asp, label) in enumerate(
            zip(orthogonal_slices(hu, peak), orthogonal_slices(m, peak), aspects, ("axial", "coronal", "sagittal"))
        ):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=window[0], vmax=window[1], aspect=asp, interpolation="nearest")
            ax.imshow(np.ma.masked_less(ov, 0.2), cmap="jet", alpha=0.45, vmin=0, vmax=1, aspect=asp)
            ax.set_title(f"{titles.get(name, name)}\n{label}" if c == 0 else label, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)
    return path


def saliency_maps(
    predictor: Any,
    volume: Any,
    findings: Sequence[str] | None = None,
    layer: str = DEFAULT_LAYER,
    method: str = DEFAULT_METHOD,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``(P(present) per finding, {finding: map on volume.array's canonical voxels})`` for a read Volume.

    findings: names to explain (CT-RATE findings or free text); default: those predicted present at the
    checkpoint's thresholds (P >= 0.5 for a checkpoint without thresholds).
    """
    from silverclip.data.preprocess import preprocess_volume
    from silverclip.eval.embeddings import model_input

    hu = preprocess_volume(volume, predictor.preset)
    extra = [f for f in (findings or []) if f not in predictor.findings]
    probs = predictor.predict(hu, extra)
    if findings is None:
        decided = predictor.decide(probs)
        findings = [f for f in predictor.findings if decided[f] or (decided[f] is None and probs[f] >= 0.5)]
    names, cls = predictor._classifier_for(extra)
    directions = (cls[:, 0] - cls[:, 1]).to(predictor.device)
    scorer = FindingScores(predictor.model, directions, predictor.logit_scale).eval()
    x = model_input(hu, predictor.preset).to(predictor.device)
    maps = {
        f: crop_to_volume(saliency(scorer, x, names.index(f), method, layer), volume, predictor.preset)
        for f in findings
    }
    return probs, maps


def explain_scan(
    predictor: Any,
    scan: str | Path,
    out_dir: str | Path,
    findings: Sequence[str] | None = None,
    layer: str = DEFAULT_LAYER,
    method: str = DEFAULT_METHOD,
) -> dict[str, Any]:
    """Saliency of a CLIP :class:`~silverclip.inference.Predictor` for one scan; writes into ``out_dir``
    ``<scan>_<finding>.nii.gz`` per finding (input geometry) and ``<scan>_saliency.png`` (montage).

    findings: as in :func:`saliency_maps`.
    Returns ``{"probabilities", "findings", "maps": {finding: path}, "montage": path, "peaks": {finding: ijk}}``.
    """
    from silverclip.data.readers import load_volume

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    volume = load_volume(scan)
    probs, canon_maps = saliency_maps(predictor, volume, findings, layer, method)
    stem = scan_stem(scan)
    result: dict[str, Any] = {"probabilities": probs, "findings": list(canon_maps), "maps": {}, "peaks": {}}
    for f, canon in canon_maps.items():
        arr, affine = to_file_geometry(canon, volume)
        path = write_nifti(out_dir / f"{stem}_{slug(f)}.nii.gz", arr, affine)
        result["maps"][f] = str(path)
        result["peaks"][f] = [int(i) for i in np.unravel_index(int(np.argmax(arr)), arr.shape)]
    titles = {f: f"{f}  P={probs[f]:.2f}" for f in canon_maps}
    hu_canon = np.asarray(volume.array, np.float32)
    result["montage"] = str(
        plot_montage(out_dir / f"{stem}_saliency.png", hu_canon, volume.spacing, canon_maps, titles)
    )
    return result
