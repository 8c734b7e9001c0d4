"""The small MobileNet trained from scratch (``type: "mobilenet-small"``): torchvision's ``MobileNetV2`` scaled down,
followed by a Siamese/triplet embedding head.

The trunk is ``torchvision.models.MobileNetV2(inverted_residual_setting=SETTINGS, width_mult=0.5).features`` with its
last 1x1 convolution narrowed to :data:`FEATURE_DIM` (torchvision fixes that layer at >= 1280 channels), then global
average pooling: 388,576 parameters. Models saved before the trunk came from torchvision name their blocks
``features.<i>.block.*`` where torchvision says ``features.<i>.conv.*``; :func:`remap_state` renames them on load.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from lens.encoders.trained.heads import mlp

#: Input normalisation of the 96 / 32 px inputs.
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
#: (expansion t, output channels c, repeats n, first stride s) at ``width_mult`` 0.5: MobileNetV2's table scaled down
#: to 16-24-40-64-96-128 channels after a 16-channel stem.
SETTINGS = ((1, 32, 1, 1), (4, 48, 2, 2), (4, 80, 2, 2), (4, 128, 3, 2), (4, 192, 2, 1), (4, 256, 1, 2))
WIDTH_MULT = 0.5
FEATURE_DIM = 384
_OLD_BLOCK_KEY = re.compile(r"(^|\.)features\.(\d+)\.block\.")


class SmallMobileNet(nn.Module):
    """Images ``(N, 3, S, S)`` -> pooled ``(N, FEATURE_DIM)`` features."""

    def __init__(self, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        from torchvision.models import MobileNetV2
        from torchvision.ops.misc import Conv2dNormActivation

        # torchvision re-initialises with kaiming_normal_; the recorded runs (docs/training.md) used PyTorch's default
        # init, drawn in module order from the caller's seed. Build, then redraw that init from the same RNG state,
        # so the same seed still trains the same model.
        rng = torch.random.get_rng_state()
        features = MobileNetV2(inverted_residual_setting=[list(s) for s in SETTINGS], width_mult=WIDTH_MULT).features
        last = features[-2].out_channels
        features[-1] = Conv2dNormActivation(last, feature_dim, 1, activation_layer=nn.ReLU6)
        torch.random.set_rng_state(rng)
        for module in features.modules():
            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
                module.reset_parameters()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def make_head(dim: int, in_dim: int = FEATURE_DIM) -> nn.Module:
    """The Siamese/triplet head: Linear-ReLU-Linear, ``in_dim`` -> ``in_dim`` -> ``dim``."""
    return mlp(in_dim, in_dim, dim)


class EmbeddingModel(nn.Module):
    """The encoder: shared backbone + Siamese/triplet head."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(arch: dict[str, Any]) -> EmbeddingModel:
    """``arch``: ``{"type": "mobilenet-small", "embedding_dim", "feature_dim"}``."""
    feature_dim = int(arch.get("feature_dim", FEATURE_DIM))
    return EmbeddingModel(SmallMobileNet(feature_dim), make_head(int(arch["embedding_dim"]), feature_dim))


def remap_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a model saved with the hand-written trunk (``features.<i>.block.``) -> torchvision's (``.conv.``)."""
    return {_OLD_BLOCK_KEY.sub(r"\1features.\2.conv.", key): value for key, value in state.items()}
