"""lens.analysis: hand-built cases with known answers, and the metrics evaluator / brute force as oracles."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from lens.analysis import (
    COMPARE_COLUMNS,
    CONFUSION_COLUMNS,
    compare_grid,
    compare_summary,
    confused_pairs,
    confusion_examples,
    near_duplicate_pairs,
    per_category_matrix,
    precision_table,
    sample_queries_per_category,
    top_neighbors,
    worst_queries,
)
from lens.errors import LensError
from lens.metrics import evaluate_retrieval


def unit(rows: list[list[float]]) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# Five 3-D vectors: a0, a1 close to x; b0, b1 close to y; c0 on z. Labels a, a, b, b, c.
VECS = unit([[1, 0.1, 0], [1, 0.2, 0], [0.1, 1, 0], [0.3, 1, 0], [0, 0.1, 1]])
IDS = ["a0", "a1", "b0", "b1", "c0"]
LABELS = ["a", "a", "b", "b", "c"]


def test_top_neighbors_known_order_and_self_excluded() -> None:
    idx, sims = top_neighbors(VECS, 2)
    assert idx.shape == (5, 2) and sims.dtype == np.float32
    assert idx[0].tolist() == [1, 3] and idx[2].tolist() == [3, 1]
    assert all(i not in row for i, row in enumerate(idx.tolist()))
    assert np.all(np.diff(sims, axis=1) <= 0)
    only, _ = top_neighbors(VECS, 10, query_rows=[4])
    assert only.shape == (1, 4), "k is clamped to N - 1"
    with pytest.raises(LensError, match="positive"):
        top_neighbors(VECS, 0)


def test_sample_queries_per_category() -> None:
    ids = [f"i{n}" for n in range(9)]
    labels = ["x", "x", "x", "y", "y", "z", "", "", "w"]  # z and w have one item; "" is no label
    picked = sample_queries_per_category(ids, labels, 5, seed=0)
    assert len(picked) == 2 and {labels[ids.index(p)] for p in picked} == {"x", "y"}
    assert picked == sorted(picked, key=lambda p: labels[ids.index(p)]), "ordered by label"
    assert picked == sample_queries_per_category(ids, labels, 5, seed=0)
    assert len(sample_queries_per_category(ids, labels, 1, seed=0)) == 1
    two = sample_queries_per_category(ids, labels, 5, per_category=2, seed=1)
    assert [labels[ids.index(p)] for p in two] == ["x", "x"], "only x has 3 items (2 queries + 1 to find)"


def test_compare_grid_rows_correctness_and_precision() -> None:
    shuffled = VECS[[1, 0, 2, 3, 4]]  # a second "model": same vectors, other row order
    grid = compare_grid(
        ["a0", "c0", "zz"],
        {"m1": (VECS, IDS), "m2": (shuffled, ["a1", "a0", "b0", "b1", "c0"])},
        dict(zip(IDS, LABELS)),
        2,
    )
    assert list(grid.columns) == list(COMPARE_COLUMNS)
    assert len(grid) == 2 * 2 * 2, "unknown query 'zz' has no rows; 2 queries x 2 models x k"
    a0 = grid[(grid["model"] == "m1") & (grid["query_id"] == "a0")]
    assert a0["result_id"].tolist() == ["a1", "b1"] and a0["correct"].tolist() == [True, False]
    assert a0["precision_at_k"].tolist() == [0.5, 0.5] and a0["rank"].tolist() == [1, 2]
    c0 = grid[(grid["model"] == "m1") & (grid["query_id"] == "c0")]
    assert c0["correct"].tolist() == [False, False] and c0["precision_at_k"].iat[0] == 0.0
    m2 = grid[grid["model"] == "m2"].reset_index(drop=True)
    m1 = grid[grid["model"] == "m1"].reset_index(drop=True)
    assert m2["result_id"].tolist() == m1["result_id"].tolist(), "row order of a model does not matter"
    summary = compare_summary(grid)
    assert len(summary) == 4 and set(summary.columns) == {"query_id", "query_label", "model", "precision_at_k"}
    assert compare_summary(grid.iloc[0:0]).empty


def test_compare_grid_with_query_expansion_agrees_with_the_search_expansion() -> None:
    """Re-ranked cells: the same results, similarities and precision as the Search page's expansion
    (:func:`lens.search.expand_query` on the exact index), one query at a time."""
    from lens.index import ExactIndex
    from lens.search import expand_query

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"p{i:02d}" for i in range(40)]
    labels = dict(zip(ids, rng.choice(["u", "v", "w"], size=40).tolist()))
    queries = ["p03", "p17", "p28", "p39"]
    plain = compare_grid(queries, {"m": (vectors, ids)}, labels, 5)
    grid = compare_grid(queries, {"m": (vectors, ids)}, labels, 5, expand=3)
    assert compare_grid(queries, {"m": (vectors, ids)}, labels, 5, expand=0).equals(plain)
    assert not grid["result_id"].equals(plain["result_id"]), "the expansion changes some ranking here"
    index = ExactIndex(vectors, ids)
    for q in queries:
        vector = vectors[ids.index(q)]
        expanded = expand_query(index, vector, lambda h: vectors[[ids.index(i) for i in h]], k=3, exclude=[q])
        hits = index.search(expanded, 5, exclude=[q])
        cell = grid[grid["query_id"] == q]
        assert cell["result_id"].tolist() == [h.id for h in hits]
        assert np.allclose(cell["similarity"], [h.score for h in hits], atol=1e-5)
        precision = sum(labels[h.id] == labels[q] for h in hits) / 5
        assert cell["precision_at_k"].tolist() == pytest.approx([precision] * 5)


def test_precision_table_agrees_with_the_metrics_evaluator() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    labels = rng.choice(["p", "q", "r", "s"], size=60).tolist()
    labels[7] = "unique"  # no other item: left out, as in the report
    ids = [f"id{i}" for i in range(60)]
    for k in (1, 5):
        neighbors, _ = top_neighbors(vectors, k)
        table = precision_table(neighbors, labels, ids, k)
        report = evaluate_retrieval(vectors, labels, ids, ks=(k,))
        merged = table.merge(report.per_query, on="query_id", suffixes=("", "_report"))
        assert len(table) == len(report.per_query) == 59
        assert np.allclose(merged[f"precision@{k}"], merged[f"precision@{k}_report"])
        assert np.allclose(merged[f"hit@{k}"], merged[f"hit@{k}_report"])
        assert (merged["n_relevant"] == merged["n_relevant_report"]).all()


def test_worst_queries_order_and_ties() -> None:
    per_query = pd.DataFrame(
        {
            "query_id": ["q1", "q2", "q3", "q4"],
            "label": ["a", "a", "b", "b"],
            "n_relevant": [3, 9, 9, 1],
            "precision@5": [0.2, 0.2, 0.0, 0.8],
        }
    )
    worst = worst_queries(per_query, "precision@5", 3)
    assert worst["query_id"].tolist() == ["q3", "q2", "q1"], "lowest first; ties: more relevant items first"
    with pytest.raises(LensError, match="precision@5"):
        worst_queries(per_query, "precision@10")


def test_confused_pairs_hand_counted() -> None:
    # Rows: 0,1 label a; 2,3 label b; 4 label c. Neighbour rows per query (k = 2, -1 = padding).
    neighbors = np.array([[1, 2], [2, 3], [0, 1], [4, -1], [0, 2]])
    labels = ["a", "a", "b", "b", "c"]
    table = confused_pairs(neighbors, labels)
    assert list(table.columns) == list(CONFUSION_COLUMNS)
    rows = {(r.label_a, r.label_b): r for r in table.itertuples()}
    # a->b: query0 (2), query1 (2, 3) = 3; b->a: query2 (0, 1) = 2; b->c: query3 (4) = 1; c->a: 1; c->b: 1.
    assert (rows["a", "b"].a_to_b, rows["a", "b"].b_to_a, rows["a", "b"].count) == (3, 2, 5)
    assert (rows["b", "c"].a_to_b, rows["b", "c"].b_to_a) == (1, 1)
    assert (rows["a", "c"].a_to_b, rows["a", "c"].b_to_a) == (0, 1)
    assert table["label_a"].iat[0] == "a" and table["count"].is_monotonic_decreasing
    # share of {a, b}: 5 confusions over all results of a and b queries (2 + 2 + 2 + 1 valid = 7).
    assert rows["a", "b"].share == pytest.approx(5 / 7)
    assert confused_pairs(neighbors, labels, top=1).shape[0] == 1
    assert confused_pairs(np.array([[1], [0]]), ["a", "a"]).empty


def test_confusion_examples() -> None:
    neighbors, sims = top_neighbors(VECS, 2)
    table = confusion_examples(neighbors, LABELS, IDS, "a", "b", sims=sims)
    assert set(zip(table["query_label"], table["result_label"])) <= {("a", "b"), ("b", "a")}
    assert table["rank"].is_monotonic_increasing
    assert confusion_examples(neighbors, LABELS, IDS, "a", "zzz").empty


def brute_pairs(x: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    sims = x @ x.T
    return {(i, j) for i, j in itertools.combinations(range(len(x)), 2) if sims[i, j] >= threshold - 1e-6}


def test_near_duplicates_match_brute_force() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(30, 6)).astype(np.float32)
    x = np.concatenate([base, base[:6] + rng.normal(0, 0.01, size=(6, 6)).astype(np.float32), base[:2]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = [f"i{n}" for n in range(len(x))]
    for threshold in (0.99, 0.9, 0.5):
        found = near_duplicate_pairs(x, ids, threshold, chunk_size=7, max_pairs=10_000)
        got = {(ids.index(a), ids.index(b)) for a, b in zip(found.pairs["id_a"], found.pairs["id_b"])}
        assert got == brute_pairs(x, threshold) and found.n_found == len(got)
        assert found.pairs["similarity"].is_monotonic_decreasing
        assert (found.pairs["similarity"] <= 1.0).all()


def test_near_duplicates_exact_copies_labels_and_cap() -> None:
    x = unit([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0.001], [0, 0, 1]])
    found = near_duplicate_pairs(x, IDS, 0.999, labels=LABELS)
    assert found.pairs[["id_a", "id_b"]].values.tolist() == [["a0", "a1"], ["b0", "b1"]]
    assert found.pairs["same_label"].tolist() == [True, True] and found.pairs["similarity"].iat[0] == 1.0
    capped = near_duplicate_pairs(x, IDS, -0.5, max_pairs=3)
    assert len(capped.pairs) == 3 and capped.n_found == 10, "all 10 pairs counted, the 3 closest kept"
    assert capped.pairs["similarity"].iat[0] == 1.0
    with pytest.raises(LensError, match="threshold"):
        near_duplicate_pairs(x, IDS, 1.5)


def test_per_category_matrix() -> None:
    vectors = np.random.default_rng(4).normal(size=(30, 5)).astype(np.float32)
    labels = ["big"] * 15 + ["mid"] * 10 + ["small"] * 5
    reports = {
        "m1": evaluate_retrieval(vectors, labels, ks=(1, 5)),
        "m2": evaluate_retrieval(vectors[::-1].copy(), labels[::-1], ks=(1, 5)),
    }
    matrix = per_category_matrix(reports, "precision@5")
    assert list(matrix.columns) == ["m1", "m2"] and list(matrix.index) == ["big", "mid", "small"]
    expected = reports["m1"].per_category.set_index("label")["precision@5"]
    assert np.allclose(matrix["m1"], expected.loc[matrix.index])
    with pytest.raises(LensError, match="precision@10"):
        per_category_matrix(reports, "precision@10")
