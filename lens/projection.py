"""2-D maps of an embedding space: PCA (instant) and UMAP (seconds to a minute), cached on disk.

The dashboard's Projections page shows a PCA preview while UMAP runs, then the UMAP map. Both are computed here,
without any UI: :func:`project_embeddings` samples the rows (large catalogs are cut to ``max_points`` items, a
seeded uniform sample whose size the caller states), computes the coordinates and caches them as ``.npy`` + JSON
sidecar under ``<cache>/projections/<encoder>/<key>.npy``. The key covers the embeddings' own cache key (encoder,
weights, preprocessing, catalog files), the method and every parameter, and the sampled ids; only coordinates are
stored, never the fitted reducer (that would need pickle, and nothing here transforms new points).

``umap`` is imported inside :func:`umap_2d`: importing it pulls in numba and pynndescent (seconds), and most callers
(the CLI, the other pages) never need it. ``n_neighbors`` is clamped to ``N - 1`` so small catalogs work.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lens.embed import EmbeddingSet
from lens.errors import CacheError, LensError
from lens.store import FORMAT_VERSION, bytes_sha256, cache_key, resolve_cache_dir, save_array, verify_array
from lens.vectors import l2_normalize

__all__ = [
    "DEFAULT_MAX_POINTS",
    "PROJECTION_METHODS",
    "Projection",
    "ProjectionParams",
    "cached_projection",
    "exact_knn",
    "import_umap",
    "load_projection",
    "pca_2d",
    "project_embeddings",
    "projection_key",
    "sample_rows",
    "save_projection",
    "umap_2d",
]

Method = Literal["pca", "umap"]
PROJECTION_METHODS: tuple[str, ...] = ("pca", "umap")

#: Default sample size: UMAP on 3,000 points of 1,280-d takes about 15 s on 2 CPU cores (after numba's
#: one-off compilation) and a scatter of 3,000 points stays responsive in the browser.
DEFAULT_MAX_POINTS = 3000

_KIND = "projection"

#: UMAP's input: the leading principal components of the vectors (when they have more dimensions). The k-NN graph
#: on 50-d costs a fraction of the one on 1,280-d, and the neighbourhoods it keeps are those of the dimensions that
#: carry most of the variance; measured in docs/ (trustworthiness of the map against the full vectors).
UMAP_PCA_DIMS = 50
#: UMAP's optimisation epochs: 200 instead of umap's 500 (below 10k points); see the same measurement.
UMAP_EPOCHS = 200
#: Up to this many rows UMAP starts from lens's exact k-NN graph (:func:`exact_knn`, quadratic: 0.8 s of one core
#: measured for 8,010 rows, so about 11 s for 30,000); above it, from umap's own approximate search (pynndescent).
EXACT_KNN_MAX_ROWS = 30_000


@dataclass(frozen=True)
class ProjectionParams:
    """Everything that changes the coordinates, besides the vectors themselves.

    Attributes:
        method: ``"umap"`` or ``"pca"``.
        n_neighbors: UMAP neighbourhood size (clamped to ``N - 1``); ignored by PCA.
        min_dist: UMAP minimum distance between embedded points; ignored by PCA.
        metric: UMAP input metric; vectors are L2-normalised, so ``"cosine"`` ranks like the search does.
        max_points: sample at most this many rows (``None``: all rows).
        seed: seed of the sample and of UMAP (fixed seed: reproducible, single-threaded UMAP).
        pca_dims: UMAP runs on this many principal components of the vectors when they have more (``None``: on the
            vectors themselves); see :func:`umap_2d`.
        n_epochs: UMAP's optimisation epochs (``None``: umap's own default, 500 below 10,000 points).
    """

    method: Method = "umap"
    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    max_points: int | None = DEFAULT_MAX_POINTS
    seed: int = 0
    pca_dims: int | None = UMAP_PCA_DIMS
    n_epochs: int | None = UMAP_EPOCHS

    def __post_init__(self) -> None:
        if self.method not in PROJECTION_METHODS:
            raise LensError(f"Unknown projection method {self.method!r}: use one of {', '.join(PROJECTION_METHODS)}.")
        if self.n_neighbors < 2:
            raise LensError(f"n_neighbors must be at least 2, got {self.n_neighbors}.")
        if not 0.0 <= self.min_dist <= 1.0:
            raise LensError(f"min_dist must lie in [0, 1], got {self.min_dist}.")
        if self.max_points is not None and self.max_points < 1:
            raise LensError(f"max_points must be a positive number of items or None, got {self.max_points}.")

    def key(self) -> dict[str, Any]:
        """The parameters that matter for ``method`` (PCA ignores the UMAP ones, so they do not split its cache)."""
        data = asdict(self)
        if self.method == "pca":
            for name in ("n_neighbors", "min_dist", "metric", "pca_dims", "n_epochs"):
                data.pop(name)
        return data


@dataclass
class Projection:
    """2-D coordinates of (a sample of) an embedding set.

    Attributes:
        coords: ``(n, 2)`` float32, row ``i`` belongs to ``ids[i]``.
        ids: item ids of the plotted rows, in embedding (catalog) order.
        method: ``"pca"`` or ``"umap"``.
        params: the parameters used (``ProjectionParams.key()``), plus ``n_neighbors_used`` for UMAP.
        n_total: number of vectors in the embedding set before sampling.
        encoder: encoder name.
        key: cache key.
        seconds: time the computation took (as recorded when computed, also when loaded from the cache).
        from_cache: whether the coordinates came from the disk cache.
    """

    coords: np.ndarray
    ids: list[str]
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    n_total: int = 0
    encoder: str = ""
    key: str = ""
    seconds: float = 0.0
    from_cache: bool = False

    def __post_init__(self) -> None:
        if self.coords.ndim != 2 or self.coords.shape != (len(self.ids), 2):
            raise LensError(
                f"Projection needs (n, 2) coordinates for n ids: got {self.coords.shape}, {len(self.ids)} ids."
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def sampled(self) -> bool:
        """Whether only a sample of the embedding set is plotted."""
        return len(self.ids) < self.n_total


# --------------------------------------------------------------------------------------------------------------
# Computation (pure array functions)


def sample_rows(n_total: int, max_points: int | None, *, seed: int = 0) -> np.ndarray:
    """Row indices to plot: all rows, or a seeded uniform sample of ``max_points`` rows, ascending.

    Returns:
        ``(n,)`` int64, sorted, without repeats; ``n = min(n_total, max_points)``.
    """
    if n_total < 0:
        raise LensError(f"n_total must be >= 0, got {n_total}.")
    if max_points is None or n_total <= max_points:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=int(max_points), replace=False)).astype(np.int64)


def pca_2d(vectors: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """First two principal components of the rows (scikit-learn's PCA).

    scikit-learn picks an exact SVD for small matrices and a randomized one (Halko et al. 2011) for large ones,
    which for the leading two components agrees with the exact SVD to well below plotting precision. Signs are fixed
    (largest loading positive) so that the same input always gives the same picture.

    Args:
        vectors: ``(N, d)`` float; rows need not be normalised.
        seed: seed of the randomized solver.

    Returns:
        ``(N, 2)`` float32; zeros for components that do not exist (``N < 3`` or rank < 2).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise LensError(f"pca_2d needs a 2-D (N, d) array, got shape {x.shape}.")
    n, d = x.shape
    out = np.zeros((n, 2), dtype=np.float32)
    if n < 2 or d == 0:
        return out
    if not np.isfinite(x).all():
        raise LensError("pca_2d got NaN or infinite values; re-embed the rows that contain them.")
    from sklearn.decomposition import PCA  # lazy: scikit-learn takes about a second to import

    n_comp = min(2, n - 1, d)
    pca = PCA(n_components=n_comp, random_state=seed).fit(x)
    components = pca.components_.copy()
    for row in components:
        if row[np.argmax(np.abs(row))] < 0:
            row *= -1.0
    out[:, :n_comp] = ((x - pca.mean_) @ components.T).astype(np.float32)
    return out


def umap_2d(
    vectors: np.ndarray,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    seed: int = 0,
    pca_dims: int | None = None,
    n_epochs: int | None = None,
) -> tuple[np.ndarray, int]:
    """UMAP of the rows into 2-D.

    The k-nearest-neighbour graph UMAP starts from is computed here, exactly, by brute force
    (:func:`exact_knn`; 8,010 rows of 50-d take a fraction of a second) and handed to umap as ``precomputed_knn``,
    so pynndescent's approximate search, and the compilation of its numba code in every new process, never run
    (for ``"euclidean"`` and ``"cosine"`` up to :data:`EXACT_KNN_MAX_ROWS` rows; other metrics and larger inputs go
    through umap's own search). umap's numba functions are
    compiled once and then kept in numba's on-disk cache (:func:`import_umap`).

    Args:
        vectors: ``(N, d)`` float32 vectors.
        n_neighbors: neighbourhood size; clamped to ``N - 1`` (UMAP needs at least one neighbour per point).
        min_dist: minimum distance between embedded points.
        metric: distance on the input vectors.
        seed: random state; a fixed seed makes UMAP reproducible (and single-threaded).
        pca_dims: first reduce the rows to this many principal components (when ``d`` is larger and there are more
            rows than that). With ``metric="cosine"`` the rows are L2-normalised first and the reduced rows are
            compared by euclidean distance, which ranks unit vectors as cosine does (``|a - b|^2 = 2 - 2 cos``)
            and is what PCA preserves (it is an orthogonal projection after centring).
        n_epochs: optimisation epochs (``None``: umap's default).

    Returns:
        ``(coords, n_neighbors_used)``: ``(N, 2)`` float32 coordinates and the neighbourhood size actually used.
        With fewer than 4 points UMAP has no meaningful graph; the PCA coordinates are returned instead.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise LensError(f"umap_2d needs a 2-D (N, d) array, got shape {x.shape}.")
    n = len(x)
    if n < 4:
        return pca_2d(x, seed=seed), 0
    if not np.isfinite(x).all():
        raise LensError("umap_2d got NaN or infinite values; re-embed the rows that contain them.")
    nn = int(max(2, min(int(n_neighbors), n - 1)))
    if pca_dims is not None and x.shape[1] > pca_dims and n > pca_dims:
        from sklearn.decomposition import PCA  # lazy: scikit-learn takes about a second to import

        if metric == "cosine":
            x, metric = l2_normalize(x), "euclidean"
        x = PCA(n_components=int(pca_dims), random_state=int(seed)).fit_transform(x).astype(np.float32)
    knn = exact_knn(x, nn, metric) if metric in ("euclidean", "cosine") and n <= EXACT_KNN_MAX_ROWS else None
    umap = import_umap()
    with warnings.catch_warnings():
        # "n_jobs overridden by random_state", spectral-init fallbacks on tiny graphs, "no search index with a
        # precomputed k-NN" (nothing here transforms new points), numba deprecations: none is actionable here.
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=nn,
            min_dist=float(min_dist),
            metric=metric,
            random_state=int(seed),
            # Spectral initialisation needs a graph with more nodes than eigenvectors; tiny inputs start at random.
            init="spectral" if n > 2 * nn else "random",
            low_memory=True,
            n_epochs=None if n_epochs is None else int(n_epochs),
            precomputed_knn=(None, None, None) if knn is None else (knn[0], knn[1], None),
            # below 4,096 rows umap would compute all pairwise distances itself and ignore the precomputed graph
            force_approximation_algorithm=knn is not None,
        )
        coords = reducer.fit_transform(x)
    return np.asarray(coords, dtype=np.float32), nn


def exact_knn(x: np.ndarray, k: int, metric: str = "euclidean", *, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest rows of every row (itself first, at distance 0), as umap's ``precomputed_knn`` takes
    them.

    Brute force in blocks of ``block`` rows (a ``block x N`` float64 distance matrix at a time: 33 MB for 8,010
    rows), so memory stays flat; ties are broken by row index.

    Args:
        x: ``(N, d)`` float32 rows.
        k: neighbours per row, including the row itself; ``k <= N``.
        metric: ``"euclidean"`` or ``"cosine"`` (``1 - cos``; zero rows count as at distance 1 from everything).

    Returns:
        ``(indices, distances)``: ``(N, k)`` int64 and ``(N, k)`` float32, nearest first.
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise LensError(f"exact_knn needs 1 <= k <= N rows, got k={k} for {n} rows.")
    if metric == "cosine":
        x = l2_normalize(x)
    elif metric != "euclidean":
        raise LensError(f"exact_knn computes 'euclidean' or 'cosine' neighbours, not {metric!r}.")
    x64 = x.astype(np.float64)
    squared = (x64 * x64).sum(1)
    indices = np.empty((n, k), dtype=np.int64)
    distances = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        # float64 for the distances themselves: |a|^2 + |b|^2 - 2ab loses the small ones to cancellation in float32
        d = squared[rows, None] + squared[None, :] - 2.0 * (x64[rows] @ x64.T)
        np.maximum(d, 0.0, out=d)
        local = np.arange(rows.stop - rows.start)
        d[local, local + start] = -1.0  # every row is its own nearest neighbour, whatever the rounding says
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        part_d = np.take_along_axis(d, part, axis=1)
        order = np.lexsort((part, part_d), axis=1)
        indices[rows] = np.take_along_axis(part, order, axis=1)
        chosen = np.maximum(np.take_along_axis(part_d, order, axis=1), 0.0)
        distances[rows] = (chosen / 2.0 if metric == "cosine" else np.sqrt(chosen)).astype(np.float32)
    return indices, distances


def import_umap() -> Any:
    """``import umap`` with its numba functions cached on disk: compiled in the first process, loaded after.

    umap-learn compiles its numba functions (the fuzzy graph, the layout's epochs) on first use in every process
    and keeps nothing (its ``@numba.njit`` has no ``cache=True``): that compilation was most of a cold UMAP. Here
    every module-level numba function of umap gets numba's on-disk cache switched on before its first use, in the
    place numba caches pynndescent's functions too (``__pycache__`` beside umap's source, or numba's per-user cache
    folder where that is read-only, or ``$NUMBA_CACHE_DIR``). numba keys the cache by the function's source file,
    its argument types and the CPU, and recompiles on any change.
    """
    try:
        import umap  # lazy: numba + pynndescent take seconds to import
        import umap.layouts
        import umap.spectral
        import umap.umap_
        from numba.core.caching import NullCache
        from numba.core.registry import CPUDispatcher
    except ImportError as exc:  # pragma: no cover - umap-learn is pinned in requirements.txt
        raise LensError(f"UMAP needs the umap-learn package (`pip install umap-learn`): {exc}") from exc
    for module in (umap.umap_, umap.layouts, umap.spectral):
        for value in vars(module).values():
            if isinstance(value, CPUDispatcher) and isinstance(getattr(value, "_cache", None), NullCache):
                value.enable_caching()
    return umap


# --------------------------------------------------------------------------------------------------------------
# Cache


def default_map_params(n_items: int) -> ProjectionParams:
    """The UMAP parameters the dashboard's Projections page opens with for a catalog of ``n_items`` (all items up to
    :data:`DEFAULT_MAX_POINTS`, else that many): what the background build precomputes."""
    return ProjectionParams(max_points=DEFAULT_MAX_POINTS if n_items > DEFAULT_MAX_POINTS else None)


def projection_key(embedding_key: str, ids: list[str], params: ProjectionParams) -> str:
    """Cache key: the embeddings' key, the plotted ids (the sample) and the method's parameters."""
    ids_digest = bytes_sha256("\n".join(ids).encode())
    return cache_key(
        {"format": FORMAT_VERSION, "kind": _KIND, "embeddings": embedding_key, "ids": ids_digest, **params.key()}
    )


def _npy_path(cache_dir: str | os.PathLike | None, encoder: str, key: str) -> Path:
    return resolve_cache_dir(cache_dir) / "projections" / encoder / f"{key}.npy"


def save_projection(projection: Projection, cache_dir: str | os.PathLike | None = None) -> Path:
    """Write the coordinates (``.npy``) then the sidecar (JSON), each atomically."""
    return save_array(
        _npy_path(cache_dir, projection.encoder, projection.key),
        np.asarray(projection.coords, dtype=np.float32),
        {
            "format": FORMAT_VERSION,
            "kind": _KIND,
            "key": projection.key,
            "encoder": projection.encoder,
            "method": projection.method,
            "params": projection.params,
            "n_total": projection.n_total,
            "ids": projection.ids,
            "seconds": round(projection.seconds, 3),
        },
    )


def load_projection(cache_dir: str | os.PathLike | None, encoder: str, key: str) -> Projection | None:
    """The cached projection for ``key``; ``None`` on a miss.

    Raises:
        CacheError: an entry exists but does not verify (key, checksum, shape, ids); callers recompute.
    """
    npy_path = _npy_path(cache_dir, encoder, key)
    loaded = verify_array(npy_path, expect={"key": key, "format": FORMAT_VERSION, "kind": _KIND})
    if loaded is None:
        return None
    coords, meta = loaded
    ids = meta.get("ids")
    if not isinstance(ids, list) or coords.dtype != np.float32 or coords.shape != (len(ids), 2):
        count = len(ids) if isinstance(ids, list) else "no list of"
        raise CacheError(f"{npy_path} has shape {coords.shape} for {count} ids; it will be recomputed.")
    params, n_total, seconds = meta.get("params") or {}, meta.get("n_total", len(ids)), meta.get("seconds", 0.0)
    # A sidecar from an older or interrupted lens, or edited by hand, is a miss whatever field is wrong.
    if (
        not isinstance(params, dict)
        or not isinstance(n_total, int)
        or isinstance(n_total, bool)
        or not isinstance(seconds, (int, float))
        or not isinstance(meta.get("method", ""), str)
    ):
        raise CacheError(f"{npy_path}'s sidecar has a field of the wrong type; it will be recomputed.")
    return Projection(
        coords=coords,
        ids=[str(i) for i in ids],
        method=str(meta.get("method", "")),
        params=dict(params),
        n_total=n_total,
        encoder=encoder,
        key=key,
        seconds=float(seconds),
        from_cache=True,
    )


def _plan(embeddings: EmbeddingSet, params: ProjectionParams) -> tuple[np.ndarray, list[str], str]:
    rows = sample_rows(len(embeddings), params.max_points, seed=params.seed)
    ids = [embeddings.ids[i] for i in rows]
    return rows, ids, projection_key(embeddings.key, ids, params)


def cached_projection(
    embeddings: EmbeddingSet, params: ProjectionParams, *, cache_dir: str | os.PathLike | None = None
) -> Projection | None:
    """The projection from the disk cache if it is there and verifies, else ``None`` (never computes)."""
    _, _, key = _plan(embeddings, params)
    try:
        return load_projection(cache_dir, embeddings.encoder, key)
    except CacheError:
        return None


def project_embeddings(
    embeddings: EmbeddingSet,
    params: ProjectionParams | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> Projection:
    """2-D coordinates of ``embeddings`` (or of a seeded sample of ``params.max_points`` of them), cached.

    Args:
        embeddings: the vectors to map; ``embeddings.key`` identifies them in the cache.
        params: method and parameters (default: UMAP, 15 neighbours, at most :data:`DEFAULT_MAX_POINTS` items).
        cache_dir: cache root (default ``$LENS_CACHE_DIR`` or ``~/.cache/lens``).
        use_cache: read and write the cache.

    Returns:
        A :class:`Projection`; ``len(result) == min(len(embeddings), params.max_points)``.
    """
    params = params or ProjectionParams()
    rows, ids, key = _plan(embeddings, params)
    if use_cache:
        try:
            cached = load_projection(cache_dir, embeddings.encoder, key)
        except CacheError:
            cached = None  # corrupt or stale: recompute and overwrite
        if cached is not None:
            return cached
    started = time.perf_counter()
    vectors = embeddings.vectors[rows]
    used = params.key()
    if params.method == "pca":
        coords = pca_2d(vectors, seed=params.seed)
    else:
        coords, nn = umap_2d(
            vectors,
            n_neighbors=params.n_neighbors,
            min_dist=params.min_dist,
            metric=params.metric,
            seed=params.seed,
            pca_dims=params.pca_dims,
            n_epochs=params.n_epochs,
        )
        used["n_neighbors_used"] = nn
    projection = Projection(
        coords=coords,
        ids=ids,
        method=params.method,
        params=used,
        n_total=len(embeddings),
        encoder=embeddings.encoder,
        key=key,
        seconds=time.perf_counter() - started,
    )
    if use_cache:
        save_projection(projection, cache_dir)
    return projection
