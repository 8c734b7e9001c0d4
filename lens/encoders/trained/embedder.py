"""Fine-tuned pretrained CNNs (``type: "embedder"``): ``head(top(stem(x)))``, a backbone cut in two plus a head.

A pretrained backbone is cut into a frozen ``stem`` and a trainable ``top`` (last blocks + global average pool). The
training recipes compute the stem's output once per catalog and train only the top; the same constructors with
``pretrained=False`` rebuild the architecture for loading a trained model (whose file holds every weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    def __init__(self, net: Any, blocks: list[nn.Module]) -> None:  # net: efficientnet_lite_pytorch's EfficientNet
        super().__init__()
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        for block in self.blocks:
            x = block(x)  # no drop-connect: the stem is frozen and runs in eval mode
        return x


class _EffTop(nn.Module):
    def __init__(self, net: Any, blocks: list[nn.Module]) -> None:
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
    from lens.encoders import get_spec

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
        return SplitBackbone(
            name,
            nn.Sequential(*features[:cut]),
            nn.Sequential(*features[cut:], _Pool()),
            1280,
            get_spec(name).preprocess,
            weights_id,
        )
    if name in ("efficientnet-lite0", "efficientnet-lite2"):
        from efficientnet_lite_pytorch import EfficientNet

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
        from lens.encoders.tiny import build_tiny_model

        layers = list(build_tiny_model(64).children())  # conv relu conv relu conv relu pool flatten
        return SplitBackbone(
            name, nn.Sequential(*layers[:2]), nn.Sequential(*layers[2:]), 64, get_spec(name).preprocess, "tiny-seed0"
        )
    raise LensError(f"Unknown backbone '{name}'. Known backbones: {', '.join(BACKBONES)}.")


class Embedder(nn.Module):
    """``head(top(stem(x)))``: images -> ``(N, dim)`` (un-normalised; encoders L2-normalise)."""

    def __init__(self, stem: nn.Module, top: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.stem, self.top, self.head = stem, top, head

    def embed_stem_output(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.top(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_stem_output(self.stem(x))


class L2Normalize(nn.Module):
    """Rows scaled to unit length: the residual head then sees what the frozen heads were trained on (the
    encoder's L2-normalised pooled vectors), so a head trained on cached vectors carries over unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=-1)


def embedder_head(in_dim: int, embedding_dim: int, hidden: int = 0) -> nn.Module:
    """``Linear(in_dim, embedding_dim)``, or for ``embedding_dim`` 0 the residual zero-initialised head of the frozen
    models on the L2-normalised pooled features (:class:`L2Normalize`, then
    :class:`lens.encoders.trained.heads.ResidualHead`; ``hidden`` > 0) or ``Identity`` (keep the pooled
    features)."""
    if embedding_dim:
        return nn.Linear(in_dim, embedding_dim)
    if hidden:
        from lens.encoders.trained.heads import ResidualHead

        return nn.Sequential(L2Normalize(), ResidualHead(in_dim, hidden))
    return nn.Identity()


def build_embedder(arch: dict[str, Any], *, pretrained: bool = True) -> Embedder:
    """``arch``: ``{"type": "embedder", "backbone", "trainable_blocks", "embedding_dim", "backbone_dim"[,
    "hidden"]}`` (``hidden``: the residual head's width, ``proxy-<backbone> --trainable-blocks``)."""
    backbone = build_split_backbone(arch["backbone"], int(arch["trainable_blocks"]), pretrained=pretrained)
    head = embedder_head(backbone.dim, int(arch.get("embedding_dim") or 0), int(arch.get("hidden") or 0))
    return Embedder(backbone.stem, backbone.top, head)


def build_model(arch: dict[str, Any]) -> nn.Module:
    """The inference module of a saved ``embedder`` (random weights: the file holds every weight)."""
    return build_embedder(arch, pretrained=False)
