"""DINOv2 ViT-S/14 and ViT-B/14 (Meta's self-supervised weights, through transformers), 384-d / 768-d.

Pooling: the CLS token after the final LayerNorm (``Dinov2Model(...).pooler_output``). Why that one and not the
CLS token concatenated with the mean patch token (what the DINOv2 paper feeds its *linear* classifiers):

- the CLS token is the output DINO's image-level self-distillation loss trains; the patch tokens are trained by the
  iBOT masked-patch loss for local features. The paper's k-NN and instance-retrieval evaluations, the ones that,
  like lens, compare plain vectors by cosine, use the CLS token;
- under cosine similarity a concatenation weights its two halves by their norms, which nothing trained to be
  comparable (a linear probe can learn to weight them; a nearest-neighbour search cannot);
- it keeps the published dimensions (384 / 768), so ``dim`` in the spec is the model card's.

Weights: Hugging Face ``facebook/dinov2-small`` / ``facebook/dinov2-base`` (``config.json`` + ``model.safetensors``)
through :mod:`lens.encoders.hub` (``$LENS_WEIGHTS_DIR/dinov2-small/``, the Hugging Face cache, a download), loaded
with ``Dinov2Model.from_pretrained(folder, local_files_only=True)``. Preprocessing is the repositories'
``preprocessor_config.json``: shorter side to 256 bicubic, centre crop 224, ImageNet mean/std (the position
embeddings, trained at 518 px, are interpolated to the 16 x 16 patch grid by the model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from lens.encoders._registry import register_encoder
from lens.encoders.base import RANDOM_WEIGHTS_ID, EncoderSpec, Precision, Preprocess, TorchImageEncoder
from lens.encoders.hub import HubWeights
from lens.encoders.weights import file_sha256
from lens.errors import WeightsUnavailableError

DINOV2_PREPROCESS = Preprocess(input_size=224, crop_pct=224 / 256, resize=256, interpolation="bicubic")


# The architectures of the two repositories' config.json (for random builds; real loads read the folder's config).
class _Arch(NamedTuple):
    repo: str
    hidden_size: int
    num_attention_heads: int


_ARCH = {
    "dinov2-small": _Arch("facebook/dinov2-small", 384, 6),
    "dinov2-base": _Arch("facebook/dinov2-base", 768, 12),
}


def dinov2_config(name: str) -> Any:
    from transformers import Dinov2Config

    arch = _ARCH[name]
    return Dinov2Config(
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_hidden_layers=12,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        use_swiglu_ffn=False,
    )


def _build(spec: EncoderSpec, weights_path: Path | None, *, precision: Precision | None = None) -> TorchImageEncoder:
    import torch
    from transformers import Dinov2Model

    from lens.encoders.wrappers import _ClsToken

    if weights_path is None:
        model = Dinov2Model(dinov2_config(spec.name))
        weights_id = RANDOM_WEIGHTS_ID
    else:
        model = Dinov2Model.from_pretrained(weights_path, local_files_only=True, dtype=torch.float32)
        if model.config.hidden_size != spec.dim:
            raise WeightsUnavailableError(
                f"The weights in {weights_path} are a DINOv2 with {model.config.hidden_size}-d tokens; "
                f"'{spec.name}' needs {spec.dim}-d. To fix: put the files of {_ARCH[spec.name].repo} there."
            )
        weights_id = file_sha256(weights_path / "model.safetensors")
    return TorchImageEncoder(spec, _ClsToken(model.eval()), weights_id, precision=precision)


for _name, _dim, _size in (("dinov2-small", 384, "ViT-S/14"), ("dinov2-base", 768, "ViT-B/14")):
    register_encoder(
        EncoderSpec(
            name=_name,
            family="dinov2",
            dim=_dim,
            preprocess=DINOV2_PREPROCESS,
            weights=f"DINOv2 {_size} self-supervised on LVD-142M, Hugging Face {_ARCH[_name].repo}",
            license="Apache-2.0",
            pooling="CLS token after the final LayerNorm",
            description=f"DINOv2 {_size} (self-supervised), final-norm CLS token, 224px",
            precision="bf16",  # measured (random weights, 2 cores): about 1.6x fp32, min cosine >= 0.9999
            channels_last=False,
        ),
        weights=HubWeights(repo_id=_ARCH[_name].repo, folder=_name, extra_files=("preprocessor_config.json",)),
    )(_build)
