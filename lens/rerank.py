"""Query-side re-ranking that any model can use: alpha-weighted query expansion (alpha-QE).

alpha-QE (Radenović, Tolias & Chum, "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018) replaces
a query vector ``q`` by ``normalise(q + sum_i max(s_i, 0)^alpha * g_i)`` over its top ``k`` gallery neighbours ``g_i``
with cosine ``s_i``, then searches again: the query moves towards the dense part of its own neighbourhood. It costs
one extra search per query (the first ``k`` neighbours) and needs no training; measured gains and costs are in
docs/training.md. Database-side augmentation (the same on every gallery vector) is not offered: in the held-out
evaluation it would mix each query's own vector into its neighbours' vectors before the query is searched.
"""

from __future__ import annotations

import numpy as np

from lens.errors import LensError
from lens.vectors import l2_normalize, rank_by_cosine

#: alpha-QE's defaults, chosen on the validation part of the split (docs/training.md): 3 neighbours, alpha 3.
DEFAULT_EXPAND = 3
DEFAULT_ALPHA = 3.0


def check_expansion(k: int, alpha: float) -> None:
    """Raises LensError unless ``k >= 0`` neighbours and ``alpha >= 0``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise LensError(f"query expansion takes k >= 0 neighbours (0 = off), got {k!r}.")
    if not np.isfinite(alpha) or alpha < 0:
        raise LensError(f"query expansion takes alpha >= 0, got {alpha!r}.")


def expand_with_neighbours(
    queries: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float = DEFAULT_ALPHA
) -> np.ndarray:
    """alpha-QE from neighbours already found.

    Args:
        queries: ``(Q, d)`` query vectors, rows L2-normalised.
        neighbours: ``(Q, k, d)`` each query's top ``k`` gallery vectors.
        sims: ``(Q, k)`` their cosine similarities to the query.
        alpha: weight exponent; 0 = plain average query expansion, large = only the nearest neighbours count.

    Returns:
        ``(Q, d)`` float32, rows L2-normalised: ``normalise(q + sum_i max(s_i, 0)^alpha g_i)``.
    """
    weights = np.clip(np.asarray(sims, dtype=np.float64), 0.0, None) ** float(alpha)
    expanded = np.asarray(queries, dtype=np.float64) + np.einsum("qk,qkd->qd", weights, neighbours)
    return l2_normalize(expanded.astype(np.float32))


def expand_queries(
    queries: np.ndarray,
    gallery: np.ndarray,
    *,
    k: int = DEFAULT_EXPAND,
    alpha: float = DEFAULT_ALPHA,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """alpha-QE of ``queries`` against ``gallery`` (exact cosine search for the neighbours).

    Args:
        queries: ``(Q, d)`` rows L2-normalised.
        gallery: ``(N, d)`` rows L2-normalised.
        k: neighbours to add (0: the queries unchanged).
        alpha: weight exponent (see :func:`expand_with_neighbours`).
        exclude: ``(Q,)`` gallery row to leave out per query (the query itself when it is in the gallery; -1: none),
            as :func:`lens.vectors.rank_by_cosine` takes it; the same row must be excluded from the final search.

    Returns:
        ``(Q, d)`` float32 expanded queries, rows L2-normalised.
    """
    check_expansion(k, alpha)
    queries = l2_normalize(np.asarray(queries, dtype=np.float32))
    if k == 0 or len(queries) == 0:
        return queries
    gallery = np.asarray(gallery, dtype=np.float32)
    index, sims = rank_by_cosine(queries, gallery, k, exclude=exclude)
    return expand_with_neighbours(queries, gallery[index], sims, alpha)
