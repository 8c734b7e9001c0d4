"""Failure analysis and side-by-side comparison: pure functions over vectors, labels and metric reports.

Used by the dashboard's Compare and Failures pages (and usable from a notebook). Nothing here draws or imports a UI;
every function returns numpy arrays or pandas tables with stable column names, ready to export as CSV.

Neighbours are exact cosine rankings (``lens.vectors.rank_by_cosine``) with the query left out of its own results,
the same protocol as the metrics, so a query's row here agrees with its ``precision@k`` in a
:class:`~lens.metrics.RetrievalReport`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lens.errors import LensError
from lens.metrics import RetrievalReport
from lens.rerank import DEFAULT_ALPHA, expand_queries
from lens.vectors import l2_normalize, rank_by_cosine

__all__ = [
    "COMPARE_COLUMNS",
    "CONFUSION_COLUMNS",
    "DUPLICATE_COLUMNS",
    "NearDuplicates",
    "compare_grid",
    "compare_summary",
    "confused_pairs",
    "confusion_examples",
    "near_duplicate_pairs",
    "per_category_matrix",
    "precision_table",
    "sample_queries_per_category",
    "top_neighbors",
    "worst_queries",
]

#: Columns of :func:`compare_grid`: one row per query x model x rank.
COMPARE_COLUMNS: tuple[str, ...] = (
    "query_id",
    "query_label",
    "model",
    "k",
    "rank",
    "result_id",
    "result_label",
    "similarity",
    "correct",
    "precision_at_k",
)
#: Columns of :func:`confused_pairs`.
CONFUSION_COLUMNS: tuple[str, ...] = ("label_a", "label_b", "a_to_b", "b_to_a", "count", "share")
#: Columns of :func:`near_duplicate_pairs` (``label_*`` and ``same_label`` only when labels are given).
DUPLICATE_COLUMNS: tuple[str, ...] = ("id_a", "id_b", "similarity", "label_a", "label_b", "same_label")


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise LensError(f"vectors must be a 2-D (N, dim) array, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise LensError("vectors contain NaN or infinite values; re-embed the rows that contain them.")
    return l2_normalize(x)


def _check_k(k: int) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise LensError(f"k must be a positive integer, got {k!r}.")
    return int(k)


# --------------------------------------------------------------------------------------------------------------
# Neighbours


def top_neighbors(
    vectors: np.ndarray, k: int, *, query_rows: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine neighbours of every row (or of ``query_rows``) among all rows, itself excluded.

    Args:
        vectors: ``(N, dim)`` float; rows are L2-normalised here.
        k: neighbours per query, clamped to ``N - 1``.
        query_rows: row numbers of the queries (default: every row).

    Returns:
        ``(indices, sims)``: ``(Q, k')`` int64 row numbers and float32 cosine similarities, best first, with
        ``k' = min(k, N - 1)``; ties go to the lower row number (deterministic).
    """
    k = _check_k(k)
    x = _unit_rows(vectors)
    rows = np.arange(len(x), dtype=np.int64) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(x)):
        raise LensError(f"query_rows must lie in [0, {len(x) - 1}].")
    return rank_by_cosine(x[rows], x, k, exclude=rows)


def sample_queries_per_category(
    ids: Sequence[str],
    labels: Sequence[str],
    n_categories: int,
    *,
    per_category: int = 1,
    seed: int = 0,
) -> list[str]:
    """A seeded random pick of query ids: ``per_category`` items from each of ``n_categories`` random labels.

    Only labels with at least ``per_category + 1`` items qualify (a query needs something relevant to find); empty
    labels never do. The result is ordered by label, then by position.

    Returns:
        Up to ``n_categories * per_category`` ids (fewer when fewer labels qualify).
    """
    if n_categories < 1 or per_category < 1:
        raise LensError("n_categories and per_category must be positive integers.")
    if len(ids) != len(labels):
        raise LensError(f"got {len(ids)} ids for {len(labels)} labels; pass one label per id.")
    label_arr = np.array([str(v) for v in labels], dtype=object)
    uniq, counts = np.unique(label_arr, return_counts=True)  # sorted: deterministic for a given seed
    eligible = [u for u, c in zip(uniq, counts) if c > per_category and str(u).strip()]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.permutation(len(eligible))[:n_categories].tolist())
    picked: list[str] = []
    for i in chosen:
        members = np.flatnonzero(label_arr == eligible[i])
        take = np.sort(rng.choice(members, size=per_category, replace=False))
        picked.extend(str(ids[j]) for j in take)
    return picked


# --------------------------------------------------------------------------------------------------------------
# Compare: queries x models


def compare_grid(
    query_ids: Sequence[str],
    models: Mapping[str, tuple[np.ndarray, Sequence[str]]],
    labels: Mapping[str, str],
    k: int,
    *,
    expand: int = 0,
    alpha: float = DEFAULT_ALPHA,
) -> pd.DataFrame:
    """Top-``k`` results of each query under each model, one row per query x model x rank.

    Args:
        query_ids: catalog ids of the queries, in display order.
        models: ``{model name: (vectors (N, dim), ids in row order)}``, e.g. from ``EmbeddingSet``.
        labels: ``{item id: label}`` for every id (a missing id counts as label ``""``).
        k: results per query.
        expand: > 0 re-ranks each query by alpha query expansion first (:func:`lens.rerank.expand_queries`: the
            query plus its ``expand`` nearest products, itself excluded), as the Metrics page scores it with
            :func:`lens.evaluate.evaluate_embeddings`; 0 = off.
        alpha: the expansion's weight exponent.

    Returns:
        A table with :data:`COMPARE_COLUMNS`: ``correct`` says whether the result has the query's label,
        ``precision_at_k`` is the cell's share of correct results among ``k`` (repeated on each of its rows),
        ``similarity`` the cosine (to the expanded query when ``expand`` > 0). A query whose image failed for a
        model has no rows for that model.
    """
    k = _check_k(k)
    rows: list[dict[str, object]] = []
    for model, (vectors, ids) in models.items():
        position = {str(item_id): i for i, item_id in enumerate(ids)}
        present = [q for q in query_ids if str(q) in position]
        if not present or len(ids) < 2:
            continue
        q_rows = [position[str(q)] for q in present]
        if expand:
            x = _unit_rows(vectors)
            rows_ = np.asarray(q_rows, dtype=np.int64)
            expanded = expand_queries(x[rows_], x, k=expand, alpha=alpha, exclude=rows_)
            indices, sims = rank_by_cosine(expanded, x, k, exclude=rows_)
        else:
            indices, sims = top_neighbors(vectors, k, query_rows=q_rows)
        for query_id, result_rows, result_sims in zip(present, indices, sims):
            query_label = str(labels.get(str(query_id), ""))
            result_ids = [str(ids[r]) for r in result_rows]
            correct = [bool(query_label) and str(labels.get(r, "")) == query_label for r in result_ids]
            precision = sum(correct) / k
            for rank, (result_id, sim, ok) in enumerate(zip(result_ids, result_sims, correct), start=1):
                rows.append(
                    {
                        "query_id": str(query_id),
                        "query_label": query_label,
                        "model": model,
                        "k": k,
                        "rank": rank,
                        "result_id": result_id,
                        "result_label": str(labels.get(result_id, "")),
                        "similarity": round(float(sim), 6),
                        "correct": ok,
                        "precision_at_k": precision,
                    }
                )
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


def compare_summary(grid: pd.DataFrame) -> pd.DataFrame:
    """One row per query x model of a :func:`compare_grid` table: ``query_id, query_label, model, precision_at_k``."""
    if grid.empty:
        return pd.DataFrame(columns=["query_id", "query_label", "model", "precision_at_k"])
    return grid.groupby(["query_id", "query_label", "model"], sort=False)["precision_at_k"].first().reset_index()


# --------------------------------------------------------------------------------------------------------------
# Failures


def precision_table(neighbor_indices: np.ndarray, labels: Sequence[str], ids: Sequence[str], k: int) -> pd.DataFrame:
    """``precision@k`` and ``hit@k`` of every item as a query, from its top-``k`` neighbour rows.

    The cheap counterpart of a full :class:`~lens.metrics.RetrievalReport` when only the top ``k`` matter (the
    Failures page): same protocol (the query is not its own match; queries whose label is empty or unique are left
    out), same values as the report's ``precision@k``/``hit@k`` columns.

    Args:
        neighbor_indices: ``(N, >= k)`` int rows of each item's results, best first (e.g. :func:`top_neighbors`).
        labels, ids: ``(N,)`` label and id of every row.
        k: cut-off.

    Returns:
        One row per evaluated query, in row order: ``query_id, label, n_relevant, precision@k, hit@k``.
    """
    k = _check_k(k)
    nbrs = np.asarray(neighbor_indices)
    if nbrs.ndim != 2 or len(nbrs) != len(labels) or len(ids) != len(labels):
        raise LensError(f"need (N, k) neighbours for N labels and ids; got {nbrs.shape}, {len(labels)}, {len(ids)}.")
    label_arr = np.array([str(v) for v in labels], dtype=object)
    codes, names = pd.factorize(label_arr)
    blank = np.array([not str(n).strip() for n in names], dtype=bool)
    n_relevant = np.bincount(codes, minlength=len(names))[codes] - 1
    top = nbrs[:, :k]
    valid = top >= 0
    hits = valid & (codes[np.where(valid, top, 0)] == codes[:, None])
    evaluated = (n_relevant > 0) & ~blank[codes]
    precision = hits.sum(axis=1) / k
    return pd.DataFrame(
        {
            "query_id": [str(i) for i in np.asarray(ids, dtype=object)[evaluated]],
            "label": label_arr[evaluated],
            "n_relevant": n_relevant[evaluated].astype(np.int64),
            f"precision@{k}": precision[evaluated].astype(np.float64),
            f"hit@{k}": hits.any(axis=1)[evaluated].astype(np.float64),
        }
    )


def worst_queries(per_query: pd.DataFrame, metric: str = "precision@10", n: int = 20) -> pd.DataFrame:
    """The ``n`` queries with the lowest ``metric`` in a report's ``per_query`` table.

    Ties are broken by more relevant items first (a miss is worse when there was more to find), then by id, so the
    order is stable.
    """
    if metric not in per_query.columns:
        metrics = [c for c in per_query.columns if "@" in c or c == "r_precision"]
        raise LensError(f"No metric {metric!r} in the report; available: {', '.join(metrics)}.")
    if n < 1:
        raise LensError(f"n must be a positive integer, got {n}.")
    table = per_query.assign(_neg_rel=-per_query["n_relevant"])
    table = table.sort_values([metric, "_neg_rel", "query_id"], kind="stable").drop(columns="_neg_rel")
    return table.head(n).reset_index(drop=True)


def confused_pairs(
    neighbor_indices: np.ndarray,
    labels: Sequence[str],
    *,
    query_rows: Sequence[int] | None = None,
    top: int = 20,
) -> pd.DataFrame:
    """The label pairs most often mixed up in the top-k results.

    Counts, for every query with label ``a`` and every result with a different label ``b``, one ``a -> b``
    confusion; the pair ``{a, b}`` adds both directions. Empty labels are ignored.

    Args:
        neighbor_indices: ``(Q, k)`` int rows of the results (negative = padding), e.g. from :func:`top_neighbors`.
        labels: ``(N,)`` label of every row.
        query_rows: ``(Q,)`` row of each query (default: row ``q`` is query ``q``).
        top: how many pairs to return.

    Returns:
        :data:`CONFUSION_COLUMNS`, most confused first: ``label_a < label_b``; ``a_to_b`` = results labelled
        ``b`` for queries labelled ``a``; ``count`` = both directions; ``share`` = ``count`` over all results of
        the queries of both labels (how much of their top-k went to the other).
    """
    nbrs = np.asarray(neighbor_indices)
    if nbrs.ndim != 2:
        raise LensError(f"neighbor_indices must be (Q, k), got shape {nbrs.shape}.")
    label_arr = np.array([str(v) for v in labels], dtype=object)
    q_rows = np.arange(len(nbrs)) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    if len(q_rows) != len(nbrs):
        raise LensError(f"got {len(q_rows)} query rows for {len(nbrs)} neighbour rows.")
    codes, names = pd.factorize(label_arr)
    n_labels = len(names)
    valid = nbrs >= 0
    q_codes = np.repeat(codes[q_rows][:, None], nbrs.shape[1], axis=1)[valid]
    r_codes = codes[np.where(valid, nbrs, 0)][valid]
    blank = np.array([not str(n).strip() for n in names], dtype=bool)
    keep = (q_codes != r_codes) & ~blank[q_codes] & ~blank[r_codes]
    matrix = np.zeros((n_labels, n_labels), dtype=np.int64)
    np.add.at(matrix, (q_codes[keep], r_codes[keep]), 1)
    results_per_label = np.bincount(codes[q_rows], weights=valid.sum(axis=1), minlength=n_labels)
    a, b = np.nonzero(np.triu(matrix + matrix.T, k=1))
    rows = []
    for i, j in zip(a, b):
        first, second = (i, j) if str(names[i]) < str(names[j]) else (j, i)
        count = int(matrix[first, second] + matrix[second, first])
        total = float(results_per_label[first] + results_per_label[second])
        rows.append(
            {
                "label_a": str(names[first]),
                "label_b": str(names[second]),
                "a_to_b": int(matrix[first, second]),
                "b_to_a": int(matrix[second, first]),
                "count": count,
                "share": count / total if total else 0.0,
            }
        )
    table = pd.DataFrame(rows, columns=list(CONFUSION_COLUMNS))
    if table.empty:
        return table
    table = table.sort_values(["count", "label_a", "label_b"], ascending=[False, True, True], kind="stable")
    return table.head(top).reset_index(drop=True)


def confusion_examples(
    neighbor_indices: np.ndarray,
    labels: Sequence[str],
    ids: Sequence[str],
    label_a: str,
    label_b: str,
    *,
    sims: np.ndarray | None = None,
    limit: int = 12,
) -> pd.DataFrame:
    """Examples of one confusion: queries labelled ``a`` with a result labelled ``b``, and the other way round.

    Returns:
        ``query_id, query_label, result_id, result_label, rank, similarity`` (similarity NaN without ``sims``), the
        best-ranked confusions first, at most ``limit`` rows.
    """
    nbrs = np.asarray(neighbor_indices)
    label_arr = np.array([str(v) for v in labels], dtype=object)
    rows = []
    for first, second in ((label_a, label_b), (label_b, label_a)):
        for q in np.flatnonzero(label_arr == first):
            for rank, r in enumerate(nbrs[q], start=1):
                if r >= 0 and label_arr[r] == second:
                    rows.append(
                        {
                            "query_id": str(ids[int(q)]),
                            "query_label": first,
                            "result_id": str(ids[r]),
                            "result_label": second,
                            "rank": rank,
                            "similarity": float(sims[q, rank - 1]) if sims is not None else float("nan"),
                        }
                    )
    table = pd.DataFrame(rows, columns=["query_id", "query_label", "result_id", "result_label", "rank", "similarity"])
    if table.empty:
        return table
    table = table.sort_values(["rank", "similarity", "query_id"], ascending=[True, False, True], kind="stable")
    return table.head(limit).reset_index(drop=True)


@dataclass
class NearDuplicates:
    """Pairs of items whose vectors are nearly identical.

    Attributes:
        pairs: :data:`DUPLICATE_COLUMNS` (label columns only when labels were given), most similar first, at most
            ``max_pairs`` rows.
        n_found: how many pairs reached the threshold in all (may exceed ``len(pairs)``).
        threshold: the cosine similarity threshold used.
    """

    pairs: pd.DataFrame
    n_found: int
    threshold: float


def near_duplicate_pairs(
    vectors: np.ndarray,
    ids: Sequence[str],
    threshold: float = 0.95,
    *,
    labels: Sequence[str] | None = None,
    max_pairs: int = 1000,
    chunk_size: int = 1024,
) -> NearDuplicates:
    """Every pair ``i < j`` with cosine similarity ``>= threshold``, exactly (chunked ``(c, N)`` products).

    Args:
        vectors: ``(N, dim)`` float; rows are L2-normalised here.
        ids: ``(N,)`` item ids in row order.
        threshold: cosine similarity in ``(-1, 1]``.
        labels: optional ``(N,)`` labels, to say whether a pair shares its label.
        max_pairs: keep the most similar ``max_pairs`` pairs (``n_found`` still counts all).
        chunk_size: rows scored at a time (memory ``chunk_size * N * 4`` bytes).

    Returns:
        A :class:`NearDuplicates`; similarities are rounded to 6 decimals and clipped to 1.
    """
    if not -1.0 < float(threshold) <= 1.0:
        raise LensError(f"threshold must be a cosine similarity in (-1, 1], got {threshold}.")
    if max_pairs < 1 or chunk_size < 1:
        raise LensError("max_pairs and chunk_size must be positive integers.")
    x = _unit_rows(vectors)
    n = len(x)
    if len(ids) != n or (labels is not None and len(labels) != n):
        raise LensError(f"got {n} vectors, {len(ids)} ids and {len(labels) if labels is not None else n} labels.")
    # A hair below the threshold, so that a pair at exactly the threshold is not lost to float32 rounding.
    cut = np.float32(threshold) - np.float32(1e-6)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    n_found = 0
    kept = 0
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        sims = x[start:stop] @ x[start:].T  # only columns >= start: each pair once
        local_i, local_j = np.nonzero(sims >= cut)
        upper = local_j + start > local_i + start
        local_i, local_j = local_i[upper], local_j[upper]
        values = np.minimum(sims[local_i, local_j], np.float32(1.0))
        ok = values >= np.float32(threshold) - np.float32(1e-6)
        n_found += int(ok.sum())
        found_i.append(local_i[ok] + start)
        found_j.append(local_j[ok] + start)
        found_s.append(values[ok])
        kept += int(ok.sum())
        if kept > 4 * max_pairs:  # prune as we go: memory stays O(max_pairs) however low the threshold
            i_all, j_all, s_all = (np.concatenate(a) for a in (found_i, found_j, found_s))
            order = np.lexsort((j_all, i_all, -s_all))[:max_pairs]
            found_i, found_j, found_s = [i_all[order]], [j_all[order]], [s_all[order]]
            kept = len(order)
    i_all = np.concatenate(found_i) if found_i else np.empty(0, dtype=np.int64)
    j_all = np.concatenate(found_j) if found_j else np.empty(0, dtype=np.int64)
    s_all = np.concatenate(found_s) if found_s else np.empty(0, dtype=np.float32)
    order = np.lexsort((j_all, i_all, -s_all))[:max_pairs]
    data: dict[str, object] = {
        "id_a": [str(ids[i]) for i in i_all[order]],
        "id_b": [str(ids[j]) for j in j_all[order]],
        "similarity": np.round(s_all[order].astype(np.float64), 6),
    }
    columns = ["id_a", "id_b", "similarity"]
    if labels is not None:
        la = [str(labels[i]) for i in i_all[order]]
        lb = [str(labels[j]) for j in j_all[order]]
        data.update({"label_a": la, "label_b": lb, "same_label": [p == q for p, q in zip(la, lb)]})
        columns = list(DUPLICATE_COLUMNS)
    return NearDuplicates(pairs=pd.DataFrame(data, columns=columns), n_found=n_found, threshold=float(threshold))


# --------------------------------------------------------------------------------------------------------------
# Metrics tables


def per_category_matrix(reports: Mapping[str, RetrievalReport], metric: str) -> pd.DataFrame:
    """One metric per category and model: index = label (most queries first), one column per model.

    Raises:
        LensError: a report has no such metric.
    """
    frames = []
    for model, report in reports.items():
        table = report.per_category
        if metric not in table.columns:
            raise LensError(
                f"No metric {metric!r} in the report of {model}; available: {', '.join(report.metric_keys)}."
            )
        frames.append(table.set_index("label")[[metric]].rename(columns={metric: model}))
    if not frames:
        return pd.DataFrame()
    matrix = pd.concat(frames, axis=1)
    sizes = pd.concat([r.per_category.set_index("label")["n_queries"] for r in reports.values()], axis=1).max(axis=1)
    order = sorted(matrix.index, key=lambda label: (-int(sizes.get(label, 0)), str(label)))
    matrix = matrix.loc[order]
    matrix.index.name = "label"
    return matrix
