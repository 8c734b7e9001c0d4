"""The :class:`Catalog` model: a table of items, the folder their images are relative to, and lookups over it.

Loaders (:mod:`lens.catalog.loaders`, :mod:`lens.catalog.fashion_mnist`) build it; nothing here reads a listing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lens.errors import CatalogError
from lens.images import try_open_image
from lens.store import file_digests

DEFAULT_LABEL_COLUMN = "articleType"
CATALOG_FILENAME = "catalog.csv"

_SHOW = 5  # how many offending rows an error message names
_FINGERPRINT_VERSION = "lens-catalog-fingerprint-v2"


@dataclass(frozen=True)
class CatalogProblem:
    """One catalog row that could not be used.

    Attributes:
        row: 0-based position of the row in the source listing (CSV data row, or catalog position for
            :func:`validate_images`); ``None`` when it has none.
        item_id: the row's id, when known.
        problem: what is wrong, in words.
    """

    row: int | None
    item_id: str | None
    problem: str


@dataclass(eq=False)
class Catalog:
    """A loaded catalog: a table of items plus the folder their image paths are relative to.

    Treat it as read-only: the id lookup and the fingerprint are memoised. Use :meth:`subset` or
    :meth:`sample` to derive smaller catalogs.

    Attributes:
        root: absolute folder that the ``image`` paths are relative to.
        table: one row per item, ``RangeIndex``; string columns ``id``, ``image`` (POSIX path relative to
            ``root``), the label column and any metadata (empty cells are ``""``).
        label_column: the column :meth:`labels` returns by default.
        source: ``"csv"``, ``"folders"`` or ``"fashion-mnist"``.
        name: short human name (the folder name).
        problems: rows dropped while loading with ``on_missing="skip"``.
        column_names: internal column name -> name in the source file, for renamed columns
            (e.g. ``{"id": "sku"}``).
        cache_dir: the lens cache that the file-digest memo behind :meth:`fingerprint` goes to (``None``:
            ``$LENS_CACHE_DIR`` or ``~/.cache/lens``); ``load_catalog(cache_dir=...)`` sets it.
    """

    root: Path
    table: pd.DataFrame
    label_column: str
    source: str
    name: str
    problems: list[CatalogProblem] = field(default_factory=list)
    column_names: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False)
    _digests: list[str] | None = field(default=None, init=False, repr=False)
    _positions: dict[str, int] | None = field(default=None, init=False, repr=False)
    _columns: dict[str, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        for col in ("id", "image"):
            if col not in self.table.columns:
                raise CatalogError(f"Catalog table has no {col!r} column (columns: {_cols(self.table)}).")
        if not isinstance(self.table.index, pd.RangeIndex) or self.table.index.start != 0:
            self.table = self.table.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.table)

    def __repr__(self) -> str:
        return (
            f"Catalog(name={self.name!r}, source={self.source!r}, items={len(self)}, "
            f"label_column={self.label_column!r}, root={str(self.root)!r}, problems={len(self.problems)})"
        )

    @property
    def ids(self) -> list[str]:
        """Item ids in row order."""
        return self.table["id"].tolist()

    @property
    def columns(self) -> list[str]:
        """All column names of :attr:`table`."""
        return [str(c) for c in self.table.columns]

    def image_path(self, index: int) -> Path:
        """Absolute path of the image of the item at position ``index``."""
        if not -len(self) <= int(index) < len(self):
            raise CatalogError(f"Row {index} is out of range: catalog {self.name!r} has {len(self)} items.")
        return self.root / self.table["image"].iat[int(index)]

    def image_paths(self) -> list[Path]:
        """Absolute image paths in row order."""
        root = self.root
        return [root / rel for rel in self.table["image"].tolist()]

    def labels(self, column: str | None = None, *, ids: Iterable[str] | None = None) -> np.ndarray:
        """Labels (or any column's values) as strings, in row order or in the order of ``ids``.

        ``catalog.labels(column, ids=embeddings.ids)`` gives the label of every embedding row.

        Args:
            column: metadata column to use; defaults to :attr:`label_column`.
            ids: item ids whose values to return, in this order (e.g. the rows of an embedding set); default all
                rows in catalog order.

        Returns:
            Object array of ``str``, shape ``(N,)`` or ``(len(ids),)``.

        Raises:
            CatalogError: the column does not exist (the message lists the available ones), or an id is unknown.
        """
        col = self.label_column if column is None else column
        if col not in self.table.columns:
            raise CatalogError(
                f"Catalog {self.name!r} has no column {col!r}. Available columns: {_cols(self.table)}. "
                "Pick one of them (e.g. pass --label <col>)."
            )
        values = self._columns.get(col)
        if values is None:  # the table is not edited after loading (positions are memoised the same way)
            values = self._columns[col] = np.array(self.table[col].astype(str).tolist(), dtype=object)
        return values.copy() if ids is None else values[self.positions(ids)]

    def _lookup(self) -> dict[str, int]:
        if self._positions is None:
            self._positions = {item_id: i for i, item_id in enumerate(self.table["id"].tolist())}
        return self._positions

    def index_of(self, item_id: str) -> int:
        """Position of ``item_id`` in the table.

        Raises:
            CatalogError: unknown id.
        """
        try:
            return self._lookup()[str(item_id)]
        except KeyError:
            raise CatalogError(
                f"Unknown item id {str(item_id)!r} in catalog {self.name!r} ({len(self)} items, e.g. "
                f"{', '.join(repr(i) for i in self.ids[:3])})."
            ) from None

    def positions(self, ids: Iterable[str]) -> np.ndarray:
        """Row positions of ``ids``, in their order: ``(len(ids),)`` int64.

        Raises:
            CatalogError: an unknown id (the message names it).
        """
        lookup = self._lookup()
        try:
            return np.array([lookup[str(item_id)] for item_id in ids], dtype=np.int64)
        except KeyError as exc:
            self.index_of(exc.args[0])  # raises the message that names the id and the catalog
            raise  # pragma: no cover - index_of raised

    def row(self, item_id: str) -> dict[str, Any]:
        """All columns of one item as a ``{column: value}`` dict (values are strings)."""
        return {str(k): v for k, v in self.table.iloc[self.index_of(item_id)].to_dict().items()}

    def fingerprint(self, *, refresh: bool = False) -> str:
        """SHA-256 hex digest identifying the catalog's images, for cache keys.

        Covers the source kind and, for every row in order, the id, the relative image path and a SHA-256 of the
        image file's bytes (a missing file counts as ``missing``). Content, not timestamps: a catalog that is
        copied, re-synced or restored keeps its cached embeddings, splits and indexes, and an edited image
        invalidates them. Labels and metadata are left out: they do not change what an encoder sees. File digests
        are memoised on disk by ``(size, mtime_ns, inode, ctime_ns)`` (:func:`lens.store.file_digests`), so a re-load costs one
        ``stat`` per file; the result is memoised on the object too. Pass ``refresh=True`` to look at the files again.
        """
        if self._fingerprint is None or refresh:
            digests = self.image_digests(refresh=refresh)
            digest = hashlib.sha256()
            digest.update(f"{_FINGERPRINT_VERSION}\0{self.source}\0".encode())
            for item_id, rel, file_digest in zip(self.table["id"].tolist(), self.table["image"].tolist(), digests):
                digest.update(f"{item_id}\0{rel}\0{file_digest}\n".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def image_digests(self, *, refresh: bool = False) -> list[str]:
        """SHA-256 of each row's image file, in row order (``"missing"`` where it cannot be read); memoised like
        :meth:`fingerprint`. What the per-item embedding store is keyed by: an image's content, not its id."""
        if self._digests is None or refresh:
            rels = self.table["image"].tolist()
            by_rel = file_digests(self.root, rels, cache_dir=self.cache_dir)
            self._digests = [by_rel[rel] for rel in rels]
        return list(self._digests)

    def subset(self, ids_or_indices: Iterable[str] | Iterable[int]) -> Catalog:
        """A catalog of the given items, in the order given, sharing :attr:`root`.

        Args:
            ids_or_indices: item ids (``str``) or row positions (``int``), not mixed, without repeats.

        Raises:
            CatalogError: unknown ids, positions out of range, repeats, or mixed kinds.
        """
        keys = list(ids_or_indices.tolist() if isinstance(ids_or_indices, np.ndarray) else ids_or_indices)
        if keys and all(isinstance(k, str) for k in keys):
            lookup = self._lookup()
            unknown = [k for k in keys if k not in lookup]
            if unknown:
                raise CatalogError(f"{len(unknown)} unknown id(s) for catalog {self.name!r}: {_preview(unknown)}.")
            positions = [lookup[k] for k in keys]
        elif all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in keys):
            positions = [int(k) for k in keys]
            bad = [p for p in positions if not 0 <= p < len(self)]
            if bad:
                raise CatalogError(
                    f"Row position(s) out of range 0..{len(self) - 1} for catalog {self.name!r}: {_preview(bad)}."
                )
        else:
            raise CatalogError("subset() takes either item ids (str) or row positions (int), not a mix.")
        if len(set(positions)) != len(positions):
            raise CatalogError("subset() got the same item more than once; ids in a catalog must be unique.")
        table = self.table.iloc[positions].reset_index(drop=True)
        return Catalog(
            root=self.root,
            table=table,
            label_column=self.label_column,
            source=self.source,
            name=self.name,
            problems=list(self.problems),
            column_names=dict(self.column_names),
            cache_dir=self.cache_dir,
        )

    def sample(self, n: int, *, per_label: int | None = None, seed: int = 0) -> Catalog:
        """A deterministic random subset, returned in catalog order.

        Args:
            n: number of items wanted (all of them when ``n >= len(self)`` and ``per_label`` is None).
            per_label: if given, take exactly ``per_label`` items from each of ``ceil(n / per_label)`` labels
                chosen at random among labels with at least ``per_label`` items (the last label is cut to
                reach ``n``). Fewer items come back when too few labels qualify. ``sample(80, per_label=10)``
                gives 8 labels x 10 items.
            seed: random seed; the same seed on the same catalog gives the same items.
        """
        if n < 0:
            raise CatalogError(f"sample() needs n >= 0, got {n}.")
        rng = np.random.default_rng(seed)
        if per_label is None:
            if n >= len(self):
                return self.subset(range(len(self)))
            chosen = np.sort(rng.choice(len(self), size=n, replace=False))
            return self.subset(chosen.tolist())
        if per_label < 1:
            raise CatalogError(f"sample() needs per_label >= 1, got {per_label}.")
        labels = self.labels()
        uniq, counts = np.unique(labels.astype(str), return_counts=True)  # sorted: deterministic
        eligible = uniq[counts >= per_label]
        order = rng.permutation(len(eligible))
        picked: list[int] = []
        for label in eligible[order]:
            if len(picked) >= n:
                break
            members = np.flatnonzero(labels == label)
            take = min(per_label, n - len(picked))
            picked.extend(rng.choice(members, size=take, replace=False).tolist())
        return self.subset(sorted(picked))


def validate_images(catalog: Catalog, *, progress: Callable[[int, int], None] | None = None) -> list[CatalogProblem]:
    """Decode every image of ``catalog`` with :func:`lens.images.open_image`; list the ones that fail.

    Args:
        catalog: the catalog to check.
        progress: called as ``progress(done, total)`` after each image.

    Returns:
        One :class:`CatalogProblem` per unreadable image (``row`` = position in the catalog), in row order.
    """
    problems: list[CatalogProblem] = []
    paths = catalog.image_paths()
    ids = catalog.ids
    total = len(paths)
    for i, (item_id, path) in enumerate(zip(ids, paths)):
        _, reason = try_open_image(path)
        if reason is not None:
            rel = catalog.table["image"].iat[i]
            problems.append(CatalogProblem(row=i, item_id=item_id, problem=f"{rel}: {reason}"))
        if progress is not None:
            progress(i + 1, total)
    return problems


# ----------------------------------------------------------------------------------------------------------
# Message helpers (shared with the loaders)


def _cols(table: pd.DataFrame) -> str:
    return ", ".join(str(c) for c in table.columns) or "(none)"


def _line(i: int) -> str:
    # Row i (0-based, after the header) is on line i + 2 of the CSV, and on row i + 2 of a spreadsheet.
    return f"line {i + 2}"


def _lines(rows: Sequence[int]) -> str:
    shown = ", ".join(str(i + 2) for i in rows[:_SHOW])
    more = f" and {len(rows) - _SHOW} more" if len(rows) > _SHOW else ""
    return f"line{'s' if len(rows) > 1 else ''} {shown}{more}"


def _preview(items: Sequence[object], *, quote: bool = True) -> str:
    shown = ", ".join(repr(x) if quote else str(x) for x in items[:_SHOW])
    more = f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return shown + more
