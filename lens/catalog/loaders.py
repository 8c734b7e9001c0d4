"""Loading a catalog from a CSV listing or a folder of class subfolders (Fashion-MNIST IDX folders go through
:mod:`lens.catalog.fashion_mnist` first), and finding the default catalog.

Loading checks that every image file exists (one ``stat`` each) but decodes none; it never writes into the
catalog folder.
"""

from __future__ import annotations

import csv
import os
import posixpath
import re
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

import pandas as pd

from lens.catalog.fashion_mnist import find_idx_files, materialise_fashion_mnist
from lens.catalog.model import (
    CATALOG_FILENAME,
    DEFAULT_LABEL_COLUMN,
    Catalog,
    CatalogProblem,
    _cols,
    _line,
    _lines,
    _preview,
)
from lens.errors import CatalogError
from lens.images import IMAGE_EXTENSIONS

CATALOG_ENV = "LENS_CATALOG"

#: Cell values read as "no value" in label and metadata columns (pandas' and spreadsheets' spellings of NA).
NA_SPELLINGS: frozenset[str] = frozenset(
    {"nan", "NaN", "NAN", "-nan", "-NaN", "NA", "N/A", "n/a", "#N/A", "#NA", "<NA>", "NULL", "null", "None", "none"}
)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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
            cache_dir=cache_dir,
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
            cache_dir=cache_dir,
        )
    idx_files = find_idx_files(p)
    if idx_files:
        # Fashion-MNIST becomes a CSV catalog (PNGs + catalog.csv) under the cache folder once, then loads as one.
        materialised, name = materialise_fashion_mnist(p, idx_files, limit=limit, cache_dir=cache_dir, split=split)
        return _load_csv(
            materialised / CATALOG_FILENAME,
            label_column=label_column,
            id_column="id",
            image_column="image",
            on_missing=on_missing,
            limit=None,
            source="fashion-mnist",
            name=name,
            cache_dir=cache_dir,
        )
    return _load_folders(p, label_column=label_column, limit=limit, cache_dir=cache_dir)


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
    cache_dir: Path | None = None,
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
    # pandas renames a repeated column ("id", "id" -> "id", "id.1"): the header as written is what counts.
    header = _header_row(csv_path)
    names = header if len(header) == len(table.columns) else list(table.columns)
    if len(set(names)) != len(names):
        dup = sorted({c for c in names if names.count(c) > 1})
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

    # A label or metadata cell spelt as a missing value ("NaN", "NA", "null", ... as a spreadsheet or pandas writes
    # one) is unlabelled (""), not a category of its own; ids and paths are taken as written.
    for column in table.columns:
        if column not in ("id", "image"):
            table[column] = table[column].mask(table[column].str.strip().isin(NA_SPELLINGS), "")

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
    dups = [f"{ids[j]!r} ({_line(i)} and {_line(j)})" for i, j in _repeats(ids)]
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

    # A symlink (of the file or of a folder on its way) may point anywhere: every path is resolved, and one that
    # lands outside the catalog folder is refused as a '..' in the CSV is. Each folder is resolved once and each
    # file is lstat-ed (one call, as the existence check needed anyway); only a file that is a link is resolved.
    escaped: list[str] = []
    missing: list[int] = []
    real_folders: dict[str, str] = {}
    for i, rel in enumerate(images):
        rel_folder, file_name = posixpath.split(rel)
        real_folder = real_folders.get(rel_folder)
        if real_folder is None:
            real_folder = real_folders[rel_folder] = os.path.realpath(root / rel_folder)
        real = os.path.join(real_folder, file_name)
        try:
            st = os.lstat(real)
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(real)
                st = os.stat(real)
        except OSError:
            st = None
        if not _inside(root, real):
            escaped.append(f"{_line(i)} id {ids[i]!r}: {rel}")
        elif st is None or not stat.S_ISREG(st.st_mode):
            missing.append(i)
    if escaped:
        raise CatalogError(
            f"{where}: {len(escaped)} image path(s) lead outside the catalog folder through a symbolic link: "
            f"{_preview(escaped, quote=False)}. Copy those images into {root} (or link only within it)."
        )
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
        cache_dir=cache_dir,
    )


def _header_row(csv_path: Path) -> list[str]:
    """The first row of ``csv_path`` as written (names stripped), or ``[]`` when it cannot be read as CSV."""
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as fh:
            return [name.strip() for name in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _repeats(keys: list[str]) -> list[tuple[int, int]]:
    """``(first position, repeat position)`` of every key seen before, in order of the repeats."""
    first: dict[str, int] = {}
    return [(first[k], j) for j, k in enumerate(keys) if first.setdefault(k, j) != j]


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


_CONTROL = re.compile(r"[\x00-\x1f]")


def _normalise_relpath(raw: str) -> tuple[str, str | None]:
    """POSIX-normalised relative path, or ``(raw, reason)`` when it would leave the catalog folder."""
    if raw == "":
        return raw, "empty image path"
    if _CONTROL.search(raw):
        return raw, "a control character (e.g. a NUL byte) in the path"
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


def _inside(root: Path, real: str) -> bool:
    """Whether the resolved path ``real`` is ``root`` (resolved) or below it."""
    base = str(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


# Class subfolders -----------------------------------------------------------------------------------------


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()


def _load_folders(root: Path, *, label_column: str, limit: int | None, cache_dir: Path | None = None) -> Catalog:
    root = root.resolve()
    entries = sorted(root.iterdir())
    rows: list[tuple[str, str, str]] = []
    problems: list[CatalogProblem] = []
    for class_dir in entries:
        if not class_dir.is_dir() or class_dir.name.startswith("."):
            continue
        if not _inside(root, os.path.realpath(class_dir)):
            problems.append(CatalogProblem(None, None, f"{class_dir.name}/: a symbolic link out of the catalog folder"))
            continue
        for f in sorted(class_dir.iterdir()):
            if not _is_image_file(f):
                continue
            if not _inside(root, os.path.realpath(f)):  # a symlink to anywhere (e.g. /etc/passwd) is not opened
                problems.append(
                    CatalogProblem(None, None, f"{class_dir.name}/{f.name}: a symbolic link out of the catalog folder")
                )
                continue
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
    dups = [f"{rows[i][1]} and {rows[j][1]}" for i, j in _repeats([item_id for item_id, _, _ in rows])]
    if dups:
        raise CatalogError(
            f"{root}: {len(dups)} image(s) share an id (class/stem): {_preview(dups, quote=False)}. "
            "Rename one file of each pair so that file names without their suffix are unique per class."
        )
    if limit is not None:
        rows = rows[:limit]
    table = pd.DataFrame(rows, columns=["id", "image", label_column], dtype=str)
    return Catalog(
        root=root,
        table=table,
        label_column=label_column,
        source="folders",
        name=root.name,
        problems=problems,
        cache_dir=cache_dir,
    )


# ----------------------------------------------------------------------------------------------------------
# Defaults


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
    repo_root = Path(__file__).resolve().parents[2]  # lens/catalog/loaders.py -> the repository
    shared = repo_root.parent / "shared" / "data" / "fashion-products"
    if shared.is_dir():
        return shared.resolve()
    if DEBIAN_FASHION_MNIST.is_dir():
        return DEBIAN_FASHION_MNIST
    raise CatalogError(
        f"No catalog found: set {CATALOG_ENV}=/path/to/catalog (a folder with {CATALOG_FILENAME}, or class "
        "subfolders), or install Fashion-MNIST with `apt-get install dataset-fashion-mnist`."
    )
