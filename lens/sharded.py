"""A catalog's vectors split into N Annoy shards, searched by fan-out and merged by cosine.

One Annoy file stops where one machine's memory stops (docs/scale.md). A sharded index splits the rows into
``n_shards`` groups, by a stable hash of the id (even shards; every query visits every shard) or by a metadata column
such as ``masterCategory`` (all rows of one value in one shard; a query filtered on that column visits only the
shards that hold its values). Each shard is an ordinary lens Annoy file with the same sidecar as the single index
(:func:`lens.index.load_annoy` checks its size, SHA-256, dimension and row count when it is opened), built with
annoy's ``on_disk_build`` so that the shard's nodes are written to its file as they are made instead of held in
anonymous memory. A query runs on every relevant shard in a thread pool (annoy releases the GIL while it searches),
and the per-shard top k are merged by cosine (each shard's top k holds every item of the global top k that the shard
owns, so the merge loses nothing that the shards found).

Layout (``<cache>/indexes/<encoder>/<embedding key>-t<n_trees>-s<n_shards>-<by>/``)::

    shard-000.ann  shard-000.json        # lens.index's file + sidecar (ids of that shard, checksums)
    shard-000.rows.npy  .rows.json       # the shard's rows in the embedding set (lens.store array + sidecar)
    manifest.json                        # written last: n_shards, by, per-shard values and item counts

Shards are opened lazily (``ShardedIndex.opened`` says which): a filtered query never maps the other shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lens.catalog import Catalog
from lens.embed import EmbeddingSet
from lens.errors import CatalogError, IndexMismatchError, LensError
from lens.index import (
    DEFAULT_N_TREES,
    DEFAULT_SEARCH_K,
    AnnoyIndex,
    Hit,
    VectorIndex,
    load_annoy,
)
from lens.store import (
    FORMAT_VERSION,
    atomic_write,
    file_sha256,
    load_array,
    read_json,
    resolve_cache_dir,
    save_array,
    utc_now,
    write_json,
)

MANIFEST = "manifest.json"
BY_HASH = "hash"
ADD_CHUNK = 65_536
"""Rows read at a time while a shard is filled: a memory-mapped input is touched one slice at a time."""


# --------------------------------------------------------------------------------------------------------------
# Which row goes to which shard


def hash_shard(ids: Sequence[str], n_shards: int) -> np.ndarray:
    """``(N,)`` int64 shard of each id: BLAKE2b of the id modulo ``n_shards`` (stable across runs and machines,
    unlike Python's salted ``hash``)."""
    out = np.empty(len(ids), dtype=np.int64)
    for row, item_id in enumerate(ids):
        digest = hashlib.blake2b(item_id.encode(), digest_size=8).digest()
        out[row] = int.from_bytes(digest, "little") % n_shards
    return out


@dataclass(frozen=True)
class Partition:
    """Rows to shards: ``shard_of[row]``, and for a column partition the values each shard holds."""

    by: str
    shard_of: np.ndarray
    values: list[list[str]]

    @property
    def n_shards(self) -> int:
        return len(self.values)

    def rows(self, shard: int) -> np.ndarray:
        return np.flatnonzero(self.shard_of == shard)


def partition_rows(
    ids: Sequence[str], n_shards: int, by: str = BY_HASH, *, column_values: Sequence[str] | None = None
) -> Partition:
    """Split rows into ``n_shards`` shards by id hash, or by ``column_values`` (one value per row).

    By column, every row of a value lands in the same shard; values are placed largest first on the shard with
    the fewest rows so far (ties: the lower shard), so shards come out as even as the values allow.

    Raises:
        LensError: ``n_shards`` < 1, or more shards than the column has distinct values (a shard would be empty).
    """
    if n_shards < 1:
        raise LensError(f"--shards must be a positive integer, got {n_shards}.")
    if by == BY_HASH:
        return Partition(BY_HASH, hash_shard(ids, n_shards), [[] for _ in range(n_shards)])
    if column_values is None or len(column_values) != len(ids):
        raise LensError(f"Sharding by '{by}' needs one value of that column per row.")
    labels = np.asarray([str(v) for v in column_values])
    uniques, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if n_shards > len(uniques):
        raise LensError(
            f"Column '{by}' has {len(uniques)} distinct values ({', '.join(uniques[:12])}"
            f"{', ...' if len(uniques) > 12 else ''}): use --shards {len(uniques)} or fewer, or --by hash."
        )
    load = np.zeros(n_shards, dtype=np.int64)
    value_shard = np.empty(len(uniques), dtype=np.int64)
    values: list[list[str]] = [[] for _ in range(n_shards)]
    for u in sorted(range(len(uniques)), key=lambda u: (-counts[u], uniques[u])):
        shard = int(np.argmin(load))
        value_shard[u] = shard
        load[shard] += counts[u]
        values[shard].append(str(uniques[u]))
    return Partition(by, value_shard[inverse], [sorted(v) for v in values])


def catalog_partition(catalog: Catalog, embeddings: EmbeddingSet, n_shards: int, by: str = BY_HASH) -> Partition:
    """:func:`partition_rows` of ``embeddings``' rows, reading a ``by`` column from ``catalog``.

    Raises:
        CatalogError: ``by`` is neither ``hash`` nor a column of the catalog (the message lists the columns).
    """
    if by == BY_HASH:
        return partition_rows(embeddings.ids, n_shards)
    table = catalog.table
    if by not in table.columns:
        columns = ", ".join(c for c in table.columns if c not in ("id", "image"))
        raise CatalogError(
            f"Cannot shard by '{by}': the catalog has no such column. Use --by hash or one of: {columns}."
        )
    by_id = dict(zip(table["id"].astype(str), table[by].astype(str)))
    return partition_rows(embeddings.ids, n_shards, by, column_values=[by_id[i] for i in embeddings.ids])


# --------------------------------------------------------------------------------------------------------------
# Building shards


def _shard_name(shard: int) -> str:
    return f"shard-{shard:03d}"


def _rows_digest(ids: Sequence[str], vectors: Any, rows: np.ndarray | None) -> str:
    """:func:`lens.index.rows_sha256` of the selected rows, computed a slice at a time (same digest)."""
    digest = hashlib.sha256(json.dumps(list(ids), separators=(",", ":")).encode())
    n = len(ids)
    for start in range(0, n, ADD_CHUNK):
        part = vectors[start : start + ADD_CHUNK] if rows is None else vectors[rows[start : start + ADD_CHUNK]]
        digest.update(np.ascontiguousarray(part, dtype=np.float32).tobytes())
    return digest.hexdigest()


def _embeddings_rows_sha256(embeddings: EmbeddingSet) -> str:
    """:func:`lens.index.rows_sha256` of a whole embedding set, computed in slices (the one-shot version copies
    every vector into one ``bytes``: 2 GB more at 1M x 512) and kept on the set, where lens.index keeps it too."""
    cached = getattr(embeddings, "_rows_sha256", None)
    if cached is None:
        cached = _rows_digest(embeddings.ids, embeddings.vectors, None)
        embeddings._rows_sha256 = cached  # type: ignore[attr-defined]
    return cached


def build_shard(
    path: str | os.PathLike,
    vectors: Any,
    ids: Sequence[str],
    *,
    rows: np.ndarray | None = None,
    n_trees: int = DEFAULT_N_TREES,
    search_k: int = DEFAULT_SEARCH_K,
    encoder: str = "",
    embedding_key: str = "",
    seed: int = 0,
    n_jobs: int = -1,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Build one Annoy shard with ``on_disk_build`` at ``path`` (``.ann`` + lens.index's sidecar), atomically.

    Args:
        path: the shard's ``.ann`` file.
        vectors: ``(N, dim)`` float32 unit rows; a ``np.memmap`` is read one slice of :data:`ADD_CHUNK` rows at a
            time, so the vectors need not fit in memory.
        ids: the shard's item ids, one per selected row, in order.
        rows: the rows of ``vectors`` that form the shard (``None``: all of them, in order).
        n_jobs: annoy build threads (-1: every core).
        extra: more sidecar fields (shard number, ...).

    Returns:
        ``path``; open it with :func:`lens.index.load_annoy`.
    """
    from annoy import AnnoyIndex as _Annoy

    if n_trees < 1:
        raise LensError(f"n_trees must be a positive integer, got {n_trees}.")
    n = len(ids) if rows is None else len(rows)
    if n == 0 or n != len(ids):
        raise LensError(f"A shard needs one id per row and at least one row: got {n} rows for {len(ids)} ids.")
    dim = int(vectors.shape[1])
    path = Path(path)
    sidecar = path.with_suffix(".json")

    def write(tmp: Path) -> None:
        index = _Annoy(dim, "angular")
        index.set_seed(seed)
        index.on_disk_build(str(tmp))  # nodes go to the file as they are made, not to anonymous memory
        for start in range(0, n, ADD_CHUNK):
            part = vectors[start : start + ADD_CHUNK] if rows is None else vectors[rows[start : start + ADD_CHUNK]]
            for offset, vector in enumerate(np.asarray(part, dtype=np.float32)):
                index.add_item(start + offset, vector.tolist())
        index.build(n_trees, n_jobs=n_jobs)
        index.unload()

    sidecar.unlink(missing_ok=True)  # as build_annoy: no sidecar ever vouches for a half-written .ann
    atomic_write(path, write)
    meta = {
        "format": FORMAT_VERSION,
        "kind": "annoy",
        "metric": "angular",
        "dim": dim,
        "n_trees": n_trees,
        "search_k": search_k,
        "seed": seed,
        "encoder": encoder,
        "embedding_key": embedding_key,
        "n_items": n,
        "file_size": path.stat().st_size,
        "file_sha256": file_sha256(path),
        "rows_sha256": _rows_digest(ids, vectors, rows),
        "ids": list(ids),
        "created": utc_now(),
        **(extra or {}),
    }
    write_json(sidecar, meta, indent=None)
    return path


def write_manifest(
    directory: Path,
    partition: Partition,
    *,
    dim: int,
    n_items: int,
    n_trees: int,
    search_k: int,
    encoder: str = "",
    embedding_key: str = "",
    rows_sha256: str = "",
) -> None:
    """The manifest that makes a folder of shards one index; written last, atomically."""
    counts = np.bincount(partition.shard_of, minlength=partition.n_shards)
    write_json(
        directory / MANIFEST,
        {
            "format": FORMAT_VERSION,
            "kind": "sharded-annoy",
            "by": partition.by,
            "n_shards": partition.n_shards,
            "dim": dim,
            "n_items": n_items,
            "n_trees": n_trees,
            "search_k": search_k,
            "encoder": encoder,
            "embedding_key": embedding_key,
            "rows_sha256": rows_sha256,
            "shards": [
                {"name": _shard_name(s), "n_items": int(counts[s]), "values": partition.values[s]}
                for s in range(partition.n_shards)
            ],
            "created": utc_now(),
        },
    )


def build_sharded(
    embeddings: EmbeddingSet,
    directory: str | os.PathLike,
    partition: Partition,
    *,
    n_trees: int = DEFAULT_N_TREES,
    search_k: int = DEFAULT_SEARCH_K,
    n_jobs: int = -1,
    only: Collection[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ShardedIndex:
    """Build every shard of ``partition`` (or the shards in ``only``) one after another, then the manifest.

    Raises:
        LensError: a shard would be empty (more hash shards than rows).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)  # no manifest vouches for shards being rewritten
    if len(partition.shard_of) != len(embeddings):
        raise LensError(f"The partition covers {len(partition.shard_of)} rows, the embeddings have {len(embeddings)}.")
    empty = [s for s in range(partition.n_shards) if not (partition.shard_of == s).any()]
    if empty:
        raise LensError(
            f"{len(empty)} of {partition.n_shards} shards would be empty ({len(embeddings)} items): use fewer --shards."
        )
    todo = sorted(range(partition.n_shards) if only is None else only)
    for done, shard in enumerate(todo):
        rows = partition.rows(shard)
        name = _shard_name(shard)
        save_array(directory / f"{name}.rows.npy", rows, {"shard": shard, "embedding_key": embeddings.key})
        build_shard(
            directory / f"{name}.ann",
            embeddings.vectors,
            [embeddings.ids[r] for r in rows],
            rows=rows,
            n_trees=n_trees,
            search_k=search_k,
            encoder=embeddings.encoder,
            embedding_key=embeddings.key,
            n_jobs=n_jobs,
            extra={"shard": shard, "n_shards": partition.n_shards, "by": partition.by},
        )
        if progress is not None:
            progress(done + 1, len(todo))
    write_manifest(
        directory,
        partition,
        dim=embeddings.dim,
        n_items=len(embeddings),
        n_trees=n_trees,
        search_k=search_k,
        encoder=embeddings.encoder,
        embedding_key=embeddings.key,
        rows_sha256=_embeddings_rows_sha256(embeddings),
    )
    return load_sharded(directory, expect_key=embeddings.key, expect_dim=embeddings.dim)


# --------------------------------------------------------------------------------------------------------------
# Serving


class ShardedIndex(VectorIndex):
    """N Annoy shards behind one :class:`lens.index.VectorIndex`: fan-out search, merged by cosine.

    ``search`` and ``search_rows`` return the same kind of results as a single index (rows are rows of the
    embedding set the index was built from). :meth:`restrict` gives a view over the shards that hold some values
    of the ``by`` column, so a query filtered on that column searches only them.
    """

    kind = "sharded"
    _search_k: int
    _all_ids: list[str] | None = None

    def __init__(
        self, directory: Path, manifest: dict[str, Any], shards: Sequence[int] | None = None, *, parent: Any = None
    ) -> None:
        self.directory = directory
        self.manifest = manifest
        self.by = str(manifest["by"])
        self.dim = int(manifest["dim"])
        self.encoder = str(manifest.get("encoder", ""))
        self.n_shards = int(manifest["n_shards"])
        self.shards = list(range(self.n_shards)) if shards is None else sorted(shards)
        self._root: ShardedIndex = parent if parent is not None else self
        if parent is None:
            self._open: dict[int, AnnoyIndex] = {}
            self._rows: dict[int, np.ndarray] = {}
            self._lock = threading.Lock()
            self._pool = ThreadPoolExecutor(max_workers=max(1, min(self.n_shards, os.cpu_count() or 1)))
            self.search_k = int(manifest["search_k"])

    # -- shards, opened on first use ---------------------------------------------------------------------------

    @property
    def opened(self) -> set[int]:
        """The shards whose Annoy files have been opened (verified and mapped) so far."""
        return set(self._root._open)

    def shard(self, shard: int) -> AnnoyIndex:
        """Shard ``shard``'s Annoy index, verified (size, SHA-256, dimension, row count) and mmapped on first use.

        Raises:
            IndexMismatchError: the shard file or its sidecar is missing, damaged or of another index.
        """
        root = self._root
        with root._lock:
            index = root._open.get(shard)
            if index is None:
                name = _shard_name(shard)
                index = load_annoy(
                    self.directory / f"{name}.ann",
                    expect_key=str(self.manifest.get("embedding_key", "")),
                    expect_dim=self.dim,
                )
                expected = int(self.manifest["shards"][shard]["n_items"])
                if len(index) != expected or index.meta.get("shard", shard) != shard:
                    index.unload()
                    raise IndexMismatchError(
                        f"{self.directory / name}.ann is not shard {shard} of this index ({len(index)} items, "
                        f"the manifest says {expected}): rebuild it with `python -m lens index --shards "
                        f"{self.n_shards} --rebuild`."
                    )
                loaded = load_array(self.directory / f"{name}.rows.npy", expect={"shard": shard})
                if loaded is None or len(loaded[0]) != len(index):
                    index.unload()
                    raise IndexMismatchError(
                        f"{self.directory / name}.rows.npy is missing or damaged: rebuild the index with "
                        f"`python -m lens index --shards {self.n_shards} --rebuild`."
                    )
                index.search_k = root.search_k
                root._rows[shard] = loaded[0].astype(np.int64, copy=False)
                root._open[shard] = index
            return index

    def restrict(self, values: Iterable[str]) -> ShardedIndex:
        """A view that searches only the shards holding ``values`` of the ``by`` column (a column partition only).

        Raises:
            LensError: the index is sharded by hash, or no shard holds any of ``values``.
        """
        if self.by == BY_HASH:
            raise LensError("This index is sharded by id hash: every shard may hold any value, so none can be skipped.")
        wanted = {str(v) for v in values}
        shards = [s for s in self.shards if wanted & set(self.manifest["shards"][s]["values"])]
        if not shards:
            raise LensError(f"No shard of this index holds {self.by} = {', '.join(sorted(wanted))}.")
        return ShardedIndex(self.directory, self.manifest, shards, parent=self._root)

    def __len__(self) -> int:
        return int(sum(self.manifest["shards"][s]["n_items"] for s in self.shards))

    @property
    def ids(self) -> list[str]:  # type: ignore[override]
        """Every item id in embedding-row order (read from the shards' sidecars; only a row lookup needs this)."""
        root = self._root
        if root._all_ids is None:
            out = [""] * int(self.manifest["n_items"])
            for s in range(self.n_shards):
                index = self.shard(s)
                for row, item_id in zip(root._rows[s].tolist(), index.ids):
                    out[row] = item_id
            root._all_ids = out
        return root._all_ids

    @property
    def search_k(self) -> int:
        return self._root._search_k

    @search_k.setter
    def search_k(self, value: int) -> None:
        self._root._search_k = int(value)
        for index in self._root._open.values():
            index.search_k = int(value)

    # -- search ------------------------------------------------------------------------------------------------

    def _fan_out(self, fn: Callable[[int], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        for s in self.shards:
            self.shard(s)  # opened (and verified) here, so that a damaged shard fails before any thread runs
        if len(self.shards) == 1:
            parts = [fn(self.shards[0])]
        else:
            parts = list(self._root._pool.map(fn, self.shards))
        keys = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts])
        return keys, scores

    def _search_rows(self, vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        root = self._root

        def one(shard: int) -> tuple[np.ndarray, np.ndarray]:
            local, scores = root._open[shard]._search_rows(vector, n)
            return root._rows[shard][local], scores

        rows, scores = self._fan_out(one)
        order = np.lexsort((rows, -scores))[:n]  # best cosine first; ties to the lower row, as the exact index
        return rows[order], scores[order]

    def search(self, vector: np.ndarray, k: int = 10, *, exclude: Iterable[str] = ()) -> list[Hit]:
        """The ``k`` most similar items over the searched shards, best first (each shard asked for its own top k)."""
        excluded = list(exclude)
        return self._merged(vector, k, lambda index, v: index.search(v, k, exclude=excluded))

    def search_filtered(
        self, vector: np.ndarray, k: int, allowed: Collection[str], *, exclude: Iterable[str] = ()
    ) -> list[Hit]:
        """The ``k`` most similar items among ``allowed`` over the searched shards: each shard's own filtered top k
        (:meth:`lens.index.VectorIndex.search_filtered`), merged by cosine; no other shard is opened."""
        excluded = list(exclude)
        allowed = allowed if isinstance(allowed, (set, frozenset)) else set(allowed)
        return self._merged(vector, k, lambda index, v: index.search_filtered(v, k, allowed, exclude=excluded))

    def _merged(self, vector: np.ndarray, k: int, search: Callable[[AnnoyIndex, np.ndarray], list[Hit]]) -> list[Hit]:
        if k < 1:
            raise LensError(f"k must be a positive integer, got {k}.")
        vector = self._check_vector(vector)
        root = self._root
        found: list[tuple[float, str]] = []
        lock = threading.Lock()

        def one(shard: int) -> tuple[np.ndarray, np.ndarray]:
            hits = search(root._open[shard], vector)
            with lock:
                found.extend((h.score, h.id) for h in hits)
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)

        self._fan_out(one)
        found.sort(key=lambda t: (-t[0], t[1]))
        return [Hit(item_id, score, rank) for rank, (score, item_id) in enumerate(found[:k], start=1)]

    def unload(self) -> None:
        root = self._root
        with root._lock:
            for index in root._open.values():
                index.unload()
            root._open.clear()


def load_sharded(
    directory: str | os.PathLike, *, expect_key: str | None = None, expect_dim: int | None = None
) -> ShardedIndex:
    """Open a sharded index from its manifest; each shard is verified and mapped when first searched.

    Raises:
        IndexMismatchError: no or malformed manifest, or one of other embeddings / dimension.
    """
    directory = Path(directory)
    hint = "build it with `python -m lens index --shards N` (add --rebuild to replace it)"
    manifest = read_json(directory / MANIFEST)
    if (
        manifest is None
        or manifest.get("kind") != "sharded-annoy"
        or manifest.get("format") != FORMAT_VERSION
        or not isinstance(manifest.get("shards"), list)
        or len(manifest["shards"]) != manifest.get("n_shards")
    ):
        raise IndexMismatchError(f"No valid sharded index at {directory} (missing or malformed {MANIFEST}): {hint}.")
    if expect_key is not None and manifest.get("embedding_key") != expect_key:
        raise IndexMismatchError(f"The sharded index at {directory} was built from other embeddings: {hint}.")
    if expect_dim is not None and manifest.get("dim") != expect_dim:
        raise IndexMismatchError(f"The sharded index at {directory} holds {manifest.get('dim')}-d vectors: {hint}.")
    return ShardedIndex(directory, manifest)


def sharded_path(
    cache_dir: str | os.PathLike | None, embeddings: EmbeddingSet, n_trees: int, n_shards: int, by: str
) -> Path:
    """``<cache>/indexes/<encoder>/<embedding key>-t<n_trees>-s<n_shards>-<by>/``."""
    safe_by = "".join(c if c.isalnum() or c in "-_" else "_" for c in by)
    return (
        resolve_cache_dir(cache_dir)
        / "indexes"
        / embeddings.encoder
        / f"{embeddings.key}-t{n_trees}-s{n_shards}-{safe_by}"
    )


def build_sharded_index(
    catalog: Catalog,
    embeddings: EmbeddingSet,
    n_shards: int,
    *,
    by: str = BY_HASH,
    cache_dir: str | os.PathLike | None = None,
    n_trees: int = DEFAULT_N_TREES,
    search_k: int = DEFAULT_SEARCH_K,
    rebuild: bool = False,
    n_jobs: int = -1,
) -> tuple[ShardedIndex, list[int]]:
    """The sharded index of ``embeddings`` in the cache: loaded and verified when it is there, else built.

    Every shard is opened and verified on load (as :func:`lens.index.build_index` verifies the single index); a shard
    that does not verify is rebuilt alone, the others are kept. A manifest of other embeddings or of another
    partition (a catalog whose ``by`` column changed) rebuilds everything.

    Returns:
        The index and the shards built by this call (empty when everything was loaded).
    """
    partition = catalog_partition(catalog, embeddings, n_shards, by)
    directory = sharded_path(cache_dir, embeddings, n_trees, partition.n_shards, by)
    if not rebuild:
        try:
            index = load_sharded(directory, expect_key=embeddings.key, expect_dim=embeddings.dim)
        except IndexMismatchError:
            index = None
        same = index is not None and (
            index.manifest.get("rows_sha256") == _embeddings_rows_sha256(embeddings)
            and [s["values"] for s in index.manifest["shards"]] == partition.values
            and [s["n_items"] for s in index.manifest["shards"]]
            == np.bincount(partition.shard_of, minlength=partition.n_shards).tolist()
        )
        if index is not None and same:
            bad = []
            for s in range(partition.n_shards):
                try:
                    shard = index.shard(s)
                except IndexMismatchError:
                    bad.append(s)
                    continue
                rows = index._rows[s]
                if not np.array_equal(rows, partition.rows(s)) or shard.ids != [embeddings.ids[r] for r in rows]:
                    bad.append(s)
            if not bad:
                index.search_k = search_k
                return index, []
            index.unload()
            rebuilt = build_sharded(
                embeddings, directory, partition, n_trees=n_trees, search_k=search_k, n_jobs=n_jobs, only=bad
            )
            return rebuilt, bad
    if directory.exists():
        shutil.rmtree(directory)
    index = build_sharded(embeddings, directory, partition, n_trees=n_trees, search_k=search_k, n_jobs=n_jobs)
    return index, list(range(partition.n_shards))
