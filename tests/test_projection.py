"""lens.projection: PCA with known answers, UMAP on tiny and clustered inputs, sampling, the coordinate cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lens.embed import EmbeddingSet
from lens.errors import LensError
from lens.projection import (
    Projection,
    ProjectionParams,
    cached_projection,
    exact_knn,
    import_umap,
    load_projection,
    pca_2d,
    project_embeddings,
    sample_rows,
    umap_2d,
)


def embeddings(vectors: np.ndarray, key: str = "k1", encoder: str = "test") -> EmbeddingSet:
    vectors = np.asarray(vectors, dtype=np.float32)
    return EmbeddingSet(vectors=vectors, ids=[f"{i:04d}" for i in range(len(vectors))], encoder=encoder, key=key)


def clusters(n_per: int = 20, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight, well separated clusters on the unit sphere."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim, dtype=np.float32)[:3] * 10
    x = np.concatenate([c + rng.normal(0, 0.3, size=(n_per, dim)) for c in centres]).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.repeat(np.arange(3), n_per)


# ------------------------------------------------------------------------------------------------------------- PCA


def test_pca_recovers_the_two_directions_of_largest_variance() -> None:
    rng = np.random.default_rng(0)
    # Variance 100 along e0, 9 along e1, 0.01 along the rest: PC1 = e0 (spread 10), PC2 = e1 (spread 3).
    x = rng.normal(size=(500, 6)) * np.array([10, 3, 0.1, 0.1, 0.1, 0.1]) + 5.0
    coords = pca_2d(x)
    assert coords.shape == (500, 2) and coords.dtype == np.float32
    centred = x - x.mean(axis=0)
    assert np.allclose(np.abs(coords[:, 0]), np.abs(centred[:, 0]), atol=0.5)
    assert np.allclose(np.abs(coords[:, 1]), np.abs(centred[:, 1]), atol=0.5)
    assert coords.std(axis=0)[0] > coords.std(axis=0)[1]


def test_randomized_pca_matches_exact_pca_on_a_wide_matrix() -> None:
    rng = np.random.default_rng(1)
    # > 512 rows and columns (the randomized path), two clear directions above the noise (a spectral gap, so the
    # second component is well defined).
    x = rng.normal(size=(530, 520)) + 3 * np.outer(rng.normal(size=530), rng.normal(size=520))
    x += 2 * np.outer(rng.normal(size=530), rng.normal(size=520))
    fast = pca_2d(x)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    exact = centred @ vt[:2].T
    for j in range(2):
        cos = abs(np.dot(fast[:, j], exact[:, j])) / (np.linalg.norm(fast[:, j]) * np.linalg.norm(exact[:, j]))
        assert cos > 0.999


def test_pca_is_deterministic_and_sign_fixed() -> None:
    x = np.random.default_rng(2).normal(size=(50, 8))
    a, b = pca_2d(x), pca_2d(x.copy())
    assert np.array_equal(a, b)
    # Loadings have a fixed sign, so negated data lands on the same axes, mirrored.
    assert np.allclose(pca_2d(-x), -pca_2d(x), atol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_pca_on_tiny_inputs(n: int) -> None:
    coords = pca_2d(np.ones((n, 4)) * np.arange(n)[:, None])
    assert coords.shape == (n, 2) and np.isfinite(coords).all()


def test_pca_rejects_bad_input() -> None:
    with pytest.raises(LensError, match="2-D"):
        pca_2d(np.zeros(5))
    with pytest.raises(LensError, match="NaN"):
        pca_2d(np.array([[0.0, np.nan], [1.0, 2.0]]))


# ------------------------------------------------------------------------------------------------------------ UMAP


def test_umap_keeps_clusters_apart() -> None:
    x, labels = clusters()
    coords, used = umap_2d(x, n_neighbors=10, seed=0)
    assert coords.shape == (60, 2) and coords.dtype == np.float32 and used == 10
    centres = np.stack([coords[labels == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(coords[labels == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread


def test_umap_on_principal_components_keeps_clusters_apart() -> None:
    """The default path reduces to ``pca_dims`` components first (here 128-d -> 8) and still separates clusters."""
    x, labels = clusters(dim=128)
    coords, used = umap_2d(x, n_neighbors=10, seed=0, pca_dims=8, n_epochs=100)
    assert coords.shape == (60, 2) and np.isfinite(coords).all() and used == 10
    centres = np.stack([coords[labels == c].mean(axis=0) for c in range(3)])
    spread = max(np.linalg.norm(coords[labels == c] - centres[c], axis=1).mean() for c in range(3))
    gaps = [np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)]
    assert min(gaps) > 2 * spread
    assert not np.array_equal(coords, umap_2d(x, n_neighbors=10, seed=0)[0]), "pca_dims must change the input"


def test_umap_reduction_settings_are_part_of_the_umap_key_only() -> None:
    assert ProjectionParams(pca_dims=50).key() != ProjectionParams(pca_dims=None).key()
    assert ProjectionParams(n_epochs=200).key() != ProjectionParams(n_epochs=None).key()
    assert ProjectionParams(method="pca", pca_dims=50).key() == ProjectionParams(method="pca", pca_dims=None).key()


@pytest.mark.parametrize("n", [4, 5, 12])
def test_umap_clamps_n_neighbors_on_small_inputs(n: int) -> None:
    x, _ = clusters(n_per=n, seed=n)
    x = x[:n]
    coords, used = umap_2d(x, n_neighbors=15)
    assert used == n - 1
    assert coords.shape == (n, 2) and np.isfinite(coords).all()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_umap_on_fewer_than_four_points_falls_back_to_pca(n: int) -> None:
    coords, used = umap_2d(np.eye(4, dtype=np.float32)[:n], n_neighbors=15)
    assert used == 0 and coords.shape == (n, 2) and np.isfinite(coords).all()


def test_umap_is_reproducible_with_a_seed() -> None:
    x, _ = clusters(n_per=10)
    assert np.array_equal(umap_2d(x, seed=3)[0], umap_2d(x, seed=3)[0])


def test_exact_knn_known_answer() -> None:
    """Points on a line at 0, 1, 3, 7, 15: every point's neighbours and distances are known; itself first."""
    x = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]], dtype=np.float32)
    indices, distances = exact_knn(x, 3)
    assert indices.tolist() == [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 1], [4, 3, 2]]
    np.testing.assert_allclose(distances, [[0, 1, 3], [0, 1, 2], [0, 2, 3], [0, 4, 6], [0, 8, 12]], atol=1e-5)
    # cosine: unit vectors at 0, 10, 30 and 90 degrees; distance 1 - cos
    angles = np.deg2rad([0.0, 10.0, 30.0, 90.0])
    u = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32) * np.array([[1], [2], [3], [4]])
    indices, distances = exact_knn(u, 2, "cosine")
    assert indices.tolist() == [[0, 1], [1, 0], [2, 1], [3, 2]]
    np.testing.assert_allclose(distances[:, 1], 1 - np.cos(np.deg2rad([10, 10, 20, 60])), atol=1e-6)
    with pytest.raises(LensError, match="1 <= k <= N"):
        exact_knn(x, 6)
    with pytest.raises(LensError, match="euclidean"):
        exact_knn(x, 2, "manhattan")


def test_exact_knn_in_blocks_matches_brute_force() -> None:
    x = np.random.default_rng(1).normal(size=(300, 8)).astype(np.float32)
    indices, distances = exact_knn(x, 15, block=7)
    full = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    np.testing.assert_array_equal(indices, np.argsort(full, axis=1, kind="stable")[:, :15])
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :15], atol=1e-5)


def test_umap_runs_on_the_exact_graph_without_umaps_own_neighbour_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """umap's nearest-neighbour search (pynndescent, or all pairwise distances below 4,096 rows) never runs: the
    graph is lens's exact one, so pynndescent's numba code is never compiled."""
    umap = import_umap()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("umap searched for neighbours itself")

    monkeypatch.setattr(umap.umap_, "nearest_neighbors", refuse)
    monkeypatch.setattr(umap.umap_, "pairwise_distances", refuse)
    x, labels = clusters(n_per=30)
    for metric in ("cosine", "euclidean"):
        coords, used = umap_2d(x, n_neighbors=10, metric=metric, n_epochs=50)
        assert used == 10 and coords.shape == (90, 2) and np.isfinite(coords).all()
        centres = np.stack([coords[labels == c].mean(axis=0) for c in range(3)])
        spread = max(np.linalg.norm(coords[labels == c] - centres[c], axis=1).mean() for c in range(3))
        assert min(np.linalg.norm(centres[a] - centres[b]) for a in range(3) for b in range(a + 1, 3)) > 2 * spread


def test_import_umap_switches_on_numbas_disk_cache() -> None:
    from numba.core.caching import NullCache

    umap = import_umap()
    for function in (umap.umap_.smooth_knn_dist, umap.umap_.compute_membership_strengths):
        assert not isinstance(function._cache, NullCache)
    assert not isinstance(umap.layouts._nb_optimize_layout_euclidean_single_epoch._cache, NullCache)


# ------------------------------------------------------------------------------------------- sampling and the cache


def test_sample_rows() -> None:
    assert sample_rows(5, None).tolist() == [0, 1, 2, 3, 4]
    assert sample_rows(5, 10).tolist() == [0, 1, 2, 3, 4]
    rows = sample_rows(1000, 100, seed=4)
    assert len(rows) == 100 and len(set(rows.tolist())) == 100 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, sample_rows(1000, 100, seed=4))
    assert not np.array_equal(rows, sample_rows(1000, 100, seed=5))


def test_params_validate_and_pca_ignores_umap_settings() -> None:
    with pytest.raises(LensError, match="Unknown projection method"):
        ProjectionParams(method="tsne")  # type: ignore[arg-type]
    with pytest.raises(LensError, match="n_neighbors"):
        ProjectionParams(n_neighbors=1)
    with pytest.raises(LensError, match="max_points"):
        ProjectionParams(max_points=0)
    a = ProjectionParams(method="pca", n_neighbors=5).key()
    b = ProjectionParams(method="pca", n_neighbors=50).key()
    assert a == b and "n_neighbors" not in a


def test_projection_is_cached_as_npy_and_json(tmp_path: Path) -> None:
    x, _ = clusters(n_per=10)
    emb = embeddings(x)
    params = ProjectionParams(method="pca", max_points=20, seed=1)
    assert cached_projection(emb, params, cache_dir=tmp_path) is None
    first = project_embeddings(emb, params, cache_dir=tmp_path)
    assert isinstance(first, Projection) and not first.from_cache
    assert len(first) == 20 and first.n_total == 30 and first.sampled
    assert first.ids == [emb.ids[i] for i in sample_rows(30, 20, seed=1)]
    files = sorted(p.name for p in (tmp_path / "projections" / "test").iterdir())
    assert files == [f"{first.key}.json", f"{first.key}.npy"], "coordinates + sidecar, no pickle"
    sidecar = json.loads((tmp_path / "projections" / "test" / f"{first.key}.json").read_text())
    assert sidecar["ids"] == first.ids and sidecar["method"] == "pca" and sidecar["n_total"] == 30
    second = project_embeddings(emb, params, cache_dir=tmp_path)
    assert second.from_cache and np.array_equal(second.coords, first.coords) and second.ids == first.ids
    assert cached_projection(emb, params, cache_dir=tmp_path) is not None


def test_cache_key_follows_embeddings_params_and_sample(tmp_path: Path) -> None:
    x, _ = clusters(n_per=10)
    base = project_embeddings(embeddings(x), ProjectionParams(method="pca"), cache_dir=tmp_path)
    other_vectors = project_embeddings(embeddings(x, key="k2"), ProjectionParams(method="pca"), cache_dir=tmp_path)
    other_sample = project_embeddings(embeddings(x), ProjectionParams(method="pca", max_points=10), cache_dir=tmp_path)
    umap = ProjectionParams(method="umap", n_neighbors=5)
    other_params = project_embeddings(embeddings(x), umap, cache_dir=tmp_path)
    keys = {base.key, other_vectors.key, other_sample.key, other_params.key}
    assert len(keys) == 4
    assert other_params.params["n_neighbors_used"] == 5


def test_corrupt_cache_entry_is_recomputed(tmp_path: Path) -> None:
    x, _ = clusters(n_per=10)
    emb = embeddings(x)
    params = ProjectionParams(method="pca")
    first = project_embeddings(emb, params, cache_dir=tmp_path)
    npy = tmp_path / "projections" / "test" / f"{first.key}.npy"
    npy.write_bytes(npy.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(Exception, match="checksum"):
        load_projection(tmp_path, "test", first.key)
    assert cached_projection(emb, params, cache_dir=tmp_path) is None
    again = project_embeddings(emb, params, cache_dir=tmp_path)
    assert not again.from_cache and np.allclose(again.coords, first.coords)
    assert load_projection(tmp_path, "test", first.key) is not None, "the entry was rewritten"


def test_use_cache_false_writes_nothing(tmp_path: Path) -> None:
    x, _ = clusters(n_per=5)
    project_embeddings(embeddings(x), ProjectionParams(method="pca"), cache_dir=tmp_path, use_cache=False)
    assert not (tmp_path / "projections").exists()
