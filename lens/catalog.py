"""Catalogs: which product images exist, where they are, and what their labels are.

Three layouts load into the same :class:`Catalog`:

(a) a folder holding ``catalog.csv`` (or a path to any ``.csv`` file): one row per item with an id column, an
    image path relative to the CSV's folder, and any metadata columns;
(b) a folder of class subfolders, ``<root>/<class>/<file>.jpg``: id ``"<class>/<stem>"``, label = subfolder;
(c) a folder holding Fashion-MNIST IDX files (``t10k-images-idx3-ubyte.gz`` ...): parsed with numpy and
    materialised once, as PNG files plus a ``catalog.csv``, under the lens cache folder; then loaded as (a).

Loading checks that every image file exists (one ``stat`` each) but decodes none; :func:`validate_images`
decodes them all when that is wanted. Loading never writes into the catalog folder.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

from lens.cache import atomic_write, cache_key, default_cache_dir, resolve_cache_dir
from lens.errors import CatalogError
from lens.images import IMAGE_EXTENSIONS, try_open_image

__all__ = [
    "CATALOG_ENV",
    "CATALOG_FILENAME",
    "DEFAULT_LABEL_COLUMN",
    "FASHION_MNIST_CLASSES",
    "Catalog",
    "CatalogProblem",
    "default_cache_dir",
    "default_catalog_path",
    "load_catalog",
    "validate_images",
]

DEFAULT_LABEL_COLUMN = "articleType"
CATALOG_FILENAME = "catalog.csv"
CATALOG_ENV = "LENS_CATALOG"
FMNIST_SPLIT_ENV = "LENS_FMNIST_SPLIT"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

#: Fashion-MNIST class names, in label order 0..9.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_SHOW = 5  # how many offending rows an error message names
_FINGERPRINT_VERSION = "lens-catalog-fingerprint-v2"
_FMNIST_FORMAT_VERSION = 1
_IDX_RE = re.compile(r"^(train|t10k)-(images|labels)[-.]idx([13])-ubyte(\.gz)?$")


def file_digests(root: Path, rels: Sequence[str], *, cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """SHA-256 of each file ``root/rel`` (``"missing"`` for one that cannot be read), memoised on disk.

    The memo, ``<cache>/catalogs/digests/<key of root>.json``, maps ``rel -> [size, mtime_ns, sha256]``; a file
    is read again only when its size or mtime changed. A memo that cannot be read or written is ignored: the
    digests are then computed from the files (about 0.3 s for 8,000 product photos, 59 MB).
    """
    memo_path = resolve_cache_dir(cache_dir) / "catalogs" / "digests" / f"{cache_key({'root': str(root)})}.json"
    try:
        memo: dict[str, list] = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    out: dict[str, str] = {}
    changed = False
    for rel in dict.fromkeys(rels):
        path = root / rel
        try:
            st = os.stat(path)
        except OSError:
            out[rel] = "missing"
            continue
        known = memo.get(rel)
        if known and known[0] == st.st_size and known[1] == st.st_mtime_ns:
            out[rel] = known[2]
            continue
        try:
            with open(path, "rb") as fh:
                out[rel] = hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError:
            out[rel] = "missing"
            continue
        memo[rel] = [st.st_size, st.st_mtime_ns, out[rel]]
        changed = True
    if changed:
        try:
            text = json.dumps(memo, separators=(",", ":"))
            atomic_write(memo_path, lambda tmp: tmp.write_text(text))
        except OSError:
            pass
    return out


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
    """

    root: Path
    table: pd.DataFrame
    label_column: str
    source: str
    name: str
    problems: list[CatalogProblem] = field(default_factory=list)
    column_names: dict[str, str] = field(default_factory=dict)
    _fingerprint: str | None = field(default=None, init=False, repr=False)
    _positions: dict[str, int] | None = field(default=None, init=False, repr=False)

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

    def labels(self, column: str | None = None) -> np.ndarray:
        """Labels in row order: object array of ``str``, shape (N,).

        Args:
            column: metadata column to use; defaults to :attr:`label_column`.

        Raises:
            CatalogError: the column does not exist (the message lists the available ones).
        """
        col = self.label_column if column is None else column
        if col not in self.table.columns:
            raise CatalogError(
                f"Catalog {self.name!r} has no column {col!r}. Available columns: {_cols(self.table)}. "
                "Pick one of them (e.g. pass --label <col>)."
            )
        return np.array(self.table[col].astype(str).tolist(), dtype=object)

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

    def row(self, item_id: str) -> dict[str, Any]:
        """All columns of one item as a ``{column: value}`` dict (values are strings)."""
        return {str(k): v for k, v in self.table.iloc[self.index_of(item_id)].to_dict().items()}

    def fingerprint(self, *, refresh: bool = False) -> str:
        """SHA-256 hex digest identifying the catalog's images, for cache keys.

        Covers the source kind and, for every row in order, the id, the relative image path and a SHA-256 of the
        image file's bytes (a missing file counts as ``missing``). Content, not timestamps: a catalog that is
        copied, re-synced or restored keeps its cached embeddings, splits and indexes, and an edited image
        invalidates them. Labels and metadata are left out: they do not change what an encoder sees. File digests
        are memoised on disk by ``(size, mtime_ns)`` (:func:`file_digests`), so a re-load costs one ``stat`` per
        file; the result is memoised on the object too. Pass ``refresh=True`` to look at the files again.
        """
        if self._fingerprint is None or refresh:
            rels = self.table["image"].tolist()
            digests = file_digests(self.root, rels)
            digest = hashlib.sha256()
            digest.update(f"{_FINGERPRINT_VERSION}\0{self.source}\0".encode())
            for item_id, rel in zip(self.table["id"].tolist(), rels):
                digest.update(f"{item_id}\0{rel}\0{digests[rel]}\n".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

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
                raise CatalogError(
                    f"{len(unknown)} unknown id(s) for catalog {self.name!r}: {_preview(unknown)}."
                )
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


# ----------------------------------------------------------------------------------------------------------
# Loading


def load_catalog(
    path: str | os.PathLike[str],
    *,
    label_column: str = DEFAULT_LABEL_COLUMN,
    id_column: str = "id",
    image_column: str = "image",
    on_missing: Literal["error", "skip"] = "error",
    limit: int | None = None,
    cache_dir: Path | None = None,
    split: Literal["train", "t10k", "all"] | None = None,
) -> Catalog:
    """Load a catalog from a CSV folder, a folder of class subfolders, or a Fashion-MNIST IDX folder.

    Args:
        path: the catalog folder (or a ``.csv`` file, whose folder becomes the root).
        label_column: column whose values are the class labels (folders layout: the name given to the
            subfolder column).
        id_column: CSV column holding unique item ids; renamed to ``"id"``.
        image_column: CSV column holding image paths relative to the CSV's folder; renamed to ``"image"``.
        on_missing: ``"error"`` raises when image files are missing; ``"skip"`` drops those rows and records
            them in :attr:`Catalog.problems`.
        limit: keep only the first ``limit`` rows (for Fashion-MNIST: materialise only that many images).
        cache_dir: where Fashion-MNIST is materialised; default ``$LENS_CACHE_DIR`` or ``~/.cache/lens``.
        split: Fashion-MNIST split (``train``, ``t10k`` or ``all``); default ``$LENS_FMNIST_SPLIT`` or
            ``t10k``.

    Raises:
        CatalogError: the path is unusable or the catalog is invalid; the message names the offending rows
            and says how to fix them.
    """
    if on_missing not in ("error", "skip"):
        raise CatalogError(f"on_missing must be 'error' or 'skip', not {on_missing!r}.")
    if limit is not None and limit < 1:
        raise CatalogError(f"limit must be a positive number of rows, not {limit!r}.")
    p = Path(path).expanduser()
    if not p.exists():
        raise CatalogError(
            f"Catalog path not found: {p}. Pass a folder holding {CATALOG_FILENAME}, a folder of class "
            f"subfolders, or a folder of Fashion-MNIST IDX files (or set {CATALOG_ENV}=/path)."
        )
    if p.is_file():
        if p.suffix.lower() != ".csv":
            raise CatalogError(
                f"Catalog path {p} is a file but not a .csv; pass a catalog folder or its {CATALOG_FILENAME}."
            )
        return _load_csv(
            p,
            label_column=label_column,
            id_column=id_column,
            image_column=image_column,
            on_missing=on_missing,
            limit=limit,
        )
    if not p.is_dir():
        raise CatalogError(f"Catalog path {p} is neither a folder nor a .csv file.")

    csv_path = p / CATALOG_FILENAME
    if csv_path.is_file():
        return _load_csv(
            csv_path,
            label_column=label_column,
            id_column=id_column,
            image_column=image_column,
            on_missing=on_missing,
            limit=limit,
        )
    idx_files = _find_idx_files(p)
    if idx_files:
        return _load_fashion_mnist(
            p, idx_files, label_column=label_column, on_missing=on_missing, limit=limit,
            cache_dir=cache_dir, split=split,
        )
    return _load_folders(p, label_column=label_column, limit=limit)


def _load_csv(
    csv_path: Path,
    *,
    label_column: str,
    id_column: str,
    image_column: str,
    on_missing: str,
    limit: int | None,
    source: str = "csv",
    name: str | None = None,
) -> Catalog:
    root = csv_path.parent.resolve()
    where = str(csv_path)
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise CatalogError(f"{where} is empty; it needs a header row (id,image,...) and one row per item.") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise CatalogError(f"Cannot parse {where} as UTF-8 CSV ({exc}); fix the file or re-export it as CSV.") from None
    table = table.fillna("")  # short rows still give NaN with keep_default_na=False
    table.columns = [str(c).strip() for c in table.columns]
    if len(set(table.columns)) != len(table.columns):
        dup = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
        raise CatalogError(f"{where} has repeated column names {dup}; give every column a distinct name.")

    _require_column(table, id_column, "id", where, "--id-column <col> (id_column=...)")
    _require_column(table, image_column, "image", where, "--image-column <col> (image_column=...)")
    _require_column(table, label_column, "label", where, "--label <col> (label_column=...)")

    table, column_names = _rename_to_internal(table, id_column=id_column, image_column=image_column)
    if label_column == id_column:
        label_column = "id"
    elif label_column == image_column:
        label_column = "image"

    if limit is not None:
        table = table.iloc[:limit]
    table = table.reset_index(drop=True)
    if len(table) == 0:
        raise CatalogError(f"{where} has a header but no rows; add one row per item.")

    # Strings everywhere, with surrounding whitespace dropped from ids and paths.
    table["id"] = table["id"].astype(str).str.strip()
    table["image"] = table["image"].astype(str).str.strip()
    ids = table["id"].tolist()

    empty = [i for i, v in enumerate(ids) if v == ""]
    if empty:
        raise CatalogError(
            f"{where}: {len(empty)} row(s) have an empty id ({_lines(empty)}); every row needs a unique id "
            f"in column {column_names.get('id', 'id')!r}."
        )
    seen: dict[str, int] = {}
    dups: list[str] = []
    for i, v in enumerate(ids):
        if v in seen:
            dups.append(f"{v!r} ({_line(seen[v])} and {_line(i)})")
        else:
            seen[v] = i
    if dups:
        raise CatalogError(
            f"{where}: {len(dups)} duplicate id(s): {_preview(dups, quote=False)}. Ids must be unique; "
            "remove or rename the repeated rows."
        )

    images: list[str] = []
    bad_paths: list[str] = []
    for i, (item_id, raw) in enumerate(zip(ids, table["image"].tolist())):
        rel, why = _normalise_relpath(raw)
        if why:
            bad_paths.append(f"{_line(i)} id {item_id!r}: {raw!r} ({why})")
        images.append(rel)
    if bad_paths:
        raise CatalogError(
            f"{where}: {len(bad_paths)} image path(s) are not inside the catalog folder: "
            f"{_preview(bad_paths, quote=False)}. Image paths must be relative to {root} "
            "(e.g. images/123.jpg), without '..' or a leading '/'."
        )
    table["image"] = images

    missing: list[int] = []
    for i, rel in enumerate(images):
        try:
            st = os.stat(root / rel)
        except OSError:
            missing.append(i)
            continue
        if not stat.S_ISREG(st.st_mode):
            missing.append(i)
    problems: list[CatalogProblem] = []
    if missing:
        if on_missing == "error":
            shown = [f"{_line(i)} id {ids[i]!r}: {images[i]}" for i in missing]
            raise CatalogError(
                f"{where}: {len(missing)} of {len(table)} image file(s) not found under {root}: "
                f"{_preview(shown, quote=False)}. Fix the paths, or pass on_missing='skip' "
                "(--skip-missing) to drop these rows."
            )
        problems = [
            CatalogProblem(row=i, item_id=ids[i], problem=f"image file not found: {images[i]}") for i in missing
        ]
        table = table.drop(index=missing).reset_index(drop=True)
        if len(table) == 0:
            raise CatalogError(
                f"{where}: all {len(missing)} image files are missing under {root} (e.g. {images[missing[0]]}); "
                "no items left. Check that image paths are relative to the CSV's folder."
            )

    if name is None:
        name = root.name if csv_path.name == CATALOG_FILENAME else csv_path.stem
    return Catalog(
        root=root,
        table=table,
        label_column=label_column,
        source=source,
        name=name,
        problems=problems,
        column_names=column_names,
    )


def _require_column(table: pd.DataFrame, column: str, role: str, where: str, flag: str) -> None:
    if column not in table.columns:
        raise CatalogError(
            f"{where} has no {role} column {column!r}. Available columns: {_cols(table)}. "
            f"Name the right one: pass {flag}."
        )


def _rename_to_internal(
    table: pd.DataFrame, *, id_column: str, image_column: str
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rename the user's id/image columns to ``id``/``image``; a clashing original is kept as ``<name>_orig``."""
    if id_column == image_column:
        raise CatalogError(f"id_column and image_column are both {id_column!r}; they must be different columns.")
    column_names: dict[str, str] = {}
    mapping: dict[str, str] = {}
    for internal, user in (("id", id_column), ("image", image_column)):
        if user == internal:
            continue
        if internal in table.columns and internal not in (id_column, image_column):
            mapping[internal] = f"{internal}_orig"
        mapping[user] = internal
        column_names[internal] = user
    if mapping:
        table = table.rename(columns=mapping)
    return table, column_names


def _normalise_relpath(raw: str) -> tuple[str, str | None]:
    """POSIX-normalised relative path, or ``(raw, reason)`` when it would leave the catalog folder."""
    if raw == "":
        return raw, "empty image path"
    if "://" in raw:
        return raw, "a URL; download the images and list their local paths"
    text = raw.replace("\\", "/")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(raw).drive or PureWindowsPath(raw).is_absolute():
        return raw, "absolute path"
    norm = posixpath.normpath(text)
    if norm == ".." or norm.startswith("../"):
        return raw, "escapes the catalog folder"
    if norm in (".", ""):
        return raw, "not a file path"
    return norm, None


# Class subfolders -----------------------------------------------------------------------------------------


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def _load_folders(root: Path, *, label_column: str, limit: int | None) -> Catalog:
    root = root.resolve()
    entries = sorted(root.iterdir())
    rows: list[tuple[str, str, str]] = []
    for class_dir in entries:
        if not class_dir.is_dir() or class_dir.name.startswith("."):
            continue
        for f in sorted(class_dir.iterdir()):
            if _is_image_file(f):
                rows.append((f"{class_dir.name}/{f.stem}", f"{class_dir.name}/{f.name}", class_dir.name))
    if not rows:
        loose = [e for e in entries if _is_image_file(e)]
        hint = (
            f" It holds {len(loose)} image(s) directly (e.g. {loose[0].name}); put them in class subfolders "
            f"(<folder>/<class>/<file>.jpg) or add a {CATALOG_FILENAME}."
            if loose
            else ""
        )
        raise CatalogError(
            f"{root} is not a catalog folder: it has no {CATALOG_FILENAME}, no class subfolders with images "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}), and no Fashion-MNIST IDX files.{hint} "
            f"Use one of these layouts: <folder>/{CATALOG_FILENAME} with id,image,<label> columns; "
            "<folder>/<class>/<image>; or <folder>/t10k-images-idx3-ubyte.gz + t10k-labels-idx1-ubyte.gz."
        )
    seen: dict[str, str] = {}
    dups: list[str] = []
    for item_id, rel, _ in rows:
        if item_id in seen:
            dups.append(f"{seen[item_id]} and {rel}")
        else:
            seen[item_id] = rel
    if dups:
        raise CatalogError(
            f"{root}: {len(dups)} image(s) share an id (class/stem): {_preview(dups, quote=False)}. "
            "Rename one file of each pair so that file names without their suffix are unique per class."
        )
    if limit is not None:
        rows = rows[:limit]
    table = pd.DataFrame(rows, columns=["id", "image", label_column], dtype=str)
    return Catalog(root=root, table=table, label_column=label_column, source="folders", name=root.name)


# Fashion-MNIST --------------------------------------------------------------------------------------------


def _find_idx_files(folder: Path) -> dict[tuple[str, str], Path]:
    """``{(split, "images"|"labels"): path}`` for the IDX files in ``folder`` (gz preferred over raw)."""
    found: dict[tuple[str, str], Path] = {}
    for f in sorted(folder.iterdir()):
        m = _IDX_RE.match(f.name)
        if m and f.is_file():
            key = (m.group(1), m.group(2))
            if key not in found or f.name.endswith(".gz"):
                found[key] = f
    return found


def _open_idx(path: Path):  # noqa: ANN202 - returns a binary stream
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _check_idx_header(path: Path, fh: Any, kind: str) -> list[int]:
    """Read and validate an IDX header from ``fh``; return its dimensions."""
    want_magic = 0x00000803 if kind == "images" else 0x00000801
    ndim = 3 if kind == "images" else 1
    header = fh.read(4)
    if len(header) < 4:
        raise CatalogError(f"{path} is too short to be an IDX file (no 4-byte magic number); replace it.")
    magic = int.from_bytes(header, "big")
    if magic != want_magic:
        raise CatalogError(
            f"{path} is not an IDX {kind} file: bad magic number 0x{magic:08x}, expected 0x{want_magic:08x} "
            f"(unsigned bytes, {ndim} dimension(s)). Replace it with the original Fashion-MNIST file."
        )
    dims_raw = fh.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise CatalogError(f"{path} is truncated inside its IDX header; replace it.")
    dims = [int.from_bytes(dims_raw[i : i + 4], "big") for i in range(0, 4 * ndim, 4)]
    if kind == "images" and dims[0] > 0 and dims[1] * dims[2] == 0:
        raise CatalogError(f"{path} announces images of size {dims[1]}x{dims[2]}; that is not Fashion-MNIST.")
    return dims


def _read_idx(path: Path, *, kind: str, limit: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes: images (N, rows, cols) or labels (N,), the first ``limit`` items."""
    try:
        with _open_idx(path) as fh:
            dims = _check_idx_header(path, fh, kind)
            count = dims[0] if limit is None else min(dims[0], limit)
            item = int(np.prod(dims[1:])) if len(dims) > 1 else 1
            data = fh.read(count * item)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise CatalogError(f"Cannot read {path} ({exc}); the file is damaged, replace it.") from None
    if len(data) != count * item:
        raise CatalogError(
            f"{path} is truncated: its header announces {dims[0]} {kind} but the data holds only "
            f"{len(data) // item}. Replace it with a complete copy."
        )
    arr = np.frombuffer(data, dtype=np.uint8)
    return arr.reshape((count, *dims[1:])) if len(dims) > 1 else arr


def _idx_count(path: Path, kind: str) -> int:
    """Number of items announced by a validated IDX header."""
    try:
        with _open_idx(path) as fh:
            return _check_idx_header(path, fh, kind)[0]
    except (OSError, EOFError) as exc:
        raise CatalogError(f"Cannot read {path} ({exc}); the file is damaged, replace it.") from None


def _resolve_split(requested: str | None, available: set[str]) -> list[str]:
    explicit = requested is not None or bool(os.environ.get(FMNIST_SPLIT_ENV, "").strip())
    split = requested or os.environ.get(FMNIST_SPLIT_ENV, "").strip() or "t10k"
    if split not in ("train", "t10k", "all"):
        raise CatalogError(f"Unknown Fashion-MNIST split {split!r}; use train, t10k or all ({FMNIST_SPLIT_ENV}).")
    splits = ["train", "t10k"] if split == "all" else [split]
    missing = [s for s in splits if s not in available]
    if missing:
        if not explicit and available:
            return sorted(available, reverse=True)[:1]  # "t10k" > "train": prefer the test split
        raise CatalogError(
            f"Fashion-MNIST split(s) {missing} not found (found: {sorted(available) or 'none'}); "
            f"set {FMNIST_SPLIT_ENV} to one that exists or add its images and labels files."
        )
    return splits


def _load_fashion_mnist(
    folder: Path,
    idx_files: dict[tuple[str, str], Path],
    *,
    label_column: str,
    on_missing: str,
    limit: int | None,
    cache_dir: Path | None,
    split: str | None,
) -> Catalog:
    complete = {s for s in ("train", "t10k") if (s, "images") in idx_files and (s, "labels") in idx_files}
    partial = {s for (s, _) in idx_files} - complete
    if not complete:
        raise CatalogError(
            f"{folder} holds Fashion-MNIST IDX files but no complete split: each split needs both "
            f"<split>-images-idx3-ubyte(.gz) and <split>-labels-idx1-ubyte(.gz) (incomplete: {sorted(partial)})."
        )
    splits = _resolve_split(split, complete)
    split_name = "all" if len(splits) == 2 else splits[0]

    # How many images each split contributes (the first `limit` overall, train before t10k).
    counts: list[tuple[str, int]] = []
    remaining = limit
    for s in splits:
        n_img = _idx_count(idx_files[(s, "images")], "images")
        n_lab = _idx_count(idx_files[(s, "labels")], "labels")
        if n_img != n_lab:
            raise CatalogError(
                f"Fashion-MNIST {s} files disagree: {n_img} images but {n_lab} labels in {folder}; "
                "replace them with a matching pair."
            )
        take = n_img if remaining is None else min(n_img, remaining)
        counts.append((s, take))
        if remaining is not None:
            remaining -= take
    total = sum(c for _, c in counts)
    if total == 0:
        raise CatalogError(f"Fashion-MNIST files in {folder} hold no images for split {split_name!r}.")

    digest = hashlib.sha256()
    for s in splits:
        for kind in ("images", "labels"):
            digest.update(_file_sha256(idx_files[(s, kind)]).encode())
    source_hash = digest.hexdigest()[:12]
    base = resolve_cache_dir(cache_dir)
    target = base / "catalogs" / f"fashion-mnist-{split_name}-{total}-{source_hash}"
    if not _materialised(target, source_hash, total):
        _materialise_fashion_mnist(target, folder, idx_files, counts, source_hash)

    return _load_csv(
        target / CATALOG_FILENAME,
        label_column=label_column,
        id_column="id",
        image_column="image",
        on_missing=on_missing,
        limit=None,
        source="fashion-mnist",
        name=f"fashion-mnist-{split_name}",
    )


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_MANIFEST = "lens-catalog.json"


def _materialised(target: Path, source_hash: str, total: int) -> bool:
    try:
        manifest = json.loads((target / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        manifest.get("format") == _FMNIST_FORMAT_VERSION
        and manifest.get("source_sha256_12") == source_hash
        and manifest.get("count") == total
        and (target / CATALOG_FILENAME).is_file()
    )


def _materialise_fashion_mnist(
    target: Path,
    folder: Path,
    idx_files: dict[tuple[str, str], Path],
    counts: list[tuple[str, int]],
    source_hash: str,
) -> None:
    """Write PNGs + catalog.csv into a temp folder beside ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        (tmp / "images").mkdir()
        records: list[tuple[str, str, str, str]] = []
        for s, take in counts:
            if take == 0:
                continue
            images = _read_idx(idx_files[(s, "images")], kind="images", limit=take)
            labels = _read_idx(idx_files[(s, "labels")], kind="labels", limit=take)
            bad = np.flatnonzero(labels >= len(FASHION_MNIST_CLASSES))
            if bad.size:
                raise CatalogError(
                    f"{idx_files[(s, 'labels')]} has {bad.size} label(s) outside 0..9 "
                    f"(first at item {int(bad[0])}: {int(labels[bad[0]])}); this is not Fashion-MNIST."
                )
            for i in range(take):
                item_id = f"{s}-{i:05d}"
                rel = f"images/{item_id}.png"
                Image.fromarray(images[i]).save(tmp / rel, format="PNG")
                records.append((item_id, rel, FASHION_MNIST_CLASSES[int(labels[i])], s))
        pd.DataFrame(records, columns=["id", "image", DEFAULT_LABEL_COLUMN, "split"]).to_csv(
            tmp / CATALOG_FILENAME, index=False
        )
        manifest = {
            "format": _FMNIST_FORMAT_VERSION,
            "source": str(folder.resolve()),
            "source_sha256_12": source_hash,
            "splits": dict(counts),
            "count": len(records),
        }
        # The manifest goes last: a folder without it is never taken for a finished one.
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)  # an unfinished or stale folder of ours; the manifest check said so
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished first; use its copy if it is complete.
            if not _materialised(target, source_hash, len(records)):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# Validation and defaults


def validate_images(
    catalog: Catalog, *, progress: Callable[[int, int], None] | None = None
) -> list[CatalogProblem]:
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


def default_catalog_path() -> Path:
    """The catalog to use when none is named.

    ``$LENS_CATALOG`` if set; else ``<repo>/../shared/data/fashion-products`` if present; else the Debian
    Fashion-MNIST folder ``/usr/share/datasets/fashion-mnist`` if present.

    Raises:
        CatalogError: ``$LENS_CATALOG`` points nowhere, or no default catalog exists (the message says how to
            get one).
    """
    env = os.environ.get(CATALOG_ENV, "").strip()
    if env:
        p = Path(env).expanduser()
        if not p.exists():
            raise CatalogError(f"{CATALOG_ENV}={env} does not exist; point it at a catalog folder or unset it.")
        return p.resolve()
    repo_root = Path(__file__).resolve().parents[1]
    shared = repo_root.parent / "shared" / "data" / "fashion-products"
    if shared.is_dir():
        return shared.resolve()
    if DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_FASHION_MNIST
    raise CatalogError(
        f"No catalog found: set {CATALOG_ENV}=/path/to/catalog (a folder with {CATALOG_FILENAME}, or class "
        "subfolders), or install Fashion-MNIST with `apt-get install dataset-fashion-mnist`."
    )


# ----------------------------------------------------------------------------------------------------------
# Message helpers


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

