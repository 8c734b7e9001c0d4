"""An Annoy index that takes catalog updates: the main index, a delta and tombstones.

Annoy freezes at build: a catalog that gained, changed or lost a few products would need the whole index built
again (about 10-20 s for the 8,010-item sample, minutes per million items). Instead, :func:`update_index` keeps the
index built for an older version of the catalog (the *main* index) and writes beside it, for the new catalog:

* the **delta**: the vectors of the items added or edited since the main index was built, searched exactly;
* the **tombstones**: the ids the main index holds that are removed or edited since (an edited item is a tombstone
  in the main index and a row of the delta: it is found under its new vector only).

A query (:class:`DeltaIndex`) asks the main index for enough neighbours that ``k`` are left after the tombstoned
ones are dropped (a few more than ``k``, doubled while too few are left, up to ``k + |tombstones|``), ranks the delta
exactly, merges both by cosine and keeps the top ``k``. The result
is the one a full rebuild gives up to Annoy's recall (the delta part is exact).

The delta is ``<embedding key>-t<n_trees>.delta.npy`` beside the Annoy index the new catalog would have (the name
:func:`lens.index.index_path` gives), with a sidecar written by :func:`lens.store.save_array` (checksum, shape) that
describes it: the main index it applies to (file name, SHA-256 of the file and of its rows), the added, edited and
removed ids, and the SHA-256 of the new catalog's rows (ids in order and vectors). It is used only when all of it
verifies; anything else is a miss and the delta is computed again (it costs a diff, not an index).

Which main index: of the Annoy indexes of the same encoder, trees and dimension in the cache, the one whose ids
differ least from the new catalog's. Which items are edited: those whose vector changed (cosine below
``1 - EDIT_TOLERANCE``), so a photo replaced by the same picture is not an edit.

Past a threshold (:data:`DELTA_MAX_FRACTION` of the main index changed, or more than :data:`DELTA_MAX_ITEMS` delta
vectors or tombstones) the index is rebuilt in full: at once (``rebuild="now"``: ``python -m lens index --update``), in a
background thread while the delta serves (``"background"``: the dashboard), or left to the caller (``"never"``:
the background build, which rebuilds after the model is marked ready). Every write is atomic, and the new main
index is published before the delta is dropped, so a killed rebuild leaves the old main index and the delta usable.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lens.embed import EmbeddingSet, load_embeddings
from lens.errors import CacheError, IndexMismatchError
from lens.index import (
    DEFAULT_N_TREES,
    DEFAULT_SEARCH_K,
    AnnoyIndex,
    VectorIndex,
    _embeddings_rows_sha256,
    annoy_path,
    build_annoy,
    delta_path,
    index_path,
    load_annoy,
)
from lens.store import FORMAT_VERSION, read_json, save_array, sidecar_path, verify_array

DELTA_MAX_FRACTION = 0.05
"""Rebuild the main index in full once more than this share of it has changed (added + edited + removed items):
every tombstone costs each query one more neighbour from Annoy, every delta row one more exact dot product."""

DELTA_MAX_ITEMS = 10_000
"""...or once the delta holds more vectors, or the main index more tombstones, than this (an exact search over
10,000 1280-d vectors is about 2 ms; each tombstone is one more neighbour asked of Annoy per query)."""

UNRELATED_FRACTION = 0.5
"""A main index more than half of which changed is not an older version of this catalog (another catalog whose ids
happen to overlap): the index is built in full at once, whatever ``rebuild`` says, instead of writing a delta."""

EDIT_TOLERANCE = 1e-5
"""An item whose vector moved by less than this in cosine (``1 - cos``) is unchanged: the same picture saved again,
or float noise of another embedding path (Ray's vectors match the local ones to ``1 - cos < 1e-4`` at worst)."""

Rebuild = Literal["now", "background", "never"]

_DELTA_KIND = "annoy-delta"


class DeltaIndex(VectorIndex):
    """The main Annoy index of an older catalog, minus its tombstones, plus an exact delta: the new catalog's index.

    Rows are the new catalog's (``ids``: the embeddings' ids in their order), so results compare row for row with
    an :class:`~lens.index.ExactIndex` of the new embeddings.
    """

    kind = "annoy+delta"

    def __init__(
        self,
        main: AnnoyIndex,
        ids: Sequence[str],
        delta_ids: Sequence[str],
        delta_vectors: np.ndarray,
        tombstones: Sequence[str],
        *,
        meta: dict[str, Any] | None = None,
        path: Path | None = None,
    ) -> None:
        self.main = main
        self.ids = list(ids)
        self.dim = main.dim
        self.encoder = main.encoder
        self.meta = meta or {}
        self.path = path
        self.delta_ids = list(delta_ids)
        self.tombstones = frozenset(tombstones)
        position = {item_id: row for row, item_id in enumerate(self.ids)}
        live = [i for i in main.ids if i not in self.tombstones]
        if (
            len(position) != len(self.ids)
            or not self.tombstones <= set(main.ids)
            or set(live) & set(self.delta_ids)
            or len(live) + len(self.delta_ids) != len(self.ids)
            or any(i not in position for i in (*live, *self.delta_ids))
        ):
            raise IndexMismatchError(
                "the main index minus its tombstones plus the delta is not the catalog's set of ids: update the index "
                "again with `python -m lens index --update`."
            )
        # Row of the new catalog for each main row (-1: a tombstone), and for each delta row.
        self._main_rows = np.array(
            [-1 if i in self.tombstones else position[i] for i in main.ids], dtype=np.int64
        ).reshape(-1)
        self._delta_rows = np.array([position[i] for i in self.delta_ids], dtype=np.int64)
        self.delta_vectors = np.ascontiguousarray(delta_vectors, dtype=np.float32).reshape(-1, self.dim)

    @property
    def search_k(self) -> int:
        """The main index's Annoy ``search_k``."""
        return self.main.search_k

    @search_k.setter
    def search_k(self, value: int) -> None:
        self.main.search_k = value

    @property
    def n_trees(self) -> int:
        return self.main.n_trees

    def _search_rows(self, vector: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        # n + |tombstones| neighbours from the main index would always leave n, but Annoy then sorts and returns up to
        # its whole candidate set (500 tombstones: +0.2 ms a query at 100k items). Ask for a few more than n, and
        # double while tombstones leave fewer than n: up to search_k / n_trees neighbours the candidates do not depend
        # on how many are asked for, so each answer is a prefix of the n + |tombstones| one, and the result is the
        # same; past that, Annoy inspects more candidates for a bigger request, so the answer can only get closer.
        dead = len(self.tombstones)
        want = n + min(dead, n // 2 + 8)
        while True:
            found, scores = self.main._search_rows(vector, want)
            rows = self._main_rows[found]
            kept = int((rows >= 0).sum())
            if kept >= n or want >= n + dead or len(found) < want:
                break
            want = min(n + dead, 2 * want)
        if dead:
            keep = rows >= 0
            rows, scores = rows[keep], scores[keep]
        if len(self.delta_ids):
            # One (m, d) @ (d,) product: a few microseconds for a delta of a few hundred rows.
            sims = self.delta_vectors @ vector
            top = np.argpartition(-sims, n)[:n] if len(sims) > n else np.arange(len(sims))
            rows = np.concatenate([rows, self._delta_rows[top]])
            scores = np.concatenate([scores, sims[top]])
        order = np.lexsort((rows, -scores))[:n]  # best cosine first; ties to the lower row, as the exact index does
        return rows[order], scores[order]

    def unload(self) -> None:
        self.main.unload()


@dataclass(frozen=True)
class CatalogDiff:
    """What changed between the ids and vectors a main index was built from and a new catalog's embeddings.

    Attributes:
        added: ids in the new catalog only (new catalog order).
        edited: ids in both whose vector changed (new catalog order).
        removed: ids in the main index only (main index order).
    """

    added: list[str]
    edited: list[str]
    removed: list[str]

    @property
    def delta_ids(self) -> list[str]:
        """The ids searched exactly: added and edited."""
        return self.added + self.edited

    @property
    def tombstones(self) -> list[str]:
        """The main index's ids that must not be returned: removed and edited."""
        return self.removed + self.edited

    @property
    def changed(self) -> int:
        return len(self.added) + len(self.edited) + len(self.removed)


def diff_rows(
    main_ids: Sequence[str], main_vectors: np.ndarray, embeddings: EmbeddingSet, *, tolerance: float = EDIT_TOLERANCE
) -> CatalogDiff:
    """The :class:`CatalogDiff` from the rows ``(main_ids, main_vectors)`` (``(N, dim)``, L2-normalised) to
    ``embeddings``."""
    main_position = {item_id: row for row, item_id in enumerate(main_ids)}
    new_ids = set(embeddings.ids)
    added = [i for i in embeddings.ids if i not in main_position]
    common = [i for i in embeddings.ids if i in main_position]
    edited: list[str] = []
    if common:
        old = np.asarray(main_vectors, dtype=np.float32)[[main_position[i] for i in common]]
        new = embeddings.vectors[[embeddings.position(i) for i in common]]
        moved = np.flatnonzero((old != new).any(axis=1))  # most rows are bit-identical: only the others are scored
        cosines = np.einsum("ij,ij->i", old[moved].astype(np.float64), new[moved].astype(np.float64))
        edited_rows = set(moved[cosines < 1.0 - tolerance].tolist())
        edited = [i for row, i in enumerate(common) if row in edited_rows]
    removed = [i for i in main_ids if i not in new_ids]
    return CatalogDiff(added, edited, removed)


def over_threshold(
    n_main: int,
    diff: CatalogDiff,
    *,
    max_fraction: float = DELTA_MAX_FRACTION,
    max_items: int = DELTA_MAX_ITEMS,
) -> bool:
    """Whether ``diff`` is too large to serve as a delta over a main index of ``n_main`` items."""
    return diff.changed > max_fraction * n_main or max(len(diff.delta_ids), len(diff.tombstones)) > max_items


@dataclass(frozen=True)
class IndexUpdate:
    """What :func:`update_index` did.

    Attributes:
        index: the index to search (an ``AnnoyIndex`` or a :class:`DeltaIndex`).
        action: ``current`` (the main index is the catalog's), ``delta`` (a delta written before was loaded),
            ``updated`` (a delta was computed and written), ``rebuilt`` (past the threshold: built in full), or
            ``built`` (no index of an older catalog to start from: built in full).
        diff: the changes against the main index (empty for ``current`` and ``built``).
        main_items: items of the main index the delta applies to.
        rebuild_needed: past the threshold and not rebuilt (yet): ``rebuild="never"``, or while a background
            rebuild runs.
        rebuilding: the background rebuild's thread (``rebuild="background"``), else ``None``.
        max_fraction: the threshold's share of the main index that was applied.
        max_items: the threshold's number of delta vectors that was applied.
        main_path: the main Annoy index.
        delta_path: the delta file (``None`` when there is none).
        seconds: wall time of the call.
    """

    index: VectorIndex
    action: str
    diff: CatalogDiff
    main_items: int = 0
    rebuild_needed: bool = False
    rebuilding: threading.Thread | None = None
    main_path: Path | None = None
    delta_path: Path | None = None
    seconds: float = 0.0
    max_fraction: float = DELTA_MAX_FRACTION
    max_items: int = DELTA_MAX_ITEMS

    def describe(self) -> str:
        """One line for the CLI and the build log."""
        n = len(self.index)
        d = self.diff
        changes = f"+{len(d.added)} added, {len(d.edited)} edited, -{len(d.removed)} removed"
        if self.action == "current":
            return f"the index of {n:,} items is up to date ({self.main_path})"
        if self.action == "built":
            return f"no index of an older catalog to update: built the index of {n:,} items in full ({self.main_path})"
        if self.action == "rebuilt":
            return (
                f"{changes} against the index of {self.main_items:,} items is past the threshold "
                f"({self.max_fraction:.0%} changed or {self.max_items:,} delta vectors): rebuilt the index of "
                f"{n:,} items in full in {self.seconds:.1f}s ({self.main_path})"
            )
        share = d.changed / max(1, self.main_items)
        done = "updated" if self.action == "updated" else "loaded the update of"
        line = (
            f"{done} the index of {self.main_items:,} items: {changes} ({share:.1%} changed); serving it with a "
            f"delta of {len(d.delta_ids):,} vectors and {len(d.tombstones):,} tombstones, in {self.seconds:.1f}s "
            f"({self.delta_path})"
        )
        if self.rebuilding is not None:
            line += "; past the threshold: a full rebuild runs in the background"
        elif self.rebuild_needed:
            line += "; past the threshold: rebuild it with `python -m lens index --update`"
        return line


def index_stamp(
    cache_dir: str | os.PathLike | None, encoder: str, embedding_key: str, n_trees: int = DEFAULT_N_TREES
) -> str:
    """A token that changes whenever what serves the index of these embeddings changes: the modification times
    (ns) of the catalog's own Annoy sidecar and of its delta's sidecar, ``-`` where absent. A full rebuild publishes
    the sidecar (and then drops the delta), an update writes the delta's: a loader cached on this token (the
    dashboard's ``st.cache_resource``) never serves a main index + delta after a rebuild replaced them. Two stats."""
    ann = annoy_path(cache_dir, encoder, embedding_key, n_trees)
    parts = []
    for path in (ann.with_suffix(".json"), sidecar_path(delta_path(ann))):
        try:
            parts.append(str(path.stat().st_mtime_ns))
        except OSError:
            parts.append("-")
    return ":".join(parts)


def find_main_index(embeddings: EmbeddingSet, cache_dir: str | os.PathLike | None, n_trees: int) -> Path | None:
    """The Annoy index of ``embeddings.encoder`` (same trees and dimension, another catalog version) whose ids differ
    least from ``embeddings.ids`` (added + removed), or ``None`` when none shares an id. Reads sidecars only."""
    own = index_path(cache_dir, embeddings, n_trees)
    if not own.parent.is_dir():
        return None
    wanted = set(embeddings.ids)
    candidates: list[tuple[int, str, Path]] = []
    for path in sorted(own.parent.glob(f"*-t{n_trees}.ann")):
        if path == own:
            continue
        meta = read_json(path.with_suffix(".json")) or {}
        ids = meta.get("ids")
        if meta.get("kind") != "annoy" or meta.get("dim") != embeddings.dim or not isinstance(ids, list):
            continue
        held = set(map(str, ids))
        if not held & wanted:
            continue
        candidates.append((len(wanted - held) + len(held - wanted), str(meta.get("created", "")), path))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[1], reverse=True)  # the newest first (ISO 8601 sorts as text)...
    candidates.sort(key=lambda c: c[0])  # ...among those of least churn (a stable sort keeps that order)
    return candidates[0][2]


def main_vectors(main: AnnoyIndex, cache_dir: str | os.PathLike | None) -> np.ndarray:
    """``(len(main), dim)`` float32: the vectors ``main`` was built from, in its row order.

    Read from the cached embeddings the sidecar names (a checksummed read: about 0.2 s for 8,010 x 1280) when they
    list the index's ids in its order, else from Annoy item by item (about 1.7 s for the same). Vectors of the same
    key recomputed after a cache loss may differ in the last bits: :data:`EDIT_TOLERANCE` absorbs that.
    """
    try:
        cached = load_embeddings(cache_dir, main.encoder, str(main.meta.get("embedding_key", "")))
    except CacheError:
        cached = None
    if cached is not None and cached.ids == main.ids and cached.dim == main.dim:
        return cached.vectors
    annoy = main._index
    return np.array([annoy.get_item_vector(row) for row in range(len(main))], dtype=np.float32).reshape(-1, main.dim)


def _main_name_ok(name: str) -> bool:
    """A delta's main index is named relative to the delta's folder: ``<name>.ann`` beside it (the single index),
    or ``../<folder>/<name>.ann`` in a sibling folder (a shard of an older catalog's sharded index,
    :mod:`lens.sharded`); nothing else, so a sidecar never points outside the cache's index folder."""
    parts = Path(name).parts
    plain = [p for p in parts if p not in ("..", ".", "") and "/" not in p and "\\" not in p]
    return name.endswith(".ann") and (
        (len(parts) == 1 and plain == list(parts))
        or (len(parts) == 3 and parts[0] == ".." and plain == list(parts[1:]))
    )


def _main_name(main: Path, delta_folder: Path) -> str:
    """The name :func:`load_delta` resolves back to ``main`` from ``delta_folder`` (see :func:`_main_name_ok`)."""
    if main.parent == delta_folder:
        return main.name
    if main.parent.parent == delta_folder.parent:
        return f"../{main.parent.name}/{main.name}"
    raise IndexMismatchError(f"A delta in {delta_folder} cannot apply to {main}: the main index must be beside it.")


def load_delta(path: str | os.PathLike, embeddings: EmbeddingSet, *, search_k: int | None = None) -> DeltaIndex | None:
    """The :class:`DeltaIndex` written for ``embeddings`` beside ``path`` (their Annoy index's path), or ``None``
    when there is none or anything about it does not verify: the delta's checksum and fields, the new rows it was
    computed for, the main index it applies to (its own checks, and the SHA-256 of its file and rows)."""
    npy = delta_path(Path(path))
    try:
        loaded = verify_array(
            npy, expect={"format": FORMAT_VERSION, "kind": _DELTA_KIND, "embedding_key": embeddings.key}
        )
    except CacheError:
        return None
    if loaded is None:
        return None
    vectors, meta = loaded
    lists = [meta.get(name) for name in ("added", "edited", "removed")]
    main_name = meta.get("main")
    if (
        not all(isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in lists)
        or not isinstance(main_name, str)
        or not _main_name_ok(main_name)
        or meta.get("rows_sha256") != _embeddings_rows_sha256(embeddings)
        or vectors.dtype != np.float32
        or vectors.ndim != 2
        or vectors.shape[1] != embeddings.dim
    ):
        return None
    diff = CatalogDiff(*lists)  # type: ignore[arg-type]
    if vectors.shape[0] != len(diff.delta_ids) or not set(diff.delta_ids) <= set(embeddings.ids):
        return None
    if not np.array_equal(vectors, embeddings.vectors[[embeddings.position(i) for i in diff.delta_ids]]):
        return None
    try:
        main = load_annoy(Path(os.path.normpath(npy.parent / main_name)), expect_dim=embeddings.dim)
    except IndexMismatchError:
        return None
    if main.meta["file_sha256"] != meta.get("main_sha256") or main.meta["rows_sha256"] != meta.get("main_rows_sha256"):
        return None
    if search_k is not None:
        main.search_k = search_k
    try:
        return DeltaIndex(main, embeddings.ids, diff.delta_ids, vectors, diff.tombstones, meta=meta, path=npy)
    except IndexMismatchError:
        return None


def write_delta(path: Path, embeddings: EmbeddingSet, main: AnnoyIndex, diff: CatalogDiff) -> DeltaIndex:
    """Write the delta of ``embeddings`` over ``main`` beside ``path`` (the Annoy index of ``embeddings``),
    atomically (:func:`lens.store.save_array`: the array first, the sidecar last), and return its index."""
    assert main.path is not None
    rows = [embeddings.position(i) for i in diff.delta_ids]
    vectors = np.ascontiguousarray(embeddings.vectors[rows], dtype=np.float32).reshape(len(rows), embeddings.dim)
    meta = {
        "format": FORMAT_VERSION,
        "kind": _DELTA_KIND,
        "encoder": embeddings.encoder,
        "embedding_key": embeddings.key,
        "dim": embeddings.dim,
        "n_items": len(embeddings),
        "rows_sha256": _embeddings_rows_sha256(embeddings),
        "main": _main_name(main.path, delta_path(path).parent),
        "main_items": len(main),
        "main_sha256": main.meta["file_sha256"],
        "main_rows_sha256": main.meta["rows_sha256"],
        "main_embedding_key": main.meta["embedding_key"],
        "added": diff.added,
        "edited": diff.edited,
        "removed": diff.removed,
    }
    npy = save_array(delta_path(path), vectors, meta)
    return DeltaIndex(main, embeddings.ids, diff.delta_ids, vectors, diff.tombstones, meta=meta, path=npy)


def drop_delta(path: Path) -> None:
    """Remove the delta beside the Annoy index ``path`` (sidecar first: an array without it is never read)."""
    npy = delta_path(path)
    sidecar_path(npy).unlink(missing_ok=True)
    npy.unlink(missing_ok=True)


def rebuild_index(
    embeddings: EmbeddingSet,
    *,
    cache_dir: str | os.PathLike | None = None,
    n_trees: int = DEFAULT_N_TREES,
    search_k: int = DEFAULT_SEARCH_K,
) -> AnnoyIndex:
    """Build the Annoy index of ``embeddings`` in full at its own path, then drop its delta.

    The old main index is another file and the delta stays until the new index is published (its ``.ann`` and its
    sidecar written, each atomically): a kill at any point leaves a usable main index + delta.
    """
    path = index_path(cache_dir, embeddings, n_trees)
    index = build_annoy(embeddings, path, n_trees=n_trees, search_k=search_k)
    drop_delta(path)
    return index


_rebuilds: dict[Path, threading.Thread] = {}
_rebuilds_lock = threading.Lock()


def _rebuild_in_background(
    embeddings: EmbeddingSet, cache_dir: str | os.PathLike | None, n_trees: int, search_k: int
) -> threading.Thread:
    """One background rebuild per index path in this process (a second request gets the running thread)."""
    path = index_path(cache_dir, embeddings, n_trees)
    with _rebuilds_lock:
        running = _rebuilds.get(path)
        if running is not None and running.is_alive():
            return running

        def work() -> None:
            try:
                rebuild_index(embeddings, cache_dir=cache_dir, n_trees=n_trees, search_k=search_k)
            except Exception:  # noqa: BLE001 - the delta keeps serving; the next update tries again
                pass

        # A daemon: a server that exits mid-build leaves a temporary file (removed by the next write) and the
        # delta, which keeps serving.
        thread = threading.Thread(target=work, name=f"lens-rebuild-{path.name}", daemon=True)
        _rebuilds[path] = thread
        thread.start()
        return thread


def update_index(
    embeddings: EmbeddingSet,
    *,
    cache_dir: str | os.PathLike | None = None,
    n_trees: int = DEFAULT_N_TREES,
    search_k: int = DEFAULT_SEARCH_K,
    rebuild: Rebuild = "now",
    max_fraction: float = DELTA_MAX_FRACTION,
    max_items: int = DELTA_MAX_ITEMS,
) -> IndexUpdate:
    """The index of ``embeddings``, updated from the index of an older version of the catalog when there is one.

    In order: the catalog's own Annoy index when it verifies (``current``); else a delta written before for these
    embeddings (``delta``); else a new delta over the index of the same encoder whose ids differ least
    (``updated``); else a full build (``built``). Past the threshold (``max_fraction`` of the main index changed, or
    more than ``max_items`` delta vectors or tombstones) the index is rebuilt in full: at once (``rebuild="now"``, then
    ``rebuilt``), in a background thread while the delta serves (``"background"``), or not (``"never"``: the
    caller rebuilds later with :func:`rebuild_index`; ``rebuild_needed`` says so). A main index more than
    :data:`UNRELATED_FRACTION` of which changed is another catalog's: then the index is built in full at once.

    Raises:
        LensError: zero vectors to index.
    """
    started = time.perf_counter()
    path = index_path(cache_dir, embeddings, n_trees)
    none = CatalogDiff([], [], [])

    def done(index: VectorIndex, action: str, diff: CatalogDiff, n_main: int, **fields: Any) -> IndexUpdate:
        fields.setdefault("main_path", path)
        return IndexUpdate(
            index,
            action,
            diff,
            n_main,
            seconds=time.perf_counter() - started,
            max_fraction=max_fraction,
            max_items=max_items,
            **fields,
        )

    def full(diff: CatalogDiff, n_main: int) -> IndexUpdate:
        index = rebuild_index(embeddings, cache_dir=cache_dir, n_trees=n_trees, search_k=search_k)
        return done(index, "rebuilt" if n_main else "built", diff, n_main)

    if path.exists():
        try:
            index = load_annoy(path, expect_key=embeddings.key, expect_dim=embeddings.dim, expect_rows=embeddings)
        except IndexMismatchError:
            pass  # damaged or stale: a delta or a rebuild below
        else:
            index.search_k = search_k
            drop_delta(path)
            return done(index, "current", none, len(index))
    delta = load_delta(path, embeddings, search_k=search_k)
    action = "delta"
    if delta is None:
        base = find_main_index(embeddings, cache_dir, n_trees)
        main = None
        if base is not None:
            try:
                main = load_annoy(base, expect_dim=embeddings.dim)
            except IndexMismatchError:
                main = None
        if main is None:
            return full(none, 0)
        main.search_k = search_k
        diff = diff_rows(main.ids, main_vectors(main, cache_dir), embeddings)
        over = over_threshold(len(main), diff, max_fraction=max_fraction, max_items=max_items)
        if over and (rebuild == "now" or diff.changed > UNRELATED_FRACTION * len(main)):
            main.unload()
            return full(diff, len(main))
        delta = write_delta(path, embeddings, main, diff)
        action = "updated"
    diff = CatalogDiff(delta.meta["added"], delta.meta["edited"], delta.meta["removed"])
    n_main = len(delta.main)
    over = over_threshold(n_main, diff, max_fraction=max_fraction, max_items=max_items)
    if over and rebuild == "now":
        delta.unload()
        return full(diff, n_main)
    thread = (
        _rebuild_in_background(embeddings, cache_dir, n_trees, search_k) if over and rebuild == "background" else None
    )
    return done(
        delta,
        action,
        diff,
        n_main,
        rebuild_needed=over,
        rebuilding=thread,
        main_path=delta.main.path,
        delta_path=delta.path,
    )
