"""3D ResNet image encoders for CT volumes, self-written in the shape of torchvision's video ResNets.

Input ``(B, 1, X, Y, Z)`` float32 in the preset's output range (axes as in docs/architecture.md).
The first layer downsamples (7x7x7 convolution with stride 2, then a stride-2 max pool) as in
MedicalNet and Kinetics ResNets.

Every encoder exposes ``forward_features`` (globally average-pooled features, ``(B, num_features)``)
and ``forward_head`` (linear classifier, ``(B, num_classes)``; ``num_classes=0`` is an identity head)
separately, so the supervised model is the CLIP image tower without surgery.

State-dict keys are MedicalNet/MONAI-shaped (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
``layer2.0.downsample.0.weight``, ..., ``fc.weight``) and identical, key by key and shape by shape, to
the MONAI ``ResNet`` subclass this module used to be (checked against MONAI in tests/test_models.py), so
checkpoints and external weights (:mod:`silverclip.models.external_weights`) load unchanged. It is written
here rather than imported because importing MONAI costs seconds on every ``silverclip predict`` start
(benchmarks/cold_start.py) for ~100 lines of network.

``norm`` ("batch", "instance", "group", or ``(name, kwargs)`` such as ``("group", {"num_groups": 8})``)
applies to every normalisation layer (MONAI 1.6 applied it to the stem only and failed on "instance").
Instance norm is affine (a scale and shift per channel, no running statistics); group norm uses 32
groups unless ``num_groups`` is given (fewer when a layer has fewer channels).

Parameter count of ``resnet18_3d`` (1 input channel, 7x7x7 stem, 1x1x1 bias-free projection
shortcuts as in He et al.'s option B): 33,160,000 without the head, i.e. MedicalNet's ResNet-18
body; with ``in_channels=3, conv1_t_size=(7, 7, 3), num_classes=400`` it is 33,371,472, the count
torchvision publishes for ``r3d_18`` (checked in tests/test_models.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from silverclip.findings import FINDINGS
from silverclip.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNet3d", "resnet10_3d", "resnet18_3d", "resnet34_3d", "resnet50_3d"]

NORMS = ("batch", "instance", "group")


def _triple(v: int | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected an int or 3 values, got {v!r}")
    return t  # type: ignore[return-value]


def make_norm(norm: str | tuple | list, channels: int) -> nn.Module:
    """A 3D normalisation layer over ``channels`` from ``"batch" | "instance" | "group"`` or ``(name, kwargs)``."""
    name, kw = (norm, {}) if isinstance(norm, str) else (norm[0], dict(norm[1]) if len(norm) > 1 else {})
    name = str(name).lower()
    if name == "batch":
        return nn.BatchNorm3d(channels, **kw)
    if name == "instance":
        return nn.InstanceNorm3d(channels, **{"affine": True, **kw})
    if name == "group":
        groups = int(kw.pop("num_groups", 32))
        while channels % groups:  # the largest divisor of channels not above the request
            groups -= 1
        return nn.GroupNorm(groups, channels, **kw)
    raise ValueError(f"unknown norm {norm!r}; use one of {NORMS} or (name, kwargs)")


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with a residual connection (ResNet-10/18/34)."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, norm: Any = "batch"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class Bottleneck(nn.Module):
    """1x1x1 reduce, 3x3x3 (strided), 1x1x1 expand (x4), with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, norm: Any = "batch"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = nn.Conv3d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = make_norm(norm, planes * self.expansion)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class ZeroPadShortcut(nn.Module):
    """Shortcut "A" (MedicalNet-18/34): a strided identity padded with zero channels; no parameters."""

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        out = x[:, :, ::s, ::s, ::s]
        pad = out.new_zeros(out.shape[0], self.planes - out.shape[1], *out.shape[2:])
        return torch.cat([out, pad], dim=1)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet3d(nn.Module):
    """3D ResNet with a downsampling stem and separate feature/head calls.

    Args:
        block: ``"basic"`` / ``"bottleneck"`` (or the class).
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]``.
        num_classes: head outputs; ``0`` is an identity head.
        in_channels: input channels (1 for CT).
        conv1_t_size, conv1_t_stride: stem kernel and stride (int or 3 values; padding is ``k // 2``).
        no_max_pool: skip the stride-2 max pool after the stem.
        shortcut_type: ``"B"`` 1x1x1 bias-free projection + norm, ``"A"`` zero-padded identity.
        widen_factor: channel multiplier (64, 128, 256, 512 times this).
        drop_rate: dropout before the head.
        norm: see the module docstring.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck] | str,
        layers: list[int],
        *,
        num_classes: int = len(FINDINGS),
        in_channels: int = 1,
        conv1_t_size: int | tuple[int, int, int] = 7,
        conv1_t_stride: int | tuple[int, int, int] = 2,
        no_max_pool: bool = False,
        shortcut_type: str = "B",
        widen_factor: float = 1.0,
        drop_rate: float = 0.0,
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        if isinstance(block, str):
            if block not in _BLOCKS:
                raise ValueError(f"unknown block {block!r}; use basic or bottleneck")
            block = _BLOCKS[block]
        if shortcut_type not in ("A", "B"):
            raise ValueError(f"unknown shortcut_type {shortcut_type!r}; use A or B")
        planes = [int(c * widen_factor) for c in (64, 128, 256, 512)]
        kernel, stride = _triple(conv1_t_size), _triple(conv1_t_stride)
        self.no_max_pool = no_max_pool
        self.in_planes = planes[0]
        self.conv1 = nn.Conv3d(
            in_channels, planes[0], kernel_size=kernel, stride=stride, padding=tuple(k // 2 for k in kernel), bias=False
        )
        self.bn1 = make_norm(norm, planes[0])
        self.act = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0], 1, shortcut_type, norm)
        self.layer2 = self._make_layer(block, planes[1], layers[1], 2, shortcut_type, norm)
        self.layer3 = self._make_layer(block, planes[2], layers[2], 2, shortcut_type, norm)
        self.layer4 = self._make_layer(block, planes[3], layers[3], 2, shortcut_type, norm)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.num_features: int = self.in_planes  # channels after layer4 (512, or 2048 for bottlenecks)
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():  # He initialisation of the convolutions, unit norms, zero head bias
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm3d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int, shortcut: str, norm: Any
    ) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self.in_planes != out_planes:
            if shortcut == "A":
                downsample = ZeroPadShortcut(out_planes, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(self.in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                    make_norm(norm, out_planes),
                )
        layers = [block(self.in_planes, planes, stride=stride, downsample=downsample, norm=norm)]
        self.in_planes = out_planes
        layers += [block(out_planes, planes, norm=norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, X, Y, Z)`` -> pooled features ``(B, num_features)``."""
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # flatten (not view): works for channels_last_3d tensors too.
        return torch.flatten(self.avgpool(x), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, num_features)`` -> logits ``(B, num_classes)`` (the features themselves if ``num_classes=0``)."""
        return self.fc(self.drop(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (e.g. a new label set); ``0`` removes it."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def _build(block: str, layers: list[int], weights: str | None, weights_source: str, **kw: Any) -> ResNet3d:
    model = ResNet3d(block, layers, **kw)
    if weights:
        from silverclip.models.external_weights import load_external_weights

        load_external_weights(model, weights, source=weights_source)
    return model


@register_model
def resnet10_3d(weights: str | None = None, weights_source: str = "auto", **kw: Any) -> ResNet3d:
    """3D ResNet-10 (basic blocks [1, 1, 1, 1]), 512 features."""
    return _build("basic", [1, 1, 1, 1], weights, weights_source, **kw)


@register_model
def resnet18_3d(weights: str | None = None, weights_source: str = "auto", **kw: Any) -> ResNet3d:
    """3D ResNet-18 (basic blocks [2, 2, 2, 2]), 512 features; the paper's image encoder.

    ``weights``: optional path to external weights (MedicalNet / torchvision r3d_18 / ours), loaded
    with :func:`silverclip.models.external_weights.load_external_weights` and reported.
    """
    return _build("basic", [2, 2, 2, 2], weights, weights_source, **kw)


@register_model
def resnet34_3d(weights: str | None = None, weights_source: str = "auto", **kw: Any) -> ResNet3d:
    """3D ResNet-34 (basic blocks [3, 4, 6, 3]), 512 features."""
    return _build("basic", [3, 4, 6, 3], weights, weights_source, **kw)


@register_model
def resnet50_3d(weights: str | None = None, weights_source: str = "auto", **kw: Any) -> ResNet3d:
    """3D ResNet-50 (bottleneck blocks [3, 4, 6, 3]), 2048 features."""
    return _build("bottleneck", [3, 4, 6, 3], weights, weights_source, **kw)
