"""Search a catalog: query vector -> hits -> a table of results with the catalog's metadata."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from lens.catalog import Catalog
from lens.errors import CatalogError, LensError
from lens.index import Hit, VectorIndex
from lens.rerank import DEFAULT_ALPHA, check_expansion, expand_with_neighbours

RESULT_COLUMNS = ("rank", "id", "similarity")
"""Leading columns of every results table; the catalog's metadata columns follow (``image`` is a relative path)."""


def filter_mask(catalog: Catalog, filters: Mapping[str, Iterable[str]] | None) -> set[str] | None:
    """Ids that pass every ``column -> allowed values`` filter, or ``None`` when there is no filter."""
    if not filters:
        return None
    table = catalog.table
    keep = np.ones(len(table), dtype=bool)
    for column, values in filters.items():
        if column not in table.columns:
            raise CatalogError(
                f"Cannot filter on '{column}': the catalog has no such column. Columns: {', '.join(table.columns)}."
            )
        allowed = {str(v) for v in values}
        if allowed:
            keep &= table[column].astype(str).isin(allowed).to_numpy()
    return set(table.loc[keep, "id"].astype(str))


def search_vector(
    index: VectorIndex,
    vector: np.ndarray,
    k: int = 10,
    *,
    exclude: Iterable[str] = (),
    allowed: set[str] | None = None,
) -> list[Hit]:
    """Top ``k`` hits for ``vector``, skipping ``exclude`` and, if given, keeping only ids in ``allowed``.

    With a filter the index is asked for more candidates until ``k`` pass or the whole index has been seen, so a
    narrow filter still gets its best ``k`` (exactly, once the request reaches the index size).
    """
    if allowed is None:
        return index.search(vector, k, exclude=exclude)
    return index.search_filtered(vector, k, allowed, exclude=exclude)


def expand_query(
    index: VectorIndex,
    vector: np.ndarray,
    vectors_of: Callable[[Sequence[str]], np.ndarray],
    *,
    k: int,
    alpha: float = DEFAULT_ALPHA,
    exclude: Iterable[str] = (),
) -> np.ndarray:
    """alpha-QE of one query (:mod:`lens.rerank`): its top ``k`` hits in ``index`` (no filter; ``exclude`` skipped)
    are added with weights ``similarity^alpha``; search with the result (:func:`search_vector`) as with any vector.

    Args:
        vector: ``(d,)`` query vector, L2-normalised.
        vectors_of: the catalog vectors of ids, ``(len(ids), d)`` (e.g. from the model's embeddings).
        k: neighbours (0: ``vector`` unchanged).

    Returns:
        ``(d,)`` float32, L2-normalised.
    """
    check_expansion(k, alpha)
    query = np.asarray(vector, dtype=np.float32)
    if k == 0:
        return query
    hits = index.search(query, k, exclude=exclude)
    if not hits:
        return query
    neighbours = np.asarray(vectors_of([h.id for h in hits]), dtype=np.float32)
    sims = np.array([[h.score for h in hits]], dtype=np.float32)
    return expand_with_neighbours(query[None, :], neighbours[None, :, :], sims, alpha)[0]


def results_table(hits: Sequence[Hit], catalog: Catalog, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Hits as a table: ``rank, id, similarity`` (cosine, -1..1) then the catalog's metadata columns."""
    table = catalog.table
    meta_columns = [c for c in (columns or table.columns) if c != "id"]
    rows = []
    for hit in hits:
        try:
            record = catalog.row(hit.id)
        except CatalogError:
            raise LensError(
                f"The index returned id '{hit.id}', which is not in catalog '{catalog.name}': the index was built "
                "from another catalog; rebuild it with `python -m lens index`."
            ) from None
        rows.append(
            {
                "rank": hit.rank,
                "id": hit.id,
                "similarity": round(hit.score, 6),
                **{c: record.get(c, "") for c in meta_columns},
            }
        )
    return pd.DataFrame(rows, columns=[*RESULT_COLUMNS, *meta_columns])
