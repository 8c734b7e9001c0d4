"""Encoders: one contract (``embed_images`` -> L2-normalised float32 numpy) and a registry.

Importing this package registers every encoder family; no model is built or loaded until ``create_encoder``.
"""

from lens.encoders import efficientnet_lite, tiny, torchvision_cnn  # noqa: F401  (registration side effects)
from lens.encoders._registry import (
    EncoderInfo,
    create_encoder,
    encoder_status,
    get_spec,
    list_encoders,
    register_encoder,
)
from lens.encoders.base import Encoder, EncoderSpec, Preprocess, TorchImageEncoder, l2_normalize
from lens.encoders.weights import WeightsFile, WeightsStatus

__all__ = [
    "Encoder",
    "EncoderInfo",
    "EncoderSpec",
    "Preprocess",
    "TorchImageEncoder",
    "WeightsFile",
    "WeightsStatus",
    "create_encoder",
    "encoder_status",
    "get_spec",
    "l2_normalize",
    "list_encoders",
    "register_encoder",
]
