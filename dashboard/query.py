"""Query helpers for the Search page that need no Streamlit: upload checks, cropping, combining image and text.

Kept apart from the pages so that they are unit-tested directly and the pages stay short.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath

import numpy as np
import pandas as pd
from PIL import Image

from dashboard import config
from lens.errors import ImageLoadError, LensError
from lens.images import open_image


def read_upload(name: str, data: bytes, *, max_mb: float = config.MAX_UPLOAD_MB) -> Image.Image:
    """Check and decode an uploaded query image.

    Raises:
        LensError: wrong file type, file too large, empty, or not a decodable image; the message names the file
            and says what to upload instead.
    """
    suffix = PurePath(name).suffix.lower().lstrip(".")
    allowed = ", ".join(config.UPLOAD_TYPES)
    if suffix not in config.UPLOAD_TYPES:
        raise LensError(f"'{name}' is not a JPEG, PNG or WebP file; upload a product photo ({allowed}).")
    size_mb = len(data) / 2**20
    if size_mb > max_mb:
        raise LensError(
            f"'{name}' is {size_mb:.1f} MB, over the {max_mb:g} MB upload limit; save a smaller JPEG "
            "(product photos need well under 1 MB) and upload that."
        )
    try:
        return open_image(data, name=name)
    except ImageLoadError as exc:
        reason = getattr(exc, "reason", str(exc))
        raise LensError(f"'{name}' cannot be used as a query image: {reason}. Upload a valid {allowed} photo.") from None


def crop_box(size: tuple[int, int], x_range: tuple[float, float], y_range: tuple[float, float]) -> tuple[int, int, int, int]:
    """Pixel box ``(left, top, right, bottom)`` of an image of ``size`` for ranges given in percent (0-100).

    The box is at least one pixel wide and high, so any slider position gives a usable image.
    """
    width, height = size

    def span(lo: float, hi: float, n: int) -> tuple[int, int]:
        lo, hi = sorted((max(0.0, min(100.0, float(lo))), max(0.0, min(100.0, float(hi)))))
        a = int(round(lo / 100.0 * n))
        b = int(round(hi / 100.0 * n))
        a = min(a, n - 1)
        return a, max(b, a + 1)

    left, right = span(*x_range, width)
    top, bottom = span(*y_range, height)
    return left, top, right, bottom


def is_full_crop(x_range: tuple[float, float], y_range: tuple[float, float]) -> bool:
    return tuple(x_range) == (0, 100) and tuple(y_range) == (0, 100)


def crop_image(image: Image.Image, x_range: tuple[float, float], y_range: tuple[float, float]) -> Image.Image:
    """The part of ``image`` inside the percentage ranges (the image itself when the ranges cover it all)."""
    if is_full_crop(x_range, y_range):
        return image
    return image.crop(crop_box(image.size, x_range, y_range))


def find_products(table: pd.DataFrame, text: str, *, title_column: str | None, limit: int = 200) -> list[str]:
    """Ids of products whose id or title contains ``text`` (case-insensitive); ids that start with it come first.

    Returns the first ``limit`` catalog ids when ``text`` is blank.
    """
    ids = table["id"].astype(str)
    needle = text.strip().lower()
    if not needle:
        return ids.head(limit).tolist()
    id_lower = ids.str.lower()
    starts = id_lower.str.startswith(needle)
    hit = id_lower.str.contains(needle, regex=False)
    if title_column and title_column in table.columns:
        hit |= table[title_column].astype(str).str.lower().str.contains(needle, regex=False)
    ordered = pd.concat([ids[starts], ids[hit & ~starts]])
    return ordered.head(limit).tolist()


def categorical_columns(table: pd.DataFrame, *, exclude: Sequence[str] = ("id", "image")) -> list[str]:
    """Metadata columns that make sense as filters, colours or labels: 2 to 500 distinct values, and fewer
    distinct values than half the rows (so titles and ids are left out)."""
    out = []
    n = len(table)
    for column in table.columns:
        if column in exclude:
            continue
        distinct = table[column].astype(str).nunique()
        if 2 <= distinct <= 500 and distinct < n and (distinct <= n / 2 or n < 8):
            out.append(str(column))
    return out


def title_column(columns: Sequence[str]) -> str | None:
    """The column holding product titles, if any (see ``config.TITLE_COLUMNS``)."""
    for name in config.TITLE_COLUMNS:
        if name in columns:
            return name
    return None
