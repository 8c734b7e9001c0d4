"""Several trained models served by one vector (``type: "ensemble"``): ``proxy-ensemble``.

Each part is a trained head on its own frozen pretrained encoder (``proxy-mobilenet-v2``, ``proxy-efficientnet-lite0``,
``proxy-efficientnet-lite2``: different backbones, so different mistakes), or a fine-tuned backbone served end to end
(``type: "embedder"``, ``proxy-<backbone> --trainable-blocks k``). A photo's vector is the concatenation of the parts'
unit vectors divided by ``sqrt(n)``, so the inner product of two photos is the **mean of the parts' cosines**: one
index, one search, the ensemble's ranking. This differs from ``proxy-concat`` (one head trained on the concatenated
backbone vectors). Every part's weights live in this model's own safetensors (``parts.<i>.*``), so the model does not
depend on the member models it was assembled from. The catalog's vectors come from the parts' cached embeddings
(:meth:`EnsembleEncoder.parts_and_join`): a head part's base encoder's, a fine-tuned part's own (cached under the
member's name and weights hash, which the part keeps: what training the member published); a query runs every part
(about their summed latency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from lens.encoders.base import Encoder, EncoderSpec, Precision, Preprocess, TorchImageEncoder
from lens.encoders.trained.embedder import build_model as build_embedder_model
from lens.encoders.trained.heads import build_head, frozen_base, project_rows
from lens.vectors import l2_normalize

#: ``type`` of a part that is a whole fine-tuned model (its base encoder is itself), not a head on a frozen encoder.
MODEL_PART = "embedder"


def join_parts(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``(N, d_i)`` unit rows of each part -> ``(N, sum d_i)`` unit rows, ``concat / sqrt(n)``: the inner product of
    two rows is the mean of the parts' cosines."""
    return l2_normalize(np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=1))


def build_ensemble(arch: dict[str, Any]) -> nn.ModuleList:
    """The parts' modules (random weights), ``arch["parts"]``: a head (:func:`build_head`) per head part, the whole
    fine-tuned network (stem + blocks + head, :func:`lens.encoders.trained.embedder.build_model`) per ``embedder``
    part."""
    return nn.ModuleList(
        build_embedder_model(part) if part.get("type") == MODEL_PART else build_head(part) for part in arch["parts"]
    )


def model_part_encoder(part: dict[str, Any], module: nn.Module) -> Encoder:
    """A fine-tuned part (``type: "embedder"``, its trained weights in ``module``) as the encoder it was saved as:
    the member's name, weights hash, preprocessing and dimension, so its embedding-cache key is the member's own
    (the catalog's vectors its training published are found, not recomputed), on the engine that runs it fastest:
    its backbone's family's (ONNX Runtime for EfficientNet-Lite / torchvision CNNs; the family is not part of the
    cache key)."""
    from lens.encoders import get_spec
    from lens.encoders.engines import attach_engine, choose_engine

    pre = dict(part["preprocess"])
    for key in ("mean", "std"):
        pre[key] = tuple(float(v) for v in pre[key])
    spec = EncoderSpec(
        name=str(part["model"]),
        family=get_spec(str(part["backbone"])).family,
        dim=int(part["dim"]),
        preprocess=Preprocess(**pre),
        weights=f"part of an ensemble (fine-tuned {part['backbone']})",
        precision="fp32",
        channels_last=False,
    )
    encoder = TorchImageEncoder(spec, module, str(part["weights_id"]), precision="fp32", fold_bn=True)
    attach_engine(encoder, choose_engine(spec, precision="fp32"))
    return encoder


class EnsembleEncoder(Encoder):
    """Trained heads on several frozen encoders (or fine-tuned models), one vector:
    ``normalise([head_i(base_i(x)) unit, ...])`` (a fine-tuned part: ``base_i`` is the model, ``head_i`` identity)."""

    def __init__(
        self,
        spec: EncoderSpec,
        config: dict[str, Any],
        state: dict[str, Any],
        weights_id: str,
        *,
        precision: Precision | None = None,
    ) -> None:
        arch = config["arch"]
        modules = build_ensemble(arch)
        modules.load_state_dict({k.removeprefix("parts."): v for k, v in state.items()}, strict=True)
        modules.eval()
        self.bases: list[Encoder] = []
        self.heads: list[nn.Module] = []  #: per part, what maps its base's vectors to the part's (identity: a model)
        for part, module in zip(arch["parts"], modules, strict=True):
            if part.get("type") == MODEL_PART:
                self.bases.append(model_part_encoder(part, module))
                self.heads.append(nn.Identity())
            else:
                base = frozen_base(
                    part["base_encoder"],
                    part.get("base_weights_id"),
                    precision or part.get("base_precision"),
                    spec.name,
                )
                self.bases.append(base)
                self.heads.append(module)
        super().__init__(spec, "+".join([weights_id, *(b.weights_id for b in self.bases)]), precision="fp32")
        self.arch = dict(arch)

    def join(self, base_vectors: Sequence[np.ndarray]) -> np.ndarray:
        """The parts' base-encoder vectors (in ``arch["parts"]`` order) -> this encoder's ``(N, dim)`` unit rows."""
        return join_parts([project_rows(head, v) for head, v in zip(self.heads, base_vectors, strict=True)])

    def parts_and_join(self) -> tuple[list[Encoder], Callable[[Sequence[np.ndarray]], np.ndarray]]:
        return list(self.bases), self.join

    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        return self.join([base.embed_images(images, batch_size=max(1, len(images))) for base in self.bases])
