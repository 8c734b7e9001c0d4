"""Several trained heads served by one vector (``type: "ensemble"``): ``proxy-ensemble``.

Each part is a trained head on its own frozen pretrained encoder (``proxy-mobilenet-v2``, ``proxy-efficientnet-lite0``,
``proxy-efficientnet-lite2``: different backbones, so different mistakes). A photo's vector is the concatenation of
the parts' unit vectors divided by ``sqrt(n)``, so the inner product of two photos is the **mean of the parts'
cosines**: one index, one search, the ensemble's ranking. This differs from ``proxy-concat`` (one head trained on the
concatenated backbone vectors). Every part's head weights live in this model's own safetensors (``parts.<i>.*``), so
the model does not depend on the member models it was assembled from. The catalog's vectors come from the parts' base
encoders' cached embeddings (:meth:`EnsembleEncoder.parts_and_join`); a query runs every base (about their summed
latency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from lens.encoders.base import Encoder, EncoderSpec, Precision
from lens.encoders.trained.heads import build_head, frozen_base, project_rows
from lens.vectors import l2_normalize


def join_parts(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``(N, d_i)`` unit rows of each part -> ``(N, sum d_i)`` unit rows, ``concat / sqrt(n)``: the inner product of
    two rows is the mean of the parts' cosines."""
    return l2_normalize(np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=1))


def build_ensemble(arch: dict[str, Any]) -> nn.ModuleList:
    """The parts' heads (random weights), ``arch["parts"]``: one head ``arch`` per part (:func:`build_head`)."""
    return nn.ModuleList(build_head(part) for part in arch["parts"])


class EnsembleEncoder(Encoder):
    """Trained heads on several frozen encoders, one vector: ``normalise([head_i(base_i(x)) unit, ...])``."""

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
        self.bases = [
            frozen_base(
                part["base_encoder"],
                part.get("base_weights_id"),
                precision or part.get("base_precision"),
                spec.name,
            )
            for part in arch["parts"]
        ]
        super().__init__(spec, "+".join([weights_id, *(b.weights_id for b in self.bases)]), precision="fp32")
        self.arch = dict(arch)
        self.heads = build_ensemble(arch)
        self.heads.load_state_dict({k.removeprefix("parts."): v for k, v in state.items()}, strict=True)
        self.heads.eval()

    def join(self, base_vectors: Sequence[np.ndarray]) -> np.ndarray:
        """The parts' base-encoder vectors (in ``arch["parts"]`` order) -> this encoder's ``(N, dim)`` unit rows."""
        return join_parts([project_rows(head, v) for head, v in zip(self.heads, base_vectors, strict=True)])

    def parts_and_join(self) -> tuple[list[Encoder], Callable[[Sequence[np.ndarray]], np.ndarray]]:
        return list(self.bases), self.join

    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        return self.join([base.embed_images(images, batch_size=max(1, len(images))) for base in self.bases])
