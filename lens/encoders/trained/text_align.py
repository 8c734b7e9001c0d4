"""Text-align models (``kind: "text-align"``): a frozen image encoder and the frozen MiniLM sentence encoder, each
followed by a trained projection into one shared space (CLIP's two towers, without CLIP weights)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from lens.encoders.base import Encoder, check_texts
from lens.encoders.trained.heads import OnFrozenEncoder, mlp, project_rows
from lens.errors import LensError
from lens.vectors import mix_query_vectors


class Projections(nn.Module):
    """``image``: d_img -> dim and ``text``: d_txt -> dim, each Linear-GELU-Linear."""

    def __init__(self, image_dim: int, text_dim: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.image = mlp(image_dim, hidden, dim, nn.GELU)
        self.text = mlp(text_dim, hidden, dim, nn.GELU)


def build_projections(arch: dict[str, Any]) -> Projections:
    """``arch``: ``{"image_dim", "text_dim", "dim", "hidden"}``."""
    return Projections(int(arch["image_dim"]), int(arch["text_dim"]), int(arch["dim"]), int(arch["hidden"]))


class TextAlignEncoder(OnFrozenEncoder):
    """Images and texts in one space: frozen image encoder + frozen all-MiniLM-L6-v2, each with a trained projection.

    ``embed_images`` and ``embed_texts`` return ``(N, dim)`` float32 L2-normalised rows, like CLIP's two towers, so a
    text query is compared with image vectors by cosine. :meth:`embed_query` combines an image and a text
    ("like this, but in blue").
    """

    arch_prefix = "image"
    _text: Any = None  # MiniLM, loaded on the first text

    def build_module(self, arch: dict[str, Any]) -> nn.Module:
        return build_projections(arch)

    @property
    def image_encoder(self) -> Encoder:
        return self.base

    @property
    def projections(self) -> Projections:
        return self.module  # type: ignore[return-value]

    def _text_model(self):  # noqa: ANN202 - lens.encoders.minilm.MiniLM
        if self._text is None:
            from lens.encoders.minilm import load_minilm

            self._text = load_minilm()
        return self._text

    def project_image_features(self, features: np.ndarray) -> np.ndarray:
        """Base image-encoder vectors ``(N, d_img)`` -> shared-space vectors ``(N, dim)``, float32, L2-normalised."""
        return project_rows(self.projections.image, features)

    def project_text_features(self, features: np.ndarray) -> np.ndarray:
        """MiniLM vectors ``(N, 384)`` -> shared-space vectors ``(N, dim)``, float32, L2-normalised."""
        return project_rows(self.projections.text, features)

    def base_and_head(self) -> tuple[Encoder, Callable[[np.ndarray], np.ndarray]]:
        return self.image_encoder, self.project_image_features

    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        return self.project_image_features(self.image_encoder.embed_images(images, batch_size=max(1, len(images))))

    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Texts -> ``(N, dim)`` float32, L2-normalised, comparable with :meth:`embed_images` by cosine."""
        texts = check_texts(texts)
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.project_text_features(self._text_model().embed(list(texts), batch_size=batch_size))

    def embed_query(self, image: Any = None, text: str | None = None, *, text_weight: float = 0.5) -> np.ndarray:
        """One query vector ``(dim,)`` from an image, a text, or both ("like this, but in blue").

        Both: ``normalize((1 - text_weight) * image_vector + text_weight * text_vector)``.
        """
        if image is None and not text:
            raise LensError("a query needs an image, a text, or both.")
        vectors = []
        if image is not None:
            vectors.append(self.embed_images([image])[0])
        if text:
            vectors.append(self.embed_texts([text])[0])
        if len(vectors) == 1:
            return vectors[0]
        return mix_query_vectors(vectors[0], vectors[1], text_weight)
