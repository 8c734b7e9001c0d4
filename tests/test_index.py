"""lens.index: exact and Annoy indexes agree on hand-built vectors, Annoy's recall floor, the on-disk cache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lens.embed import EmbeddingSet
from lens.errors import IndexMismatchError, LensError
from lens.index import (
    AnnoyIndex,
    ExactIndex,
    build_annoy,
    build_index,
    index_path,
    load_annoy,
    recall_at_k_vs_exact,
)

# Query q = x axis. Cosines with q are known in closed form, and all different, so the order is fixed.
HAND_IDS = ["a", "b", "c", "d", "e", "f"]
HAND_VECTORS = np.array(
    [
        [1.0, 0.0, 0.0],  # a: cos 1
        [2.0, 2.0, 0.0],  # b: cos 1/sqrt(2)      (not unit length on purpose)
        [1.0, 2.0, 2.0],  # c: cos 1/3
        [0.0, 0.0, 5.0],  # d: cos 0
        [-1.0, 1.0, 0.0],  # e: cos -1/sqrt(2)
        [-3.0, 0.0, 0.1],  # f: cos -3/sqrt(9.01)
    ],
    dtype=np.float32,
)
HAND_COS = [1.0, 1 / math.sqrt(2), 1 / 3, 0.0, -1 / math.sqrt(2), -3 / math.sqrt(9.01)]
QUERY = np.array([3.0, 0.0, 0.0], dtype=np.float32)  # not unit length either


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _hand_set(key: str = "hand-key") -> EmbeddingSet:
    return EmbeddingSet(_unit(HAND_VECTORS), list(HAND_IDS), "hand", key=key)


@pytest.fixture()
def hand_indexes(tmp_path: Path) -> dict[str, object]:
    embeddings = _hand_set()
    return {
        "exact": ExactIndex.from_embeddings(embeddings),
        "annoy": build_annoy(embeddings, tmp_path / "hand.ann", n_trees=5),
    }


# ---------------------------------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("kind", ["exact", "annoy"])
def test_known_neighbour_order_and_cosines(hand_indexes: dict, kind: str) -> None:
    index = hand_indexes[kind]
    hits = index.search(QUERY, k=6)
    assert [h.id for h in hits] == HAND_IDS
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5, 6]
    # Annoy returns sqrt(2(1-cos)); the wrapper must turn it back into the cosine.
    np.testing.assert_allclose([h.score for h in hits], HAND_COS, atol=1e-4)


def test_exact_index_scores_cosine_even_for_raw_vectors() -> None:
    index = ExactIndex(HAND_VECTORS, HAND_IDS)  # rows of length 1, 2.8, 3, 5, ...: must still rank by cosine
    hits = index.search(QUERY, k=6)
    assert [h.id for h in hits] == HAND_IDS
    np.testing.assert_allclose([h.score for h in hits], HAND_COS, atol=1e-6)


@pytest.mark.parametrize("kind", ["exact", "annoy"])
def test_exclude_and_k_larger_than_n(hand_indexes: dict, kind: str) -> None:
    index = hand_indexes[kind]
    hits = index.search(QUERY, k=2, exclude=["a", "c"])
    assert [h.id for h in hits] == ["b", "d"] and [h.rank for h in hits] == [1, 2]
    everything = index.search(QUERY, k=100)
    assert [h.id for h in everything] == HAND_IDS
    assert [h.id for h in index.search(QUERY, k=100, exclude=["f"])] == HAND_IDS[:5]


@pytest.mark.parametrize("kind", ["exact", "annoy"])
def test_wrong_dimension_names_both_dims(hand_indexes: dict, kind: str) -> None:
    with pytest.raises(IndexMismatchError, match=r"shape \(4,\).*holds 3-d vectors"):
        hand_indexes[kind].search(np.ones(4, dtype=np.float32), k=2)
    with pytest.raises(LensError, match="k must be a positive integer"):
        hand_indexes[kind].search(QUERY, k=0)
    with pytest.raises(LensError, match="NaN"):
        hand_indexes[kind].search(np.array([np.nan, 0, 0]), k=1)


@pytest.mark.parametrize("kind", ["exact", "annoy"])
def test_search_rows_excludes_query_row(hand_indexes: dict, kind: str) -> None:
    index = hand_indexes[kind]
    unit = _unit(HAND_VECTORS)
    rows = index.search_rows(unit, 2, exclude_rows=list(range(6)))
    assert rows.shape == (6, 2)
    for q in range(6):
        assert q not in rows[q]
    # a's nearest other item is b, then c; f's is e (cos(e, f) = 3/sqrt(2*9.01)), then d.
    assert rows[0].tolist() == [1, 2]
    assert rows[5].tolist() == [4, 3]
    # Without exclusion each row finds itself first; k beyond N pads with -1.
    padded = index.search_rows(unit, 8)
    assert padded[:, 0].tolist() == list(range(6))
    assert (padded[:, 6:] == -1).all() and (padded[:, :6] >= 0).all()


# ---------------------------------------------------------------------------------------------------- recall oracle


def _clustered(n: int = 2000, dim: int = 32, n_clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    points = centres[rng.integers(0, n_clusters, size=n)] + 0.35 * rng.normal(size=(n, dim))
    return _unit(points)


def test_annoy_recall_vs_exact_with_defaults(tmp_path: Path) -> None:
    vectors = _clustered()
    embeddings = EmbeddingSet(vectors, [f"item{i:04d}" for i in range(len(vectors))], "synthetic", key="clustered")
    annoy = build_index(embeddings, cache_dir=tmp_path)  # default n_trees and search_k
    exact = ExactIndex.from_embeddings(embeddings)
    queries = np.arange(0, len(vectors), 10)
    recall = recall_at_k_vs_exact(annoy, exact, vectors[queries], k=10, exclude_rows=queries)
    assert recall >= 0.9, f"annoy recall@10 vs exact = {recall:.3f}"
    # Where annoy finds the same item as exact search, the scores agree (the distance conversion is right).
    q = vectors[5]
    exact_scores = {h.id: h.score for h in exact.search(q, 10)}
    for hit in annoy.search(q, 10):
        if hit.id in exact_scores:
            assert abs(hit.score - exact_scores[hit.id]) < 1e-4


def test_recall_helper_detects_a_bad_index() -> None:
    """The oracle itself can fail: an index over shuffled ids has (near) zero recall."""
    vectors = _clustered(n=300, seed=1)
    ids = [str(i) for i in range(300)]
    exact = ExactIndex(vectors, ids)
    shuffled = ExactIndex(vectors[np.random.default_rng(0).permutation(300)], ids)
    assert recall_at_k_vs_exact(exact, exact, vectors[:20], k=10) == 1.0
    assert recall_at_k_vs_exact(shuffled, exact, vectors[:20], k=10) < 0.2


# ---------------------------------------------------------------------------------------------------- disk cache


def test_build_index_caches_and_loads_without_rebuilding(tmp_path: Path) -> None:
    embeddings = _hand_set()
    first = build_index(embeddings, cache_dir=tmp_path, n_trees=3)
    assert isinstance(first, AnnoyIndex)
    path = index_path(tmp_path, embeddings, 3)
    assert first.path == path and path.is_file() and path.with_suffix(".json").is_file()
    # A rebuild writes new files and os.replace()s them into place: new inode, new mtime.
    stamp = (path.stat().st_ino, path.stat().st_mtime_ns, path.with_suffix(".json").stat().st_mtime_ns)

    second = build_index(embeddings, cache_dir=tmp_path, n_trees=3, search_k=123)
    assert isinstance(second, AnnoyIndex)
    now = (path.stat().st_ino, path.stat().st_mtime_ns, path.with_suffix(".json").stat().st_mtime_ns)
    assert now == stamp  # loaded, not rebuilt
    assert second.search_k == 123 and second.ids == HAND_IDS and second.dim == 3
    assert [h.id for h in second.search(QUERY, 3)] == ["a", "b", "c"]

    build_index(embeddings, cache_dir=tmp_path, n_trees=3, rebuild=True)
    assert path.stat().st_ino != stamp[0]  # the control: a rebuild does change the file

    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["dim"] == 3 and sidecar["metric"] == "angular" and sidecar["ids"] == HAND_IDS
    assert sidecar["n_trees"] == 3 and sidecar["encoder"] == "hand" and sidecar["embedding_key"] == "hand-key"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.with_suffix(".json").name]


def test_exact_kind_and_unknown_kind(tmp_path: Path) -> None:
    assert isinstance(build_index(_hand_set(), kind="exact", cache_dir=tmp_path), ExactIndex)
    assert not list(tmp_path.iterdir())  # exact is in memory only
    with pytest.raises(LensError, match="Unknown index kind 'faiss'"):
        build_index(_hand_set(), kind="faiss", cache_dir=tmp_path)


def _edit_sidecar(path: Path, edit) -> None:  # noqa: ANN001
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    edit(meta)
    sidecar.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(dim=4), r"not a multiple|holds \d+ items"),
        (lambda m: m.update(dim=7), r"not a multiple|holds \d+ items"),
        (lambda m: m.update(ids=m["ids"][:-2]), r"holds 6 items but its sidecar lists 4"),
        (lambda m: m.pop("ids"), r"no valid sidecar"),
        (lambda m: m.update(file_size=1), r"does not match its sidecar"),
    ],
    ids=["dim4", "dim7", "ids-deleted", "ids-missing", "size"],
)
def test_disagreeing_sidecar_raises_then_rebuilds(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    embeddings = _hand_set()
    build_index(embeddings, cache_dir=tmp_path, n_trees=3).unload()
    path = index_path(tmp_path, embeddings, 3)
    _edit_sidecar(path, edit)
    with pytest.raises(IndexMismatchError, match=message):
        load_annoy(path)
    rebuilt = build_index(embeddings, cache_dir=tmp_path, n_trees=3)
    assert rebuilt.ids == HAND_IDS and rebuilt.dim == 3
    assert [h.id for h in rebuilt.search(QUERY, 2)] == ["a", "b"]
    load_annoy(path).unload()  # the sidecar agrees again


def test_load_annoy_checks_expected_key_dim_and_missing_files(tmp_path: Path) -> None:
    embeddings = _hand_set()
    build_index(embeddings, cache_dir=tmp_path, n_trees=3).unload()
    path = index_path(tmp_path, embeddings, 3)
    with pytest.raises(IndexMismatchError, match="other embeddings"):
        load_annoy(path, expect_key="some-other-key")
    with pytest.raises(IndexMismatchError, match="holds 3-d vectors, expected 64-d"):
        load_annoy(path, expect_dim=64)
    with pytest.raises(IndexMismatchError, match="No index file"):
        load_annoy(tmp_path / "missing.ann")
    path.with_suffix(".json").unlink()
    with pytest.raises(IndexMismatchError, match="no valid sidecar"):
        load_annoy(path)


def test_build_annoy_refuses_empty_and_bad_trees(tmp_path: Path) -> None:
    empty = EmbeddingSet(np.zeros((0, 3), dtype=np.float32), [], "hand")
    with pytest.raises(LensError, match="zero vectors"):
        build_annoy(empty, tmp_path / "e.ann")
    with pytest.raises(LensError, match="n_trees must be a positive integer"):
        build_annoy(_hand_set(), tmp_path / "t.ann", n_trees=0)


def test_cache_state_reports_embeddings_and_index_without_loading_them(
    small_catalog_dir: Path, lens_cache_dir: Path
) -> None:
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog, embedding_key
    from lens.encoders import create_encoder
    from lens.index import DEFAULT_N_TREES, cache_state

    catalog, encoder = load_catalog(small_catalog_dir), create_encoder("tiny")
    key = embedding_key(catalog, encoder)
    assert not cache_state(catalog, "tiny", key=key).embedded
    assert cache_state(catalog, "no-such-encoder").key == ""
    embeddings = embed_catalog(catalog, encoder)
    assert embeddings.key == key
    state = cache_state(catalog, "tiny", lens_cache_dir, key=key)
    assert state.embedded and not state.indexed and state.key == key
    assert (state.n, state.failed, state.encoder) == (24, 0, "tiny") and state.created
    precision = encoder.spec.precision
    assert cache_state(catalog, "tiny", precision=precision) == state  # found by fingerprint, no key needed
    assert not cache_state(catalog, "tiny", precision="int3").embedded
    assert not cache_state(catalog.subset(range(5)), "tiny", precision=precision).embedded  # another fingerprint
    build_index(embeddings, n_trees=3)
    assert not cache_state(catalog, "tiny", key=key).indexed  # the dashboard's default tree count is not built
    assert cache_state(catalog, "tiny", key=key, n_trees=3).indexed
    build_index(embeddings, n_trees=DEFAULT_N_TREES)
    assert cache_state(catalog, "tiny", precision=precision).indexed
