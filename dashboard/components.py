"""Rendering helpers shared by the pages: the catalog context, model pickers, build buttons, result cards, image
strips and CSV exports. Errors from lens arrive here as ``LensError`` and leave as ``st.error``/``st.warning``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, config, query, report, resources
from lens.build import StepView, format_state
from lens.catalog import Catalog
from lens.embed import EmbeddingSet
from lens.errors import LensError
from lens.jobs import JobRunningError, format_duration
from lens.probe import CategoryProbe, Prediction
from lens.store import csv_safe, resolve_cache_dir

LABEL_KEY = "label_column"
"""Session key of the sidebar's label-column select (shared by Compare, Metrics, Failures and Projections)."""


@dataclass(frozen=True, eq=False)
class Context:
    """The catalog every page works on, with what the pages need to call the cached loaders."""

    path: str
    cache_dir: str
    catalog: Catalog
    load_label: str
    fingerprint: str
    label_column: str
    categorical: tuple[str, ...]
    title_column: str | None
    warning: str | None = None

    def emb(self, model: str) -> tuple[str, str, str, str, str]:
        """Arguments of the per-model loaders: ``(path, load_label, model, fingerprint, cache_dir)``."""
        return (self.path, self.load_label, model, self.fingerprint, self.cache_dir)

    def title(self, item_id: str) -> str:
        if self.title_column:
            return resources.titles(self.path, self.load_label, self.fingerprint, self.title_column).get(
                str(item_id), str(item_id)
            )
        return str(item_id)

    def thumb(self, item_id: str, px: int = config.THUMBNAIL_PX) -> bytes:
        path = self.catalog.image_path(self.catalog.index_of(item_id))
        return resources.thumbnail(str(path), self.fingerprint, px)


APP_SCRIPT = Path(__file__).resolve().parents[1] / "app.py"

_APP_RUN = threading.local()  # .active: this script run is inside app.py's navigation (script runs are per thread)


@contextlib.contextmanager
def inside_app() -> Iterator[None]:
    """Mark the page that app.py runs as running inside app.py (app.py wraps ``navigation.run()`` in it)."""
    previous = getattr(_APP_RUN, "active", False)
    _APP_RUN.active = True
    try:
        yield
    finally:
        _APP_RUN.active = previous


def run_through_app() -> None:
    """Make sure a page runs inside app.py (its ``st.navigation``, layout and sidebar); call it first on every page.

    ``st.navigation`` alone cannot serve these pages, because their folder is named ``pages/``. Streamlit (1.67)
    decides when it starts (``PagesManager.__init__``) that an entry script with a ``pages/`` folder beside it is a
    legacy v1 multipage app; each script run then builds a navigation from that folder and runs the page named by the
    URL *without* the entry script (``script_runner._mpa_v1``), until the first public ``st.navigation`` call switches
    v1 off for the whole process. So on a fresh server, a session that first opens ``/search`` runs
    ``pages/search.py`` alone (narrow layout, no sidebar, the folder's file names as navigation), and AppTest resets
    that switch before every run, so every AppTest run of a page starts that way. When a page finds itself outside
    app.py, it runs app.py here, in this same run (a rerun would drop a button click): app.py's ``st.navigation``
    switches v1 off and runs this page again, properly; then this outer run stops. Renaming the folder (anything but
    ``pages/``) would let ``st.navigation`` alone serve the pages and this function go.
    """
    if getattr(_APP_RUN, "active", False):
        return
    code = compile(APP_SCRIPT.read_text(encoding="utf-8"), str(APP_SCRIPT), "exec")
    exec(code, {"__name__": "__main__", "__file__": str(APP_SCRIPT)})  # noqa: S102 - our own entry script
    st.stop()


def load_context() -> Context:
    """The current catalog context (raises ``LensError`` when there is no usable catalog)."""
    path = resources.default_catalog()
    catalog, load_label, warning = resources.load_dashboard_catalog(path, config.label_column())
    fingerprint = catalog.fingerprint()
    roles = resources.catalog_columns(path, load_label, fingerprint)
    categorical = tuple(roles["categorical"])
    default_label = load_label if load_label != "id" else (categorical[0] if categorical else "id")
    label = st.session_state.get(LABEL_KEY) or default_label
    return Context(
        path=path,
        cache_dir=str(resolve_cache_dir(None)),
        catalog=catalog,
        load_label=load_label,
        fingerprint=fingerprint,
        label_column=str(label),
        categorical=categorical,
        title_column=roles["title"],
        warning=warning,
    )


def require_context() -> Context:
    """The context, or an ``st.error`` saying how to point lens at a catalog, and the page stops."""
    try:
        ctx = load_context()
    except LensError as exc:
        st.error(str(exc))
        st.stop()
    if ctx.warning:
        st.warning(ctx.warning)
    return ctx


def require_label(ctx: Context) -> str:
    """The label column, or an ``st.error`` when the catalog lacks it (the page stops)."""
    if ctx.label_column not in ctx.catalog.columns:
        options = ", ".join(ctx.categorical) or "(none)"
        st.error(
            f"Catalog '{ctx.catalog.name}' has no column '{ctx.label_column}'. Pick a label column in the sidebar "
            f"(one of: {options})."
        )
        st.stop()
    return ctx.label_column


def sidebar() -> None:
    """Catalog summary and the label-column select, on every page (called by app.py)."""
    try:
        ctx = load_context()
    except LensError:
        st.sidebar.caption("No catalog loaded.")
        return
    options = list(ctx.categorical)
    if ctx.load_label != "id" and ctx.load_label not in options:
        options.insert(0, ctx.load_label)
    if not options:
        options = [ctx.load_label]
    default = ctx.load_label if ctx.load_label in options else options[0]
    build_watch(ctx)
    with st.sidebar:
        st.caption(f"Catalog **{ctx.catalog.name}** · {len(ctx.catalog):,} items")
        st.selectbox(
            "Label column",
            options,
            index=options.index(default),
            key=LABEL_KEY,
            help="Two products are a correct match when they share this column's value (Compare, Metrics, "
            "Failures), and Projections colour by it first.",
        )


# --------------------------------------------------------------------------------------------------------------
# Models


def _format_model(row: dict[str, Any]) -> str:
    tags = []
    if row["text"]:
        tags.append("image + text")
    if not row["available"]:
        tags.append("weights missing")
    return f"{row['name']} ({', '.join(tags)})" if tags else row["name"]


def model_states(ctx: Context) -> pd.DataFrame:
    """Every encoder with its state for this catalog (weights, embeddings, index); refreshed when a model is
    published (the models stamp is part of the cached loader's key)."""
    return resources.model_states(
        ctx.path,
        ctx.load_label,
        ctx.fingerprint,
        ctx.cache_dir,
        config.show_test_encoders(),
        resources.models_stamp(ctx.cache_dir),
    )


def cached_models(ctx: Context) -> list[str]:
    states = model_states(ctx)
    if states.empty:
        return []
    return states.loc[(states["embeddings"] == "cached") & (states["weights"] == "available"), "encoder"].tolist()


def model_select(ctx: Context, label: str, key: str, *, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """A select box over every registered encoder (unavailable ones marked); returns the chosen encoder's row."""
    rows = resources.encoders()
    if not rows:
        st.error("No encoder is registered; reinstall lens (`./run.sh setup`).")
        st.stop()
    by_name = {r["name"]: r for r in rows}
    names = sorted(by_name, key=lambda n: not by_name[n]["available"])  # usable ones first, registry order kept
    usable = [n for n in names if by_name[n]["available"]]
    warning = config.default_model_warning(list(by_name), usable)
    if warning:
        st.warning(warning)
    cached = cached_models(ctx)
    if large_catalog(ctx):  # only ready models: embedding this catalog in a page would block it for minutes
        waiting = [n for n in usable if n not in cached]
        names = usable = [n for n in usable if n in cached]
        building_note(ctx, waiting)
        if not names:
            st.info(
                f"No model is ready for catalog '{ctx.catalog.name}' yet: the background build is making them "
                "(progress on the Overview page). This page refreshes when the first one is published."
            )
            st.stop()
    default = (
        config.pick_default_model([n for n in usable if n not in exclude], cached)
        or config.pick_default_model(usable, cached)
        or names[0]
    )
    name = st.selectbox(
        label, names, index=names.index(default), key=key, format_func=lambda n: _format_model(by_name[n])
    )
    return by_name[name]


def models_multiselect(ctx: Context, label: str, key: str, *, max_default: int = 3) -> list[str]:
    """A multiselect over the available encoders (defaults: cached ones); unavailable ones listed below, greyed."""
    rows = resources.encoders()
    available = [r["name"] for r in rows if r["available"]]
    warning = config.default_model_warning([r["name"] for r in rows], available)
    if warning:
        st.warning(warning)
    cached = [m for m in cached_models(ctx) if m in available]
    if large_catalog(ctx):  # only ready models (see model_select)
        building_note(ctx, [m for m in available if m not in cached])
        available = cached
    first = config.pick_default_model(available, cached)
    default = cached[:max_default] if cached else ([first] if first else [])
    if first and first in available and first not in default:
        default = [first, *default][:max_default]
    chosen = st.multiselect(label, available, default=default, key=key)
    missing = [r for r in rows if not r["available"]]
    if missing:
        with st.expander(f"{len(missing)} more model(s) unavailable here: weights missing"):
            for r in missing:
                st.caption(f"~~{r['name']}~~ — {escape_md(r['remedy'])}")
    return chosen


def require_choice(chosen: object, message: str) -> None:
    """``st.info(message)`` and the page stops when nothing is ``chosen`` (an empty multiselect, no query yet)."""
    if not chosen:
        st.info(message)
        st.stop()


def require_available(row: dict[str, Any]) -> bool:
    """``st.error`` with the remedy when the encoder's weights are missing; ``True`` when it can run."""
    if row["available"]:
        return True
    st.error(
        f"Model '{row['name']}' cannot run on this machine: its weights are missing. To use it, "
        f"{row['remedy']}. Meanwhile pick another model."
    )
    return False


def build_models(ctx: Context, models: Sequence[str], *, index: bool = True) -> bool:
    """Embed the catalog with each model (``st.progress`` per model) and build its Annoy index; ``False`` on error."""
    for model in models:
        bar = st.progress(0.0, text=f"{model}: loading the model…")

        def update(done: int, total: int, bar: Any = bar, model: str = model) -> None:
            bar.progress(min(1.0, done / max(1, total)), text=f"Embedding with {model}: {done:,} / {total:,} images")

        try:
            resources.build_model(ctx.path, ctx.load_label, model, ctx.cache_dir, progress=update)
            if index:
                with st.spinner(f"Building the Annoy index of {model}…"):
                    resources.build_annoy(*ctx.emb(model))
        except LensError as exc:
            bar.empty()
            st.error(f"{model}: {exc}")
            return False
        bar.empty()
    return True


def ensure_embeddings(ctx: Context, model: str, *, key: str) -> EmbeddingSet | None:
    """``model``'s embeddings of the catalog; small catalogs are embedded on the spot (with a progress bar), big
    ones ask first. Errors (missing weights, unreadable cache) become ``st.error`` and ``None``."""
    try:
        cached = resources.embeddings_cached(ctx.path, ctx.load_label, model, ctx.cache_dir)
    except LensError as exc:
        st.error(f"{model}: {exc}")
        return None
    if not cached:
        if large_catalog(ctx):  # never embed 8,000 photos inside a page: the background build does it
            state = model_build_state(ctx, model)
            st.info(
                f"**{model}** is not ready for catalog '{ctx.catalog.name}' yet ({state}). The background build makes "
                "it (Overview page, or `python -m lens build`); this page refreshes when it is published."
            )
            return None
        if not build_models(ctx, [model], index=False):
            return None
    try:
        return resources.get_embeddings(*ctx.emb(model))
    except LensError as exc:
        st.error(f"{model}: {exc}")
        return None


def large_catalog(ctx: Context) -> bool:
    """Whether the catalog is above ``LENS_AUTO_BUILD_ITEMS``: its models come from the background build only."""
    return len(ctx.catalog) > config.auto_build_items()


def build_info(ctx: Context, extra: Sequence[str] = ()) -> dict[str, Any]:
    """:func:`resources.build_views` of the context's catalog: the plan's models, ``LENS_DEFAULT_MODEL`` when the
    plan lacks it (e.g. ``tiny``), then ``extra``."""
    default = config.default_model_env()
    return resources.build_views(
        ctx.path,
        ctx.load_label,
        ctx.fingerprint,
        ctx.cache_dir,
        tuple(dict.fromkeys([*([default] if default else []), *extra])),
    )


def model_build_state(ctx: Context, model: str) -> str:
    """``building 40 % (ETA 1m20s)``, ``queued``, ``failed: why``... of one model; ``not built`` outside the plan."""
    view = next((v for v in build_info(ctx, [model])["views"] if v.name == model), None)
    if view is None or (view.state == "queued" and build_info(ctx)["runner"] is None):
        return "not built yet"
    return format_state(view)


def building_note(ctx: Context, waiting: Sequence[str]) -> None:
    """A caption listing the models that are not ready yet, with their build state."""
    if waiting:
        states = [f"{name} ({model_build_state(ctx, name)})" for name in waiting]
        st.caption(escape_md("Not ready yet: " + "; ".join(states)))


def build_watch(ctx: Context) -> None:
    """In the sidebar, while a background build runs: its progress in one line, and a rerun of the page whenever a
    model is published (so every picker lists it) or the build ends."""
    running = build_info(ctx)["runner"] is not None

    # Polls slowly when no build runs, so a build started elsewhere (CLI, another tab) is picked up too.
    @st.fragment(run_every=config.BUILD_REFRESH_S if running else config.BUILD_IDLE_REFRESH_S)
    def watch() -> None:
        info = build_info(ctx)
        stamp = resources.models_stamp(ctx.cache_dir)
        seen = st.session_state.setdefault("build_stamp", stamp)
        if stamp != seen or running != (info["runner"] is not None):
            st.session_state["build_stamp"] = stamp
            st.rerun()
        if info["runner"] is not None:
            views: list[StepView] = info["views"]
            ready = sum(v.state == "ready" for v in views)
            now = next((v for v in views if v.state == "building"), None)
            st.caption(
                escape_md(f"Building models: {ready}/{len(views)} ready")
                + (f" · {escape_md(now.name)} {escape_md(format_state(now).removeprefix('building '))}" if now else "")
            )

    with st.sidebar:
        watch()


def ray_toggle(key: str) -> bool:
    """The "Embed on Ray Data" toggle, off by default, shown only where Ray is installed (else ``False``)."""
    if not resources.ray_available():
        return False
    return st.toggle(
        "Embed on Ray Data",
        value=False,
        key=key,
        help=f"Embed the catalog on Ray Data ({resources.RAY_WORKERS} encoder actors on this machine) instead of "
        "this process's threads: the same vectors, in the same cache. On a laptop the local path is as fast or "
        "faster (docs/scale.md); the status shows which path embedded each model.",
    )


def build_panel(ctx: Context, extra: Sequence[str] = ()) -> None:
    """The Overview's build section: the state of every model of the plan (and ``extra`` encoders), a button that
    starts the background build of what is missing, one that stops it, and the log; refreshes on its own while the
    build runs (``st.fragment(run_every=...)``)."""
    info = build_info(ctx, extra)
    running = info["runner"] is not None
    message = st.session_state.pop("build_message", None)
    if message:
        st.success(message)
    views: list[StepView] = info["views"]
    todo = [v.name for v in views if v.state not in ("ready", "missing")]
    kinds = {v.name: v.kind for v in views}
    if todo:
        cols = st.columns([3, 1.3, 1], vertical_alignment="bottom")
        chosen = cols[0].multiselect(
            "Models to build",
            todo,
            default=todo,  # the plan's models (and LENS_DEFAULT_MODEL) that are not ready
            key="overview_build_models",
            help="Pretrained models: embeddings + index (about 4 minutes each for 8,000 photos on 2 CPU cores); "
            "trained models: training with the recipe's defaults, then embeddings + index. Finished ones are reused.",
        )
        on_ray = ray_toggle("overview_build_ray")
        if cols[1].button(
            "Build missing models", key="overview_build", type="primary", disabled=not chosen, icon=":material/build:"
        ):
            models = ",".join(n for n in chosen if kinds.get(n) == "encoder") or "none"
            recipes = ",".join(n for n in chosen if kinds.get(n) == "recipe") or "none"
            try:
                pid = resources.start_build(
                    ctx.path, ctx.load_label, ctx.cache_dir, models=models, recipes=recipes, on_ray=on_ray
                )
            except JobRunningError as exc:
                st.warning(str(exc))
            except LensError as exc:
                st.error(str(exc))
            else:
                st.session_state["build_message"] = (
                    f"Build started in the background (pid {pid}): {', '.join(chosen)}. It goes on if you close "
                    "this tab; each model appears in the pickers when it is ready."
                )
                st.rerun()
        if cols[2].button("Stop the build", key="overview_stop", disabled=not running, icon=":material/stop:"):
            pid = resources.stop_build(ctx.cache_dir)
            st.session_state["build_message"] = (
                f"Asked the build (pid {pid}) to stop after its current batch; the next build resumes it."
                if pid
                else "No build is running."
            )
            st.rerun()
    elif views:
        st.success("Every model of the build plan that can run here is ready for this catalog.")

    @st.fragment(run_every=config.BUILD_REFRESH_S if running else config.BUILD_IDLE_REFRESH_S)
    def progress() -> None:
        info = build_info(ctx, extra)
        if running != (info["runner"] is not None):
            st.rerun()  # the build ended or started: redraw the page (buttons, tables, pickers) at the right pace
        status, views = info["status"], info["views"]
        st.dataframe(
            pd.DataFrame(
                {
                    "model": [v.name for v in views],
                    "kind": ["pretrained" if v.kind == "encoder" else "trained on the catalog" for v in views],
                    "state": [format_state(v) for v in views],
                    "progress": [
                        1.0 if v.state == "ready" else (v.percent or 0.0) / 100 if v.state == "building" else 0.0
                        for v in views
                    ],
                    "ETA": [format_duration(v.eta_s) if v.state == "building" else "" for v in views],
                }
            ),
            hide_index=True,
            height=36 * (len(views) + 1) + 3,  # every model visible without scrolling
            key="overview_build_table",
            column_config={
                "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
                "state": st.column_config.TextColumn("state", width="large"),
            },
        )
        if status:
            runner = info["runner"] or {}
            st.caption(
                escape_md(
                    f"Build {status.get('state')} · started {status.get('started', '?')}"
                    + (f" · pid {runner.get('pid')}" if runner else "")
                    + (f" · {status['message']}" if status.get("message") else "")
                )
            )
        with st.expander("Build log"):
            st.code(info["log"] or "(no build has run on this cache yet)", language=None)

    progress()


def predicted_category(ctx: Context, model: str, vector: np.ndarray) -> tuple[Prediction, CategoryProbe] | None:
    """The predicted label of a query vector from ``model``'s category probe; ``None`` (with a caption saying why)
    when the catalog's labels cannot train one."""
    try:
        probe = resources.get_probe(*ctx.emb(model), ctx.label_column)
        return probe.predict(vector), probe
    except LensError as exc:
        st.caption(f"No predicted {ctx.label_column}: {exc}")
        return None


def prediction_line(label_column: str, prediction: Prediction, probe: CategoryProbe, model: str) -> str:
    """Markdown: the predicted label with its confidence, the runners-up, and how often the probe is right."""
    others = ", ".join(f"{escape_md(label)} {p:.0%}" for label, p in prediction.top[1:] if p >= 0.01)
    accuracy = (
        "" if np.isnan(probe.accuracy) else f"; right on {probe.accuracy:.0%} of {probe.n_holdout:,} held-out products"
    )
    return (
        f"Predicted {escape_md(label_column)}: **{escape_md(prediction.label)}** ({prediction.confidence:.0%})"
        + (f" · then {others}" if others else "")
        + f"  \n:gray[a linear probe on {escape_md(model)}'s vectors{accuracy}]"
    )


MAP_EXPLAINER = (
    "How to read it: the cosine similarity of the two photos is a sum over the regions of each photo (the model's "
    "last feature map, averaged into its vector). Bright regions add most to the similarity: their features point "
    "the way the other photo's whole vector points. Uncoloured regions add little or take away. Maps exist for the CNN "
    "encoders whose vector is that average (mobilenet-v2, efficientnet-lite0/2, resnet-50, efficientnet-b0/b4), not "
    "for transformers (ViT, CLIP, DINOv2) or trained heads."
)


def why_similar(ctx: Context, model: str, image: Any, image_key: str, results: pd.DataFrame) -> None:
    """The Search page's similarity map: the query and a chosen result, each overlaid with where their similarity
    comes from (on demand: a toggle). Whether ``model`` gives maps is asked only then: it loads the model (and
    torch), which a catalog-product search otherwise never needs."""
    ids = results["id"].astype(str).tolist()
    ranks = dict(zip(ids, results["rank"].tolist()))
    columns = st.columns([3, 1], vertical_alignment="bottom")
    chosen = columns[0].selectbox(
        "Result", ids, key="search_why_pick", format_func=lambda i: f"#{ranks[i]} · {i} — {ctx.title(i)}"[:90]
    )
    if not columns[1].toggle("Show the map", key="search_why_show") or chosen is None:
        st.caption(MAP_EXPLAINER)
        return
    reason = resources.map_support(model)
    if reason is not None:
        st.info(f"No similarity map for {model}: {reason}.  \n{MAP_EXPLAINER}")
        return
    path = str(ctx.catalog.image_path(ctx.catalog.index_of(chosen)))
    try:
        cosine, query_png, result_png = resources.similarity_overlays(model, image_key, image, path)
    except LensError as exc:
        st.error(str(exc))
        return
    left, right = st.columns(2)
    left.image(query_png, caption="Query: the regions that match the result", width="stretch")
    right.image(result_png, caption=f"Result #{ranks[chosen]}: the regions that match the query", width="stretch")
    st.caption(f"Cosine similarity {cosine:.3f} under {model}. {MAP_EXPLAINER}")


def query_encoders(ctx: Context, model: str, embeddings: EmbeddingSet) -> query.QueryEncoders:
    """The cached loaders that turn a Search query's parts into ``model``'s vectors (see ``query.build_query``)."""
    catalog = ctx.catalog
    return query.QueryEncoders(
        product_vector=lambda item_id: embeddings.vectors[embeddings.position(item_id)],
        product_image=lambda item_id: resources.load_image(str(catalog.image_path(catalog.index_of(item_id)))),
        image_vector=lambda key, image: resources.image_query_vector(model, key, image),
        text_vector=lambda text: resources.text_query_vector(model, text),
    )


# --------------------------------------------------------------------------------------------------------------
# Rendering

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|:~$])")


def escape_md(text: str) -> str:
    """Text shown literally inside Streamlit markdown (no emphasis, links, emoji shortcodes or LaTeX)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def similarity_badge(score: float) -> str:
    """Markdown badge of a cosine similarity as a percentage: green >= 70, amber 40-69, red < 40."""
    percent = int(round(float(score) * 100))
    return f":{config.similarity_color(percent)}-badge[{percent} %]"


def meta_line(row: pd.Series | dict[str, Any], columns: Sequence[str]) -> str:
    values = [str(row.get(c, "")).strip() for c in columns]
    return " · ".join(v for v in values if v)


def result_cards(ctx: Context, results: pd.DataFrame, *, meta_columns: Sequence[str], n_cols: int = 5) -> None:
    """Search results as a grid of cards: thumbnail, similarity badge and rank, title, metadata."""
    records = results.to_dict("records")
    for start in range(0, len(records), n_cols):
        columns = st.columns(n_cols)
        for column, row in zip(columns, records[start : start + n_cols]):
            with column.container(border=True):
                st.image(ctx.thumb(row["id"]), width="stretch")
                st.markdown(f"{similarity_badge(row['similarity'])} &nbsp; #{int(row['rank'])} · `{row['id']}`")
                st.markdown(f"**{escape_md(ctx.title(row['id']))}**")
                meta = meta_line(row, meta_columns)
                if meta:
                    st.caption(escape_md(meta))


def strip_width(n_images: int, room_px: int) -> int:
    """Thumbnail width that fits ``n_images`` in a row of ``room_px`` pixels (between 48 and 96 px)."""
    return int(max(48, min(96, room_px // max(1, n_images) - 12)))


def image_strip(ctx: Context, ids: Sequence[str], captions: Sequence[str], *, width: int = 84) -> None:
    """A row of thumbnails with captions (Compare and Failures cells)."""
    if ids:
        st.image([ctx.thumb(i) for i in ids], caption=list(captions), width=width)


def result_captions(results: pd.DataFrame) -> list[str]:
    """Captions of one query's results: ✓ (same label as the query) or ✗, the result's label, its similarity in %.

    Args:
        results: rows of :func:`lens.analysis.compare_grid` for one query (and model): ``correct``,
            ``result_label`` and ``similarity`` (cosine).
    """
    return [
        f"{'✓' if ok else '✗'} {result_label[:14]} {100 * sim:.0f}%"
        for ok, result_label, sim in zip(results["correct"], results["result_label"], results["similarity"])
    ]


def result_strip(ctx: Context, results: pd.DataFrame, *, width: int) -> None:
    """One query's results as a row of thumbnails captioned by :func:`result_captions` (Compare and Failures)."""
    image_strip(ctx, results["result_id"].tolist(), result_captions(results), width=width)


def query_tile(ctx: Context, query_id: str, label: str, *, width: int) -> None:
    """A query product: its thumbnail, then its ``label`` value and id (the first cell of a Compare or Failures row)."""
    st.image(ctx.thumb(query_id), width=width)
    st.caption(escape_md(f"{ctx.catalog.row(query_id).get(label, '')} · {query_id}"))


def product_grid(ctx: Context, ids: Sequence[str], *, n_cols: int = 6, caption_columns: Sequence[str] = ()) -> None:
    """Catalog products as a grid of thumbnails with title and metadata."""
    for start in range(0, len(ids), n_cols):
        columns = st.columns(n_cols)
        for column, item_id in zip(columns, ids[start : start + n_cols]):
            with column:
                row = ctx.catalog.row(item_id)
                st.image(ctx.thumb(item_id), width="stretch")
                meta = meta_line(row, caption_columns)
                st.caption(escape_md(f"{ctx.title(item_id)} — {meta}" if meta else ctx.title(item_id)))


def download_csv(table: pd.DataFrame, label: str, file_name: str, *, key: str) -> None:
    """A download button for ``table`` as UTF-8 CSV (no index column); downloading does not rerun the page."""
    st.download_button(
        label,
        csv_safe(table).to_csv(index=False).encode("utf-8"),
        file_name=file_name,
        mime="text/csv",
        key=key,
        on_click="ignore",
        icon=":material/download:",
        disabled=table.empty,
    )


def download_html(build: Callable[[], str], label: str, file_name: str, *, key: str) -> None:
    """A download button for an HTML report, built only when the button is clicked (``build() -> html``)."""
    st.download_button(
        label,
        lambda: build().encode("utf-8"),
        file_name=file_name,
        mime="text/html",
        key=key,
        on_click="ignore",
        icon=":material/description:",
    )


def compare_report(
    ctx: Context, grid: pd.DataFrame, models: Sequence[str], k: int, label: str, *, expand: int = 0
) -> str:
    """The Compare page as one HTML file: mean P@k per model and the grid with thumbnails.

    ``expand`` is the re-ranking the page used (alpha query expansion over that many neighbours; 0 = off): the report
    says so, since re-ranked and plain results differ.
    """
    summary = resources.compare_summary(grid)
    means = summary.groupby("model", sort=False)["precision_at_k"].agg(["mean", "count"]).reset_index()
    means.columns = ["model", f"mean P@{k}", "queries"]
    n_queries = grid["query_id"].nunique()
    ranking = (
        f"Re-ranked: alpha query expansion over the top {expand} neighbours of each query."
        if expand
        else "Not re-ranked: plain cosine nearest neighbours."
    )
    return report.render(
        f"lens · {n_queries} queries × {len(models)} models, top {k}" + (", re-ranked" if expand else ""),
        [
            report.Section(
                f"Mean P@{k}",
                report.table_html(means),
                note=f"Relevant = same {label} as the query; each query is searched against the rest of the catalog. "
                + ranking,
            ),
            report.Section(
                "Results per query",
                report.grid_html(grid, models, thumbnail=lambda i: ctx.thumb(i), title=ctx.title),
                note="Green border: same label as the query; red: another label. Under each result: rank · cosine.",
            ),
        ],
        subtitle=f"catalog {ctx.catalog.name} · {len(ctx.catalog):,} products · label column {label}",
    )


def metrics_report(
    ctx: Context, summary: pd.DataFrame, figure: Any, per_category: pd.DataFrame, label: str, note: str
) -> str:
    """The Metrics page as one HTML file: the summary table, its chart and the per-category table."""
    return report.render(
        f"lens · retrieval metrics by {label}",
        [
            report.Section("Summary", report.table_html(summary), note=note),
            report.Section("Chart", report.figure_html(figure, first=True)),
            report.Section(f"Per {label}", report.table_html(per_category)),
        ],
        subtitle=f"catalog {ctx.catalog.name} · {len(ctx.catalog):,} products",
    )


def pct(value: float) -> str:
    return "—" if pd.isna(value) else f"{100 * float(value):.0f} %"


# --------------------------------------------------------------------------------------------------------------
# Projections

MAX_COLOURS = 12
"""Colour the 12 most frequent values; the rest share one grey "other" (a legend of 140 categories helps no one)."""


LINKED_KEY = "proj_linked"
"""Session key of the Projections page's linked selection: ``{"ids": [...], "seen": {side: [...]}}``."""


def linked_selection(state: MutableMapping[str, Any], chart_keys: Mapping[str, str]) -> list[str]:
    """The products selected on either of two linked maps: the latest new, non-empty selection of any chart.

    Each chart's selection lives in ``state[chart key]``: ``st.plotly_chart``'s event state, or the hover map's
    value (:mod:`dashboard.hovermap`: the same shape plus a ``seq`` that changes with every selection made). A chart
    is redrawn with new highlights whenever the linked selection changes, and a redrawn ``st.plotly_chart`` starts
    with an empty selection, so an empty selection does not clear the linked one (the page's "Clear selection"
    button does, :func:`clear_linked`). The hover map keeps its last value across reruns instead; its ``seq`` tells a
    new selection of the same points (after "Clear selection") from the old one.

    Args:
        state: ``st.session_state`` (or a dict in tests).
        chart_keys: ``{side: the chart's widget key}``.
    """
    memo = state.get(LINKED_KEY) or {}
    ids = list(memo.get("ids", []))
    seen = dict(memo.get("seen", {}))
    for side, key in chart_keys.items():
        event = state.get(key)
        current = charts.selected_ids(event) if event is not None else []
        seq = event.get("seq") if isinstance(event, dict) else None
        token = current if seq is None else [f"seq:{seq}", *current]
        if current and token != seen.get(side):
            ids = current
        seen[side] = token
    state[LINKED_KEY] = {"ids": ids, "seen": seen}
    return ids


def clear_linked(state: MutableMapping[str, Any]) -> None:
    memo = state.get(LINKED_KEY) or {}
    state[LINKED_KEY] = {"ids": [], "seen": memo.get("seen", {})}


def placement_table(ctx: Context, ids: Sequence[str], maps: Mapping[str, Any], colour_column: str) -> pd.DataFrame:
    """Where each model put each selected product: ``id, title, <colour column>``, then ``<model> x`` and
    ``<model> y`` per map (``maps``: ``{model: Projection}``; empty cells where a map does not hold the product)."""
    table = pd.DataFrame(
        {
            "id": list(ids),
            "title": [ctx.title(i) for i in ids],
            colour_column: ctx.catalog.labels(colour_column, ids=ids),
        }
    )
    for model, projection in maps.items():
        position = {item: row for row, item in enumerate(projection.ids)}
        rows = [position.get(i) for i in ids]
        for axis, name in enumerate(("x", "y")):
            table[f"{model} {name}"] = [
                None if r is None else round(float(projection.coords[r, axis]), 3) for r in rows
            ]
    return table


def projection_frame(ctx: Context, ids: Sequence[str], coords: Any, colour_column: str) -> pd.DataFrame:
    """Plot data of a projection: ``x, y, id, title, colour`` and the colour column's raw value."""
    raw = ctx.catalog.labels(colour_column, ids=ids)
    top = pd.Series(raw).value_counts().index[:MAX_COLOURS]
    colour = [v if v in set(top) else "other" for v in raw]
    return pd.DataFrame(
        {
            "x": coords[:, 0],
            "y": coords[:, 1],
            "id": list(ids),
            "title": [ctx.title(i) for i in ids],
            colour_column: raw,
            "colour": colour,
        }
    )
