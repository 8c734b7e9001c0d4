"""Fashion-MNIST IDX files as a catalog: parsed once and materialised as PNGs plus a ``catalog.csv`` under the lens
cache folder (``<cache>/catalogs/fashion-mnist-<split>-<count>-<source hash>/``), which then loads as a CSV catalog.

The IDX reader is our own rather than ``torchvision.datasets.mnist.read_image_file``/``read_label_file``: those open
the path with a plain ``open`` (no ``.gz``, which is how Fashion-MNIST and Debian's ``dataset-fashion-mnist`` ship),
read the whole file when ``limit`` wants a few images, fail with a bare ``assert``/``view`` error instead of a message
naming the file and the remedy, and would import torch into catalog loading. The format is 4 + 4·ndim header bytes
and raw unsigned bytes; the checks below (magic number, dimensions, truncation, labels 0..9) are the point.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from lens.catalog.model import CATALOG_FILENAME, DEFAULT_LABEL_COLUMN
from lens.errors import CatalogError
from lens.store import file_sha256, read_json, resolve_cache_dir, write_json

FMNIST_SPLIT_ENV = "LENS_FMNIST_SPLIT"

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

_FMNIST_FORMAT_VERSION = 1

#: Bounds on what an IDX header may announce, checked before any data is read: a small gzip can expand to
#: gigabytes, so the header's word is not taken. Fashion-MNIST's largest file holds 60,000 images of 28x28 (47 MB).
MAX_IDX_ITEMS = 1_000_000
MAX_IDX_SIDE = 256
MAX_IDX_BYTES = 256 * 2**20
_IDX_RE = re.compile(r"^(train|t10k)-(images|labels)[-.]idx([13])-ubyte(\.gz)?$")
_MANIFEST = "lens-catalog.json"


def find_idx_files(folder: Path) -> dict[tuple[str, str], Path]:
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
    item = dims[1] * dims[2] if kind == "images" else 1
    if dims[0] > MAX_IDX_ITEMS or max(dims[1:], default=0) > MAX_IDX_SIDE or dims[0] * item > MAX_IDX_BYTES:
        raise CatalogError(
            f"{path} announces {dims[0]:,} {kind}"
            + (f" of {dims[1]}x{dims[2]}" if kind == "images" else "")
            + f", beyond what lens reads from an IDX file ({MAX_IDX_ITEMS:,} items, {MAX_IDX_SIDE}x{MAX_IDX_SIDE} "
            f"pixels, {MAX_IDX_BYTES // 2**20} MiB); this is not Fashion-MNIST: replace it with the original file."
        )
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


def materialise_fashion_mnist(
    folder: Path,
    idx_files: dict[tuple[str, str], Path],
    *,
    limit: int | None,
    cache_dir: str | os.PathLike | None,
    split: str | None,
) -> tuple[Path, str]:
    """The folder holding the PNGs and ``catalog.csv`` of ``folder``'s IDX files (written on first use), and the
    catalog's name.

    Args:
        folder: the folder of IDX files.
        idx_files: :func:`find_idx_files` of ``folder``.
        limit: materialise only the first ``limit`` images (train before t10k).
        cache_dir: cache root (default ``$LENS_CACHE_DIR`` or ``~/.cache/lens``).
        split: ``train``, ``t10k`` or ``all``; default ``$LENS_FMNIST_SPLIT`` or ``t10k``.

    Raises:
        CatalogError: incomplete, mismatched or damaged IDX files (the message says which and what to do).
    """
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
            digest.update(file_sha256(idx_files[(s, kind)]).encode())
    source_hash = digest.hexdigest()[:12]
    target = resolve_cache_dir(cache_dir) / "catalogs" / f"fashion-mnist-{split_name}-{total}-{source_hash}"
    if not _materialised(target, source_hash, total):
        _materialise_fashion_mnist(target, folder, idx_files, counts, source_hash)
    return target, f"fashion-mnist-{split_name}"


def _materialised(target: Path, source_hash: str, total: int) -> bool:
    manifest = read_json(target / _MANIFEST)
    if manifest is None:
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
        write_json(tmp / _MANIFEST, manifest, indent=2)
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
