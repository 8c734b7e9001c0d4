"""Retrieval metrics: pure array functions plus one exact evaluator.

Every metric reads a ``(Q, depth)`` boolean *relevance matrix*: row ``q`` is query ``q``'s ranked result list,
best first, and ``relevance[q, j]`` says whether the ``j``-th result shares the query's label. Metrics return one
float64 value per query, ``(Q,)``, so that callers can average them however they like (micro over queries, macro
over categories, or per category in the dashboard).

Definitions, written down once because the literature disagrees:

* ``precision@k`` = relevant in the top ``k`` / ``k``. A ranking shorter than ``k`` counts its missing positions
  as not relevant (the divisor stays ``k``).
* ``recall@k`` = relevant in the top ``k`` / *all* relevant items for the query (``n_relevant``). This is the
  information-retrieval recall. It is **not** the "recall@k" of many metric-learning papers (e.g. CUB/SOP results),
  which is 1 if *any* relevant item is in the top ``k``; that quantity is :func:`hit_at_k` here (``hit@k``, also
  called retrieval accuracy@k).
* ``map@k`` (AP@k per query) = ``sum_{i<=k} P@i * rel_i / min(k, n_relevant)``: the divisor is the best number
  of hits achievable in the top ``k``, so a perfect ranking scores 1 even when ``n_relevant > k``.
* ``r_precision`` = precision in the top ``R`` with ``R = n_relevant``.
* ``map@r`` = ``(1/R) sum_{i<=R} P@i * rel_i`` (Musgrave et al. 2020, "A Metric Learning Reality Check"; the same
  as pytorch-metric-learning's ``mean_average_precision_at_r``).

Queries with no relevant item (``n_relevant == 0``) get NaN for recall, AP, R-precision and MAP@R; the evaluators
leave such queries out of every mean and count them instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np
import pandas as pd

from lens.errors import LensError
from lens.vectors import l2_normalize, rank_by_cosine

__all__ = [
    "RetrievalReport",
    "average_precision_at_k",
    "count_relevant",
    "evaluate_neighbors",
    "evaluate_retrieval",
    "hit_at_k",
    "map_at_r",
    "precision_at_k",
    "r_precision",
    "recall_at_k",
    "relevance_from_labels",
    "text_to_image_recall",
]

# Stable order of the metric families in reports; the ``@k`` families expand once per k.
_K_METRICS = ("precision", "recall", "hit", "map")
_R_METRICS = ("map@r", "r_precision")


# --------------------------------------------------------------------------------------------------------------
# Labels -> relevance
# --------------------------------------------------------------------------------------------------------------


def _as_object_array(labels: Any) -> np.ndarray:
    """Labels as a 1-D object array, element by element (tuples stay single labels)."""
    values = list(labels.tolist() if isinstance(labels, np.ndarray) else labels)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _missing_mask(labels: np.ndarray) -> np.ndarray:
    """True where a label is missing: None, NaN, pd.NA, or a blank string."""
    missing = np.asarray(pd.isna(labels), dtype=bool)
    blank = np.fromiter((isinstance(v, str) and not v.strip() for v in labels), dtype=bool, count=len(labels))
    return missing | blank


def _label_codes(*label_arrays: Any) -> list[np.ndarray]:
    """Encodes several label arrays with one shared integer code book; missing labels get -1.

    Integer codes make relevance a vectorised ``==`` and let ``bincount`` count class sizes.
    """
    arrays = [_as_object_array(a) for a in label_arrays]
    joined = np.concatenate(arrays) if arrays else np.empty(0, dtype=object)
    joined = joined.copy()
    joined[_missing_mask(joined)] = None  # factorize codes None as -1
    codes, _ = pd.factorize(joined, use_na_sentinel=True)
    codes = np.asarray(codes, dtype=np.int64)
    bounds = np.cumsum([0] + [len(a) for a in arrays])
    return [codes[bounds[i] : bounds[i + 1]] for i in range(len(arrays))]


def relevance_from_labels(
    ranked_indices: np.ndarray, query_labels: Sequence[Any] | np.ndarray, gallery_labels: Sequence[Any] | np.ndarray
) -> np.ndarray:
    """Marks which ranked results share their query's label.

    Args:
        ranked_indices: ``(Q, depth)`` int gallery indices, best first. Negative entries are padding (no result)
            and are never relevant, so rankings of unequal length can share one matrix.
        query_labels: ``(Q,)`` labels of the queries.
        gallery_labels: ``(N,)`` labels of the gallery.

    Returns:
        ``(Q, depth)`` bool relevance matrix. A missing label ("", whitespace, None, NaN) matches nothing, not
        even another missing label.
    """
    ranked = np.asarray(ranked_indices)
    if ranked.ndim != 2 or (ranked.size and not np.issubdtype(ranked.dtype, np.integer)):
        raise ValueError(
            f"ranked_indices must be a 2-D int array (queries x depth); got shape {ranked.shape}, dtype {ranked.dtype}"
        )
    q_codes, g_codes = _label_codes(query_labels, gallery_labels)
    if len(q_codes) != len(ranked):
        raise ValueError(f"got {len(q_codes)} query labels for {len(ranked)} ranked rows; pass one per query")
    if ranked.size and ranked.max() >= len(g_codes):
        raise ValueError(
            f"ranked_indices reach {int(ranked.max())} but the gallery has {len(g_codes)} labels; "
            "pass the labels of the gallery that was ranked"
        )
    present = ranked >= 0
    if not present.any():  # also covers an empty gallery, where there is nothing to index
        return np.zeros(ranked.shape, dtype=bool)
    hits = g_codes[np.where(present, ranked, 0)] == q_codes[:, None]
    return hits & present & (q_codes[:, None] >= 0)


def count_relevant(
    query_labels: Sequence[Any] | np.ndarray,
    gallery_labels: Sequence[Any] | np.ndarray,
    *,
    query_in_gallery: bool = True,
) -> np.ndarray:
    """Counts, per query, the gallery items that share its label.

    Args:
        query_labels: ``(Q,)`` labels of the queries.
        gallery_labels: ``(N,)`` labels of the gallery.
        query_in_gallery: the queries are themselves gallery items (leave-one-out evaluation), so each query's
            own entry is subtracted: it is excluded from its ranking and must not count as findable.

    Returns:
        ``(Q,)`` int64 ``n_relevant``. Queries with a missing label have 0.
    """
    q_codes, g_codes = _label_codes(query_labels, gallery_labels)
    n_codes = int(max(q_codes.max(initial=-1), g_codes.max(initial=-1))) + 1
    # Class sizes by code; minlength covers labels that occur only among the queries (size 0).
    sizes = np.bincount(g_codes[g_codes >= 0], minlength=max(n_codes, 1))
    counts = np.where(q_codes >= 0, sizes[np.maximum(q_codes, 0)], 0).astype(np.int64)
    if query_in_gallery:
        counts = np.maximum(counts - (q_codes >= 0), 0)
    return counts


# --------------------------------------------------------------------------------------------------------------
# Metrics over a relevance matrix
# --------------------------------------------------------------------------------------------------------------


def _check_relevance(relevance: np.ndarray) -> np.ndarray:
    rel = np.asarray(relevance)
    if rel.ndim != 2:
        raise ValueError(f"relevance must be 2-D (queries x depth); got shape {rel.shape}")
    return rel.astype(bool, copy=False)


def _check_k(k: int) -> int:
    if not isinstance(k, Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    return int(k)


def _check_n_relevant(n_relevant: np.ndarray, n_queries: int) -> np.ndarray:
    n_rel = np.asarray(n_relevant)
    if n_rel.shape != (n_queries,):
        raise ValueError(f"n_relevant must have shape ({n_queries},), one count per query; got {n_rel.shape}")
    if n_rel.size and n_rel.min() < 0:
        raise ValueError("n_relevant must be non-negative counts")
    return n_rel.astype(np.int64, copy=False)


def _hits_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    # Columns past the ranking's end are simply absent: they add no hits.
    return rel[:, :k].sum(axis=1, dtype=np.int64)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, NaN where den == 0 (no relevant item: the metric is undefined, not 0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_at_k(relevance: np.ndarray, k: int) -> np.ndarray:
    """Precision in the top ``k``.

    Args:
        relevance: ``(Q, depth)`` bool. If ``depth < k`` the missing positions count as not relevant.
        k: cut-off, a positive int.

    Returns:
        ``(Q,)`` float64, hits in the top ``k`` divided by ``k``.
    """
    rel, k = _check_relevance(relevance), _check_k(k)
    return _hits_at_k(rel, k) / np.float64(k)


def recall_at_k(relevance: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Share of *all* the query's relevant items that appear in the top ``k``.

    This is information-retrieval recall, not the "any hit in the top k" quantity that many metric-learning
    papers report as recall@k; that one is :func:`hit_at_k`.

    Args:
        relevance: ``(Q, depth)`` bool.
        n_relevant: ``(Q,)`` int, relevant items in the whole gallery (see :func:`count_relevant`).
        k: cut-off, a positive int.

    Returns:
        ``(Q,)`` float64 in [0, 1]; NaN where ``n_relevant == 0``.
    """
    rel, k = _check_relevance(relevance), _check_k(k)
    n_rel = _check_n_relevant(n_relevant, len(rel))
    return _safe_divide(_hits_at_k(rel, k), n_rel)


def hit_at_k(relevance: np.ndarray, k: int) -> np.ndarray:
    """Whether at least one relevant item is in the top ``k`` ("retrieval accuracy@k").

    Args:
        relevance: ``(Q, depth)`` bool.
        k: cut-off, a positive int.

    Returns:
        ``(Q,)`` float64, 1.0 or 0.0.
    """
    rel, k = _check_relevance(relevance), _check_k(k)
    return (_hits_at_k(rel, k) > 0).astype(np.float64)


def _precision_at_each_rank(rel: np.ndarray) -> np.ndarray:
    """``(Q, depth)`` float64, P@i for i = 1..depth, from one cumulative sum (no per-query loop)."""
    return np.cumsum(rel, axis=1, dtype=np.float64) / np.arange(1, rel.shape[1] + 1, dtype=np.float64)


def average_precision_at_k(relevance: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """AP@k: ``sum_{i<=k} P@i * rel_i / min(k, n_relevant)``.

    The divisor is the most hits the top ``k`` can hold, so a perfect ranking scores 1 even when there are more
    than ``k`` relevant items (dividing by the hits actually found instead would reward rankings that find one
    relevant item and nothing else). Averaged over queries this is the report's ``map@k``.

    Args:
        relevance: ``(Q, depth)`` bool. If ``depth < k`` the missing positions count as not relevant.
        n_relevant: ``(Q,)`` int, relevant items in the whole gallery.
        k: cut-off, a positive int.

    Returns:
        ``(Q,)`` float64 in [0, 1]; NaN where ``n_relevant == 0``.
    """
    rel, k = _check_relevance(relevance), _check_k(k)
    n_rel = _check_n_relevant(n_relevant, len(rel))
    top = rel[:, :k]
    ap_sum = (_precision_at_each_rank(top) * top).sum(axis=1)
    return _safe_divide(ap_sum, np.minimum(n_rel, k))


def _r_metrics(rel: np.ndarray, n_rel: np.ndarray, valid_depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R-precision and MAP@R, NaN where ``n_relevant == 0`` or the ranking (``valid_depth``) is shorter than R.

    Args:
        rel: ``(Q, depth)`` bool.
        n_rel: ``(Q,)`` int64, R per query.
        valid_depth: ``(Q,)`` int64, how many leading columns of each row are real results.

    Returns:
        ``(r_precision, map_at_r)``, each ``(Q,)`` float64.
    """
    n_queries, depth = rel.shape
    defined = (n_rel > 0) & (n_rel <= np.minimum(valid_depth, depth))
    r_prec = np.full(n_queries, np.nan)
    map_r = np.full(n_queries, np.nan)
    if not defined.any():
        return r_prec, map_r
    cum = np.cumsum(rel, axis=1, dtype=np.float64)
    rows = np.flatnonzero(defined)
    r = n_rel[rows]
    r_prec[rows] = cum[rows, r - 1] / r
    # Only ranks i <= R contribute to MAP@R: mask the rest instead of looping over queries.
    within_r = np.arange(1, depth + 1)[None, :] <= r[:, None]
    prec = cum[rows] / np.arange(1, depth + 1, dtype=np.float64)
    map_r[rows] = (prec * (rel[rows] & within_r)).sum(axis=1) / r
    return r_prec, map_r


def _check_depth_covers_r(rel: np.ndarray, n_rel: np.ndarray, name: str) -> None:
    if n_rel.size and n_rel.max() > rel.shape[1]:
        raise ValueError(
            f"{name} needs each ranking to be at least R = n_relevant long; relevance has {rel.shape[1]} columns "
            f"but the largest R is {int(n_rel.max())}. Rank to depth >= max(n_relevant)."
        )


def r_precision(relevance: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Precision in the top ``R``, where ``R = n_relevant`` differs per query.

    Args:
        relevance: ``(Q, depth)`` bool with ``depth >= max(n_relevant)``.
        n_relevant: ``(Q,)`` int, R per query.

    Returns:
        ``(Q,)`` float64 in [0, 1]; NaN where ``n_relevant == 0``.

    Raises:
        ValueError: if the relevance matrix has fewer than ``max(n_relevant)`` columns.
    """
    rel = _check_relevance(relevance)
    n_rel = _check_n_relevant(n_relevant, len(rel))
    _check_depth_covers_r(rel, n_rel, "r_precision")
    return _r_metrics(rel, n_rel, np.full(len(rel), rel.shape[1]))[0]


def map_at_r(relevance: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """MAP@R per query: ``(1/R) sum_{i<=R} P@i * rel_i`` with ``R = n_relevant``.

    As in Musgrave et al. 2020 and pytorch-metric-learning's ``mean_average_precision_at_r``.

    Args:
        relevance: ``(Q, depth)`` bool with ``depth >= max(n_relevant)``.
        n_relevant: ``(Q,)`` int, R per query.

    Returns:
        ``(Q,)`` float64 in [0, 1]; NaN where ``n_relevant == 0``.

    Raises:
        ValueError: if the relevance matrix has fewer than ``max(n_relevant)`` columns.
    """
    rel = _check_relevance(relevance)
    n_rel = _check_n_relevant(n_relevant, len(rel))
    _check_depth_covers_r(rel, n_rel, "map_at_r")
    return _r_metrics(rel, n_rel, np.full(len(rel), rel.shape[1]))[1]


# --------------------------------------------------------------------------------------------------------------
# Evaluators
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RetrievalReport:
    """Retrieval quality of one embedding set, with stable keys.

    Metric keys, in this order: ``precision@k`` for each k in ``ks``, then ``recall@k``, ``hit@k``, ``map@k``
    (mean AP@k), then ``map@r`` and ``r_precision``. ``recall@k`` is the share of *all* relevant items found;
    the "any relevant in the top k" rate is ``hit@k``.

    Attributes:
        summary: micro averages (mean over evaluated queries) per metric key, plus ``n_queries`` (evaluated),
            ``n_skipped`` (queries without any relevant item) and ``n_truncated`` (evaluated queries whose
            ranking was shorter than R, so their ``map@r``/``r_precision`` are NaN and left out of those two
            means; always 0 for :func:`evaluate_retrieval`). A mean over zero queries is NaN.
        macro: per-category macro averages (mean over labels of each label's mean) per metric key, plus
            ``n_categories``.
        per_query: one row per evaluated query, in query order: ``query_id``, ``label``, ``n_relevant``, then
            one float64 column per metric key.
        per_category: one row per label, in order of first appearance among the queries: ``label``,
            ``n_queries``, then the per-label mean of each metric.
        skipped_ids: ids of the queries left out (missing label, or no other item with the same label).
        label_column: the catalog column the labels came from, if the caller said.
        ks: the cut-offs used, sorted and unique.
    """

    summary: dict[str, float]
    macro: dict[str, float]
    per_query: pd.DataFrame
    per_category: pd.DataFrame
    skipped_ids: list[str] = field(default_factory=list)
    label_column: str | None = None
    ks: tuple[int, ...] = (1, 5, 10)

    @property
    def metric_keys(self) -> list[str]:
        """The metric keys of this report, in display order."""
        return _metric_keys(self.ks)


def _metric_keys(ks: Sequence[int]) -> list[str]:
    return [f"{name}@{k}" for name in _K_METRICS for k in ks] + list(_R_METRICS)


def _validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
    try:
        values: list[Any] = list(ks)
    except TypeError:  # a bare int
        values = [ks]
    if not values or any(not isinstance(k, Integral) or isinstance(k, bool) or k < 1 for k in values):
        raise LensError(f"ks must be a non-empty list of positive ints such as (1, 5, 10); got {ks!r}")
    return tuple(sorted({int(k) for k in values}))


def _validate_items(
    labels: Sequence[Any] | np.ndarray, ids: Sequence[str] | None, n_items: int
) -> tuple[np.ndarray, list[str]]:
    """Labels as an object array and ids as strings, both of length ``n_items``."""
    try:
        label_arr = _as_object_array(labels)
    except TypeError as exc:
        raise LensError(f"labels must be a sequence with one label per item; got {type(labels).__name__}") from exc
    if len(label_arr) != n_items:
        raise LensError(
            f"got {len(label_arr)} labels for {n_items} items; pass exactly one label per item, in row order"
        )
    if ids is None:
        id_list = [str(i) for i in range(n_items)]
    else:
        id_list = [str(i) for i in ids]
        if len(id_list) != n_items:
            raise LensError(f"got {len(id_list)} ids for {n_items} items; pass one id per item, in row order")
    return label_arr, id_list


def _validate_query_indices(query_indices: Sequence[int] | None, n_items: int) -> np.ndarray:
    if query_indices is None:
        return np.arange(n_items, dtype=np.int64)
    q = np.asarray(query_indices)
    if q.ndim != 1 or (q.size and not np.issubdtype(q.dtype, np.integer)):
        raise LensError("query_indices must be a 1-D sequence of int item positions (row numbers of the vectors)")
    q = q.astype(np.int64, copy=False)
    if q.size and (q.min() < 0 or q.max() >= n_items):
        raise LensError(
            f"query_indices must lie in [0, {n_items - 1}] (row numbers of the {n_items} items); "
            f"got values from {int(q.min())} to {int(q.max())}"
        )
    if len(np.unique(q)) != len(q):
        raise LensError("query_indices contain duplicates; pass each query once")
    return q


def _query_setup(
    labels: Sequence[Any] | np.ndarray, ids: Sequence[str] | None, query_indices: Sequence[int] | None, n_items: int
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Shared front half of both evaluators.

    Returns:
        ``(label_arr, id_list, queries, n_relevant, evaluated)``: queries is ``(Q,)`` int64 item positions,
        n_relevant ``(Q,)`` int64 (leave-one-out: the query is not its own match), evaluated ``(Q,)`` bool.
    """
    label_arr, id_list = _validate_items(labels, ids, n_items)
    queries = _validate_query_indices(query_indices, n_items)
    n_relevant = count_relevant(label_arr[queries], label_arr, query_in_gallery=True)
    return label_arr, id_list, queries, n_relevant, n_relevant > 0


def _build_report(
    *,
    relevance: np.ndarray,
    valid_depth: np.ndarray,
    queries: np.ndarray,
    n_relevant: np.ndarray,
    evaluated: np.ndarray,
    label_arr: np.ndarray,
    id_list: list[str],
    ks: tuple[int, ...],
    label_column: str | None,
) -> RetrievalReport:
    """Turns the relevance of the evaluated queries into a report (shared back half of both evaluators).

    Args:
        relevance: ``(E, depth)`` bool, rows of the evaluated queries only, in query order.
        valid_depth: ``(E,)`` int64, real results per row (the rest is padding).
        queries, n_relevant, evaluated: ``(Q,)`` as returned by :func:`_query_setup`.
    """
    eval_q = queries[evaluated]
    n_rel = n_relevant[evaluated]
    columns: dict[str, np.ndarray] = {}
    for name, fn in (
        ("precision", lambda k: precision_at_k(relevance, k)),
        ("recall", lambda k: recall_at_k(relevance, n_rel, k)),
        ("hit", lambda k: hit_at_k(relevance, k)),
        ("map", lambda k: average_precision_at_k(relevance, n_rel, k)),
    ):
        for k in ks:
            columns[f"{name}@{k}"] = fn(k)
    r_prec, map_r = _r_metrics(relevance, n_rel, valid_depth)
    columns["map@r"] = map_r
    columns["r_precision"] = r_prec

    keys = _metric_keys(ks)
    per_query = pd.DataFrame(
        {
            "query_id": pd.Series([id_list[i] for i in eval_q], dtype=object),
            "label": pd.Series(label_arr[eval_q], dtype=object),
            "n_relevant": n_rel.astype(np.int64),
            **{key: columns[key].astype(np.float64) for key in keys},
        }
    )
    # NaN entries (truncated rankings) are skipped by pandas' means: each mean runs over the queries where the
    # metric is defined, and n_truncated says how many were left out.
    summary = {key: float(per_query[key].mean()) if len(per_query) else float("nan") for key in keys}
    summary["n_queries"] = float(len(eval_q))
    summary["n_skipped"] = float(int((~evaluated).sum()))
    summary["n_truncated"] = float(int(((n_rel > 0) & (n_rel > valid_depth)).sum()))

    if len(per_query):
        grouped = per_query.groupby("label", sort=False, dropna=False)
        per_category = grouped[keys].mean()
        per_category.insert(0, "n_queries", grouped.size().astype(np.int64))
        per_category = per_category.reset_index()
    else:
        per_category = pd.DataFrame({"label": pd.Series([], dtype=object), "n_queries": pd.Series([], dtype=np.int64)})
        for key in keys:
            per_category[key] = pd.Series([], dtype=np.float64)
    macro = {key: float(per_category[key].mean()) if len(per_category) else float("nan") for key in keys}
    macro["n_categories"] = float(len(per_category))

    return RetrievalReport(
        summary=summary,
        macro=macro,
        per_query=per_query,
        per_category=per_category,
        skipped_ids=[id_list[i] for i in queries[~evaluated]],
        label_column=label_column,
        ks=ks,
    )


def evaluate_retrieval(
    vectors: np.ndarray,
    labels: Sequence[Any] | np.ndarray,
    ids: Sequence[str] | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    query_indices: Sequence[int] | None = None,
    label_column: str | None = None,
) -> RetrievalReport:
    """Exact leave-one-out retrieval evaluation by cosine similarity.

    Each query is ranked against every item except itself, so a query never counts as its own match (keeping
    it in the gallery would give precision@1 = 1 for free). The ranking runs to depth ``max(max(ks), max R)``
    so ``map@r`` and ``r_precision`` are exact. Queries whose label is missing or unique have nothing to find;
    they are left out of every mean and listed in ``skipped_ids``.

    Args:
        vectors: ``(N, d)`` float embeddings in catalog row order; rows are L2-normalised here (a no-op for
            encoder output) so the ranking is by cosine.
        labels: ``(N,)`` labels (e.g. category); "", None or NaN means unlabelled.
        ids: ``(N,)`` item ids for the report; defaults to the row numbers as strings.
        ks: cut-offs for the ``@k`` metrics, positive ints.
        query_indices: row numbers of the items to use as queries, in the order wanted in ``per_query``;
            defaults to all items. The gallery is always all items (minus the query).
        label_column: recorded in the report, e.g. the catalog column the labels came from.

    Returns:
        A :class:`RetrievalReport`.

    Raises:
        LensError: on inputs of the wrong shape or range; the message says what was expected.
    """
    vecs = np.asarray(vectors)
    if vecs.ndim != 2:
        raise LensError(f"vectors must be a 2-D array (items x dim); got shape {vecs.shape}")
    if not np.issubdtype(vecs.dtype, np.number) or not np.isfinite(vecs).all():
        raise LensError("vectors must be finite numbers; re-embed the rows that contain NaN or inf")
    ks_t = _validate_ks(ks)
    n_items = len(vecs)
    label_arr, id_list, queries, n_relevant, evaluated = _query_setup(labels, ids, query_indices, n_items)

    vecs = l2_normalize(vecs)  # zero rows stay zero rather than becoming NaN

    eval_q = queries[evaluated]
    depth = max(max(ks_t), int(n_relevant.max(initial=0)))
    ranked, _ = rank_by_cosine(vecs[eval_q], vecs, depth, exclude=eval_q)
    relevance = relevance_from_labels(ranked, label_arr[eval_q], label_arr)
    # Every evaluated query has R <= N - 1 candidates and depth >= R, so all rankings cover R.
    valid_depth = np.full(len(eval_q), ranked.shape[1], dtype=np.int64)
    return _build_report(
        relevance=relevance,
        valid_depth=valid_depth,
        queries=queries,
        n_relevant=n_relevant,
        evaluated=evaluated,
        label_arr=label_arr,
        id_list=id_list,
        ks=ks_t,
        label_column=label_column,
    )


def evaluate_neighbors(
    neighbor_indices: np.ndarray,
    query_indices: Sequence[int] | None,
    labels: Sequence[Any],
    ids: Sequence[str] | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
    label_column: str | None = None,
) -> RetrievalReport:
    """The same report as :func:`evaluate_retrieval`, from precomputed rankings (e.g. an approximate index).

    The gallery is every item; a query's own index is removed from its neighbour list if present (and the rest
    shifted up), so asking an index for ``k + 1`` neighbours of an indexed item is fine. Positions past the end
    of a ranking count as not relevant: ``precision@k`` still divides by ``k`` and ``recall@k`` by all relevant
    items, which is what the index actually delivered. ``map@r`` and ``r_precision`` need a ranking at least
    ``R = n_relevant`` long; for shorter ones they are NaN, left out of those two means, and counted in
    ``summary["n_truncated"]``.

    Args:
        neighbor_indices: ``(Q, depth)`` int item indices, best first; negative entries are padding.
        query_indices: ``(Q,)`` int item index of each row's query; None means row ``i`` is item ``i``.
        labels: ``(N,)`` labels of all items; "", None or NaN means unlabelled.
        ids: ``(N,)`` item ids; defaults to the row numbers as strings.
        ks: cut-offs for the ``@k`` metrics, positive ints.
        label_column: recorded in the report.

    Returns:
        A :class:`RetrievalReport`.

    Raises:
        LensError: on inputs of the wrong shape or range; the message says what was expected.
    """
    ks_t = _validate_ks(ks)
    neighbors = np.asarray(neighbor_indices)
    if neighbors.ndim != 2 or (neighbors.size and not np.issubdtype(neighbors.dtype, np.integer)):
        raise LensError(
            f"neighbor_indices must be a 2-D int array (queries x depth); got shape {neighbors.shape}, "
            f"dtype {neighbors.dtype}"
        )
    neighbors = neighbors.astype(np.int64, copy=True)  # copied: padding is written into it below
    n_items = len(_as_object_array(labels))
    label_arr, id_list, queries, n_relevant, evaluated = _query_setup(labels, ids, query_indices, n_items)
    if len(queries) != len(neighbors):
        raise LensError(f"got {len(neighbors)} neighbour rows for {len(queries)} query indices; pass one row per query")
    if neighbors.size and neighbors.max() >= n_items:
        raise LensError(
            f"neighbor_indices reach {int(neighbors.max())} but there are only {n_items} labels; "
            "pass the labels of the whole indexed catalog, in index order"
        )

    # Drop self-matches and padding by a stable sort that moves them to the end of each row, then mark them
    # as padding: one vectorised pass, and the order of the real neighbours is kept.
    drop = (neighbors == queries[:, None]) | (neighbors < 0)
    order = np.argsort(drop, axis=1, kind="stable")
    neighbors = np.take_along_axis(neighbors, order, axis=1)
    drop = np.take_along_axis(drop, order, axis=1)
    neighbors[drop] = -1
    valid_depth = (~drop).sum(axis=1).astype(np.int64)

    relevance = relevance_from_labels(neighbors[evaluated], label_arr[queries[evaluated]], label_arr)
    return _build_report(
        relevance=relevance,
        valid_depth=valid_depth[evaluated],
        queries=queries,
        n_relevant=n_relevant,
        evaluated=evaluated,
        label_arr=label_arr,
        id_list=id_list,
        ks=ks_t,
        label_column=label_column,
    )


def text_to_image_recall(
    text_vectors: np.ndarray, image_vectors: np.ndarray, target_rows: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Known-item search: the share of text queries whose own image is in the top ``k``.

    Query ``i`` (row ``i`` of ``text_vectors``) has exactly one hit, row ``target_rows[i]`` of ``image_vectors``
    (its product's own photo); ranking is by dot product (rows L2-normalised by the caller, as encoders return
    them). An image scoring *equal* to the hit is ranked after it (ties count in the query's favour).

    Args:
        text_vectors: ``(Q, d)`` query vectors.
        image_vectors: ``(N, d)`` gallery vectors.
        target_rows: ``(Q,)`` ints, the gallery row of each query's own image.
        ks: cut-offs.

    Returns:
        ``{"text_r@k": share}`` per ``k``, floats in [0, 1].
    """
    targets = np.asarray(target_rows, dtype=np.int64)
    if len(targets) != len(text_vectors):
        raise LensError(f"one target row per text query: {len(text_vectors)} queries, {len(targets)} targets")
    ks_t = _validate_ks(ks)
    rank = np.empty(len(targets), dtype=np.int64)
    for start in range(0, len(targets), 1024):  # (1024 x N) similarities at a time: bounded memory
        sims = text_vectors[start : start + 1024] @ image_vectors.T
        own = sims[np.arange(len(sims)), targets[start : start + 1024]]
        rank[start : start + len(sims)] = (sims > own[:, None]).sum(axis=1)  # 0 = first
    return {f"text_r@{k}": float((rank < k).mean()) if len(rank) else float("nan") for k in ks_t}
