"""3D ResNet image encoders for CT volumes, built on MONAI's ``ResNet``.

Input ``(B, 1, X, Y, Z)`` float32 in the preset's output range (axes as in docs/architecture.md).
The first layer downsamples (7x7x7 convolution with stride 2, then a stride-2 max pool) as in
MedicalNet and Kinetics ResNets: MONAI's default first stride of 1 costs ~10x the compute and
memory at 96x192x192 for no published gain.

Every encoder exposes ``forward_features`` (globally average-pooled features, ``(B, num_features)``)
and ``forward_head`` (linear classifier, ``(B, num_classes)``; ``num_classes=0`` is an identity head)
separately, so the supervised model is the CLIP image tower without surgery.

Parameter count of ``resnet18_3d`` (1 input channel, 7x7x7 stem, 1x1x1 bias-free projection
shortcuts as in He et al.'s option B): 33,160,000 without the head, i.e. MedicalNet's ResNet-18
body; with ``in_channels=3, conv1_t_size=(7, 7, 3), num_classes=400`` it is 33,371,472, the count
torchvision publishes for ``r3d_18`` (checked in tests/test_models.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from monai.networks.nets import ResNet
from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck

from silverclip.findings import FINDINGS
from silverclip.models.registry import register_model

__all__ = ["ResNet3d", "resnet10_3d", "resnet18_3d", "resnet34_3d", "resnet50_3d"]


class ResNet3d(ResNet):
    """MONAI ``ResNet`` with a downsampling stem and separate feature/head calls.

    Subclassing (rather than wrapping) keeps the state-dict keys MONAI/MedicalNet-shaped
    (``conv1.weight``, ``layer1.0.conv1.weight``, ..., ``fc.weight``), which makes external weights
    map one-to-one.
    """

    def __init__(
        self,
        block: type[ResNetBlock | ResNetBottleneck] | str,
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
        super().__init__(
            block=block,
            layers=layers,
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            shortcut_type=shortcut_type,
            widen_factor=widen_factor,
            feed_forward=False,
            # A standard ResNet's projection shortcut has no bias (BN follows it).
            bias_downsample=False,
            norm=norm,
        )
        self.num_features: int = self.in_planes  # channels after layer4 (512, or 2048 for bottlenecks)
        self.num_classes = num_classes
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc: nn.Module = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _downsample_basic_block(self, x: torch.Tensor, planes: int, stride: int, spatial_dims: int = 3) -> torch.Tensor:
        # Shortcut "A" (MedicalNet-18/34): strided identity padded with zero channels. MONAI's version
        # concatenates ``out.data``, which cuts the gradient through every downsampling shortcut.
        out = x[:, :, ::stride, ::stride, ::stride]
        pad = out.new_zeros(out.shape[0], planes - out.shape[1], *out.shape[2:])
        return torch.cat([out, pad], dim=1)

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
