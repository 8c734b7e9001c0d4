"""The small ``nn.Module`` wrappers lens puts around a backbone (pooling, a tower, a flat output).

This is the one encoder module that imports torch at the top: the registry, the specs and the family modules do not,
so ``import lens.encoders`` (listing encoders, reading specs, a catalog-product search in the dashboard) stays free of
torch. The builders import this module when a model is built.

The class names are part of the ONNX graph cache keys (``type(encoder.model).__qualname__``, see
:func:`lens.encoders.engines._export_identity`): renaming one re-exports every cached graph of its encoders.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn


class _PooledEfficientNet(nn.Module):
    """EfficientNet-Lite (``efficientnet_lite_pytorch``) features + global average pooling."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net.extract_features(x)).flatten(1)


class _PooledFeatures(nn.Module):
    """``features`` trunk + global average pooling: the classifier head is dropped (torchvision CNNs)."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


class _ImageTower(nn.Module):
    """CLIP: normalised ``(N, 3, 224, 224)`` pixels -> ``(N, projection_dim)`` (before L2 normalisation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)


class _TextTower(nn.Module):
    """CLIP: token ids -> ``(N, projection_dim)``: the end-of-text token's state, projected."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.text_model = model.text_model
        self.text_projection = model.text_projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.text_projection(out.pooler_output)


class _ClsToken(nn.Module):
    """DINOv2: normalised pixels -> the final-LayerNorm CLS token ``(N, hidden_size)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).pooler_output


class _Flat(nn.Module):
    """The encoder's module with its output flattened to ``(N, dim)`` (pooled maps come as ``(N, C, 1, 1)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.model(pixels)
        return features.reshape(features.shape[0], -1)


class _ConvBnTracer(torch.fx.Tracer):
    """Keeps every ``Conv2d`` (subclasses too: EfficientNet-Lite's same-padding conv) and BatchNorm one graph node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Conv2d, nn.modules.batchnorm._BatchNorm)):
            return True
        return super().is_leaf_module(m, module_qualified_name)
