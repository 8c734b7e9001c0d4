"""Query-side re-ranking that any model can use: alpha-weighted query expansion (alpha-QE) and k-reciprocal
re-ranking (:func:`kreciprocal_rerank`, issue 12 section 6).

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


# ----------------------------------------------------------------------------------------- k-reciprocal re-ranking

#: k-reciprocal re-ranking's settings (Zhong et al. 2017's k1, k2, lambda) and the candidates it re-ranks per query.
DEFAULT_K1, DEFAULT_K2, DEFAULT_LAMBDA, DEFAULT_CANDIDATES = 20, 6, 0.3, 100


def check_kreciprocal(k1: int, k2: int, lam: float, candidates: int) -> None:
    """Raises LensError unless ``1 <= k2 <= k1 <= candidates`` and ``0 <= lam <= 1``."""
    if not (1 <= int(k2) <= int(k1) <= int(candidates)):
        raise LensError(f"k-reciprocal re-ranking needs 1 <= k2 <= k1 <= candidates, got {k2}, {k1}, {candidates}.")
    if not 0.0 <= float(lam) <= 1.0:
        raise LensError(f"k-reciprocal re-ranking takes 0 <= lambda <= 1, got {lam!r}.")


def _reciprocal(ranks: np.ndarray, k: int) -> np.ndarray:
    """``(n, n)`` bool: ``j`` is in ``i``'s top ``k`` (itself included) and ``i`` is in ``j``'s."""
    n = len(ranks)
    top = np.zeros((n, n), dtype=bool)
    top[np.arange(n)[:, None], ranks[:, : k + 1]] = True
    return top & top.T


def kreciprocal_rerank_one(
    nodes: np.ndarray, k1: int = DEFAULT_K1, k2: int = DEFAULT_K2, lam: float = DEFAULT_LAMBDA
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong, Zheng, Cao & Li, CVPR 2017) of one query among its candidates.

    Neighbourhoods are computed inside ``nodes`` only (the query and its top candidates), which keeps the cost at
    one ``(n, n)`` similarity matrix per query instead of the whole gallery's k-NN graph.

    Args:
        nodes: ``(1 + M, d)`` rows L2-normalised: the query first, then its ``M`` candidates in their first order.
        k1, k2, lam: the paper's k1 (reciprocal neighbourhood), k2 (local query expansion) and lambda (weight of
            the original distance in the final one).

    Returns:
        ``(M,)`` the candidates' positions (0-based among the candidates), best first.
    """
    n = len(nodes)
    k1, k2 = min(k1, n - 1), min(k2, n - 1)
    sims = np.clip(nodes.astype(np.float64) @ nodes.astype(np.float64).T, -1.0, 1.0)
    dist = 2.0 - 2.0 * sims  # squared euclidean distance of unit vectors
    ranks = np.argsort(dist, axis=1, kind="stable")
    r1 = _reciprocal(ranks, k1)
    half = max(1, int(round(k1 / 2)))
    r_half = _reciprocal(ranks, half)
    expanded = r1.copy()
    for i in range(n):
        for j in np.flatnonzero(r1[i]):
            candidate = r_half[j]
            size = candidate.sum()
            if size and (candidate & r1[i]).sum() > 2.0 / 3.0 * size:
                expanded[i] |= candidate
    v = np.where(expanded, np.exp(-dist), 0.0)
    v /= v.sum(axis=1, keepdims=True)
    if k2 > 1:  # local query expansion: each row's mean over its top k2 neighbours
        v = v[ranks[:, :k2]].mean(axis=1)
    overlap = np.minimum(v[0][None, :], v).sum(axis=1)
    jaccard = 1.0 - overlap / np.maximum(v[0][None, :], v).sum(axis=1)
    final = (1.0 - lam) * jaccard + lam * dist[0]
    return np.argsort(final[1:], kind="stable")


def kreciprocal_rerank(
    queries: np.ndarray,
    gallery: np.ndarray,
    depth: int,
    *,
    k1: int = DEFAULT_K1,
    k2: int = DEFAULT_K2,
    lam: float = DEFAULT_LAMBDA,
    candidates: int = DEFAULT_CANDIDATES,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Rank ``gallery`` for every query: its top ``candidates`` by cosine re-ranked by :func:`kreciprocal_rerank_one`,
    then the rest in cosine order.

    Args:
        queries: ``(Q, d)`` rows L2-normalised.
        gallery: ``(N, d)`` rows L2-normalised.
        depth: results kept per query (at least ``candidates`` are ranked).
        exclude: ``(Q,)`` gallery row to leave out per query (-1: none), as :func:`lens.vectors.rank_by_cosine`.

    Returns:
        ``(Q, depth)`` int64 gallery indices, best first.
    """
    check_kreciprocal(k1, k2, lam, candidates)
    queries = l2_normalize(np.asarray(queries, dtype=np.float32))
    gallery = np.asarray(gallery, dtype=np.float32)
    index, _ = rank_by_cosine(queries, gallery, max(depth, candidates), exclude=exclude)
    out = index.copy()
    m = min(candidates, index.shape[1])
    for q in range(len(queries)):
        top = index[q, :m]
        order = kreciprocal_rerank_one(np.vstack([queries[q : q + 1], gallery[top]]), k1, k2, lam)
        out[q, :m] = top[order]
    return out[:, :depth]
