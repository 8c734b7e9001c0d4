"""What the pages decide without Streamlit: the Search page's query (upload checks, cropping, the query vector from
an image, a text or both, its label, the results table), product look-up, and the roles of catalog columns.

Kept apart from the pages so that they are unit-tested directly and the pages only lay out widgets and results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from PIL import Image

from dashboard import config
from lens.encoders.base import MAX_TEXT_CHARS, check_texts  # noqa: F401  (MAX_TEXT_CHARS: the page)
from lens.errors import ImageLoadError, LensError
from lens.images import UPLOAD_FORMATS, open_image
from lens.vectors import mix_query_vectors

PRODUCT, UPLOAD, URL, TEXT, IMAGE_TEXT = "Catalog product", "Upload an image", "Image URL", "Text", "Image + text"
MODES = (PRODUCT, UPLOAD, URL, TEXT, IMAGE_TEXT)
"""What a search can start from (the labels of the page's "Query by" radio)."""
IMAGE_SOURCES = (PRODUCT, UPLOAD, URL)
"""Where the image of an image query comes from."""
FULL_RANGE = (0, 100)
EXPAND_NEIGHBOURS = 3
"""Neighbours of the re-ranking toggle's alpha query expansion (lens.rerank's default)."""


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
        return open_image(data, name=name, formats=UPLOAD_FORMATS)
    except ImageLoadError as exc:
        reason = getattr(exc, "reason", str(exc))
        raise LensError(
            f"'{name}' cannot be used as a query image: {reason}. Upload a valid {allowed} photo."
        ) from None


def read_url_image(url: str, fetch: Callable[[str], tuple[bytes, str, str]]) -> tuple[Image.Image, bytes, str]:
    """Fetch and decode a query image from ``url``: ``(image, bytes, final url)``.

    ``fetch(url) -> (bytes, content type, final url)`` is :func:`lens.remote.fetch_image_bytes` behind the page's
    cache; it refuses non-public addresses, non-images and downloads over the upload limit.

    Raises:
        LensError: the address is refused or unreachable, or what it returns is not a usable image.
    """
    data, content_type, final = fetch(url)
    suffix = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}.get(content_type, "jpg")
    name = PurePath(urlsplit(final).path).name or "image"
    try:
        image = open_image(data, name=name)
    except ImageLoadError as exc:
        reason = getattr(exc, "reason", str(exc))
        raise LensError(
            f"The file at {final!r} cannot be used as a query image: {reason}. Use the address of a {suffix.upper()} "
            "photo itself."
        ) from None
    return image, data, final


def crop_box(
    size: tuple[int, int], x_range: tuple[float, float], y_range: tuple[float, float]
) -> tuple[int, int, int, int]:
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
    return tuple(x_range) == FULL_RANGE and tuple(y_range) == FULL_RANGE


def crop_image(image: Image.Image, x_range: tuple[float, float], y_range: tuple[float, float]) -> Image.Image:
    """The part of ``image`` inside the percentage ranges (the image itself when the ranges cover it all)."""
    if is_full_crop(x_range, y_range):
        return image
    return image.crop(crop_box(image.size, x_range, y_range))


@dataclass(frozen=True)
class QueryParts:
    """What the Search page's widgets gave for one query.

    Attributes:
        mode: one of :data:`MODES`.
        product_id: the catalog product whose image is the query (image modes only), if one is picked.
        upload: the decoded uploaded (or fetched) photo (image modes only), if there is one.
        upload_data: the uploaded (or fetched) file's bytes: an uncropped upload is embedded from them, decoded as
            the catalog's files are (libjpeg's draft scaling for a big JPEG), so a catalog photo uploaded as a query
            gets exactly its catalog vector (from the decoded image: cosine 0.9999, a full decode instead of a draft
            one).
        url: the address the photo was fetched from, for a URL query.
        image_key: identifies the image and its crop: the cache key of the image's vector.
        crop_x: the kept part of the image's width, in percent (0-100).
        crop_y: the kept part of the image's height, in percent (0-100).
        text: the description, stripped (text modes only); ``None`` when it is empty or the model embeds images only.
        weight: weight of the text in an image + text query, 0 (image only) to 1 (text only).
    """

    mode: str
    product_id: str | None = None
    upload: Image.Image | None = None
    upload_data: bytes | None = None
    url: str | None = None
    image_key: str = ""
    crop_x: tuple[float, float] = FULL_RANGE
    crop_y: tuple[float, float] = FULL_RANGE
    text: str | None = None
    weight: float = 0.5


@dataclass(frozen=True)
class QueryEncoders:
    """How the parts of a query become vectors; the page passes its cached loaders (``dashboard.resources``).

    Attributes:
        product_vector: catalog id -> the product's ``(dim,)`` float32 vector from the catalog's embeddings.
        product_image: catalog id -> the product's image (read only when the query crops it).
        image_vector: ``(image_key, image)`` -> ``(dim,)`` float32 L2-normalised vector of an image (a decoded image,
            or an image file's bytes, decoded as the catalog's files are).
        text_vector: text -> ``(dim,)`` float32 L2-normalised vector of a description.
    """

    product_vector: Callable[[str], np.ndarray]
    product_image: Callable[[str], Image.Image]
    image_vector: Callable[[str, Image.Image | bytes], np.ndarray]
    text_vector: Callable[[str], np.ndarray]


@dataclass(frozen=True)
class Query:
    """A query ready to search with.

    Attributes:
        vector: ``(dim,)`` float32, L2-normalised; ``None`` while a part that the mode needs is missing.
        label: what the query was, e.g. ``"product 15970 + text: red dress"`` (the ``query`` column of the results).
        image: the image that was embedded (cropped), for the preview; ``None`` when no image was embedded (a text
            query, or an uncropped catalog product, whose stored vector serves).
    """

    vector: np.ndarray | None
    label: str
    image: Image.Image | None = None


def build_query(parts: QueryParts, encoders: QueryEncoders) -> Query:
    """The query vector and label of ``parts``: an image (a product's stored vector, or a photo or crop embedded now),
    a text, or both mixed by :func:`lens.vectors.mix_query_vectors` with the text's ``weight``.

    Raises:
        LensError: from the encoders (an unreadable product image, a model that cannot embed text).
    """
    if parts.text is not None and parts.mode in (TEXT, IMAGE_TEXT):
        check_texts([parts.text])  # whatever the model: an empty or a 10,000-character text gets a message
    image = parts.upload
    image_vector = None
    if parts.product_id is not None:
        if is_full_crop(parts.crop_x, parts.crop_y):
            image_vector = np.asarray(encoders.product_vector(parts.product_id))
        else:
            image = encoders.product_image(parts.product_id)
    if image is not None:
        full = is_full_crop(parts.crop_x, parts.crop_y)
        image = crop_image(image, parts.crop_x, parts.crop_y)
        source: Image.Image | bytes = parts.upload_data if full and parts.upload_data is not None else image
        image_vector = encoders.image_vector(parts.image_key, source)
    vector = image_vector
    if parts.mode == TEXT:
        vector = None if parts.text is None else encoders.text_vector(parts.text)
    elif parts.mode == IMAGE_TEXT:
        # The text is embedded only when there is an image to mix it with (an empty upload shows a hint, not a search).
        vector = None
        if parts.text is not None and image_vector is not None:
            vector = mix_query_vectors(image_vector, encoders.text_vector(parts.text), parts.weight)
    return Query(vector=vector, label=query_label(parts), image=image)


def query_label(parts: QueryParts) -> str:
    """``"product <id>"`` or ``"uploaded image"``, ``"text: <text>"``, or both joined by ``" + "``."""
    image_side = ""
    if parts.product_id is not None:
        image_side = f"product {parts.product_id}"
    elif parts.url is not None:
        image_side = f"image from {urlsplit(parts.url).hostname or parts.url}"
    elif parts.upload is not None:
        image_side = "uploaded image"
    text_side = f"text: {parts.text}" if parts.text is not None and parts.mode in (TEXT, IMAGE_TEXT) else ""
    return " + ".join(side for side in (image_side, text_side) if side)


def text_unsupported(model: str, text_models: Sequence[str]) -> str:
    """Why ``model`` cannot run a text query, and what to do: pick one of ``text_models`` (the available
    text-capable models) or, when there is none, install one."""
    remedy = (
        f"pick a text-capable model: {', '.join(text_models)}."
        if text_models
        else "no text-capable model is available on this machine; `python -m lens encoders` lists the "
        "text-capable ones and how to install their weights."
    )
    return f"'{model}' embeds images only, so it cannot search by text: {remedy}"


def annotate_results(results: pd.DataFrame, *, model: str, label: str) -> pd.DataFrame:
    """The results as shown and exported: ``rank, id, similarity, similarity_pct, model, query``, then the catalog's
    columns. ``similarity_pct`` is the cosine similarity in percent, rounded to 0.1."""
    out = results.copy()
    out.insert(3, "similarity_pct", (out["similarity"] * 100).round(1))
    out.insert(4, "model", model)
    out.insert(5, "query", label)
    return out


def filter_columns(categorical: Sequence[str]) -> list[str]:
    """The columns to filter on: those of ``config.FILTER_PREFERENCE`` first, in its order, then the rest by name."""
    preference = config.FILTER_PREFERENCE
    return sorted(categorical, key=lambda c: (preference.index(c) if c in preference else len(preference), c))


def active_filters(chosen: dict[str, list[str]]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The filters with at least one value, as the ``((column, sorted values), ...)`` that the cached loaders take."""
    return tuple((column, tuple(sorted(values))) for column, values in chosen.items() if values)


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
