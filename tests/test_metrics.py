"""Tests for lens.metrics: hand-computed cases, misuse, and pytorch-metric-learning as an oracle."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lens.errors import LensError
from lens.metrics import (
    RetrievalReport,
    average_precision_at_k,
    count_relevant,
    evaluate_neighbors,
    evaluate_retrieval,
    hit_at_k,
    map_at_r,
    precision_at_k,
    r_precision,
    recall_at_k,
    relevance_from_labels,
)
from lens.vectors import rank_by_cosine

# ----------------------------------------------------------------------------------------------------------------
# A hand-built 3 x 5 relevance matrix
# ----------------------------------------------------------------------------------------------------------------

# q0: hits at ranks 1 and 3, R = 2 (both relevant items found).
# q1: hits at ranks 2 and 5, R = 3 (one relevant item lies deeper than rank 5).
# q2: no hit in the top 5, R = 1.
REL = np.array(
    [
        [1, 0, 1, 0, 0],
        [0, 1, 0, 0, 1],
        [0, 0, 0, 0, 0],
    ],
    dtype=bool,
)
N_REL = np.array([2, 3, 1])


def test_precision_at_k_hand():
    # P@1: q0 1/1, q1 0/1, q2 0.   P@3: q0 2/3, q1 1/3, q2 0.   P@5: q0 2/5, q1 2/5, q2 0.
    np.testing.assert_allclose(precision_at_k(REL, 1), [1, 0, 0])
    np.testing.assert_allclose(precision_at_k(REL, 3), [2 / 3, 1 / 3, 0])
    np.testing.assert_allclose(precision_at_k(REL, 5), [2 / 5, 2 / 5, 0])
    # k beyond the ranking: missing positions are not relevant, the divisor stays k: q0 2/10.
    np.testing.assert_allclose(precision_at_k(REL, 10), [0.2, 0.2, 0])
    assert precision_at_k(REL, 1).dtype == np.float64


def test_recall_at_k_hand():
    # recall = hits in top k / ALL relevant (not the "any hit" definition).
    # R@1: q0 1/2, q1 0/3, q2 0/1.   R@3: q0 2/2, q1 1/3, q2 0.   R@5: q0 1, q1 2/3, q2 0.
    np.testing.assert_allclose(recall_at_k(REL, N_REL, 1), [1 / 2, 0, 0])
    np.testing.assert_allclose(recall_at_k(REL, N_REL, 3), [1, 1 / 3, 0])
    np.testing.assert_allclose(recall_at_k(REL, N_REL, 5), [1, 2 / 3, 0])


def test_hit_at_k_hand():
    # hit@1: q0 yes, q1 no (first hit at rank 2), q2 no.   hit@2 and hit@5: q0, q1 yes.
    np.testing.assert_array_equal(hit_at_k(REL, 1), [1, 0, 0])
    np.testing.assert_array_equal(hit_at_k(REL, 2), [1, 1, 0])
    np.testing.assert_array_equal(hit_at_k(REL, 5), [1, 1, 0])


def test_average_precision_at_k_hand():
    # AP@k = sum_{i<=k} P@i * rel_i / min(k, R).
    # AP@1: q0 P@1=1 -> 1/min(1,2) = 1;  q1 no hit at 1 -> 0/min(1,3) = 0;  q2 0.
    # AP@3: q0 (P@1 + P@3) / min(3,2) = (1 + 2/3) / 2 = 5/6;  q1 P@2 / min(3,3) = (1/2) / 3 = 1/6;  q2 0.
    # AP@5: q0 unchanged 5/6;  q1 (P@2 + P@5) / 3 = (1/2 + 2/5) / 3 = 0.9 / 3 = 0.3;  q2 0.
    np.testing.assert_allclose(average_precision_at_k(REL, N_REL, 1), [1, 0, 0])
    np.testing.assert_allclose(average_precision_at_k(REL, N_REL, 3), [5 / 6, 1 / 6, 0])
    np.testing.assert_allclose(average_precision_at_k(REL, N_REL, 5), [5 / 6, 0.3, 0])


def test_r_precision_and_map_at_r_hand():
    # R-precision: q0 hits in top 2 = 1 -> 1/2;  q1 hits in top 3 = 1 -> 1/3;  q2 hits in top 1 = 0 -> 0.
    np.testing.assert_allclose(r_precision(REL, N_REL), [1 / 2, 1 / 3, 0])
    # MAP@R = (1/R) sum_{i<=R} P@i * rel_i:
    # q0 (1/2)(P@1*1 + P@2*0) = 1/2;  q1 (1/3)(P@2*1) = (1/3)(1/2) = 1/6 (rank 5 is past R=3);  q2 0.
    np.testing.assert_allclose(map_at_r(REL, N_REL), [1 / 2, 1 / 6, 0])


def test_no_relevant_gives_nan_not_zero():
    rel = np.array([[0, 0], [1, 0]], dtype=bool)
    n_rel = np.array([0, 1])
    assert math.isnan(recall_at_k(rel, n_rel, 2)[0])
    assert math.isnan(average_precision_at_k(rel, n_rel, 2)[0])
    assert math.isnan(r_precision(rel, n_rel)[0])
    assert math.isnan(map_at_r(rel, n_rel)[0])
    assert r_precision(rel, n_rel)[1] == 1.0


def test_r_metrics_refuse_short_rankings():
    with pytest.raises(ValueError, match="Rank to depth >= max"):
        r_precision(REL, np.array([6, 1, 1]))
    with pytest.raises(ValueError, match="at least R = n_relevant long"):
        map_at_r(REL, np.array([1, 6, 1]))


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k_raises(k):
    with pytest.raises(ValueError, match="positive int"):
        precision_at_k(REL, k)


def test_n_relevant_shape_checked():
    with pytest.raises(ValueError, match="one count per query"):
        recall_at_k(REL, np.array([1, 2]), 3)


# ----------------------------------------------------------------------------------------------------------------
# Labels -> relevance
# ----------------------------------------------------------------------------------------------------------------


def test_relevance_from_labels_and_padding():
    gallery = ["a", "b", "a", "", None]
    ranked = np.array([[1, 0, 2, -1], [3, 4, 0, 1], [0, 2, 1, 3]])
    # Query labels "a", "" (missing: matches nothing, not even other blanks), "b".
    rel = relevance_from_labels(ranked, ["a", "", "b"], gallery)
    expected = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(rel, expected)
    assert rel.dtype == bool


def test_count_relevant():
    gallery = ["a", "b", "a", "a", float("nan"), "", None]
    # Leave-one-out: "a" has 3 items, minus the query itself = 2; "b" is unique -> 0; missing -> 0.
    np.testing.assert_array_equal(count_relevant(["a", "b", None, " "], gallery), [2, 0, 0, 0])
    # Queries outside the gallery keep the full count; an unseen label has 0.
    np.testing.assert_array_equal(count_relevant(["a", "b", "z"], gallery, query_in_gallery=False), [3, 1, 0])
    assert count_relevant(["a"], gallery).dtype == np.int64


# ----------------------------------------------------------------------------------------------------------------
# rank_by_cosine
# ----------------------------------------------------------------------------------------------------------------

_S = 1 / np.sqrt(2)
GALLERY = np.array(
    [
        [1, 0, 0],  # 0
        [0, 1, 0],  # 1
        [_S, _S, 0],  # 2
        [0, 0, 1],  # 3
        [1, 0, 0],  # 4 duplicate of 0
    ],
    dtype=np.float32,
)


def test_rank_by_cosine_known_order_and_ties():
    queries = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    idx, sims = rank_by_cosine(queries, GALLERY, depth=5)
    # Query x: cos = 1 (items 0 and 4, tie -> lower index first), 0.707 (2), 0 (1 and 3, tie -> 1 first).
    # Query y: cos = 1 (1), 0.707 (2), 0 (items 0, 3, 4 tied -> by index).
    np.testing.assert_array_equal(idx, [[0, 4, 2, 1, 3], [1, 2, 0, 3, 4]])
    np.testing.assert_allclose(sims[0], [1, 1, _S, 0, 0], atol=1e-6)
    assert idx.dtype == np.int64 and sims.dtype == np.float32
    # A cut-off inside a tie keeps the lower index.
    idx3, _ = rank_by_cosine(queries, GALLERY, depth=3)
    np.testing.assert_array_equal(idx3, [[0, 4, 2], [1, 2, 0]])
    idx1, _ = rank_by_cosine(queries, GALLERY, depth=1)
    np.testing.assert_array_equal(idx1, [[0], [1]])


def test_rank_by_cosine_exclude_and_clamp():
    queries = GALLERY[[0, 1]]
    idx, sims = rank_by_cosine(queries, GALLERY, depth=99, exclude=np.array([0, -1]))
    # depth clamps to N - 1 = 4 because a query excludes an item; query 1 excludes nothing.
    assert idx.shape == (2, 4) and sims.shape == (2, 4)
    np.testing.assert_array_equal(idx, [[4, 2, 1, 3], [1, 2, 0, 3]])
    # Without exclude, depth clamps to N.
    assert rank_by_cosine(queries, GALLERY, depth=99)[0].shape == (2, 5)
    assert rank_by_cosine(queries, GALLERY, depth=0)[0].shape == (2, 0)


def test_rank_by_cosine_chunking_does_not_change_result():
    rng = np.random.default_rng(0)
    # Rounded values create many exact ties, the case where chunking or partitioning could reorder.
    x = np.round(rng.normal(size=(60, 4)), 0).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    full_idx, full_sims = rank_by_cosine(x, x, depth=60, chunk_size=1024)
    for chunk in (1, 7):
        for depth in (1, 13, 60):
            idx, sims = rank_by_cosine(x, x, depth=depth, chunk_size=chunk)
            np.testing.assert_array_equal(idx, full_idx[:, :depth])
            np.testing.assert_array_equal(sims, full_sims[:, :depth])
    # The full ranking equals a stable argsort by descending score (float64 products rounded to float32).
    scores = (x.astype(np.float64) @ x.T.astype(np.float64)).astype(np.float32)
    expected = np.argsort(-scores, axis=1, kind="stable")
    np.testing.assert_array_equal(full_idx, expected)


def test_rank_by_cosine_rejects_bad_input():
    with pytest.raises(ValueError, match="same encoder"):
        rank_by_cosine(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32), 2)
    with pytest.raises(ValueError, match=r"\[-1, 4\]"):
        rank_by_cosine(GALLERY[:1], GALLERY, 2, exclude=np.array([5]))


# ----------------------------------------------------------------------------------------------------------------
# evaluate_retrieval: hand cases
# ----------------------------------------------------------------------------------------------------------------


def _unit_vectors(degrees):
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def test_self_match_excluded_and_singletons_skipped():
    # Angles 0, 10, 50, 60 with labels A, B, A, B: every item's nearest *other* item has the other label,
    # so precision@1 is 0. Counting the query itself would give 1. Item 4 ("C") is alone: skipped and counted.
    vectors = _unit_vectors([0, 10, 50, 60, 170])
    labels = ["A", "B", "A", "B", "C"]
    report = evaluate_retrieval(vectors, labels, ids=["a0", "b10", "a50", "b60", "c"], ks=(1, 2, 3))
    assert isinstance(report, RetrievalReport)
    assert report.summary["precision@1"] == 0.0
    assert report.summary["n_queries"] == 4 and report.summary["n_skipped"] == 1
    assert report.skipped_ids == ["c"]
    assert list(report.per_query["query_id"]) == ["a0", "b10", "a50", "b60"]
    # Rankings by angular distance (relevance in brackets), R = 1 for every query:
    #   a0:  b10(0)  a50(1)  b60(0)  -> first hit at rank 2
    #   b10: a0(0)   a50(0)  b60(1)  -> rank 3
    #   a50: b60(0)  b10(0)  a0(1)   -> rank 3
    #   b60: a50(0)  b10(1)  a0(0)   -> rank 2
    # P@2 = (1/2 + 0 + 0 + 1/2) / 4 = 0.25; hit@2 = 2/4; hit@3 = 1; AP@2 = P@2 * 1 / min(2, 1) -> (1/2 + 1/2) / 4.
    # R = 1 and no hit at rank 1, so R-precision = MAP@R = 0.
    assert report.summary["precision@2"] == 0.25
    assert report.summary["hit@2"] == 0.5 and report.summary["hit@3"] == 1.0
    assert report.summary["map@2"] == 0.25
    assert report.summary["r_precision"] == 0.0 and report.summary["map@r"] == 0.0


def test_missing_labels_are_skipped():
    vectors = _unit_vectors([0, 5, 40, 45, 90])
    report = evaluate_retrieval(vectors, ["A", "A", "", None, float("nan")], ks=(1,))
    assert report.skipped_ids == ["2", "3", "4"]
    assert report.summary["precision@1"] == 1.0


def test_macro_differs_from_micro_on_unbalanced_classes():
    # Items on the unit circle: A at 0, 20, 45 degrees; B at 12 and 100 degrees. R = 2 for A, 1 for B.
    # Rankings by angular distance (relevance in brackets):
    #   A0:   B12(0)  A20(1) A45(1) B100(0)  P@1 0  R-prec 1/2  MAP@R (1/2)(P@2)   = 1/4
    #   A20:  B12(0)  A0(1)  A45(1) B100(0)  P@1 0  R-prec 1/2  MAP@R (1/2)(P@2)   = 1/4
    #   A45:  A20(1)  B12(0) A0(1)  B100(0)  P@1 1  R-prec 1/2  MAP@R (1/2)(P@1)   = 1/2
    #   B12:  A20(0)  A0(0)  A45(0) B100(1)  P@1 0  R-prec 0    MAP@R 0
    #   B100: A45(0)  A20(0) B12(1) A0(0)    P@1 0  R-prec 0    MAP@R 0
    # micro P@1 = 1/5;  macro = mean(A: 1/3, B: 0) = 1/6.
    # micro R-prec = (3 * 1/2) / 5 = 0.3;  macro = mean(1/2, 0) = 0.25.
    # micro MAP@R = (1/4 + 1/4 + 1/2) / 5 = 0.2;  macro = mean(A: 1/3, B: 0) = 1/6.
    vectors = _unit_vectors([0, 20, 45, 12, 100])
    labels = ["A", "A", "A", "B", "B"]
    report = evaluate_retrieval(vectors, labels, ks=(1,), label_column="category")
    assert report.summary["precision@1"] == pytest.approx(1 / 5)
    assert report.macro["precision@1"] == pytest.approx(1 / 6)
    assert report.summary["r_precision"] == pytest.approx(0.3)
    assert report.macro["r_precision"] == pytest.approx(0.25)
    assert report.summary["map@r"] == pytest.approx(0.2)
    assert report.macro["map@r"] == pytest.approx(1 / 6)
    np.testing.assert_allclose(report.per_query["map@r"], [1 / 4, 1 / 4, 1 / 2, 0, 0])
    cat = report.per_category.set_index("label")
    assert cat.loc["A", "n_queries"] == 3 and cat.loc["B", "n_queries"] == 2
    assert cat.loc["A", "precision@1"] == pytest.approx(1 / 3)
    assert report.label_column == "category"
    assert report.ks == (1,)


def test_report_keys_and_columns_are_stable():
    vectors = _unit_vectors([0, 20, 45, 12, 100])
    report = evaluate_retrieval(vectors, ["A", "A", "A", "B", "B"])
    metric_keys = [
        *(f"precision@{k}" for k in (1, 5, 10)),
        *(f"recall@{k}" for k in (1, 5, 10)),
        *(f"hit@{k}" for k in (1, 5, 10)),
        *(f"map@{k}" for k in (1, 5, 10)),
        "map@r",
        "r_precision",
    ]
    assert list(report.summary) == [*metric_keys, "n_queries", "n_skipped", "n_truncated"]
    assert list(report.macro) == [*metric_keys, "n_categories"]
    assert list(report.per_query.columns) == ["query_id", "label", "n_relevant", *metric_keys]
    assert list(report.per_category.columns) == ["label", "n_queries", *metric_keys]
    assert report.metric_keys == metric_keys
    # Only 4 candidates per query: precision@10 divides by 10, recall@10 finds every relevant item.
    assert report.summary["recall@10"] == 1.0 and report.summary["hit@10"] == 1.0
    assert report.summary["n_truncated"] == 0


def test_query_indices_subset_keeps_order_and_values():
    vectors = _unit_vectors([0, 20, 45, 12, 100])
    labels = ["A", "A", "A", "B", "B"]
    full = evaluate_retrieval(vectors, labels, ks=(1, 2)).per_query
    sub = evaluate_retrieval(vectors, labels, ks=(1, 2), query_indices=[2, 0]).per_query
    assert list(sub["query_id"]) == ["2", "0"]
    pd.testing.assert_frame_equal(sub, full.iloc[[2, 0]].reset_index(drop=True))


def test_vectors_are_normalised_before_ranking():
    vectors = _unit_vectors([0, 20, 45, 12, 100]) * np.array([[1], [9], [0.1], [3], [2]], dtype=np.float32)
    report = evaluate_retrieval(vectors, ["A", "A", "A", "B", "B"], ks=(1,))
    assert report.summary["precision@1"] == pytest.approx(1 / 5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vectors": np.ones(5)}, "2-D array"),
        ({"labels": ["A"] * 4}, "one label per item"),
        ({"ids": ["x"]}, "one id per item"),
        ({"ks": (0, 5)}, "positive ints"),
        ({"ks": ()}, "non-empty"),
        ({"ks": (1.5,)}, "positive ints"),
        ({"query_indices": [0, 5]}, r"must lie in \[0, 4\]"),
        ({"query_indices": [1, 1]}, "each query once"),
        ({"vectors": np.full((5, 2), np.nan)}, "re-embed"),
    ],
)
def test_evaluate_retrieval_misuse_raises_with_remedy(kwargs, match):
    args = {"vectors": _unit_vectors([0, 20, 45, 12, 100]), "labels": ["A", "A", "A", "B", "B"]}
    args.update(kwargs)
    with pytest.raises(LensError, match=match):
        evaluate_retrieval(**args)


def test_no_evaluable_query_gives_nan_summary():
    report = evaluate_retrieval(_unit_vectors([0, 30]), ["A", "B"])
    assert report.summary["n_queries"] == 0 and report.summary["n_skipped"] == 2
    assert math.isnan(report.summary["precision@1"]) and math.isnan(report.macro["map@r"])
    assert report.per_query.empty and report.per_category.empty


# ----------------------------------------------------------------------------------------------------------------
# evaluate_neighbors
# ----------------------------------------------------------------------------------------------------------------


def _clustered(n=300, n_classes=8, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = rng.integers(0, n_classes, size=n)
    x = centres[labels] + 0.9 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def test_evaluate_neighbors_matches_exact_evaluation():
    x, labels = _clustered(n=120, seed=1)
    labels = labels.astype(object)
    labels[7] = None  # skipped in both
    ids = [f"item{i}" for i in range(len(x))]
    exact = evaluate_retrieval(x, labels, ids, ks=(1, 5, 10))
    # Full rankings that still contain each query (at rank 1): evaluate_neighbors must drop it.
    neighbors, _ = rank_by_cosine(x, x, depth=len(x))
    from_neighbors = evaluate_neighbors(neighbors, np.arange(len(x)), labels, ids, ks=(1, 5, 10))
    pd.testing.assert_frame_equal(from_neighbors.per_query, exact.per_query)
    pd.testing.assert_frame_equal(from_neighbors.per_category, exact.per_category)
    assert from_neighbors.summary == pytest.approx(exact.summary)
    assert from_neighbors.macro == pytest.approx(exact.macro)
    assert from_neighbors.skipped_ids == exact.skipped_ids == ["item7"]


def test_evaluate_neighbors_short_rankings_give_nan_r_metrics():
    # 4 items of class A (R = 3) and 2 of class B (R = 1); rankings only 2 deep after dropping self.
    labels = ["A", "A", "A", "A", "B", "B"]
    neighbors = np.array([[0, 1, 2], [2, 0, -1], [4, 2, 1]])
    report = evaluate_neighbors(neighbors, [0, 1, 4], labels, ks=(1, 2))
    pq = report.per_query
    # Query 0 -> [1, 2] (self dropped): P@1 1, P@2 1, recall@2 2/3, AP@2 (1 + 1)/min(2, 3) = 1, R=3 > 2 -> NaN.
    # Query 1 -> [2, 0]: same values.
    # Query 4 (B, R=1) -> [2, 1] (self dropped): no hit; R = 1 <= 2 so R-precision 0 and MAP@R 0.
    np.testing.assert_allclose(pq["precision@1"], [1, 1, 0])
    np.testing.assert_allclose(pq["recall@2"], [2 / 3, 2 / 3, 0])
    np.testing.assert_allclose(pq["map@2"], [1, 1, 0])
    assert pq["map@r"].isna().tolist() == [True, True, False]
    assert pq["r_precision"].isna().tolist() == [True, True, False]
    assert report.summary["n_truncated"] == 2
    assert report.summary["map@r"] == 0.0  # mean over the one query where it is defined


def test_evaluate_neighbors_misuse():
    labels = ["A", "A", "B"]
    with pytest.raises(LensError, match="one row per query"):
        evaluate_neighbors(np.array([[1], [0]]), [0], labels)
    with pytest.raises(LensError, match="labels of the whole indexed catalog"):
        evaluate_neighbors(np.array([[5]]), [0], labels)
    with pytest.raises(LensError, match="2-D int array"):
        evaluate_neighbors(np.array([1.0, 2.0]), [0], labels)


# ----------------------------------------------------------------------------------------------------------------
# Oracle: pytorch-metric-learning's AccuracyCalculator
# ----------------------------------------------------------------------------------------------------------------


def test_agrees_with_pytorch_metric_learning():
    torch = pytest.importorskip("torch")
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    x, labels = _clustered(n=300, n_classes=8, dim=16, seed=0)
    # Continuous data: no two cosines tie, so both sides produce the same ranking.
    sims = x @ x.T
    np.fill_diagonal(sims, -2)
    rows = np.sort(sims, axis=1)[:, ::-1]
    assert np.all(np.diff(rows[:, :-1], axis=1) < 0), "fixture must have no ties"

    # faiss is not a dependency: use pml's torch kNN. Query set == reference set with ref_includes_query=True
    # makes pml drop each query's self-match, as evaluate_retrieval does.
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        knn_func=CustomKNN(CosineSimilarity()),
        device=torch.device("cpu"),
    )
    expected = calc.get_accuracy(x, labels, x, labels, ref_includes_query=True)

    report = evaluate_retrieval(x, labels, ks=(1,))
    assert report.summary["n_skipped"] == 0
    assert report.summary["precision@1"] == pytest.approx(expected["precision_at_1"], abs=1e-6)
    assert report.summary["r_precision"] == pytest.approx(expected["r_precision"], abs=1e-6)
    assert report.summary["map@r"] == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-6)
    # Guard against a vacuous pass: the task is neither trivial nor hopeless.
    assert 0.2 < report.summary["map@r"] < 0.95


def test_text_to_image_recall_known_ranks() -> None:
    """Hand-built 2-D case: query 0's own image ranks 1st, query 1's 2nd, query 2's 3rd; a tie counts for the query."""
    from lens.metrics import text_to_image_recall

    images = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    texts = np.array([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]])
    # query 0 -> image 0 (sim 1, first); query 1 -> image 1 (0.8, after image 2's 1.0); query 2 -> image 1
    # (0: after image 0's 1.0 and image 2's 0.6)
    got = text_to_image_recall(texts, images, np.array([0, 1, 1]), ks=(1, 2, 3))
    assert got == pytest.approx({"text_r@1": 1 / 3, "text_r@2": 2 / 3, "text_r@3": 1.0})
    tie = text_to_image_recall(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([1]), ks=(1,))
    assert tie == {"text_r@1": 1.0}
    with pytest.raises(LensError, match="one target row per text query"):
        text_to_image_recall(texts, images, np.array([0, 1]))
