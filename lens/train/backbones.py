"""Pretrained backbones cut in two: a frozen ``stem`` and a trainable ``top`` (last blocks + global average pool).

The stem's output is computed once per catalog and cached (:mod:`lens.train.data`), so a fine-tuning step only runs
the top blocks: that is what makes fine-tuning a 224-px CNN take minutes on two CPU cores. The same constructors with
``pretrained=False`` rebuild the architecture for loading a trained model (whose file holds every weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lens.encoders.base import Preprocess
from lens.errors import LensError

BACKBONES = ("mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2", "tiny")


@dataclass
class SplitBackbone:
    """``top(stem(x))`` = the backbone's pooled ``(N, dim)`` features."""

    name: str
    stem: nn.Module
    top: nn.Module
    dim: int
    preprocess: Preprocess
    weights_id: str


class _Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class _EffStem(nn.Module):
    def __init__(self, net: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        for block in self.blocks:
            x = block(x)  # no drop-connect: the stem is frozen and runs in eval mode
        return x


class _EffTop(nn.Module):
    def __init__(self, net: nn.Module, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        self.pool = _Pool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.pool(self.act(self.bn1(self.conv_head(x))))


def _pretrained_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    from lens.encoders import encoder_status
    from lens.encoders.weights import file_sha256
    from lens.errors import WeightsUnavailableError

    status = encoder_status(name)
    if not status.available or status.path is None:
        raise WeightsUnavailableError(f"Weights for '{name}' are unavailable. To fix: {status.remedy}.")
    return torch.load(status.path, map_location="cpu", weights_only=True), file_sha256(status.path)


def build_split_backbone(name: str, trainable_blocks: int = 3, *, pretrained: bool = True) -> SplitBackbone:
    """Backbone ``name`` with its last ``trainable_blocks`` blocks (counting the 1x1 head conv) in ``top``.

    Args:
        name: one of :data:`BACKBONES` (``tiny`` is the random test CNN, for tests).
        trainable_blocks: >= 1; the rest goes to ``stem``.
        pretrained: load the ImageNet weights (through the encoder registry's weight resolution).
    """
    if trainable_blocks < 1:
        raise LensError(f"trainable_blocks must be >= 1, got {trainable_blocks}.")
    if name == "mobilenet-v2":
        from torchvision.models import mobilenet_v2

        net = mobilenet_v2(weights=None)
        weights_id = "random"
        if pretrained:
            state, weights_id = _pretrained_state(name)
            net.load_state_dict(state)
        features = list(net.features)
        cut = max(1, len(features) - trainable_blocks)
        from lens.encoders import get_spec

        return SplitBackbone(
            name, nn.Sequential(*features[:cut]), nn.Sequential(*features[cut:], _Pool()), 1280,
            get_spec(name).preprocess, weights_id,
        )
    if name in ("efficientnet-lite0", "efficientnet-lite2"):
        from efficientnet_lite_pytorch import EfficientNet

        from lens.encoders import get_spec

        net = EfficientNet.from_name(name)
        weights_id = "random"
        if pretrained:
            state, weights_id = _pretrained_state(name)
            net.load_state_dict(state)
        blocks = list(net._blocks)
        cut = max(1, len(blocks) - (trainable_blocks - 1))
        return SplitBackbone(
            name, _EffStem(net, blocks[:cut]), _EffTop(net, blocks[cut:]), 1280, get_spec(name).preprocess, weights_id
        )
    if name == "tiny":
        from lens.encoders import get_spec
        from lens.encoders.tiny import build_tiny_model

        layers = list(build_tiny_model(64))  # conv relu conv relu conv relu pool flatten
        return SplitBackbone(
            name, nn.Sequential(*layers[:2]), nn.Sequential(*layers[2:]), 64, get_spec(name).preprocess, "tiny-seed0"
        )
    raise LensError(f"Unknown backbone '{name}'. Known backbones: {', '.join(BACKBONES)}.")


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients of every parameter of ``module`` and put it in eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def batchnorms_to_eval(module: nn.Module) -> None:
    """Keep BatchNorm running statistics frozen while fine-tuning (their affine weights still train).

    Class-balanced batches of 64 are a poor estimate of the catalog's statistics; frozen ImageNet statistics are
    the usual choice for fine-tuning with small batches, and make the trained model exact to fold at inference.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
