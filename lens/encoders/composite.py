"""``concat``: several pretrained encoders side by side, one vector = the L2-normalised concatenation of theirs.

Each part keeps its own preprocessing and engine; ``embed_images(x)`` is ``normalise([part_1(x), ..., part_n(x)])``
with every part's vector already unit length, so each backbone weighs the same. ``embed_catalog`` builds the catalog's
vectors from the parts' (cached) embeddings (:meth:`ConcatEncoder.parts_and_join`), so the composite costs nothing
once its parts are embedded. Its main use is as the frozen input of a trained head (``proxy-concat``): a query then
runs all three backbones (about their summed latency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lens.encoders._registry import register_encoder
from lens.encoders.base import PIXEL_PIPELINE, Encoder, EncoderSpec, Precision, Preprocess
from lens.vectors import l2_normalize

#: The parts of ``concat``: the three pretrained CNNs lens builds by default (1280 + 1280 + 1280 = 3840-d).
CONCAT_PARTS = ("mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2")


def join_vectors(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``(N, d_i)`` unit rows of each part -> ``(N, sum d_i)`` float32 unit rows (parts weigh the same)."""
    return l2_normalize(np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=1))


class ConcatEncoder(Encoder):
    """The L2-normalised concatenation of ``parts``' vectors (each part L2-normalised by its own contract)."""

    def __init__(self, spec: EncoderSpec, parts: Sequence[Encoder]) -> None:
        if not parts:
            raise ValueError("a concat encoder needs at least one part")
        self.parts = list(parts)
        super().__init__(spec, "+".join(p.weights_id for p in self.parts), precision="fp32")

    def identity(self) -> dict:
        """Every part's identity (weights, preprocessing, precision): the composite's cache key follows them."""
        return {
            "encoder": self.spec.name,
            "parts": [p.identity() for p in self.parts],
            "pixels": PIXEL_PIPELINE,
            "dim": self.spec.dim,
        }

    def parts_and_join(self) -> tuple[list[Encoder], Callable[[Sequence[np.ndarray]], np.ndarray]]:
        """``(parts, join)``: ``embed_images(x) == join([p.embed_images(x) for p in parts])`` (``embed_catalog`` uses
        the parts' cached catalog vectors)."""
        return self.parts, join_vectors

    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        return join_vectors([p.embed_images(images, batch_size=max(1, len(images))) for p in self.parts])


def _concat_spec(name: str, parts: Sequence[str], dims: Sequence[int], description: str) -> EncoderSpec:
    return EncoderSpec(
        name=name,
        family="composite",
        dim=int(sum(dims)),
        # the largest part's input; each part preprocesses for itself (informational only)
        preprocess=Preprocess(input_size=260, crop_pct=0.875, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        weights=f"the parts' own: {', '.join(parts)}",
        license="as the parts' weights",
        pooling="concatenation of the parts' pooled vectors",
        description=description,
        precision="fp32",
        channels_last=False,
    )


@register_encoder(
    _concat_spec(
        "concat",
        CONCAT_PARTS,
        (1280, 1280, 1280),
        "mobilenet-v2 + efficientnet-lite0 + efficientnet-lite2 vectors, concatenated (3840-d)",
    ),
    parts=CONCAT_PARTS,
)
def _build_concat(spec: EncoderSpec, weights_path: Path | None, *, precision: Precision | None = None) -> Encoder:
    from lens.encoders._registry import create_encoder

    # each part on its own default engine and precision: the ones its cached catalog vectors were made with
    return ConcatEncoder(spec, [create_encoder(name) for name in CONCAT_PARTS])
