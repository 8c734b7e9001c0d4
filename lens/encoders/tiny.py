"""``tiny``: a seeded, randomly initialised small CNN registered like any other encoder (timm's ``test_resnet``).

It needs no weights, so unit tests and dashboard tests run anywhere; its vectors still respond to colour and shape,
which is enough for tests with known answers on generated images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lens.encoders._registry import register_encoder
from lens.encoders.base import EncoderSpec, Precision, Preprocess, TorchImageEncoder, state_dict_hash

if TYPE_CHECKING:  # torch loads when the model is built, never on import
    from torch import nn

TINY_SEED = 0


def build_tiny_model(dim: int = 64, seed: int = TINY_SEED) -> nn.Module:
    import torch
    from torch import nn

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # seeded init, without disturbing the caller's RNG stream
    try:
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, dim, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return model


@register_encoder(
    EncoderSpec(
        name="tiny",
        family="test",
        dim=64,
        preprocess=Preprocess(input_size=32, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        weights="random init, seed 0 (no download)",
        license="n/a",
        description="seeded random 3-layer CNN for tests, 32px",
        precision="fp32",
        channels_last=False,
    )
)
def _build_tiny(
    spec: EncoderSpec, weights_path: Path | None, *, precision: Precision | None = None
) -> TorchImageEncoder:
    model = build_tiny_model(spec.dim)
    return TorchImageEncoder(spec, model, state_dict_hash(model.state_dict()), precision=precision)
