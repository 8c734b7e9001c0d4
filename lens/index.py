"""Nearest-neighbour indexes over L2-normalised vectors, scored by cosine similarity.

``AnnoyIndex`` wraps annoy and absorbs its sharp edges: the ``.ann`` file stores neither dimension nor metric nor
ids, so a JSON sidecar keeps them (dim, metric, trees, encoder, embedding key, id list) and is checked on load; ids
are mapped to annoy's ints; annoy's angular distance ``d = sqrt(2 (1 - cos))`` is turned back into cosine similarity.
The sidecar also binds the index to what it was built from, so that neither a damaged file nor a stale id list is
ever served: the SHA-256 of the ``.ann`` file (checked in full on every load: about 35 ms for the 43 MiB index of
8,010 1280-d vectors, against the first query's 2 ms; the read also warms the page cache the searches use), and
the SHA-256 of the rows it was built from (ids in row order and their vectors), checked against the embeddings
the index is loaded for.
``ExactIndex`` is brute-force numpy with the same interface: the oracle in tests and the right choice for small
catalogs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lens.catalog import Catalog
from lens.embed import EmbeddingSet, EmbeddingState, embedding_state
from lens.errors import IndexMismatchError, LensError
from lens.store import FORMAT_VERSION, atomic_write, file_sha256, read_json, resolve_cache_dir, utc_now, write_json
from lens.vectors import CosineGallery, l2_normalize

DEFAULT_N_TREES = 50
DEFAULT_SEARCH_K = 1_000
"""Annoy nodes inspected per query. On the catalog (8,010 items, efficientnet-lite0, 1280-d, n_trees 50, 1000 queries,
recall@10 vs exact, self excluded): search_k 1000 gives 0.976-0.979 at p50 0.46-0.51 ms, 2000 0.985-0.988 at 0.57-0.62
ms, 5000 (the default before) 0.993-0.994 at 0.81-0.95 ms (ranges: a quiet and a loaded 2-core machine). 1000 meets
issue 10's goal (recall@10 >= 0.95 at p50 <= 0.5 ms) with 2.6 points of recall to spare; annoy's own default (n_trees
x k = 500 for k 10) gives 0.97. A larger catalog needs more for the same recall: at 100k synthetic items 1000 gives
0.94 (docs/benchmark.md, index reference section); pass ``search_k`` to :func:`build_index` there."""


@dataclass(frozen=True)
class Hit:
    """One search result: catalog id, cosine similarity in [-1, 1], rank from 1."""

    id: str
    score: float
    rank: int


class VectorIndex:
    """Common interface of the exact and the Annoy index."""

    kind: str = ""
    ids: list[str]
    dim: int
    encoder: str

    def __len__(self) -> int:
        return len(self.ids)

    def _check_vector(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, dtype=np.float32)
        if vector.ndim == 2 and vector.shape[0] == 1:
            vector = vector[0]
        if vector.ndim != 1 or vector.shape[0] != self.dim:
            raise IndexMismatchError(
                f"Query vector has shape {vector.shape}, but this index of '{self.encoder}' holds {self.dim}-d vectors: "
                "embed the query with the same encoder as the index."
            )
        if not np.all(np.isfinite(vector)):
            raise LensError("Query vector contains NaN or infinite values.")
        return l2_normalize(vector)

    def search(self, vector: np.ndarray, k: int = 10, *, exclude: Iterable[str] = ()) -> list[Hit]:
        """The ``k`` most similar items to ``vector`` (a ``(dim,)`` array), best first, skipping ``exclude`` ids."""
        if k < 1:
            raise LensError(f"k must be a positive integer, got {k}.")
        vector = self._check_vector(vector)
        excluded = set(exclude)
        rows, scores = self._search_rows(vector, k + len(excluded))
        hits: list[Hit] = []
        for row, score in zip(rows, scores):
            item_id = self.ids[row]
            if item_id in excluded:
                continue
            hits.append(Hit(item_id, float(score), len(hits) + 1))
            if len(hits) == k:
                break
        return hits

    def search_filtered(
        self, vector: np.ndarray, k: int, allowed: Collection[str], *, exclude: Iterable[str] = ()
    ) -> list[Hit]:
        """The ``k`` most similar items among ``allowed`` ids, best first, skipping ``exclude``.

        Asks the index for 4x, 16x, ... more neighbours until ``k`` allowed ones are among them (or every allowed
        one), up to the whole index: exact then, since Annoy's ``search_k`` grows with the request
        (:meth:`AnnoyIndex._search_rows`). The filter is one boolean mask over the rows, so a narrow filter costs
        numpy work, not a Python object per neighbour.
        """
        if k < 1:
            raise LensError(f"k must be a positive integer, got {k}.")
        vector = self._check_vector(vector)
        allowed = allowed if isinstance(allowed, (set, frozenset)) else set(allowed)
        excluded = set(exclude)
        keep = np.fromiter((i in allowed and i not in excluded for i in self.ids), dtype=bool, count=len(self.ids))
        want = min(k, int(keep.sum()))
        if want == 0:
            return []
        n = max(4 * k, 64)
        while True:
            rows, scores = self._search_rows(vector, min(n, len(self.ids)))
            passed = keep[rows]
            if int(passed.sum()) >= want or n >= len(self.ids):
                break
            n *= 4
        rows, scores = rows[passed][:k], scores[passed][:k]
        return [Hit(self.ids[row], float(score), rank) for rank, (row, score) in enumerate(zip(rows, scores), 1)]

    def search_rows(self, vectors: np.ndarray, k: int, *, exclude_rows: Sequence[int] | None = None) -> np.ndarray:
        """Row indices ``(Q, k)`` of the top ``k`` for each query row, ``-1``-padded; ``exclude_rows[q]`` is dropped."""
        vectors = np.asarray(vectors, dtype=np.float32)
        out = np.full((len(vectors), k), -1, dtype=np.int64)
        for q, vector in enumerate(vectors):
            skip = -1 if exclude_rows is None else int(exclude_rows[q])
            found, _ = self._search_rows(self._check_vector(vector), k + (skip >= 0))
            kept = [r for r in found if r != skip][:k]
            out[q, : len(kept)] = kept
        return out

    def _search_rows(self, vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class ExactIndex(VectorIndex):
    """Brute-force cosine search over an in-memory ``(N, dim)`` matrix (rows L2-normalised here if they are not)."""

    kind = "exact"

    def __init__(self, vectors: np.ndarray, ids: Sequence[str], *, encoder: str = "") -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise IndexMismatchError(
                f"ExactIndex needs (N, dim) vectors for N ids: got {vectors.shape}, {len(ids)} ids."
            )
        # Scores must be cosines, as Annoy's are: rows that are not unit-norm (zero rows stay zero) would
        # otherwise rank by dot product, and the exact oracle would disagree with the approximate index.
        vectors = l2_normalize(vectors)
        self.vectors = vectors
        self.ids = list(ids)
        self.dim = int(vectors.shape[1])
        self.encoder = encoder

    @functools.cached_property
    def _gallery(self) -> CosineGallery:
        return CosineGallery(self.vectors)  # built on the first search, then reused

    @classmethod
    def from_embeddings(cls, embeddings: EmbeddingSet) -> ExactIndex:
        return cls(embeddings.vectors, embeddings.ids, encoder=embeddings.encoder)

    def _search_rows(self, vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        rows, sims = self._gallery.rank(vector[None, :], n)  # ties go to the lower row: deterministic
        return rows[0], sims[0]


class AnnoyIndex(VectorIndex):
    """An Annoy (angular) index on disk with a JSON sidecar; loaded by mmap."""

    kind = "annoy"

    def __init__(self, annoy_index: Any, meta: dict[str, Any], path: Path | None = None) -> None:
        self._index = annoy_index
        self.meta = meta
        self.ids = list(meta["ids"])
        self.dim = int(meta["dim"])
        self.encoder = str(meta.get("encoder", ""))
        self.n_trees = int(meta["n_trees"])
        self.search_k = int(meta.get("search_k", DEFAULT_SEARCH_K))
        self.path = path

    def _search_rows(self, vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        # search_k bounds Annoy's candidates, whatever n asks for: a filtered search (lens.search.search_vector) that
        # asks for more and more neighbours would otherwise keep getting the same ~search_k candidates and return
        # fewer than k hits for a narrow filter. Annoy's own default, n * n_trees, takes over past search_k, so a
        # request for the whole index inspects every leaf (exact); k = 10 with 50 trees keeps search_k.
        n = min(n, len(self.ids))
        search_k = self.search_k if self.search_k < 0 else max(self.search_k, n * self.n_trees)
        rows, distances = self._index.get_nns_by_vector(vector.tolist(), n, search_k=search_k, include_distances=True)
        distances = np.asarray(distances, dtype=np.float64)
        return np.asarray(rows, dtype=np.int64), (1.0 - distances**2 / 2.0).astype(np.float32)

    def unload(self) -> None:
        self._index.unload()


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def rows_sha256(ids: Sequence[str], vectors: np.ndarray) -> str:
    """SHA-256 of an index's rows: the ids in row order and the float32 vectors (what binds a sidecar to them)."""
    digest = hashlib.sha256(json.dumps(list(ids), separators=(",", ":")).encode())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _embeddings_rows_sha256(embeddings: EmbeddingSet) -> str:
    cached = getattr(embeddings, "_rows_sha256", None)
    if cached is None:  # about 30 ms for 8,010 x 1280: once per embedding set
        cached = rows_sha256(embeddings.ids, embeddings.vectors)
        embeddings._rows_sha256 = cached  # type: ignore[attr-defined]
    return cached


# The fields load_annoy relies on, with their types: anything else in a sidecar is a mismatch, never a traceback.
_SIDECAR_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "kind": str,
    "dim": int,
    "n_trees": int,
    "search_k": int,
    "encoder": str,
    "embedding_key": str,
    "file_size": int,
    "file_sha256": str,
    "rows_sha256": str,
    "ids": list,
}


def _check_sidecar(path: Path, meta: dict[str, Any] | None) -> dict[str, Any]:
    """``meta`` when it has every field :func:`load_annoy` needs with the right type, else ``IndexMismatchError``."""
    hint = "rebuild it with `python -m lens index --rebuild` (lens rebuilds it by itself when it next needs it)"
    if meta is None:
        raise IndexMismatchError(
            f"{path} has no valid sidecar {_sidecar_path(path).name} (missing or unreadable): {hint}."
        )
    wrong = [
        name
        for name, kind in _SIDECAR_TYPES.items()
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool)
    ]
    if not wrong and not all(isinstance(i, str) for i in meta["ids"]):
        wrong = ["ids"]
    if wrong or meta["kind"] != "annoy" or meta["dim"] < 1 or meta["n_trees"] < 1 or meta["search_k"] < -1:
        raise IndexMismatchError(
            f"{path} has no valid sidecar {_sidecar_path(path).name} (missing or malformed: "
            f"{', '.join(wrong) or 'values'}): {hint}."
        )
    return meta


def build_annoy(
    embeddings: EmbeddingSet,
    path: str | os.PathLike,
    *,
    n_trees: int = DEFAULT_N_TREES,
    search_k: int = DEFAULT_SEARCH_K,
    seed: int = 0,
) -> AnnoyIndex:
    """Build an Annoy index of ``embeddings`` at ``path`` (``.ann`` + ``.json`` sidecar) and load it back by mmap."""
    from annoy import AnnoyIndex as _Annoy

    if n_trees < 1:
        raise LensError(f"n_trees must be a positive integer, got {n_trees}.")
    if len(embeddings) == 0:
        raise LensError("Cannot build an index of zero vectors: the catalog has no readable image.")
    path = Path(path)
    index = _Annoy(embeddings.dim, "angular")
    index.set_seed(seed)
    for row, vector in enumerate(embeddings.vectors):
        index.add_item(row, vector.tolist())
    index.build(n_trees, n_jobs=-1)

    def save(tmp: Path) -> None:
        index.save(str(tmp))
        index.unload()  # save() leaves the file mmapped: let go of it before it is renamed

    # Written as one pair: the old sidecar goes first, so a crash between the two files leaves no sidecar that vouches
    # for a new .ann (the checksums would refuse it anyway).
    _sidecar_path(path).unlink(missing_ok=True)
    atomic_write(path, save)
    meta = {
        "format": FORMAT_VERSION,
        "kind": "annoy",
        "metric": "angular",
        "dim": embeddings.dim,
        "n_trees": n_trees,
        "search_k": search_k,
        "seed": seed,
        "encoder": embeddings.encoder,
        "embedding_key": embeddings.key,
        "n_items": len(embeddings),
        "file_size": path.stat().st_size,
        "file_sha256": file_sha256(path),
        "rows_sha256": _embeddings_rows_sha256(embeddings),
        "ids": embeddings.ids,
        "created": utc_now(),
    }
    write_json(_sidecar_path(path), meta)
    return load_annoy(path, expect_rows=embeddings)


def load_annoy(
    path: str | os.PathLike,
    *,
    expect_key: str | None = None,
    expect_dim: int | None = None,
    expect_rows: EmbeddingSet | None = None,
) -> AnnoyIndex:
    """Load an Annoy index by mmap after checking its sidecar and the file's SHA-256.

    Args:
        path: the ``.ann`` file.
        expect_key: the embedding key the index must have been built from.
        expect_dim: the dimension it must hold.
        expect_rows: the embeddings it must have been built from: their ids in row order and their vectors must be
            the ones the sidecar's ``rows_sha256`` was computed from (so a reordered id list is refused).

    Raises:
        IndexMismatchError: missing or malformed sidecar, a file whose size or checksum differs from the one built
            (bit-rot, a partial copy), or not the expected embeddings / dimension / rows.
    """
    from annoy import AnnoyIndex as _Annoy

    path = Path(path)
    if not path.is_file():
        raise IndexMismatchError(f"No index file at {path}: build it with `python -m lens index`.")
    meta = _check_sidecar(path, read_json(_sidecar_path(path)))
    if meta["format"] != FORMAT_VERSION or path.stat().st_size != meta["file_size"]:
        raise IndexMismatchError(f"{path} does not match its sidecar (format or size): rebuild it.")
    if expect_key is not None and meta["embedding_key"] != expect_key:
        raise IndexMismatchError(f"{path} was built from other embeddings than the current ones: rebuild it.")
    if expect_dim is not None and meta["dim"] != expect_dim:
        raise IndexMismatchError(f"{path} holds {meta['dim']}-d vectors, expected {expect_dim}-d.")
    if expect_rows is not None and (
        meta["ids"] != expect_rows.ids or meta["rows_sha256"] != _embeddings_rows_sha256(expect_rows)
    ):
        raise IndexMismatchError(
            f"{path}'s sidecar lists other rows (ids or their order) than the embeddings it is loaded for: rebuild it."
        )
    try:
        digest = file_sha256(path)
    except OSError as exc:
        raise IndexMismatchError(f"cannot read {path}: {exc}. Rebuild it.") from exc
    if digest != meta["file_sha256"]:
        raise IndexMismatchError(
            f"{path} is damaged: its SHA-256 differs from the one recorded when it was built. Rebuild it."
        )
    index = _Annoy(meta["dim"], "angular")
    try:
        index.load(str(path), prefault=False)  # mmap: pages load on demand, several processes share them
    except OSError as exc:
        raise IndexMismatchError(f"annoy could not load {path}: {exc}. Rebuild it.") from exc
    n_items = index.get_n_items()
    if n_items != len(meta["ids"]):
        index.unload()  # after this annoy reports 0 items, so the count is taken before
        raise IndexMismatchError(f"{path} holds {n_items} items but its sidecar lists {len(meta['ids'])}: rebuild it.")
    return AnnoyIndex(index, meta, path)


def annoy_path(cache_dir: str | os.PathLike | None, encoder: str, embedding_key: str, n_trees: int) -> Path:
    """``<cache>/indexes/<encoder>/<embedding key>-t<n_trees>.ann``: where :func:`build_index` keeps an Annoy index."""
    return resolve_cache_dir(cache_dir) / "indexes" / encoder / f"{embedding_key}-t{n_trees}.ann"


def index_path(cache_dir: str | os.PathLike | None, embeddings: EmbeddingSet, n_trees: int) -> Path:
    """:func:`annoy_path` of ``embeddings``."""
    return annoy_path(cache_dir, embeddings.encoder, embeddings.key, n_trees)


def delta_path(path: Path) -> Path:
    """``<key>-t<n_trees>.delta.npy`` beside the Annoy index ``path``: its catalog's delta over an older index
    (:mod:`lens.delta`)."""
    return path.with_name(f"{path.stem}.delta.npy")


def cache_state(
    catalog: Catalog,
    encoder_name: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    key: str | None = None,
    precision: str | None = None,
    n_trees: int = DEFAULT_N_TREES,
) -> EmbeddingState:
    """:func:`lens.embed.embedding_state` plus whether an Annoy index of ``n_trees`` trees is built on those vectors.

    Reads file names and sidecars only: no encoder, vector or index is loaded, nothing is verified (loading does).
    """
    state = embedding_state(catalog, encoder_name, cache_dir, key=key, precision=precision)
    if not state.embedded:
        return state
    ann = annoy_path(cache_dir, encoder_name, state.key, n_trees)
    delta = delta_path(ann)  # an older catalog's index + this catalog's delta (lens.delta) serves as well
    indexed = (ann.is_file() and _sidecar_path(ann).is_file()) or (delta.is_file() and _sidecar_path(delta).is_file())
    return replace(state, indexed=indexed)


def build_index(
    embeddings: EmbeddingSet,
    *,
    kind: str = "annoy",
    cache_dir: str | os.PathLike | None = None,
    n_trees: int = DEFAULT_N_TREES,
    search_k: int = DEFAULT_SEARCH_K,
    rebuild: bool = False,
) -> VectorIndex:
    """An index of ``embeddings``: ``"exact"`` in memory, or ``"annoy"`` cached on disk beside the embeddings.

    An Annoy index already on disk for the same embeddings and ``n_trees`` is loaded (mmap) instead of rebuilt; one
    that fails its checks is rebuilt. Without one, a verified delta of these embeddings over the index of an older
    catalog (written by :func:`lens.delta.update_index`) is loaded instead.
    """
    if kind == "exact":
        return ExactIndex.from_embeddings(embeddings)
    if kind != "annoy":
        raise LensError(f"Unknown index kind '{kind}': use 'annoy' or 'exact'.")
    path = index_path(cache_dir, embeddings, n_trees)
    if not rebuild and path.exists():
        try:
            index = load_annoy(path, expect_key=embeddings.key, expect_dim=embeddings.dim, expect_rows=embeddings)
            index.search_k = search_k
            return index
        except IndexMismatchError:
            pass  # stale or corrupt: rebuild below
    if not rebuild and delta_path(path).exists():
        from lens.delta import load_delta  # the same layer; lens.delta imports this module

        delta = load_delta(path, embeddings, search_k=search_k)
        if delta is not None:
            return delta
    return build_annoy(embeddings, path, n_trees=n_trees, search_k=search_k)


def recall_at_k_vs_exact(
    approximate: VectorIndex,
    exact: ExactIndex,
    queries: np.ndarray,
    k: int = 10,
    *,
    exclude_rows: Sequence[int] | None = None,
) -> float:
    """Mean share of the exact top ``k`` that the approximate index also returns (the usual ANN recall@k)."""
    truth = exact.search_rows(queries, k, exclude_rows=exclude_rows)
    found = approximate.search_rows(queries, k, exclude_rows=exclude_rows)
    shares = [len(set(t[t >= 0]) & set(f[f >= 0])) / max(1, int((t >= 0).sum())) for t, f in zip(truth, found)]
    return float(np.mean(shares)) if shares else float("nan")
