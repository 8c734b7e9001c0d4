"""Projections: each model's embedding space in 2-D (UMAP), two models side by side, coloured by a metadata column;
select points (click, box or lasso) to see those products. A PCA preview shows while UMAP computes; coordinates are
cached on disk, so each map is computed once."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, components, hovermap, resources
from lens.errors import LensError

components.run_through_app()

SAMPLE_CHOICES = (500, 1000, 2000, 3000, 5000, 8000, 10000)

st.title("Projections")
ctx = components.require_context()
catalog = ctx.catalog

pick = st.columns(2)
with pick[0]:
    left_row = components.model_select(ctx, "Left model", key="proj_left")
with pick[1]:
    right_row = components.model_select(ctx, "Right model", key="proj_right", exclude=[left_row["name"]])

options = st.columns([2, 2, 2, 2])
colour_options = list(ctx.categorical) or [ctx.load_label]
default_colour = ctx.label_column if ctx.label_column in colour_options else colour_options[0]
colour_column = options[0].selectbox(
    "Colour by", colour_options, index=colour_options.index(default_colour), key="proj_colour"
)
sizes = [s for s in SAMPLE_CHOICES if s < len(catalog)] + [len(catalog)]
if len(sizes) > 1:
    max_points = options[1].select_slider(
        "Products per map",
        sizes,
        value=3000 if 3000 in sizes else sizes[-1],
        key="proj_points",
        format_func=lambda n: f"all {n:,}" if n == len(catalog) else f"{n:,}",
        help="Large catalogs are sampled (uniformly at random, seed 0): UMAP time grows with the number of points.",
    )
else:
    max_points = len(catalog)
    options[1].metric("Products per map", f"all {len(catalog):,}")
method = options[2].radio("Map", ("UMAP", "PCA"), horizontal=True, key="proj_method")
photos = options[3].toggle(
    "Photo on hover",
    value=True,
    key=hovermap.HOVER_KEY,
    help="Shows the hovered product's photo beside the pointer (the map is then drawn by a small component of this "
    "app that loads plotly.js from this server). Off: Streamlit's own chart, which shows the title only.",
)
with st.expander("UMAP settings"):
    n_neighbors = st.slider(
        "n_neighbors", 2, 100, 15, key="proj_neighbors", help="Clamped to the number of points − 1."
    )
    min_dist = st.slider("min_dist", 0.0, 0.99, 0.1, 0.01, key="proj_min_dist")

n_shown = min(max_points, len(catalog))
st.caption(
    f"Each map shows {n_shown:,} of {len(catalog):,} products"
    + (" (a uniform random sample, seed 0)" if n_shown < len(catalog) else "")
    + ". Hover a point for its "
    + ("photo and title" if photos else "title")
    + "; click, box- or lasso-select points on either map: the same products are ringed on both maps and listed "
    "once below, with where each model put them."
)

sides = []
for column, row, side in zip(st.columns(2, gap="large"), (left_row, right_row), ("left", "right")):
    with column:
        st.markdown(f"**{row['name']}**")
        if not components.require_available(row):
            continue
        embeddings = components.ensure_embeddings(ctx, row["name"], key=f"proj_{side}")
        if embeddings is None:
            continue
        sides.append({"side": side, "model": row["name"], "note": st.empty(), "chart": st.empty()})

limit = None if max_points >= len(catalog) else int(max_points)
umap_args = ("umap", int(n_neighbors), float(min_dist), limit, 0)
pca_args = ("pca", 15, 0.1, limit, 0)


def title_of(model: str, kind: str, projection) -> str:  # noqa: ANN001 - lens.projection.Projection
    return f"{kind} of {model} · {len(projection):,} points"


try:
    # Phase 1: a PCA preview (instant) wherever the UMAP map is not computed yet.
    pending = []
    for entry in sides:
        args = ctx.emb(entry["model"])
        if method == "UMAP" and not resources.projection_on_disk(*args, resources.projection_params(*umap_args)):
            pca = resources.get_projection(*args, *pca_args)
            frame = components.projection_frame(ctx, pca.ids, pca.coords, colour_column)
            entry["chart"].plotly_chart(
                charts.projection(frame, colour_column, title=title_of(entry["model"], "PCA preview", pca)),
                key=f"proj_pca_{entry['side']}",
            )
            entry["note"].info(f"PCA preview — computing the UMAP of {len(pca):,} points (about 10–60 s, once)…")
            pending.append(entry)
    # Phase 2: the maps themselves (UMAP from the disk cache, or computed now), linked: the points selected on
    # either map are ringed on both.
    # The hover maps and the st.plotly_chart maps keep their selections under different keys (different widgets).
    chart_keys = {entry["side"]: f"proj_{entry['side']}_{method}" + ("_hover" if photos else "") for entry in sides}
    linked = components.linked_selection(st.session_state, chart_keys)
    maps = {}
    fallback = ""
    for entry in sides:
        args = ctx.emb(entry["model"])
        chosen = umap_args if method == "UMAP" else pca_args
        projection = resources.get_projection(*args, *chosen)
        maps[entry["model"]] = projection
        frame = components.projection_frame(ctx, projection.ids, projection.coords, colour_column)
        title = title_of(entry["model"], method, projection)
        drawn = False
        if photos:
            figure = charts.projection(hovermap.with_thumbnails(frame), colour_column, title=title, highlight=linked)
            try:
                with entry["chart"]:
                    hovermap.hover_map(
                        figure,
                        cache_dir=ctx.cache_dir,
                        folder=hovermap.thumbnail_folder(ctx.fingerprint),
                        key=chart_keys[entry["side"]],
                        height=620,
                    )
                drawn = True
            except LensError as exc:  # the component cannot be served: Streamlit's chart, without the photos
                fallback = f"{exc} The maps are drawn without photos."
        if not drawn:
            entry["chart"].plotly_chart(
                charts.projection(frame, colour_column, title=title, highlight=linked),
                key=chart_keys[entry["side"]],
                on_select="rerun",
                selection_mode=("points", "box", "lasso"),
            )
        how = "from the cache" if projection.from_cache else f"computed in {projection.seconds:.1f} s"
        entry["note"].caption(
            f"{method} {how}"
            + (f", n_neighbors = {projection.params.get('n_neighbors_used')}" if method == "UMAP" else "")
        )
    if fallback:
        st.warning(fallback)
    if linked:
        head = st.columns([4, 1], vertical_alignment="bottom")
        head[0].markdown(
            f"**{len(linked)} selected**, ringed on both maps" + (" (showing 24)" if len(linked) > 24 else "")
        )
        head[1].button("Clear selection", key="proj_clear", on_click=components.clear_linked, args=(st.session_state,))
        components.product_grid(ctx, linked[:24], n_cols=8, caption_columns=[colour_column])
        placements = components.placement_table(ctx, linked, maps, colour_column)
        st.dataframe(placements, hide_index=True, key="proj_placements")
        components.download_csv(placements, "Selected products (CSV)", "lens-projection-selection.csv", key="proj_csv")
    elif sides:
        st.caption("No point selected.")
    if photos and not fallback and maps:
        # Last, so that nothing waits for it: the photos of the points drawn (written once per catalog).
        shown = tuple(dict.fromkeys(i for projection in maps.values() for i in projection.ids))
        hovermap.ensure_thumbnails(ctx.path, ctx.load_label, ctx.fingerprint, ctx.cache_dir, shown)
except LensError as exc:
    st.error(str(exc))
