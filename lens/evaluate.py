"""Retrieval quality of encoders on a catalog: embeddings + labels -> metrics tables (see lens.metrics)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lens.catalog import Catalog
from lens.embed import EmbeddingSet
from lens.encoders.base import Encoder
from lens.errors import LensError
from lens.metrics import RetrievalReport, evaluate_neighbors, evaluate_retrieval, text_to_image_recall
from lens.rerank import DEFAULT_ALPHA, expand_queries, kreciprocal_rerank
from lens.vectors import l2_normalize, rank_by_cosine


def evaluate_embeddings(
    embeddings: EmbeddingSet,
    catalog: Catalog,
    *,
    label_column: str | None = None,
    ks: Sequence[int] = (1, 5, 10),
    query_ids: Sequence[str] | None = None,
    expand: int = 0,
    alpha: float = DEFAULT_ALPHA,
    kreciprocal: bool = False,
) -> RetrievalReport:
    """Exact retrieval metrics of ``embeddings``: each query against the rest of the catalog, relevant = same label.

    Items whose image failed have no vector and take part neither as queries nor in the gallery. ``expand`` > 0
    re-ranks with alpha-QE (:mod:`lens.rerank`): each query is expanded with its top ``expand`` neighbours (itself
    excluded) before the ranking that is scored. ``kreciprocal`` then re-ranks each query's top candidates by
    k-reciprocal re-ranking (:func:`lens.rerank.kreciprocal_rerank`, its defaults).
    """
    column = label_column or catalog.label_column
    labels = catalog.labels(column, ids=embeddings.ids)
    query_indices = None
    if query_ids is not None:
        query_indices = [embeddings.position(item_id) for item_id in query_ids]
    if not expand and not kreciprocal:
        return evaluate_retrieval(
            embeddings.vectors, labels, embeddings.ids, ks=ks, query_indices=query_indices, label_column=column
        )
    vectors = l2_normalize(embeddings.vectors)
    queries = np.arange(len(vectors)) if query_indices is None else np.asarray(query_indices, dtype=np.int64)
    expanded = expand_queries(vectors[queries], vectors, k=expand, alpha=alpha, exclude=queries)
    # deep enough for MAP@R: the largest number of relevant items any query has (its label's count minus itself)
    counts = pd.Series(labels).value_counts()
    depth = max(max(ks), int(counts.max()) if len(counts) else 0)
    if kreciprocal:
        ranked = kreciprocal_rerank(expanded, vectors, depth, exclude=queries)
    else:
        ranked, _ = rank_by_cosine(expanded, vectors, depth, exclude=queries)
    return evaluate_neighbors(ranked, queries.tolist(), list(labels), embeddings.ids, ks=ks, label_column=column)


#: The catalog column whose text is a product's query in the text -> image evaluation.
DEFAULT_TEXT_COLUMN = "productDisplayName"


def evaluate_text_to_image(
    encoder: Encoder,
    embeddings: EmbeddingSet,
    catalog: Catalog,
    *,
    query_ids: Sequence[str] | None = None,
    text_column: str = DEFAULT_TEXT_COLUMN,
    ks: Sequence[int] = (1, 5, 10),
) -> list[dict[str, object]]:
    """Known-item text -> image search: each query item's ``text_column`` text (its title) searches for its own photo.

    Two galleries, one row each: ``queries`` = the query items' own photos only (the issue-12 protocol "among the
    1,600 held-out photos"), and ``catalog`` = every embedded photo. Hit = the item's own photo
    (:func:`lens.metrics.text_to_image_recall`); exact search by cosine.

    Args:
        encoder: a text-capable encoder (``embed_texts``); ``embeddings`` are its catalog vectors.
        query_ids: the query items (default: every embedded item); items without a vector are left out.

    Returns:
        ``[{"gallery", "gallery_size", "queries", "text_r@k"...}]``.

    Raises:
        LensError: the encoder embeds images only, or the catalog has no ``text_column``.
    """
    if not encoder.spec.supports_text:
        raise LensError(
            f"model {encoder.name!r} embeds images only, so it has no text -> image figures; evaluate a text-capable "
            "model (`python -m lens encoders` lists them in its 'text' column, e.g. text-align)."
        )
    if text_column not in catalog.columns:
        raise LensError(
            f"catalog {catalog.name!r} has no text column {text_column!r}; its columns: {', '.join(catalog.columns)}."
        )
    wanted = embeddings.ids if query_ids is None else query_ids
    have = set(embeddings.ids)
    ids = [i for i in wanted if i in have]
    rows = np.asarray([embeddings.position(i) for i in ids], dtype=np.int64)
    texts = [str(t) for t in catalog.labels(text_column, ids=ids)]
    text_vectors = encoder.embed_texts(texts)
    images = l2_normalize(embeddings.vectors)
    out: list[dict[str, object]] = []
    for gallery, vectors, targets in (
        ("queries", images[rows], np.arange(len(rows))),
        ("catalog", images, rows),
    ):
        recall = text_to_image_recall(text_vectors, vectors, targets, ks)
        out.append({"gallery": gallery, "gallery_size": len(vectors), "queries": len(rows), **recall})
    return out


def summary_table(reports: dict[str, RetrievalReport], *, macro: bool = False) -> pd.DataFrame:
    """One row per model: ``model`` then the stable metric keys (micro averages, or per-category macro)."""
    rows = []
    for model, report in reports.items():
        values = report.macro if macro else report.summary
        rows.append({"model": model, "average": "macro" if macro else "micro", "label": report.label_column, **values})
    return pd.DataFrame(rows)


PUBLISHED_P5: dict[str, float] = {
    "fine-tuned CLIP": 0.886,
    "fine-tuned ResNet-50": 0.851,
    "Siamese": 0.607,
    "VAE": 0.490,
}
"""Published precision@5 on this data family (Fashion Product Images) by model kind: the seed figures lens set out to
reach. They come from other papers' splits and label sets, so they are a reference beside lens's held-out figures, not
a like-for-like comparison. The one copy: the benchmark report and the dashboard read them from here."""
