"""lens.search (filters, filtered top-k, results table) and lens.evaluate (evaluator over a catalog)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lens.catalog import Catalog, load_catalog
from lens.embed import EmbeddingSet, embed_catalog
from lens.encoders import create_encoder
from lens.errors import CatalogError, LensError
from lens.evaluate import evaluate_embeddings, summary_table
from lens.index import ExactIndex, Hit, build_index
from lens.metrics import evaluate_retrieval
from lens.search import RESULT_COLUMNS, filter_mask, results_table, search_vector


def _synthetic_catalog(n: int, tmp_path: Path) -> Catalog:
    """A catalog table only (search never opens images): ids item0000.., colour cycles through 5 values."""
    colours = ["red", "green", "blue", "black", "white"]
    table = pd.DataFrame(
        {
            "id": [f"item{i:04d}" for i in range(n)],
            "image": [f"images/{i}.jpg" for i in range(n)],
            "articleType": [f"type{i % 7}" for i in range(n)],
            "colour": [colours[i % 5] for i in range(n)],
            "gender": ["Men" if i % 2 else "Women" for i in range(n)],
        }
    )
    return Catalog(root=tmp_path, table=table, label_column="articleType", source="csv", name="synthetic")


@pytest.fixture()
def big(tmp_path: Path) -> tuple[Catalog, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return _synthetic_catalog(500, tmp_path), vectors


def _oracle(
    vectors: np.ndarray, ids: list[str], query: np.ndarray, allowed: set[str], k: int, exclude: tuple | list = ()
) -> list[str]:
    keep = [i for i, item in enumerate(ids) if item in allowed and item not in set(exclude)]
    scores = vectors[keep] @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[keep[j]] for j in order]


def test_filter_mask(big: tuple[Catalog, np.ndarray]) -> None:
    catalog, _ = big
    assert filter_mask(catalog, None) is None and filter_mask(catalog, {}) is None
    red = filter_mask(catalog, {"colour": ["red"]})
    assert red == {f"item{i:04d}" for i in range(0, 500, 5)}
    both = filter_mask(catalog, {"colour": ["red", "blue"], "gender": ["Men"]})
    assert both == {f"item{i:04d}" for i in range(500) if i % 5 in (0, 2) and i % 2 == 1}


def test_unknown_filter_column_names_the_columns(big: tuple[Catalog, np.ndarray]) -> None:
    catalog, _ = big
    with pytest.raises(CatalogError, match=r"Cannot filter on 'size'.*Columns: id, image, articleType, colour, gender"):
        filter_mask(catalog, {"size": ["M"]})


@pytest.mark.parametrize(
    ("filters", "k"),
    [({"colour": ["red"]}, 10), ({"colour": ["red"], "gender": ["Men"]}, 7), ({"articleType": ["type3"]}, 25)],
)
def test_filtered_search_returns_exactly_the_best_allowed(
    big: tuple[Catalog, np.ndarray], filters: dict, k: int
) -> None:
    """Narrow filters: the first candidate batch (64) holds fewer than k allowed items, so the loop must widen."""
    catalog, vectors = big
    index = ExactIndex(vectors, catalog.ids)
    allowed = filter_mask(catalog, filters)
    rng = np.random.default_rng(1)
    for _ in range(5):
        query = rng.normal(size=16).astype(np.float32)
        hits = search_vector(index, query, k, allowed=allowed)
        assert [h.id for h in hits] == _oracle(vectors, catalog.ids, query, allowed, k)
        assert [h.rank for h in hits] == list(range(1, k + 1))
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)


def test_filtered_search_with_exclude_and_too_few_allowed(big: tuple[Catalog, np.ndarray]) -> None:
    catalog, vectors = big
    index = ExactIndex(vectors, catalog.ids)
    query = vectors[0]
    allowed = {"item0000", "item0003", "item0250", "item0499"}
    hits = search_vector(index, query, 10, exclude=["item0000"], allowed=allowed)
    assert [h.id for h in hits] == _oracle(vectors, catalog.ids, query, allowed, 10, exclude=["item0000"])
    assert len(hits) == 3
    assert search_vector(index, query, 5, allowed=set()) == []
    # No filter: plain top-k.
    assert [h.id for h in search_vector(index, query, 3)] == _oracle(vectors, catalog.ids, query, set(catalog.ids), 3)


def test_filtered_search_on_annoy(big: tuple[Catalog, np.ndarray], tmp_path: Path) -> None:
    catalog, vectors = big
    embeddings = EmbeddingSet(vectors, catalog.ids, "synthetic", key="big")
    annoy = build_index(embeddings, cache_dir=tmp_path / "cache")
    allowed = filter_mask(catalog, {"colour": ["green"], "gender": ["Men"]})
    query = vectors[42]
    hits = search_vector(annoy, query, 10, allowed=allowed)
    truth = _oracle(vectors, catalog.ids, query, allowed, 10)
    assert {h.id for h in hits} <= allowed and len(hits) == 10
    assert len({h.id for h in hits} & set(truth)) >= 9  # approximate, but close to the oracle


def test_narrow_filter_on_annoy_still_gets_its_exact_best(tmp_path: Path) -> None:
    """A filter that keeps 12 of 3,000 items, on an index whose search_k (100) sees a few dozen candidates: the
    growing request must widen Annoy's search too (it used to return the same few candidates, so 0-3 hits)."""
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalog = _synthetic_catalog(3000, tmp_path)
    embeddings = EmbeddingSet(vectors, catalog.ids, "synthetic", key="narrow")
    annoy = build_index(embeddings, cache_dir=tmp_path / "cache", n_trees=10, search_k=100)
    allowed = {catalog.ids[i] for i in range(0, 3000, 250)}
    for q in (7, 42, 1999):
        hits = search_vector(annoy, vectors[q], 10, allowed=allowed)
        assert [h.id for h in hits] == _oracle(vectors, catalog.ids, vectors[q], allowed, 10)


def test_results_table_columns_and_metadata(big: tuple[Catalog, np.ndarray]) -> None:
    catalog, vectors = big
    hits = ExactIndex(vectors, catalog.ids).search(vectors[3], 4, exclude=["item0003"])
    table = results_table(hits, catalog)
    assert list(table.columns) == [*RESULT_COLUMNS, "image", "articleType", "colour", "gender"]
    assert list(table.columns[:3]) == ["rank", "id", "similarity"]
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table["id"].tolist() == [h.id for h in hits]
    np.testing.assert_allclose(table["similarity"], [h.score for h in hits], atol=1e-6)
    for _, row in table.iterrows():
        assert row["colour"] == catalog.row(row["id"])["colour"]
    narrow = results_table(hits, catalog, columns=["gender"])
    assert list(narrow.columns) == ["rank", "id", "similarity", "gender"]
    empty = results_table([], catalog)
    assert len(empty) == 0 and list(empty.columns[:3]) == ["rank", "id", "similarity"]


def test_results_table_rejects_ids_from_another_catalog(big: tuple[Catalog, np.ndarray]) -> None:
    catalog, _ = big
    with pytest.raises(LensError, match=r"'ghost'.*another catalog.*python -m lens index"):
        results_table([Hit("ghost", 0.5, 1)], catalog)


# ---------------------------------------------------------------------------------------------------- evaluate

STABLE_KEYS = [
    "precision@1", "precision@5", "precision@10", "recall@1", "recall@5", "recall@10",
    "hit@1", "hit@5", "hit@10", "map@1", "map@5", "map@10", "map@r", "r_precision",
]  # fmt: skip


@pytest.fixture()
def tiny_embeddings(small_catalog_dir: Path, lens_cache_dir: Path) -> tuple[Catalog, EmbeddingSet]:
    catalog = load_catalog(small_catalog_dir)
    return catalog, embed_catalog(catalog, create_encoder("tiny"))


def test_evaluate_embeddings_stable_keys(tiny_embeddings: tuple[Catalog, EmbeddingSet]) -> None:
    catalog, embeddings = tiny_embeddings
    report = evaluate_embeddings(embeddings, catalog)
    assert report.metric_keys == STABLE_KEYS
    assert [k for k in report.summary if k in STABLE_KEYS] == STABLE_KEYS
    assert report.summary["n_queries"] == 24 and report.summary["n_skipped"] == 0
    assert report.label_column == "articleType"
    for key in STABLE_KEYS:
        assert 0.0 <= report.summary[key] <= 1.0
    # Oracle: the same numbers as the array evaluator on the raw vectors and labels.
    direct = evaluate_retrieval(embeddings.vectors, catalog.labels(), catalog.ids)
    for key in STABLE_KEYS:
        assert report.summary[key] == pytest.approx(direct.summary[key])
    # Known answers: 4 classes x 6 items, so R = 5, precision@10 <= 5/10 and recall@10 = 5 * precision@10 / 5.
    assert report.summary["precision@10"] <= 0.5
    assert report.summary["recall@10"] == pytest.approx(report.summary["precision@10"] * 10 / 5)
    # The generated classes differ in colour and shape: even a random CNN retrieves far above chance (5/23).
    assert report.summary["precision@1"] > 0.5
    table = summary_table({"tiny": report})
    assert table.loc[0, "model"] == "tiny" and list(table.columns[:3]) == ["model", "average", "label"]


def test_evaluate_query_subset(tiny_embeddings: tuple[Catalog, EmbeddingSet]) -> None:
    catalog, embeddings = tiny_embeddings
    full = evaluate_embeddings(embeddings, catalog)
    subset = ["000101", "000108", "000115", "000122"]
    report = evaluate_embeddings(embeddings, catalog, query_ids=subset)
    assert report.per_query["query_id"].tolist() == subset
    assert report.summary["n_queries"] == 4
    # Each query still ranks the whole gallery, so its row equals its row in the full evaluation.
    rows = full.per_query.set_index("query_id").loc[subset]
    for key in STABLE_KEYS:
        assert report.summary[key] == pytest.approx(rows[key].mean())
    with pytest.raises(LensError, match="not in the embeddings"):
        evaluate_embeddings(embeddings, catalog, query_ids=["nope"])


def test_evaluate_other_label_and_missing_label(tiny_embeddings: tuple[Catalog, EmbeddingSet]) -> None:
    catalog, embeddings = tiny_embeddings
    report = evaluate_embeddings(embeddings, catalog, label_column="subCategory", ks=(1, 3))
    assert report.label_column == "subCategory" and report.metric_keys[:2] == ["precision@1", "precision@3"]
    # subCategory: 6 "Round" items (the circles) and 18 "Angular" ones, so R is 5 or 17.
    n_rel = dict(zip(report.per_query["label"], report.per_query["n_relevant"]))
    assert n_rel == {"Round": 5, "Angular": 17}
    with pytest.raises(CatalogError, match=r"no column 'colour'.*Available columns"):
        evaluate_embeddings(embeddings, catalog, label_column="colour")


def test_evaluate_skips_items_without_vectors(tiny_embeddings: tuple[Catalog, EmbeddingSet]) -> None:
    """An item whose image failed is neither query nor gallery: labels stay aligned with the remaining rows."""
    catalog, embeddings = tiny_embeddings
    keep = [i for i in range(24) if i != 3]
    partial = EmbeddingSet(
        embeddings.vectors[keep], [embeddings.ids[i] for i in keep], "tiny", failed=[(embeddings.ids[3], "truncated")]
    )
    report = evaluate_embeddings(partial, catalog)
    assert report.summary["n_queries"] == 23
    assert "000103" not in report.per_query["query_id"].tolist()
    labels = dict(zip(catalog.ids, catalog.labels()))
    assert all(labels[q] == lab for q, lab in zip(report.per_query["query_id"], report.per_query["label"]))
    # Class 0 lost one item: its queries have 4 relevant items, the others 5.
    n_rel = dict(zip(report.per_query["query_id"], report.per_query["n_relevant"]))
    assert n_rel["000100"] == 4 and n_rel["000110"] == 5
