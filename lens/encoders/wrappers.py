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

from lens.encoders.colour import COLOUR_DIM, GREYS, HUES, SATURATIONS, VALUES


class _PooledEfficientNet(nn.Module):
    """EfficientNet-Lite (``efficientnet_lite_pytorch``) features + global average pooling."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net.extract_features(x)).flatten(1)


class _MultiLayerEfficientNet(nn.Module):
    """EfficientNet-Lite features pooled at two depths: ``[avg(head conv), GeM_p(block tap's output)]``, each part
    L2-normalised (so both weigh the same once the encoder normalises the whole). ``tap`` = the index of the block
    whose output is pooled (efficientnet-lite2: 19, the end of the 208-channel stage, 9 x 9 at 260 px)."""

    def __init__(self, net: nn.Module, tap: int, p: float = 3.0) -> None:
        super().__init__()
        self.net = net
        self.tap = tap
        self.p = p
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        tapped = x
        for idx, block in enumerate(net._blocks):
            x = block(x)
            if idx == self.tap:
                tapped = x
        x = net._swish(net._bn1(net._conv_head(x)))
        pooled = self.pool(x).flatten(1)
        gem = tapped.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
        return torch.cat(
            [nn.functional.normalize(pooled, dim=1), nn.functional.normalize(gem, dim=1)],
            dim=1,
        )


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


class ColourHistogram(nn.Module):
    """:mod:`lens.encoders.colour`'s descriptor: ``(N, 3, S, S)`` RGB in [0, 1] -> ``(N, 77)`` square-rooted, L1-normalised HSV histograms (unit L2 rows)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(0.0, 1.0)
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        mx, mn = x.max(dim=1).values, x.min(dim=1).values
        delta = (mx - mn).clamp(min=1e-6)
        sat = torch.where(mx > 0, (mx - mn) / mx.clamp(min=1e-6), torch.zeros_like(mx))
        hue = (
            torch.where(
                mx == r,
                torch.remainder((g - b) / delta, 6.0),
                torch.where(mx == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0),
            )
            / 6.0
        )
        hue_bin = (hue * HUES).long().clamp(0, HUES - 1)
        sat_bin = ((sat - 0.2) / 0.8 * SATURATIONS).long().clamp(0, SATURATIONS - 1)
        val_bin = (mx * VALUES).long().clamp(0, VALUES - 1)
        chromatic = hue_bin * (SATURATIONS * VALUES) + sat_bin * VALUES + val_bin
        grey = HUES * SATURATIONS * VALUES + (mx * GREYS).long().clamp(0, GREYS - 1)
        bins = torch.where(sat >= 0.2, chromatic, grey).flatten(1)  # (N, S*S)
        weight = (~((mx > 0.9) & (sat < 0.1))).float().flatten(1)
        weight = torch.where(weight.sum(1, keepdim=True) < 10, torch.ones_like(weight), weight)
        hist = torch.zeros(x.shape[0], COLOUR_DIM, dtype=torch.float32, device=x.device)
        hist.scatter_add_(1, bins, weight)
        return torch.sqrt(hist / hist.sum(1, keepdim=True).clamp(min=1e-12))
