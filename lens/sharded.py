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
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lens.catalog import Catalog
from lens.delta import (
    DELTA_MAX_FRACTION,
    DELTA_MAX_ITEMS,
    UNRELATED_FRACTION,
    CatalogDiff,
    Rebuild,
    diff_rows,
    drop_delta,
    load_delta,
    main_vectors,
    over_threshold,
    write_delta,
)
from lens.embed import EmbeddingSet, load_embeddings
from lens.errors import CacheError, CatalogError, IndexMismatchError, LensError
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


def _manifest_fields(embeddings: EmbeddingSet) -> dict[str, Any]:
    """What a sharded index's manifest records of the embeddings it indexes (:func:`write_manifest`'s arguments)."""
    return {
        "dim": embeddings.dim,
        "n_items": len(embeddings),
        "encoder": embeddings.encoder,
        "embedding_key": embeddings.key,
        "rows_sha256": _embeddings_rows_sha256(embeddings),
    }


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
    shard_fields: Sequence[dict[str, Any]] | None = None,
    fields: dict[str, Any] | None = None,
) -> None:
    """The manifest that makes a folder of shards one index; written last, atomically.

    ``shard_fields[s]`` are more fields of shard ``s``'s entry (``main``: the older catalog's shard a delta applies
    to, :func:`update_sharded_index`); ``fields`` more top-level fields."""
    counts = np.bincount(partition.shard_of, minlength=partition.n_shards)
    extra = list(shard_fields) if shard_fields is not None else [{} for _ in range(partition.n_shards)]
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
                {"name": _shard_name(s), "n_items": int(counts[s]), "values": partition.values[s], **extra[s]}
                for s in range(partition.n_shards)
            ],
            "created": utc_now(),
            **(fields or {}),
        },
    )


def _build_one_shard(
    directory: Path,
    embeddings: EmbeddingSet,
    partition: Partition,
    shard: int,
    *,
    n_trees: int,
    search_k: int,
    n_jobs: int,
) -> None:
    """Write shard ``shard`` of ``partition``: its rows (``<name>.rows.npy``) and its Annoy file (:func:`build_shard`);
    the manifest is the caller's."""
    rows = partition.rows(shard)
    name = _shard_name(shard)
    save_array(directory / f"{name}.rows.npy", rows, {"shard": shard, "embedding_key": embeddings.key})
    build_shard(
        directory / f"{name}.ann",
        embeddings.vectors,
        [embeddings.ids[r] for r in rows.tolist()],
        rows=rows,
        n_trees=n_trees,
        search_k=search_k,
        encoder=embeddings.encoder,
        embedding_key=embeddings.key,
        n_jobs=n_jobs,
        extra={"shard": shard, "n_shards": partition.n_shards, "by": partition.by},
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
        _build_one_shard(directory, embeddings, partition, shard, n_trees=n_trees, search_k=search_k, n_jobs=n_jobs)
        if progress is not None:
            progress(done + 1, len(todo))
    write_manifest(directory, partition, n_trees=n_trees, search_k=search_k, **_manifest_fields(embeddings))
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
        self,
        directory: Path,
        manifest: dict[str, Any],
        shards: Sequence[int] | None = None,
        *,
        parent: Any = None,
        embeddings: EmbeddingSet | None = None,
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
            self._embeddings = embeddings  # a shard served by a delta (lens.delta) verifies against its rows
            self._open: dict[int, VectorIndex] = {}
            self._rows: dict[int, np.ndarray] = {}
            self._lock = threading.Lock()
            self._pool = ThreadPoolExecutor(max_workers=max(1, min(self.n_shards, os.cpu_count() or 1)))
            self.search_k = int(manifest["search_k"])

    # -- shards, opened on first use ---------------------------------------------------------------------------

    @property
    def opened(self) -> set[int]:
        """The shards whose Annoy files have been opened (verified and mapped) so far."""
        return set(self._root._open)

    def is_delta(self, shard: int) -> bool:
        """Whether shard ``shard`` is served by an older catalog's shard + a delta (:func:`update_sharded_index`)."""
        return bool(self.manifest["shards"][shard].get("main"))

    def shard(self, shard: int) -> VectorIndex:
        """Shard ``shard``'s index, verified and mmapped on first use: its Annoy file (size, SHA-256, dimension, row
        count), or for a shard updated with a delta, the older catalog's shard + the delta (:func:`lens.delta.
        load_delta`'s checks, against the rows of the embeddings this index was opened with).

        Raises:
            IndexMismatchError: the shard file or its sidecar is missing, damaged or of another index.
        """
        root = self._root
        with root._lock:
            index = root._open.get(shard)
            if index is None:
                name = _shard_name(shard)
                expected = int(self.manifest["shards"][shard]["n_items"])
                loaded = load_array(self.directory / f"{name}.rows.npy", expect={"shard": shard})
                if loaded is None or len(loaded[0]) != expected:
                    raise IndexMismatchError(
                        f"{self.directory / name}.rows.npy is missing or damaged: rebuild the index with "
                        f"`python -m lens index --shards {self.n_shards} --rebuild`."
                    )
                rows = loaded[0].astype(np.int64, copy=False)
                if self.is_delta(shard):
                    index = self._open_delta(shard, rows)
                else:
                    annoy = load_annoy(
                        self.directory / f"{name}.ann",
                        expect_key=str(self.manifest.get("embedding_key", "")),
                        expect_dim=self.dim,
                    )
                    if len(annoy) != expected or annoy.meta.get("shard", shard) != shard:
                        annoy.unload()
                        raise IndexMismatchError(
                            f"{self.directory / name}.ann is not shard {shard} of this index ({len(annoy)} items, "
                            f"the manifest says {expected}): rebuild it with `python -m lens index --shards "
                            f"{self.n_shards} --rebuild`."
                        )
                    index = annoy
                index.search_k = root.search_k  # type: ignore[attr-defined]
                root._rows[shard] = rows
                root._open[shard] = index
            return index

    def _open_delta(self, shard: int, rows: np.ndarray) -> VectorIndex:
        embeddings = self._root._embeddings
        where = self.directory / f"{_shard_name(shard)}.ann"
        if embeddings is None or embeddings.key != self.manifest.get("embedding_key") or rows.max() >= len(embeddings):
            raise IndexMismatchError(
                f"Shard {shard} at {self.directory} is an older catalog's shard plus a delta: open it with the "
                "catalog's embeddings (`python -m lens search --shards N`, lens.sharded.build_sharded_index)."
            )
        delta = load_delta(where, shard_set(embeddings, rows), search_k=self._root.search_k)
        if delta is None:
            raise IndexMismatchError(
                f"The delta of shard {shard} at {self.directory} (or the older shard it applies to) is missing or "
                f"damaged: update the index again with `python -m lens index --update --shards {self.n_shards}`."
            )
        return delta

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
            index.search_k = int(value)  # type: ignore[attr-defined]

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

    def _merged(self, vector: np.ndarray, k: int, search: Callable[[VectorIndex, np.ndarray], list[Hit]]) -> list[Hit]:
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
                index.unload()  # type: ignore[attr-defined]
            root._open.clear()


def load_sharded(
    directory: str | os.PathLike,
    *,
    expect_key: str | None = None,
    expect_dim: int | None = None,
    embeddings: EmbeddingSet | None = None,
) -> ShardedIndex:
    """Open a sharded index from its manifest; each shard is verified and mapped when first searched (a shard
    served by a delta needs ``embeddings``, the catalog's, to verify against).

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
    return ShardedIndex(directory, manifest, embeddings=embeddings)


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
    update: bool = False,
    n_jobs: int = -1,
) -> tuple[ShardedIndex, list[int]]:
    """The sharded index of ``embeddings`` in the cache: loaded and verified when it is there, else built.

    Every shard is opened and verified on load (as :func:`lens.index.build_index` verifies the single index); a shard
    that does not verify is rebuilt alone, the others are kept. A manifest of other embeddings or of another
    partition (a catalog whose ``by`` column changed) rebuilds everything. With ``update``, a catalog that has no
    sharded index of its own but an older version that has one is served by that one's shards plus a delta per shard
    (:func:`update_sharded_index`, shards past the threshold rebuilt at once) instead of building every shard.

    Returns:
        The index and the shards built in full by this call (empty when everything was loaded or updated).
    """
    if rebuild:
        partition = catalog_partition(catalog, embeddings, n_shards, by)
        directory = sharded_path(cache_dir, embeddings, n_trees, partition.n_shards, by)
        if directory.exists():
            shutil.rmtree(directory)
        index = build_sharded(embeddings, directory, partition, n_trees=n_trees, search_k=search_k, n_jobs=n_jobs)
        index._root._embeddings = embeddings
        return index, list(range(partition.n_shards))
    done = update_sharded_index(
        catalog,
        embeddings,
        n_shards,
        by=by,
        cache_dir=cache_dir,
        n_trees=n_trees,
        search_k=search_k,
        rebuild="now",
        update=update,
        n_jobs=n_jobs,
    )
    return done.index, done.built


# --------------------------------------------------------------------------------------------------------------
# Updates: each shard of an older catalog's sharded index + its own delta and tombstones (lens.delta)


def shard_set(embeddings: EmbeddingSet, rows: np.ndarray) -> EmbeddingSet:
    """The rows ``rows`` of ``embeddings`` as an embedding set of their own (same encoder and key): the "catalog"
    of one shard, the one its delta is computed for and verified against."""
    rows = np.asarray(rows, dtype=np.int64)
    vectors = np.ascontiguousarray(embeddings.vectors[rows], dtype=np.float32).reshape(len(rows), embeddings.dim)
    return EmbeddingSet(
        vectors,
        [embeddings.ids[r] for r in rows.tolist()],
        embeddings.encoder,
        key=embeddings.key,
        identity=embeddings.identity,
        catalog=embeddings.catalog,
    )


def manifest_partition(manifest: dict[str, Any], catalog: Catalog, embeddings: EmbeddingSet) -> Partition:
    """The partition of ``embeddings``' rows that keeps ``manifest``'s placement, so that an updated item lands in the
    shard that held it: by hash, the same hash; by a column, each value in the shard the manifest puts it in, and a
    value the manifest does not know on the shard with the fewest rows (largest value first, as
    :func:`partition_rows` places them).

    Raises:
        CatalogError: the manifest's column is not in the catalog.
    """
    n_shards, by = int(manifest["n_shards"]), str(manifest["by"])
    if by == BY_HASH:
        return partition_rows(embeddings.ids, n_shards)
    if by not in catalog.table.columns:
        raise CatalogError(f"Cannot shard by '{by}': the catalog has no such column. Use --by hash.")
    by_id = dict(zip(catalog.table["id"].astype(str), catalog.table[by].astype(str)))
    labels = [by_id[i] for i in embeddings.ids]
    values = [list(entry["values"]) for entry in manifest["shards"]]
    value_shard = {v: shard for shard, held in enumerate(values) for v in held}
    shard_of = np.array([value_shard.get(v, -1) for v in labels], dtype=np.int64).reshape(-1)
    load = np.bincount(shard_of[shard_of >= 0], minlength=n_shards)
    unknown, counts = np.unique([v for v in labels if v not in value_shard], return_counts=True)
    for u in sorted(range(len(unknown)), key=lambda u: (-counts[u], unknown[u])):
        shard = int(np.argmin(load))
        value_shard[str(unknown[u])] = shard
        load[shard] += counts[u]
        values[shard].append(str(unknown[u]))
        shard_of[[row for row, v in enumerate(labels) if v == unknown[u]]] = shard
    return Partition(by, shard_of, [sorted(v) for v in values])


@dataclass(frozen=True)
class ShardedUpdate:
    """What :func:`update_sharded_index` did.

    Attributes:
        index: the index to search.
        action: ``current`` (every shard is the catalog's own), ``delta`` (an update written before was loaded),
            ``updated`` (deltas were computed and written now), or ``built`` (built in full: no older index).
        built: shards built in full by this call (damaged ones, ones past the threshold, ones with no older shard).
        deltas: the shards served by an older shard + a delta after this call, and their changes.
        pending: shards past the threshold that still serve a delta (``rebuild="never"``, or while the background
            rebuild runs).
        rebuilding: the background rebuild's thread (``rebuild="background"``), else ``None``.
        seconds: wall time of the call.
    """

    index: ShardedIndex
    action: str
    built: list[int]
    deltas: dict[int, CatalogDiff]
    pending: list[int]
    rebuilding: threading.Thread | None = None
    seconds: float = 0.0

    def describe(self) -> str:
        """One line for the CLI."""
        idx = self.index
        head = f"{idx.n_shards} annoy shards by {idx.by} of {len(idx):,} items"
        if self.action == "built":
            return f"{head}: built in full in {self.seconds:.1f}s ({idx.directory})"
        parts = []
        if self.deltas:
            added = sum(len(d.added) for d in self.deltas.values())
            edited = sum(len(d.edited) for d in self.deltas.values())
            removed = sum(len(d.removed) for d in self.deltas.values())
            changed = sum(1 for d in self.deltas.values() if d.changed)
            parts.append(
                f"{len(self.deltas)} shard(s) served by an older shard + a delta (+{added} added, {edited} edited, "
                f"-{removed} removed, in {changed} of them)"
            )
        if self.built:
            parts.append(f"{len(self.built)} shard(s) built in full ({', '.join(map(str, self.built))})")
        if self.pending:
            how = "rebuilding in the background" if self.rebuilding is not None else "rebuild with --update"
            parts.append(f"{len(self.pending)} past the threshold ({how})")
        what = "; ".join(parts) if parts else "up to date"
        verb = {"updated": "updated", "delta": "loaded the update", "current": "loaded"}.get(self.action, self.action)
        return f"{head}: {verb} in {self.seconds:.1f}s: {what} ({idx.directory})"


_manifest_lock = threading.Lock()
_shard_rebuilds: dict[Path, threading.Thread] = {}


def _candidates(directory: Path, key: str, dim: int, n_shards: int, by: str) -> list[tuple[Path, dict[str, Any]]]:
    """Other sharded indexes of the same encoder, trees, shard count and partition kind: newest first."""
    suffix = directory.name[len(key) :]  # "-t<trees>-s<shards>-<by>" (sharded_path)
    found = []
    for other in sorted(directory.parent.glob(f"*{suffix}")) if directory.parent.is_dir() else []:
        manifest = read_json(other / MANIFEST) if other != directory and other.is_dir() else None
        if (
            manifest is None
            or manifest.get("kind") != "sharded-annoy"
            or manifest.get("format") != FORMAT_VERSION
            or manifest.get("dim") != dim
            or manifest.get("n_shards") != n_shards
            or manifest.get("by") != by
            or not isinstance(manifest.get("shards"), list)
            or len(manifest["shards"]) != n_shards
        ):
            continue
        found.append((other, manifest))
    found.sort(key=lambda c: str(c[1].get("created", "")), reverse=True)
    return found


def _main_shard(candidates: list[tuple[Path, dict[str, Any]]], shard: int, ids: Sequence[str]) -> Path | None:
    """Of the candidates' own (not delta) shard ``shard`` files, the one whose ids differ least from ``ids`` (the
    newest among equals), or ``None`` when none shares an id. Reads sidecars only."""
    wanted = set(ids)
    best: tuple[int, Path] | None = None
    for other, manifest in candidates:  # newest first: a strict < keeps the newest of equal churn
        if manifest["shards"][shard].get("main"):
            continue  # itself an older shard + a delta: the update is diffed against that older shard instead
        path = other / f"{_shard_name(shard)}.ann"
        held = set(map(str, (read_json(path.with_suffix(".json")) or {}).get("ids", [])))
        if not held & wanted:
            continue
        churn = len(wanted - held) + len(held - wanted)
        if best is None or churn < best[0]:
            best = (churn, path)
    return None if best is None else best[1]


def _main_rows_vectors(main: AnnoyIndex, cache_dir: str | os.PathLike | None, memo: dict[str, Any]) -> np.ndarray:
    """The vectors ``main`` (an older catalog's shard) was built from: its rows of that catalog's cached embeddings
    (one checksummed read per older catalog), else from Annoy item by item (:func:`lens.delta.main_vectors`)."""
    key = str(main.meta.get("embedding_key", ""))
    if key not in memo:
        try:
            memo[key] = load_embeddings(cache_dir, main.encoder, key)
        except CacheError:
            memo[key] = None
    older = memo[key]
    assert main.path is not None
    loaded = load_array(main.path.with_name(f"{main.path.stem}.rows.npy"), expect={"shard": main.meta.get("shard")})
    if older is not None and loaded is not None and len(loaded[0]) == len(main):
        rows = loaded[0].astype(np.int64, copy=False)
        if len(rows) and int(rows.max()) < len(older) and [older.ids[r] for r in rows.tolist()] == main.ids:
            return np.asarray(older.vectors[rows], dtype=np.float32)
    return main_vectors(main, cache_dir)


def _publish_shard(
    directory: Path,
    embeddings: EmbeddingSet,
    partition: Partition,
    shard: int,
    *,
    n_trees: int,
    search_k: int,
    n_jobs: int,
) -> None:
    """Build shard ``shard`` in full for ``embeddings``, then mark it so in the manifest, then drop its delta: the
    manifest goes on naming the older shard + delta until the new file is published, so a kill at any point
    leaves a shard that serves."""
    _build_one_shard(directory, embeddings, partition, shard, n_trees=n_trees, search_k=search_k, n_jobs=n_jobs)
    name = _shard_name(shard)
    with _manifest_lock:
        manifest = read_json(directory / MANIFEST)
        if manifest is not None:
            entry = manifest["shards"][shard]
            for key in ("main", "added", "edited", "removed", "main_items"):
                entry.pop(key, None)
            write_json(directory / MANIFEST, manifest)
    drop_delta(directory / f"{name}.ann")


def _open_own(directory: Path, catalog: Catalog, embeddings: EmbeddingSet) -> tuple[ShardedIndex, Partition] | None:
    """The catalog's own sharded index at ``directory`` when its manifest matches the embeddings' rows and the
    catalog's placement, else ``None`` (nothing verified per shard yet)."""
    try:
        index = load_sharded(directory, expect_key=embeddings.key, expect_dim=embeddings.dim, embeddings=embeddings)
        partition = manifest_partition(index.manifest, catalog, embeddings)
    except (IndexMismatchError, CatalogError, KeyError):
        return None
    same = (
        index.manifest.get("rows_sha256") == _embeddings_rows_sha256(embeddings)
        and [sorted(s["values"]) for s in index.manifest["shards"]] == partition.values
        and [s["n_items"] for s in index.manifest["shards"]]
        == np.bincount(partition.shard_of, minlength=partition.n_shards).tolist()
    )
    return (index, partition) if same else None


def _shard_diff(entry: dict[str, Any]) -> CatalogDiff:
    return CatalogDiff(list(entry.get("added", [])), list(entry.get("edited", [])), list(entry.get("removed", [])))


def update_sharded_index(
    catalog: Catalog,
    embeddings: EmbeddingSet,
    n_shards: int,
    *,
    by: str = BY_HASH,
    cache_dir: str | os.PathLike | None = None,
    n_trees: int = DEFAULT_N_TREES,
    search_k: int = DEFAULT_SEARCH_K,
    rebuild: Rebuild = "now",
    update: bool = True,
    n_jobs: int = -1,
    max_fraction: float = DELTA_MAX_FRACTION,
    max_items: int = DELTA_MAX_ITEMS,
) -> ShardedUpdate:
    """The sharded index of ``embeddings``, updated shard by shard from an older catalog's sharded index.

    In order: the catalog's own sharded index when its manifest matches (``current``, or ``delta`` when some of its
    shards are an older shard + a delta); damaged shards are rebuilt alone. Else, with ``update``, the newest sharded
    index of the same encoder, trees, shard count and ``by`` gives the placement (:func:`manifest_partition`: an
    added, edited or removed item goes to the shard its hash or column value names), and each shard gets a delta
    and tombstones over the older version of that shard whose ids differ least (:func:`lens.delta.diff_rows`,
    :func:`lens.delta.write_delta`; ``updated``); a shard with no older version is built in full. The manifest is
    written last. Without ``update``, or with no older index, every shard is built (``built``).

    A shard past the threshold (``max_fraction`` of its older version changed, or ``max_items``; or more than
    :data:`lens.delta.UNRELATED_FRACTION` of it: always at once) is rebuilt alone: at once (``rebuild="now"``), in
    a background thread while its delta serves (``"background"``), or not (``"never"``: ``pending`` says which).
    A rebuilt shard is published before the manifest stops naming its delta, so a kill leaves every shard serving.

    Raises:
        LensError: a shard would be empty (more shards than the catalog fills).
    """
    started = time.perf_counter()
    directory = sharded_path(cache_dir, embeddings, n_trees, n_shards, by)
    build: dict[str, Any] = {"n_trees": n_trees, "search_k": search_k, "n_jobs": n_jobs}
    own = _open_own(directory, catalog, embeddings)
    built: list[int] = []
    if own is not None:
        index, partition = own
        action = "current"
        bad = []
        for s in range(partition.n_shards):
            try:
                shard = index.shard(s)
            except IndexMismatchError:
                bad.append(s)
                continue
            if not np.array_equal(index._rows[s], partition.rows(s)) or shard.ids != [
                embeddings.ids[r] for r in index._rows[s].tolist()
            ]:
                bad.append(s)
        if bad:
            index.unload()
            for s in bad:
                _publish_shard(directory, embeddings, partition, s, **build)
            built += bad
        manifest = read_json(directory / MANIFEST) or index.manifest
        if any(entry.get("main") for entry in manifest["shards"]):
            action = "delta"
    else:
        if directory.exists():
            shutil.rmtree(directory)
        candidates = _candidates(directory, embeddings.key, embeddings.dim, n_shards, by) if update else []
        if not candidates:
            partition = catalog_partition(catalog, embeddings, n_shards, by)
            index = build_sharded(embeddings, directory, partition, **build)
            index._root._embeddings = embeddings
            index.search_k = search_k
            elapsed = time.perf_counter() - started
            return ShardedUpdate(index, "built", list(range(n_shards)), {}, [], seconds=elapsed)
        partition = manifest_partition(candidates[0][1], catalog, embeddings)
        empty = [s for s in range(partition.n_shards) if not (partition.shard_of == s).any()]
        if empty:
            raise LensError(
                f"{len(empty)} of {partition.n_shards} shards would be empty after the update ({len(embeddings)} "
                "items): rebuild with fewer --shards."
            )
        directory.mkdir(parents=True)
        memo: dict[str, Any] = {}
        fields: list[dict[str, Any]] = []
        for s in range(partition.n_shards):
            rows = partition.rows(s)
            name = _shard_name(s)
            sub = shard_set(embeddings, rows)
            main_path = _main_shard(candidates, s, sub.ids)
            main = None
            if main_path is not None:
                try:
                    main = load_annoy(main_path, expect_dim=embeddings.dim)
                except IndexMismatchError:
                    main = None
            if main is None:
                _publish_shard(directory, embeddings, partition, s, **build)  # no manifest yet: nothing to mark
                built.append(s)
                fields.append({})
                continue
            assert main_path is not None
            save_array(directory / f"{name}.rows.npy", rows, {"shard": s, "embedding_key": embeddings.key})
            diff = diff_rows(main.ids, _main_rows_vectors(main, cache_dir, memo), sub)
            write_delta(directory / f"{name}.ann", sub, main, diff)
            main.unload()
            fields.append(
                {
                    "main": f"../{main_path.parent.name}/{main_path.name}",
                    "main_items": len(main.ids),
                    "added": diff.added,
                    "edited": diff.edited,
                    "removed": diff.removed,
                }
            )
        write_manifest(
            directory,
            partition,
            n_trees=n_trees,
            search_k=search_k,
            **_manifest_fields(embeddings),
            shard_fields=fields,
            fields={"updated_from": candidates[0][0].name},
        )
        action = "updated"
        manifest = read_json(directory / MANIFEST) or {}
    # Shards past the threshold: rebuilt alone, each published before its delta is dropped.
    deltas = {s: _shard_diff(e) for s, e in enumerate(manifest["shards"]) if e.get("main")}
    over = []
    for s, diff in deltas.items():
        n_main = int(manifest["shards"][s].get("main_items", 0)) or 1
        if over_threshold(n_main, diff, max_fraction=max_fraction, max_items=max_items):
            over.append((s, diff.changed > UNRELATED_FRACTION * n_main))
    now = [s for s, unrelated in over if unrelated or rebuild == "now"]
    later = [s for s, _ in over if s not in now]
    for s in now:
        _publish_shard(directory, embeddings, partition, s, **build)
        built.append(s)
        deltas.pop(s)
    thread = None
    if later and rebuild == "background":
        thread = _rebuild_shards_in_background(directory, embeddings, partition, later, build)
    index = load_sharded(directory, expect_key=embeddings.key, expect_dim=embeddings.dim, embeddings=embeddings)
    index.search_k = search_k
    elapsed = time.perf_counter() - started
    return ShardedUpdate(index, action, sorted(built), deltas, later, thread, seconds=elapsed)


def _rebuild_shards_in_background(
    directory: Path, embeddings: EmbeddingSet, partition: Partition, shards: list[int], build: dict[str, Any]
) -> threading.Thread:
    """One background thread per sharded index in this process that rebuilds ``shards`` one after another."""
    with _manifest_lock:
        running = _shard_rebuilds.get(directory)
        if running is not None and running.is_alive():
            return running

        def work() -> None:
            for s in shards:
                try:
                    _publish_shard(directory, embeddings, partition, s, **build)
                except Exception:  # noqa: BLE001 - the delta keeps serving; the next update tries again
                    return

        thread = threading.Thread(target=work, name=f"lens-rebuild-{directory.name}", daemon=True)
        _shard_rebuilds[directory] = thread
        thread.start()
        return thread
