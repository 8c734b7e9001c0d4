"""``vit-b16``: timm's ViT-B/16, the pre-logits (final-norm CLS token) 768-d vector.

Weights: timm's default tag for ``vit_base_patch16_224``, ``augreg2_in21k_ft_in1k`` (AugReg ImageNet-21k
pre-training, fine-tuned on ImageNet-1k with extra augmentation; 85.1 % top-1), hosted as ``model.safetensors`` in
the Hugging Face repository ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``. It is found like every Hugging
Face repository (:mod:`lens.encoders.hub`: ``$LENS_WEIGHTS_DIR/vit-b16/model.safetensors``, the Hugging Face cache,
a download), read with safetensors, passed through timm's own ``checkpoint_filter_fn`` and loaded strictly into
``timm.create_model(..., num_classes=0)``; the classifier weights are dropped.

Preprocessing is the tag's ``pretrained_cfg``: 224 px, crop_pct 0.9 (resize 248), bicubic, mean = std = 0.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lens.encoders._registry import register_encoder
from lens.encoders.base import RANDOM_WEIGHTS_ID, EncoderSpec, Precision, Preprocess, TorchImageEncoder
from lens.encoders.hub import HubWeights
from lens.encoders.weights import file_sha256

if TYPE_CHECKING:  # torch and timm load when the model is built, never on import
    import torch

VIT_B16_ARCH = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


def build_vit(arch: str, weights_file: Path | None) -> tuple[torch.nn.Module, str]:
    """``timm.create_model(arch, num_classes=0)`` with a safetensors checkpoint loaded strictly, and its identity.

    ``weights_file=None`` leaves timm's random initialisation (seeded by the caller).
    """
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    model = timm.create_model(arch, pretrained=False, num_classes=0)
    if weights_file is None:
        return model, RANDOM_WEIGHTS_ID
    from safetensors.torch import load_file

    # timm's own remapping, as in timm.create_model(pretrained=True): older layouts, position-embedding resize.
    state = checkpoint_filter_fn(load_file(str(weights_file), device="cpu"), model)
    classifier = model.pretrained_cfg.get("classifier", "head")
    state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}  # num_classes=0: no head
    model.load_state_dict(state, strict=True)
    return model, file_sha256(Path(weights_file))


@register_encoder(
    EncoderSpec(
        name="vit-b16",
        family="timm-vit",
        dim=768,
        preprocess=Preprocess(
            input_size=224, crop_pct=0.9, mean=INCEPTION_MEAN, std=INCEPTION_STD, interpolation="bicubic"
        ),
        weights=f"ImageNet-21k -> 1k (timm {VIT_B16_ARCH}, Hugging Face timm/{VIT_B16_ARCH})",
        license="Apache-2.0",
        pooling="CLS token after the final LayerNorm (timm pre-logits)",
        description="ViT-B/16 AugReg in21k->in1k, pre-logits CLS token, 224px",
        precision="bf16",  # measured (random weights, 2 cores): 1.8x fp32, min cosine 0.99996
        channels_last=False,
    ),
    weights=HubWeights(
        repo_id=f"timm/{VIT_B16_ARCH}", folder="vit-b16", files=("model.safetensors",), extra_files=("config.json",)
    ),
)
def _build_vit_b16(
    spec: EncoderSpec, weights_path: Path | None, *, precision: Precision | None = None
) -> TorchImageEncoder:
    weights_file = None if weights_path is None else weights_path / "model.safetensors"
    model, weights_id = build_vit(VIT_B16_ARCH, weights_file)
    return TorchImageEncoder(spec, model, weights_id, precision=precision)
