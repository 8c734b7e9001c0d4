"""Encoders: one contract (``embed_images`` -> L2-normalised float32 numpy) and a registry.

Importing this package registers every encoder family; no model is built or loaded until ``create_encoder``.
"""

from lens.encoders import (  # noqa: F401  (registration side effects; heavy libraries load only in builders)
    clip,
    colour,
    composite,
    dinov2,
    efficientnet_lite,
    timm_vit,
    tiny,
    torchvision_cnn,
    trained,  # noqa: E402,F401  (registers models trained on a catalog; last, so built-in names win)
)
from lens.encoders._registry import (
    EncoderInfo,
    create_encoder,
    create_feature_extractor,
    encoder_identity,
    encoder_status,
    engine_choice,
    get_spec,
    list_encoders,
    register_encoder,
    remember_identity,
)
from lens.encoders.base import Encoder, EncoderSpec, Preprocess, TorchImageEncoder, single_query_threads
from lens.encoders.hub import HubWeights
from lens.encoders.weights import WeightsFile, WeightsStatus
from lens.vectors import l2_normalize  # re-exported: the encoder contract's normalisation

__all__ = [
    "Encoder",
    "EncoderInfo",
    "EncoderSpec",
    "HubWeights",
    "Preprocess",
    "TorchImageEncoder",
    "WeightsFile",
    "WeightsStatus",
    "create_encoder",
    "create_feature_extractor",
    "encoder_identity",
    "encoder_status",
    "engine_choice",
    "get_spec",
    "l2_normalize",
    "list_encoders",
    "register_encoder",
    "remember_identity",
    "single_query_threads",
]
