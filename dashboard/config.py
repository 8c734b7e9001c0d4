"""Dashboard settings: environment variables, limits and display rules (no Streamlit calls here).

Environment:
    LENS_CATALOG          catalog folder (default: ../shared/data/fashion-products, see lens.catalog).
    LENS_CACHE_DIR        cache root (default ~/.cache/lens).
    LENS_LABEL            label column used to load the catalog (default articleType).
    LENS_DEFAULT_MODEL    model pre-selected on every page (default: the first available pretrained encoder).
    LENS_SHOW_TEST_ENCODERS=1   list test encoders (``tiny``) too; implied when LENS_DEFAULT_MODEL names one.
    LENS_AUTO_BUILD_ITEMS catalogs up to this many items are embedded on demand without asking (default 1000).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from lens.catalog import DEFAULT_LABEL_COLUMN

DEFAULT_MODEL_ENV = "LENS_DEFAULT_MODEL"
LABEL_ENV = "LENS_LABEL"
SHOW_TEST_ENV = "LENS_SHOW_TEST_ENCODERS"
AUTO_BUILD_ENV = "LENS_AUTO_BUILD_ITEMS"

#: Largest upload accepted, in MB. Keep equal to ``server.maxUploadSize`` in .streamlit/config.toml (the browser
#: refuses bigger files before they are sent; the page checks again because a config can be overridden).
MAX_UPLOAD_MB = 10
UPLOAD_TYPES: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
#: What the upload widget accepts (MIME types and extensions).
UPLOAD_ACCEPT: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp", *(f".{t}" for t in UPLOAD_TYPES))

#: Catalogs up to this size get an exact in-memory index when no Annoy index is on disk (exact and faster there).
EXACT_INDEX_MAX_ITEMS = 2000
#: How often (seconds) the Overview's build status and the sidebar's build line refresh while a build runs.
BUILD_REFRESH_S = 3
#: ... and how often they look for a build started elsewhere (the CLI, another browser tab) when none runs.
BUILD_IDLE_REFRESH_S = 15
#: Pixel size of the longer side of thumbnails (cards show them at about 150 px).
THUMBNAIL_PX = 192
#: Preferred order of metadata filters on the Search page; other categorical columns follow.
FILTER_PREFERENCE: tuple[str, ...] = (
    "articleType",
    "gender",
    "baseColour",
    "masterCategory",
    "subCategory",
    "season",
    "usage",
    "year",
)
#: Columns that hold a product's title, first match wins.
TITLE_COLUMNS: tuple[str, ...] = ("productDisplayName", "title", "name", "product_name", "productName")

#: Similarity colour bands, in percent: >= 70 green, 40-69 amber, < 40 red.
GREEN_FROM = 70.0
AMBER_FROM = 40.0


def label_column() -> str:
    """Label column asked for by ``LENS_LABEL`` (default ``articleType``)."""
    return os.environ.get(LABEL_ENV, "").strip() or DEFAULT_LABEL_COLUMN


def default_model_env() -> str | None:
    value = os.environ.get(DEFAULT_MODEL_ENV, "").strip()
    return value or None


def show_test_encoders() -> bool:
    """Whether test encoders (family ``test``) are listed: ``LENS_SHOW_TEST_ENCODERS=1`` or a test default model."""
    if os.environ.get(SHOW_TEST_ENV, "").strip() in ("1", "true", "yes"):
        return True
    return default_model_env() == "tiny"


def auto_build_items() -> int:
    """Catalog size up to which pages embed missing models on demand (bigger catalogs ask first)."""
    raw = os.environ.get(AUTO_BUILD_ENV, "").strip()
    try:
        return max(0, int(raw)) if raw else 1000
    except ValueError:
        return 1000


def default_model_warning(known: Sequence[str], available: Sequence[str]) -> str | None:
    """What to tell the user when ``LENS_DEFAULT_MODEL`` names a model that cannot be the default (unknown, or its
    weights are missing), else ``None``: the page then starts on another model, and says so."""
    env = default_model_env()
    if not env or env in available:
        return None
    if env not in known:
        shown = ", ".join(sorted(known)[:12])
        return (
            f"{DEFAULT_MODEL_ENV}={env} names no known encoder (known: {shown}); another model is selected. "
            f"Fix the name or unset {DEFAULT_MODEL_ENV}."
        )
    return (
        f"{DEFAULT_MODEL_ENV}={env} is not usable here: its weights are missing (the Overview page says how to get "
        "them); another model is selected."
    )


BEST_FIRST: tuple[str, ...] = (
    "proxy-ensemble",
    "proxy-efficientnet-lite2",
    "triplet-efficientnet-lite2",
    "efficientnet-lite2",
    "efficientnet-lite0",
)
"""Models a page starts with, best first, when they are ready: the held-out P@5 of docs/training.md (the proxy heads on
the three CNNs joined into one vector 0.890, the proxy head on efficientnet-lite2 0.879, its triplet head 0.840, the
frozen backbone 0.825, lite0 0.810)."""


BEST_TEXT_FIRST: tuple[str, ...] = ("text-align",)
"""Text-capable models a text query switches to, best first: ``text-align`` (held-out text -> image R@10 among the
1,600 held-out photos in docs/training.md, "4. Text side")."""


def pick_text_model(current: str, text_models: Sequence[str]) -> str:
    """The model a text query runs on: ``current`` when it embeds text, else the best of ``text_models`` (the
    available text-capable ones, :data:`BEST_TEXT_FIRST` first), else ``current`` (the page explains)."""
    if current in text_models or not text_models:
        return current
    ranked = [n for n in BEST_TEXT_FIRST if n in text_models]
    return (ranked or list(text_models))[0]


def best_first(names: Sequence[str]) -> list[str]:
    """``names`` with the models of :data:`BEST_FIRST` moved to the front, in that order."""
    ranked = [n for n in BEST_FIRST if n in names]
    return ranked + [n for n in names if n not in ranked]


def pick_default_model(available: Sequence[str], preferred: Sequence[str] = ()) -> str | None:
    """The model a page starts with.

    ``LENS_DEFAULT_MODEL`` when it is available; else the best (:data:`BEST_FIRST`) of ``preferred`` (e.g. models
    whose embeddings are already cached) that is available; else the first available one.
    """
    env = default_model_env()
    if env and env in available:
        return env
    for name in best_first(preferred):
        if name in available:
            return name
    return available[0] if available else None


def similarity_color(percent: float) -> str:
    """Streamlit colour name of a similarity percentage: ``green`` >= 70, ``orange`` (amber) 40-69, ``red`` < 40."""
    if percent >= GREEN_FROM:
        return "green"
    if percent >= AMBER_FROM:
        return "orange"
    return "red"
