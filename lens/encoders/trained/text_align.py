"""Text-align models (``kind: "text-align"``): a frozen image encoder and the frozen MiniLM sentence encoder, each
followed by a trained projection into one shared space (CLIP's two towers, without CLIP weights)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lens.encoders.base import Encoder, check_texts
from lens.encoders.trained.heads import OnFrozenEncoder, mlp, project_rows
from lens.errors import LensError
from lens.vectors import mix_query_vectors

_WORD = re.compile(r"[a-z0-9]+")


def title_words(text: str) -> list[str]:
    """The lower-cased words (runs of letters and digits) of ``text``."""
    return _WORD.findall(str(text).lower())


def build_vocabulary(texts: Sequence[str], min_count: int) -> list[str]:
    """Sorted words that occur in at least ``min_count`` of ``texts`` (counted once per text)."""
    counts = Counter(word for text in texts for word in set(title_words(text)))
    return sorted(word for word, n in counts.items() if n >= min_count)


def bag_of_words(texts: Sequence[str], vocabulary: Sequence[str]) -> np.ndarray:
    """``(N, len(vocabulary))`` float32: 1 where the text has the word, rows L2-normalised (no known word: zeros)."""
    column = {word: j for j, word in enumerate(vocabulary)}
    out = np.zeros((len(texts), len(vocabulary)), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in title_words(text):
            if word in column:
                out[i, column[word]] = 1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def text_features(minilm: np.ndarray, texts: Sequence[str], arch: dict[str, Any]) -> np.ndarray:
    """The text projection's input: MiniLM vectors ``(N, 384)``, then, when the model has a vocabulary (``arch``'s
    ``vocabulary`` and ``bow_weight``), ``bow_weight`` x the texts' bag of words: ``(N, 384 + V)`` float32."""
    vocabulary = arch.get("vocabulary") or []
    if not vocabulary:
        return np.asarray(minilm, dtype=np.float32)
    bow = float(arch.get("bow_weight", 1.0)) * bag_of_words(texts, vocabulary)
    return np.concatenate([np.asarray(minilm, dtype=np.float32), bow], axis=1)


#: The projection kinds: ``linear`` (one Linear per side, the default since issue 12: it generalises better to
#: unseen products than the MLP, docs/training.md) and ``mlp`` (Linear-GELU-Linear, models saved before).
PROJECTIONS = ("linear", "mlp")


class UnitEnsemble(nn.Module):
    """``M`` projections of the same input, each row L2-normalised, concatenated and divided by ``sqrt(M)``.

    Two such rows (of unit length) have as inner product the *mean* of the members' cosines, so an ensemble of
    projections trained with different seeds is served by the one-vector index like a single projection.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [F.normalize(member(x), dim=-1) for member in self.members]
        return torch.cat(rows, dim=-1) / len(rows) ** 0.5


class Projections(nn.Module):
    """``image``: d_img -> dim and ``text``: d_txt -> dim, each a Linear (``linear``) or Linear-GELU-Linear (``mlp``).

    With ``members`` > 1, each side is a :class:`UnitEnsemble` of ``members`` such projections (state-dict keys
    ``image.members.<m>.*``; the members are trained one by one with seeds ``seed + m``) and the rows are
    ``members * dim`` wide: the score of a text and an image is the mean of the members' cosines.

    With ``attributes`` (``[(n_classes, weight), ...]``, e.g. gender / articleType / baseColour), each side also has
    one linear classifier per attribute (``image_heads`` / ``text_heads``), and :meth:`image_side` /
    :meth:`text_side` append ``sqrt(weight) * softmax(head(x))`` per attribute to the unit projection: the inner
    product of a text row and an image row is then ``cosine + sum(weight * P_text(attr) . P_image(attr))`` (the
    "two-stage" score, served by the one-vector index once the rows are L2-normalised).
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        dim: int,
        hidden: int,
        kind: str = "mlp",
        attributes: Sequence[tuple[int, float]] = (),
        members: int = 1,
    ) -> None:
        super().__init__()
        if kind not in PROJECTIONS:
            raise LensError(f"unknown text-align projection {kind!r}; known: {', '.join(PROJECTIONS)}.")
        if members < 1:
            raise LensError(f"a text-align ensemble needs at least one member, not {members}.")

        def projection(in_dim: int) -> nn.Module:
            return nn.Linear(in_dim, dim) if kind == "linear" else mlp(in_dim, hidden, dim, nn.GELU)

        if members == 1:
            self.image: nn.Module = projection(image_dim)
            self.text: nn.Module = projection(text_dim)
        else:
            self.image = UnitEnsemble([projection(image_dim) for _ in range(members)])
            self.text = UnitEnsemble([projection(text_dim) for _ in range(members)])
        #: width of :meth:`image_side` / :meth:`text_side` rows
        self.dim = dim * members + sum(int(n) for n, _ in attributes)
        self.attribute_weights = [float(w) for _, w in attributes]
        self.image_heads = nn.ModuleList(nn.Linear(image_dim, int(n)) for n, _ in attributes)
        self.text_heads = nn.ModuleList(nn.Linear(text_dim, int(n)) for n, _ in attributes)

    def _side(self, projection: nn.Module, heads: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        z = projection(x)
        if not len(heads):
            return z
        blocks = [F.normalize(z, dim=-1)]
        blocks += [w**0.5 * F.softmax(head(x), dim=-1) for head, w in zip(heads, self.attribute_weights, strict=True)]
        return torch.cat(blocks, dim=-1)

    def image_side(self, x: torch.Tensor) -> torch.Tensor:
        """Image features -> the image row before the final L2 normalisation (projection, then attribute blocks)."""
        return self._side(self.image, self.image_heads, x)

    def text_side(self, x: torch.Tensor) -> torch.Tensor:
        """Text features -> the text row before the final L2 normalisation (projection, then attribute blocks)."""
        return self._side(self.text, self.text_heads, x)


def build_projections(arch: dict[str, Any]) -> Projections:
    """``arch``: ``{"image_dim", "text_dim", "dim", "hidden", "projection"}`` (no ``projection``: ``mlp``, the kind of
    every model saved before it was recorded), optionally ``"members"`` (projections per side, default 1; ``dim`` is
    each member's width) and ``"attributes": [{"column", "classes", "weight"}, ...]``."""
    return Projections(
        int(arch["image_dim"]),
        int(arch["text_dim"]),
        int(arch["dim"]),
        int(arch["hidden"]),
        str(arch.get("projection", "mlp")),
        [(len(a["classes"]), float(a["weight"])) for a in arch.get("attributes") or []],
        int(arch.get("members", 1)),
    )


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
        return project_rows(self.projections.image_side, features)

    def project_text_features(self, features: np.ndarray) -> np.ndarray:
        """Text features ``(N, text_dim)`` (:func:`text_features`: MiniLM, then the bag of words when the model has
        a vocabulary) -> shared-space vectors ``(N, dim)``, float32, L2-normalised."""
        return project_rows(self.projections.text_side, features)

    def base_and_head(self) -> tuple[Encoder, Callable[[np.ndarray], np.ndarray]]:
        return self.image_encoder, self.project_image_features

    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        return self.project_image_features(self.image_encoder.embed_images(images, batch_size=max(1, len(images))))

    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Texts -> ``(N, dim)`` float32, L2-normalised, comparable with :meth:`embed_images` by cosine."""
        texts = check_texts(texts)
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        minilm = self._text_model().embed(list(texts), batch_size=batch_size)
        return self.project_text_features(text_features(minilm, list(texts), self.arch))

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
