"""Load 3D ResNet weights a user may already have into our :class:`~silverclip.models.resnet3d.ResNet3d`.

Sources (``source=``):

- ``"medicalnet"``: Tencent MedicalNet ``resnet_18.pth`` etc. (``{"state_dict": {"module.conv1.weight", ...}}``).
  Keys map one-to-one after dropping ``module.``; the segmentation head ``conv_seg.*`` is unexpected.
  MedicalNet's ResNet-18/34 use zero-padding shortcuts (option A): build the model with
  ``shortcut_type="A"`` to use every weight, otherwise the projection shortcuts stay randomly
  initialised and are listed as missing. MedicalNet runs layer3/4 dilated with stride 1; the
  weights have the same shapes here but see a different receptive field, so fine-tune.
  Axes: MedicalNet feeds nibabel arrays as they are, i.e. (x, y, z) like us, so kernels are not permuted.
- ``"torchvision_r3d"``: torchvision ``r3d_18`` (``stem.0.weight``, ``layer1.0.conv1.0.weight``, ...).
  Video tensors are (T, H, W); we map T to our z axis and H, W to x, y, permuting every kernel
  ``(O, I, t, h, w) -> (O, I, h, w, t)``. The 3-channel RGB stem is averaged to our 1 channel. Its
  3x7x7 stem fits a model built with ``conv1_t_size=(7, 7, 3)``; the default 7x7x7 stem reports a
  shape mismatch and keeps its initialisation. The Kinetics ``fc`` (400 classes) is skipped by shape.
- ``"silverclip"``: our own key layout (e.g. a ``model.safetensors`` of a checkpoint; a CLIP
  checkpoint's ``image_tower.`` prefix is stripped).
- ``"auto"``: detected from the keys.

Files are read with ``safetensors`` or ``torch.load(weights_only=True)``: nothing is unpickled.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
import torch.nn as nn

SOURCES = ("auto", "medicalnet", "torchvision_r3d", "silverclip")


@dataclass
class LoadReport:
    """What happened to every key. ``loaded`` + ``missing`` + ``mismatched`` cover the model's keys."""

    source: str
    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys with no source value (kept as initialised)
    unexpected: list[str] = field(default_factory=list)  # source keys with no model key (ignored)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, source, model
    adapted: list[str] = field(default_factory=list)  # loaded after a transformation (channel mean, permutation)

    def summary(self) -> str:
        lines = [
            f"external weights {self.path} (source: {self.source}): {len(self.loaded)} tensors loaded, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched"
        ]
        for key in self.adapted:
            lines.append(f"  adapted:    {key}")
        for key in self.missing:
            lines.append(f"  missing:    {key} (kept as initialised)")
        for key in self.unexpected:
            lines.append(f"  unexpected: {key} (ignored)")
        for key, src, dst in self.mismatched:
            lines.append(f"  mismatch:   {key}: source {list(src)} vs model {list(dst)} (kept as initialised)")
        return "\n".join(lines)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pt/.pth`` file (unwrapping ``state_dict``/``model`` entries)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name and the reason
        raise ValueError(f"{path}: cannot be read as a weights-only torch file ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def detect_source(state: dict[str, torch.Tensor]) -> str:
    keys = list(state)
    if any(k.startswith("stem.") for k in keys) or any(re.search(r"\.conv1\.0\.weight$", k) for k in keys):
        return "torchvision_r3d"
    if any(k.startswith("module.") or k.startswith("conv_seg.") for k in keys):
        return "medicalnet"
    if any(k == "conv1.weight" or k.endswith(".conv1.weight") for k in keys):
        return "silverclip"
    raise ValueError(f"cannot tell the layout of these weights (first keys: {keys[:5]}); pass source=")


def _convert_medicalnet(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    return {_strip(k, "module."): (k, v) for k, v in state.items()}


def _convert_silverclip(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    out = {}
    for k, v in state.items():
        if k.startswith("image_tower."):
            out[k[len("image_tower.") :]] = (k, v)
        elif "." in k and k.split(".")[0] in ("text_tower", "image_proj", "text_proj"):
            continue
        elif k != "logit_scale":
            out[_strip(k, "module.")] = (k, v)
    return out


def _convert_torchvision(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """torchvision VideoResNet keys -> ours. ``stem.0``/``stem.1`` are conv1/bn1; inside a block
    ``conv1.0``/``conv1.1`` are conv1/bn1 and ``conv2.0``/``conv2.1`` are conv2/bn2."""
    out = {}
    for k, v in state.items():
        new = k
        new = re.sub(r"^stem\.0\.", "conv1.", new)
        new = re.sub(r"^stem\.1\.", "bn1.", new)
        new = re.sub(r"\.conv([12])\.0\.", r".conv\1.", new)
        new = re.sub(r"\.conv([12])\.1\.", r".bn\1.", new)
        if v.ndim == 5:
            v = v.permute(0, 1, 3, 4, 2)  # (O, I, t, h, w) -> (O, I, h, w, t): time axis becomes our z
        out[new] = (k, v)
    return out


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


_CONVERTERS = {
    "medicalnet": _convert_medicalnet,
    "torchvision_r3d": _convert_torchvision,
    "silverclip": _convert_silverclip,
}


def load_external_weights(
    model: nn.Module,
    path: str | Path,
    source: str = "auto",
    *,
    verbose: bool = True,
    stream: IO | None = None,
) -> LoadReport:
    """Copy matching tensors of ``path`` into ``model`` (a ResNet3d) in place and report the rest.

    Tensors whose shape does not match are skipped (the head of another label set, a different stem),
    except a first convolution with a different number of input channels, which is averaged over the
    source channels and tiled to the model's (RGB -> 1 channel). Returns a :class:`LoadReport`, also
    printed (to ``stream``, default stderr) when ``verbose``.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}; use one of {SOURCES}")
    state = read_state_dict(path)
    if source == "auto":
        source = detect_source(state)
    converted = _CONVERTERS[source](state)
    target = model.state_dict()
    report = LoadReport(source=source, path=str(path))
    new_state = {}
    for key, (orig, value) in converted.items():
        if key not in target:
            report.unexpected.append(orig)
            continue
        want = target[key]
        if key == "conv1.weight" and value.ndim == 5 and value.shape[1] != want.shape[1]:
            value = value.float().mean(dim=1, keepdim=True).repeat(1, want.shape[1], 1, 1, 1)
            report.adapted.append(f"{orig} -> {key}: mean over {state[orig].shape[1]} input channels")
        if tuple(value.shape) != tuple(want.shape):
            report.mismatched.append((orig, tuple(value.shape), tuple(want.shape)))
            continue
        if source == "torchvision_r3d" and value.ndim == 5:
            report.adapted.append(f"{orig} -> {key}: kernel axes (t, h, w) -> (h, w, t)")
        new_state[key] = value.to(dtype=want.dtype)
        report.loaded.append(key)
    # Model keys whose source tensor had the wrong shape are reported as mismatched, not missing.
    mismatched_targets = {k for k, (orig, _) in converted.items() if orig in {m[0] for m in report.mismatched}}
    report.missing = [k for k in target if k not in new_state and k not in mismatched_targets]
    model.load_state_dict(new_state, strict=False)
    if verbose:
        print(report.summary(), file=stream or sys.stderr)
    return report
