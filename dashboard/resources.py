"""Every Streamlit cache of the dashboard lives here; pages call these, never lens's heavy modules directly.

Caching by kind:

* ``st.cache_resource`` for objects shared read-only across sessions: catalogs, encoders, embedding sets (their
  vectors are marked read-only: ``st.cache_data`` would copy 40 MB per model on every rerun), indexes (Annoy is
  mmapped) and filter id sets.
* ``st.cache_data`` for tables and small arrays: encoder list, model states, metric reports, neighbours,
  projections, query vectors; thumbnails (JPEG bytes) in a process-wide LRU cache (see :func:`thumbnail`).

Arguments are strings, ints and tuples. Every loader that depends on the catalog takes its path, the label column it
was loaded with, its fingerprint (files, sizes, mtimes) and the cache folder, so a changed catalog or another
``LENS_CACHE_DIR`` never hits a stale entry. Slow work that reports progress (embedding a catalog) is not cached
here: :func:`build_model` writes to lens's disk cache, then the cached loaders read it back.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image, ImageDraw

from dashboard import config
from lens import build as lens_build
from lens.analysis import (  # noqa: F401  (compare_summary, per_category_matrix, worst_queries: used by pages)
    NearDuplicates,
    compare_grid,
    compare_summary,
    confused_pairs,
    confusion_examples,
    near_duplicate_pairs,
    per_category_matrix,
    precision_table,
    sample_queries_per_category,
    top_neighbors,
    worst_queries,
)
from lens.catalog import Catalog, default_catalog_path, load_catalog
from lens.delta import index_stamp as delta_index_stamp
from lens.delta import update_index
from lens.embed import EmbeddingSet, cached_embeddings, embed_catalog, embed_images, embedding_key
from lens.encoders import (
    Encoder,
    create_encoder,
    encoder_identity,
    list_encoders,
    remember_identity,
    single_query_threads,
)
from lens.encoders.trained import default_models_dir, refresh_trained_models
from lens.errors import CatalogError
from lens.evaluate import evaluate_embeddings, summary_table
from lens.explain import overlay, similarity_maps, supports_maps
from lens.images import open_image, try_open_image
from lens.index import ExactIndex, VectorIndex, cache_state
from lens.metrics import RetrievalReport
from lens.probe import CategoryProbe, category_probe
from lens.projection import Projection, ProjectionParams, cached_projection, project_embeddings
from lens.remote import fetch_image_bytes

ProgressCallback = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------------------------
# Catalog


@st.cache_resource(max_entries=4, show_spinner="Loading catalog…")
def get_catalog(path: str, label_column: str = "articleType") -> Catalog:
    return load_catalog(path, label_column=label_column)


def default_catalog() -> str:
    """``$LENS_CATALOG`` or the default catalog (raises ``CatalogError`` with the remedy when there is none)."""
    return str(default_catalog_path())


def load_dashboard_catalog(path: str, label_column: str) -> tuple[Catalog, str, str | None]:
    """The catalog, the label column it was loaded with, and a warning when that is not the one asked for.

    A CSV catalog without the requested label column still opens (loaded with ``id`` as a stand-in label) so
    that search works and the sidebar can offer its real columns; the warning says what to do.
    """
    try:
        return get_catalog(path, label_column), label_column, None
    except CatalogError as exc:
        if "no label column" not in str(exc):
            raise
    catalog = get_catalog(path, "id")
    columns = ", ".join(c for c in catalog.columns if c not in ("id", "image"))
    warning = (
        f"Catalog '{catalog.name}' has no '{label_column}' column, which the metrics use as the label by default. "
        f"Pick the label column in the sidebar (one of: {columns}), or restart with {config.LABEL_ENV}=<column>."
    )
    return catalog, "id", warning


@st.cache_data(max_entries=8, show_spinner=False)
def catalog_columns(path: str, load_label: str, fingerprint: str) -> dict[str, Any]:
    """Column roles of a catalog: ``categorical`` (filters, colours, labels) and ``title``."""
    from dashboard.query import categorical_columns, title_column

    table = get_catalog(path, load_label).table
    return {"categorical": categorical_columns(table), "title": title_column(list(table.columns))}


@st.cache_data(max_entries=64, show_spinner=False)
def column_values(path: str, load_label: str, fingerprint: str, column: str) -> list[str]:
    """Distinct values of ``column``, most frequent first (blank cells left out)."""
    table = get_catalog(path, load_label).table
    if column not in table.columns:
        raise CatalogError(f"Catalog has no column '{column}'. Columns: {', '.join(table.columns)}.")
    counts = table[column].astype(str).value_counts()
    return [str(v) for v in counts.index if str(v).strip()]


@st.cache_resource(max_entries=64, show_spinner=False)
def allowed_ids(
    path: str, load_label: str, fingerprint: str, filters: tuple[tuple[str, tuple[str, ...]], ...]
) -> frozenset[str] | None:
    """Ids passing every ``(column, values)`` filter (``None`` when no filter has values)."""
    from lens.search import filter_mask

    active = {column: list(values) for column, values in filters if values}
    mask = filter_mask(get_catalog(path, load_label), active)
    return None if mask is None else frozenset(mask)


@st.cache_resource(max_entries=8, show_spinner=False)
def titles(path: str, load_label: str, fingerprint: str, column: str) -> dict[str, str]:
    """``{id: title}`` of every product (stripped; empty titles left out), shared read-only across sessions: a result
    grid looks up 10-50 titles per rerun, a pandas lookup each before."""
    catalog = get_catalog(path, load_label)
    values = catalog.labels(column)
    return {item_id: value for item_id, value in zip(catalog.ids, (str(v).strip() for v in values)) if value}


@st.cache_data(max_entries=256, show_spinner=False)
def find_products(path: str, load_label: str, fingerprint: str, text: str, title_column: str | None) -> list[str]:
    """:func:`dashboard.query.find_products` on the catalog, cached per search text: every rerun of the Search page
    asks again for the text in its product box (a scan of every id and title)."""
    from dashboard.query import find_products as find

    return find(get_catalog(path, load_label).table, text, title_column=title_column)


# --------------------------------------------------------------------------------------------------------------
# Encoders and embeddings


@st.cache_data(ttl=60, show_spinner=False)
def encoder_rows(show_test: bool, weights_dir: str = "", stamp: str = "") -> list[dict[str, Any]]:
    """The registry as plain rows: name, family, dim, input px, text, precision, available, where, remedy.

    ``stamp`` (:func:`models_stamp`) changes when a model is published: the trained models are then registered
    again from the models folder, so a model the background build (another process) just saved is listed at once.
    """
    if stamp:
        refresh_trained_models()
    rows = []
    for info in list_encoders(include_test=show_test, weights_dir=weights_dir or None):
        spec = info.spec
        rows.append(
            {
                "name": info.name,
                "family": spec.family,
                "dim": spec.dim,
                "input_px": spec.preprocess.input_size,
                "text": spec.supports_text,
                "precision": spec.precision,
                "available": info.available,
                "where": info.status.where,
                "remedy": info.status.remedy,
                "description": spec.description,
            }
        )
    return rows


def encoders() -> list[dict[str, Any]]:
    """:func:`encoder_rows` for the current environment."""
    return encoder_rows(config.show_test_encoders(), os.environ.get("LENS_WEIGHTS_DIR", ""), models_stamp(""))


def encoder_table() -> pd.DataFrame:
    """The registry as a table (kept for callers of the first dashboard version)."""
    rows = encoders()
    return pd.DataFrame(
        [
            {
                "encoder": r["name"],
                "family": r["family"],
                "dim": r["dim"],
                "input px": r["input_px"],
                "precision": r["precision"],
                "available": r["available"],
                "weights": r["where"] if r["available"] else f"unavailable — {r['remedy']}",
            }
            for r in rows
        ]
    )


@st.cache_resource(max_entries=8, show_spinner="Loading model weights…")
def get_encoder(name: str) -> Encoder:
    """A built encoder (eval mode); raises ``WeightsUnavailableError``/``UnknownEncoderError`` (not cached).

    One throw-away forward pass warms it up: a model's first pass is slow (1.7 s for EfficientNet-Lite0 against
    tens of ms after), and that belongs to loading, not to the user's first query.
    """
    with _WARMED_LOCK:
        warmed = _WARM_ENCODERS.pop(name, None)
    if warmed is not None:  # built and warmed up in the background by warm_encoder
        return warmed
    encoder = create_encoder(name)
    with single_query_threads():
        encoder.embed_images([Image.new("RGB", (64, 64), (255, 255, 255))])
    return encoder


def model_identity(model: str, cache_dir: str = "") -> dict[str, Any]:
    """``model``'s encoder identity: as recorded beside its cached embeddings when nothing it depends on changed since
    (no model loaded, no torch imported: :func:`lens.encoders.encoder_identity`), else from the built encoder."""
    identity = encoder_identity(model, cache_dir=cache_dir or None)
    if identity is not None:
        return identity
    encoder = get_encoder(model)
    remember_identity(encoder, cache_dir or None)  # the next server process will not need to load it for this
    return encoder.identity()


_WARMED: set[str] = set()
_WARM_ENCODERS: dict[str, Encoder] = {}
_WARMED_LOCK = threading.Lock()


def warm_encoder(model: str) -> None:
    """Import torch and load ``model``'s weights and ONNX Runtime session in a background thread, once per model and
    process: the Search page calls it when the query mode will need the encoder (a photo or a text), so that the
    first such query does not wait for them (9-10 s under load otherwise), while a catalog-product search still
    imports nothing. :func:`get_encoder` takes the encoder it built, when it is done by then. Failures are left to
    the query itself."""
    with _WARMED_LOCK:
        if model in _WARMED:
            return
        _WARMED.add(model)

    def warm() -> None:
        try:
            encoder = create_encoder(model)
            encoder.embed_images([Image.new("RGB", (64, 64), (255, 255, 255))])
            with _WARMED_LOCK:
                _WARM_ENCODERS[model] = encoder
        except Exception:  # noqa: BLE001 - best effort: the query that needs the encoder reports the error
            pass

    threading.Thread(target=warm, name=f"lens-warm-{model}", daemon=True).start()


def embeddings_key(path: str, load_label: str, model: str, cache_dir: str = "") -> str:
    """The exact cache key of ``model``'s embeddings of the catalog (loads the encoder only when its identity is
    not on record in ``cache_dir``, once per server)."""
    return embedding_key(get_catalog(path, load_label), model_identity(model, cache_dir))


def embeddings_cached(path: str, load_label: str, model: str, cache_dir: str) -> bool:
    """Whether ``model``'s embeddings of the catalog are in the disk cache (no embedding is computed)."""
    key = embeddings_key(path, load_label, model, cache_dir)
    return cache_state(get_catalog(path, load_label), model, cache_dir or None, key=key).embedded


@st.cache_resource(max_entries=12, show_spinner="Loading embeddings…")
def get_embeddings(path: str, load_label: str, model: str, fingerprint: str, cache_dir: str) -> EmbeddingSet:
    """``model``'s embeddings of the catalog, from lens's disk cache (computed without progress on a miss:
    pages call :func:`build_model` first for anything but small catalogs). Vectors are read-only. A cache hit loads
    no model: a catalog-product search never imports torch."""
    catalog = get_catalog(path, load_label)
    embeddings = cached_embeddings(
        catalog, model, embeddings_key(path, load_label, model, cache_dir), cache_dir or None
    )
    if embeddings is None:
        embeddings = embed_catalog(catalog, get_encoder(model), cache_dir=cache_dir or None)
    embeddings.vectors.setflags(write=False)
    return embeddings


def build_model(
    path: str, load_label: str, model: str, cache_dir: str, *, progress: ProgressCallback | None = None
) -> EmbeddingSet:
    """Embed the catalog with ``model`` into lens's disk cache, reporting ``progress(done, total)``.

    Not cached by Streamlit (it reports progress while it runs); afterwards :func:`get_embeddings` finds the vectors
    on disk. Clears :func:`model_states` so the Overview shows the new state.
    """
    catalog = get_catalog(path, load_label)
    embeddings = embed_catalog(catalog, get_encoder(model), cache_dir=cache_dir or None, progress=progress)
    model_states.clear()
    return embeddings


def build_annoy(path: str, load_label: str, model: str, fingerprint: str, cache_dir: str) -> None:
    """Build (or verify and keep) ``model``'s Annoy index in lens's cache, as ``python -m lens index --update``
    does: an index of an older version of the catalog is updated with a delta (rebuilt in the background past
    the threshold)."""
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    update_index(embeddings, cache_dir=cache_dir or None, rebuild="background")
    model_states.clear()


@st.cache_data(ttl=15, show_spinner=False)
def model_states(
    path: str, load_label: str, fingerprint: str, cache_dir: str, show_test: bool, stamp: str = ""
) -> pd.DataFrame:
    """One row per registered encoder: weights available? embeddings cached? index built? — without loading any
    model: :func:`lens.index.cache_state` matches embedding sidecars on the catalog fingerprint and the encoder's
    default precision, so a change of weights files shows up only when the model is next loaded."""
    catalog = get_catalog(path, load_label)
    rows = []
    for row in encoder_rows(show_test, os.environ.get("LENS_WEIGHTS_DIR", ""), stamp):
        name = row["name"]
        state = cache_state(catalog, name, cache_dir or None, precision=row["precision"])
        rows.append(
            {
                "encoder": name,
                "family": row["family"],
                "dim": row["dim"],
                "text": "yes" if row["text"] else "no",
                "weights": "available" if row["available"] else "missing",
                "embeddings": "cached" if state.embedded else "not built",
                "vectors": state.n,
                "unreadable": state.failed,
                "index": "built" if state.indexed else ("not built" if state.embedded else "—"),
                "remedy": "" if row["available"] else row["remedy"],
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# The background build (lens.build: a separate process; the dashboard only reads its files and starts or stops it)


def models_stamp(cache_dir: str) -> str:
    """Changes whenever a model is published: the models the build's status file calls ready, plus the trained
    model folders. Passed to the cached loaders that list models, so they see a new model without a restart."""
    status = lens_build.read_status(lens_build.status_path(cache_dir or None)) or {}
    ready = [str(e.get("name")) for e in status.get("steps", []) if e.get("state") == "ready"]
    try:
        trained = sorted(p.name for p in default_models_dir().iterdir() if not p.name.startswith("."))
    except OSError:
        trained = []
    return digest(status.get("started", ""), ready, trained)


def build_steps() -> list[lens_build.BuildStep]:
    """The default build plan (the default model first: ``LENS_DEFAULT_MODEL`` when it names one of the plan)."""
    return lens_build.make_plan()


@st.cache_data(ttl=2, show_spinner=False)
def build_views(
    path: str, load_label: str, fingerprint: str, cache_dir: str, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The build's state for the catalog: ``views`` (one :class:`lens.build.StepView` per model of the plan, then
    ``extra`` encoders), ``status`` (the status file, or ``None``), ``runner`` (``{pid, since}`` of a running
    build, or ``None``) and ``log`` (its last lines). Cached two seconds: the Overview polls it while a build runs."""
    steps = build_steps()
    names = {s.name for s in steps}
    steps += [lens_build.BuildStep(name) for name in extra if name not in names]
    options = lens_build.BuildOptions(cache_dir=cache_dir or None)
    views, status = lens_build.plan_status(get_catalog(path, load_label), steps, options)
    return {
        "views": views,
        "status": status,
        "runner": lens_build.runner(cache_dir or None),
        "log": lens_build.build_log(cache_dir or None, 60),
    }


RAY_WORKERS = 2
"""Encoder actors of a build started with the "Embed on Ray Data" toggle (Ray starts on this machine)."""


def ray_available() -> bool:
    """Whether Ray Data is installed here (no import of it: the Overview and Train pages ask on every rerun)."""
    from lens.distributed import ray_installed

    return ray_installed()


def _build_options(cache_dir: str, on_ray: bool) -> lens_build.BuildOptions:
    return lens_build.BuildOptions(cache_dir=cache_dir or None, ray_workers=RAY_WORKERS if on_ray else 0)


def start_build(
    path: str,
    load_label: str,
    cache_dir: str,
    *,
    models: str | None = None,
    recipes: str | None = None,
    on_ray: bool = False,
) -> int:
    """Start ``python -m lens build`` in the background (raises ``JobRunningError`` when one runs); its pid.
    ``on_ray``: the catalog is embedded on Ray Data (:data:`RAY_WORKERS` actors), and the status says so."""
    pid = lens_build.start_build(
        path,
        label=load_label,
        options=_build_options(cache_dir, on_ray),
        models=models,
        recipes=recipes,
    )
    build_views.clear()
    return pid


def stop_build(cache_dir: str) -> int | None:
    """Ask the running build to stop at its next safe point; its pid, or ``None`` when none runs."""
    pid = lens_build.stop_build(cache_dir or None)
    build_views.clear()
    train_runs.clear()
    return pid


# --------------------------------------------------------------------------------------------------------------
# Training runs (lens.build's training section: a build of one step; the Train page)


def recipe_names() -> list[str]:
    """Every registered recipe (``autoencoder``, ``mobilenet-small``, ``simclr``, ``text-align``, ``triplet``...)."""
    from lens.train import RECIPES

    return sorted(RECIPES)


def recipe_summary(recipe: str) -> str:
    from lens.train import RECIPES

    return RECIPES[recipe].summary


def recipe_settings(recipe: str) -> list[Any]:
    """The recipe's settings with their defaults (:class:`lens.train.checks.RecipeSetting`), from its config."""
    from lens.train.checks import recipe_settings as settings

    return settings(recipe)


def recipe_backbone(recipe: str) -> str | None:
    """The recipe's default backbone, or ``None`` when it takes none."""
    from lens.train import default_config
    from lens.train.checks import takes_backbone

    return str(default_config(recipe).backbone) if takes_backbone(recipe) else None


def backbone_names(show_test: bool) -> list[str]:
    """The pretrained backbones a recipe can start from (``tiny`` too when test encoders are shown)."""
    from lens.train.registry import BACKBONE_NAMES

    return [*BACKBONE_NAMES, *(["tiny"] if show_test else [])]


def training_name(recipe: str, settings: dict[str, Any]) -> str:
    """The name a run of ``recipe`` with ``settings`` saves its model as by default (raises ``LensError``)."""
    return lens_build.training_step(recipe, settings)[0].name


def _forget_models() -> None:
    """After a model is published or deleted: every loader that lists models or holds one (a later model of the same
    name must not meet the old one's encoder, vectors or index)."""
    for loader in (encoder_rows, model_states, build_views, train_runs, get_encoder, get_embeddings, get_index):
        loader.clear()


def start_training(
    path: str,
    load_label: str,
    cache_dir: str,
    label_column: str,
    recipe: str,
    settings: dict[str, Any],
    name: str = "",
    *,
    on_ray: bool = False,
) -> tuple[int, str]:
    """Check, then start training ``recipe`` in the background (:func:`lens.build.start_training`); pid and model
    name. ``on_ray``: the trained model embeds the catalog on Ray Data. Raises ``LensError`` (nothing started) or
    ``JobRunningError``."""
    pid, step = lens_build.start_training(
        get_catalog(path, load_label),
        recipe,
        settings,
        name=name or None,
        options=_build_options(cache_dir, on_ray),
        label_column=label_column,
    )
    _forget_models()
    return pid, step.name


def resume_training(cache_dir: str, name: str) -> int:
    """Resume the stopped run ``name`` in the background; its pid."""
    pid, _ = lens_build.resume_training(name, lens_build.BuildOptions(cache_dir=cache_dir or None))
    build_views.clear()
    train_runs.clear()
    return pid


def delete_model(cache_dir: str, name: str) -> list[str]:
    """Delete the trained model ``name`` (:func:`lens.build.delete_model`), then forget it in every cache."""
    removed = lens_build.delete_model(name, lens_build.BuildOptions(cache_dir=cache_dir or None))
    _forget_models()
    return [str(p) for p in removed]


@st.cache_data(ttl=2, show_spinner=False)
def train_runs(cache_dir: str, stamp: str = "") -> list[lens_build.RunInfo]:
    """Every trained model and unfinished run of the cache (two seconds: the Train page polls it)."""
    return lens_build.list_runs(lens_build.BuildOptions(cache_dir=cache_dir or None))


def run_history(cache_dir: str, name: str) -> pd.DataFrame:
    """The per-epoch history of run ``name`` so far (``epoch``, ``loss``, ``val_p@5``...); empty when none."""
    rows = lens_build.read_history(name, lens_build.BuildOptions(cache_dir=cache_dir or None))
    return pd.DataFrame(rows)


def training_view(path: str, load_label: str, cache_dir: str, name: str) -> lens_build.StepView | None:
    """The build state of run ``name`` on the catalog (ready / building n %, ETA / queued / failed), or ``None``."""
    steps = lens_build.training_plan(name, lens_build.BuildOptions(cache_dir=cache_dir or None))
    if not steps:
        return None
    options = lens_build.BuildOptions(cache_dir=cache_dir or None)
    views, _ = lens_build.plan_status(get_catalog(path, load_label), steps, options)
    return views[0]


# --------------------------------------------------------------------------------------------------------------
# Index and search


def index_kind(path: str, load_label: str, model: str, cache_dir: str, n_items: int) -> str:
    """``"annoy"`` when an Annoy index is on disk or the catalog is large, else ``"exact"``."""
    if n_items > config.EXACT_INDEX_MAX_ITEMS:
        return "annoy"
    key = embeddings_key(path, load_label, model, cache_dir)
    return "annoy" if cache_state(get_catalog(path, load_label), model, cache_dir or None, key=key).indexed else "exact"


def index_stamp(path: str, load_label: str, model: str, cache_dir: str) -> str:
    """What serves ``model``'s Annoy index on disk now (:func:`lens.delta.index_stamp`: two stats), for
    :func:`get_index`'s cache key."""
    return delta_index_stamp(cache_dir or None, model, embeddings_key(path, load_label, model, cache_dir))


@st.cache_resource(max_entries=8, show_spinner="Loading index…")
def get_index(
    path: str, load_label: str, model: str, fingerprint: str, cache_dir: str, kind: str, stamp: str = ""
) -> VectorIndex:
    """The search index of ``model``: Annoy (mmapped from the cache, built there if missing) or exact numpy.

    When the catalog changed since its index was built, the older index serves with a delta (:mod:`lens.delta`):
    the same results, at once; past the threshold a full rebuild runs in a background thread meanwhile. ``stamp``
    (:func:`index_stamp`) changes when that rebuild (or the background build's) publishes the new index, so the
    next rerun loads it instead of the cached main index + delta."""
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    if kind == "exact":
        return ExactIndex.from_embeddings(embeddings)
    return update_index(embeddings, cache_dir=cache_dir or None, rebuild="background").index


@st.cache_resource(max_entries=16, show_spinner="Fitting the category probe…")
def get_probe(
    path: str, load_label: str, model: str, fingerprint: str, cache_dir: str, label_column: str
) -> CategoryProbe:
    """The linear probe that predicts ``label_column`` from ``model``'s vectors (fitted once, cached on disk)."""
    catalog = get_catalog(path, load_label)
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    return category_probe(catalog, embeddings, label_column, cache_dir=cache_dir or None)


@st.cache_data(max_entries=64, show_spinner=False)
def image_query_vector(model: str, digest: str, _image: Image.Image | bytes) -> np.ndarray:
    """``(dim,)`` float32 vector of a query image, decoded or as file bytes (then decoded as the catalog's files are,
    by ``lens.embed.embed_images``); ``digest`` identifies the image (bytes hash + crop)."""
    encoder = get_encoder(model)
    with single_query_threads():
        return embed_images(encoder, [_image])[0]


@st.cache_data(max_entries=256, show_spinner=False)
def text_query_vector(model: str, text: str) -> np.ndarray:
    """``(dim,)`` float32 vector of a text query (raises ``LensError`` for image-only encoders)."""
    encoder = get_encoder(model)
    with single_query_threads():
        return np.asarray(encoder.embed_texts([text]), dtype=np.float32)[0]


@st.cache_data(ttl=600, max_entries=32, show_spinner="Fetching the image…")
def fetch_url(url: str) -> tuple[bytes, str, str]:
    """``(bytes, content type, final url)`` of the image at ``url`` (refusals raise ``LensError`` and are not cached)."""
    fetched = fetch_image_bytes(url, max_bytes=int(config.MAX_UPLOAD_MB * 2**20))
    return fetched.data, fetched.content_type, fetched.url


def digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, (bytes, bytearray)) else repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------------------------------------------
# Thumbnails


def _placeholder(px: int, text: str = "no image") -> bytes:
    image = Image.new("RGB", (px, px), (238, 238, 238))
    ImageDraw.Draw(image).text((px // 2 - 24, px // 2 - 6), text, fill=(120, 120, 120))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


@functools.lru_cache(maxsize=20_000)
def thumbnail(path: str, fingerprint: str, px: int = config.THUMBNAIL_PX) -> bytes:
    """JPEG bytes of the image at ``path``, longer side ``px``, loaded with lens's safe loader (a grey
    placeholder when it cannot be read). ``fingerprint`` (the catalog's) invalidates it when files change.

    A big JPEG is decoded at 1/2-1/8 scale by libjpeg (``draft``, both sides still >= ``px``) before the resize:
    most of a thumbnail's time was the full decode. A process-wide LRU cache rather than ``st.cache_data``: a result
    page asks for 10-50 thumbnails per rerun, and ``st.cache_data``'s per-call argument hashing and signature
    inspection cost more than a cached thumbnail is worth (JPEG bytes are immutable, so sharing them across
    sessions is safe). :func:`clear_caches` empties it too.
    """
    image, _ = try_open_image(path, draft_size=px)
    if image is None:
        return _placeholder(px)
    image.thumbnail((px, px), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@st.cache_data(ttl=600, show_spinner=False)
def map_support(model: str) -> str | None:
    """``None`` when ``model`` gives similarity maps, else why not."""
    return supports_maps(get_encoder(model))


@st.cache_data(max_entries=64, show_spinner="Computing the similarity map…")
def similarity_overlays(
    model: str, query_key: str, _query: Image.Image, result_path: str
) -> tuple[float, bytes, bytes]:
    """``(cosine, query overlay PNG, result overlay PNG)`` of a query image and a catalog photo under ``model``;
    ``query_key`` identifies the query image (bytes hash + crop)."""
    with single_query_threads():
        maps = similarity_maps(get_encoder(model), _query, open_image(result_path))
    return maps.cosine, _png(overlay(maps.query_view, maps.query)), _png(overlay(maps.result_view, maps.result))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def load_image(path: str) -> Image.Image:
    """A catalog image through lens's safe loader (raises ``ImageLoadError`` with the reason)."""
    return open_image(path)


def image_bytes(image: Image.Image, px: int = 2 * config.THUMBNAIL_PX) -> bytes:
    """A downscaled JPEG of an in-memory image (query previews)."""
    copy = image.copy()
    copy.thumbnail((px, px), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------------------
# Metrics, failures, comparisons, projections


@st.cache_data(max_entries=32, show_spinner=False)
def get_report(
    path: str,
    load_label: str,
    model: str,
    fingerprint: str,
    cache_dir: str,
    label_column: str,
    ks: tuple[int, ...],
    max_queries: int | None = None,
    seed: int = 0,
    expand: int = 0,
) -> RetrievalReport:
    """Exact leave-one-out retrieval metrics; all items as queries, or a seeded sample of ``max_queries``;
    ``expand`` > 0: with alpha query expansion over that many neighbours."""
    catalog = get_catalog(path, load_label)
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    query_ids = None
    if max_queries is not None and max_queries < len(embeddings):
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(embeddings), size=max_queries, replace=False))
        query_ids = [embeddings.ids[i] for i in rows]
    return evaluate_embeddings(
        embeddings, catalog, label_column=label_column, ks=ks, query_ids=query_ids, expand=expand
    )


def metrics_summary(reports: dict[str, RetrievalReport], *, macro: bool) -> pd.DataFrame:
    """:func:`lens.evaluate.summary_table` as the Metrics page shows and exports it: ``model, average, label,
    queries, skipped``, then the metric keys. ``queries``/``skipped`` count the evaluated and the left-out queries
    (the same for micro and macro averages)."""
    table = summary_table(reports, macro=macro)
    table.insert(3, "queries", [int(report.summary["n_queries"]) for report in reports.values()])
    table.insert(4, "skipped", [int(report.summary["n_skipped"]) for report in reports.values()])
    keys = next(iter(reports.values())).metric_keys
    return table[["model", "average", "label", "queries", "skipped", *keys]]


@st.cache_data(max_entries=16, show_spinner=False)
def get_neighbors(
    path: str, load_label: str, model: str, fingerprint: str, cache_dir: str, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours of every item (itself excluded): ``(N, k)`` rows and cosines."""
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    return top_neighbors(embeddings.vectors, k)


def row_labels(
    path: str, load_label: str, model: str, fingerprint: str, cache_dir: str, label_column: str
) -> list[str]:
    """Label of every embedding row (items whose image failed have no row)."""
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    return get_catalog(path, load_label).labels(label_column, ids=embeddings.ids).tolist()


@st.cache_data(max_entries=16, show_spinner=False)
def get_precision_table(
    path: str, load_label: str, model: str, fingerprint: str, cache_dir: str, label_column: str, k: int
) -> pd.DataFrame:
    """``precision@k``/``hit@k`` of every item as a query (from the exact top-k neighbours)."""
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    neighbors, _ = get_neighbors(path, load_label, model, fingerprint, cache_dir, k)
    labels = row_labels(path, load_label, model, fingerprint, cache_dir, label_column)
    return precision_table(neighbors, labels, embeddings.ids, k)


@st.cache_data(max_entries=16, show_spinner=False)
def get_confused_pairs(
    path: str, load_label: str, model: str, fingerprint: str, cache_dir: str, label_column: str, k: int, top: int = 20
) -> pd.DataFrame:
    neighbors, _ = get_neighbors(path, load_label, model, fingerprint, cache_dir, k)
    labels = row_labels(path, load_label, model, fingerprint, cache_dir, label_column)
    return confused_pairs(neighbors, labels, top=top)


def get_confusion_examples(
    path: str,
    load_label: str,
    model: str,
    fingerprint: str,
    cache_dir: str,
    label_column: str,
    k: int,
    label_a: str,
    label_b: str,
    limit: int = 8,
) -> pd.DataFrame:
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    neighbors, sims = get_neighbors(path, load_label, model, fingerprint, cache_dir, k)
    labels = row_labels(path, load_label, model, fingerprint, cache_dir, label_column)
    return confusion_examples(neighbors, labels, embeddings.ids, label_a, label_b, sims=sims, limit=limit)


@st.cache_data(max_entries=32, show_spinner=False)
def sample_queries(
    path: str, load_label: str, fingerprint: str, label_column: str, n_categories: int, seed: int
) -> list[str]:
    """One random query from each of ``n_categories`` random labels (Compare page)."""
    catalog = get_catalog(path, load_label)
    return sample_queries_per_category(catalog.ids, catalog.labels(label_column).tolist(), n_categories, seed=seed)


@st.cache_data(max_entries=16, show_spinner=False)
def get_near_duplicates(
    path: str,
    load_label: str,
    model: str,
    fingerprint: str,
    cache_dir: str,
    threshold: float,
    label_column: str,
    max_pairs: int = 1000,
) -> NearDuplicates:
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    labels = row_labels(path, load_label, model, fingerprint, cache_dir, label_column)
    return near_duplicate_pairs(embeddings.vectors, embeddings.ids, threshold, labels=labels, max_pairs=max_pairs)


@st.cache_data(max_entries=32, show_spinner=False)
def get_compare_grid(
    path: str,
    load_label: str,
    fingerprint: str,
    cache_dir: str,
    models: tuple[str, ...],
    query_ids: tuple[str, ...],
    label_column: str,
    k: int,
    expand: int = 0,
) -> pd.DataFrame:
    """:func:`lens.analysis.compare_grid` over the cached embeddings of ``models``; ``expand`` > 0: re-ranked by
    alpha query expansion over that many neighbours."""
    catalog = get_catalog(path, load_label)
    labels = dict(zip(catalog.ids, catalog.labels(label_column).tolist()))
    sets = {}
    for model in models:
        embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
        sets[model] = (embeddings.vectors, embeddings.ids)
    return compare_grid(list(query_ids), sets, labels, k, expand=expand)


def projection_params(
    method: str, n_neighbors: int, min_dist: float, max_points: int | None, seed: int
) -> ProjectionParams:
    return ProjectionParams(
        method=method,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        max_points=max_points,
        seed=seed,  # type: ignore[arg-type]
    )


def projection_on_disk(
    path: str, load_label: str, model: str, fingerprint: str, cache_dir: str, params: ProjectionParams
) -> bool:
    """Whether the projection is already computed (in lens's disk cache)."""
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    return cached_projection(embeddings, params, cache_dir=cache_dir or None) is not None


@st.cache_data(max_entries=32, show_spinner=False)
def get_projection(
    path: str,
    load_label: str,
    model: str,
    fingerprint: str,
    cache_dir: str,
    method: str,
    n_neighbors: int,
    min_dist: float,
    max_points: int | None,
    seed: int,
) -> Projection:
    """2-D coordinates (disk-cached by lens.projection: computed once per embeddings and parameters)."""
    embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
    params = projection_params(method, n_neighbors, min_dist, max_points, seed)
    return project_embeddings(embeddings, params, cache_dir=cache_dir or None)


def sample_ids(ids: Sequence[str], n: int, seed: int) -> list[str]:
    """A seeded sample of ``n`` ids, in catalog order."""
    if n >= len(ids):
        return list(ids)
    rng = np.random.default_rng(seed)
    return [ids[i] for i in np.sort(rng.choice(len(ids), size=n, replace=False))]


def clear_caches() -> None:
    """Forget every cached table and resource (after files change on disk)."""
    st.cache_data.clear()
    st.cache_resource.clear()
    thumbnail.cache_clear()
    with _WARMED_LOCK:
        _WARMED.clear()
        _WARM_ENCODERS.clear()


def search(
    path: str,
    load_label: str,
    model: str,
    fingerprint: str,
    cache_dir: str,
    vector: np.ndarray,
    k: int,
    *,
    exclude: Sequence[str] = (),
    allowed: frozenset[str] | None = None,
    expand: int = 0,
) -> pd.DataFrame:
    """Top ``k`` catalog items for ``vector``: ``rank, id, similarity`` (cosine) then the catalog's columns.

    Uses the model's Annoy index when one is on disk or the catalog is large, else an exact in-memory index.
    ``expand`` > 0 re-ranks by alpha query expansion first (the query plus its ``expand`` nearest products,
    :func:`lens.search.expand_query`); the similarity shown is then to the expanded query.
    """
    from lens.search import expand_query, results_table, search_vector

    catalog = get_catalog(path, load_label)
    kind = index_kind(path, load_label, model, cache_dir, len(catalog))
    stamp = index_stamp(path, load_label, model, cache_dir) if kind == "annoy" else ""
    index = get_index(path, load_label, model, fingerprint, cache_dir, kind, stamp)
    if expand:
        embeddings = get_embeddings(path, load_label, model, fingerprint, cache_dir)
        vector = expand_query(
            index,
            vector,
            lambda ids: embeddings.vectors[[embeddings.position(i) for i in ids]],
            k=expand,
            exclude=exclude,
        )
    hits = search_vector(index, vector, k, exclude=exclude, allowed=allowed)  # type: ignore[arg-type]  # frozenset: only `in` is used
    return results_table(hits, catalog)
