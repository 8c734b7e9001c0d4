"""Compare (data scientists): the same queries under several models side by side — a row per query, a column per
model, the top-k results marked correct (same label as the query) or not, P@k per cell; CSV of every result."""

from __future__ import annotations

import streamlit as st

from dashboard import components, config, query, resources

components.run_through_app()

st.title("Compare models")
st.caption(
    "Each query is a catalog product; its results come from the rest of the catalog. ✓ = the result has the "
    "query's label (sidebar: label column), ✗ = it does not."
)
ctx = components.require_context()
label = components.require_label(ctx)
catalog = ctx.catalog

models = components.models_multiselect(ctx, "Models", key="compare_models")
controls = st.columns([1, 2, 2], gap="medium")
with controls[0]:
    k = st.slider("Results per query (k)", 1, 20, 5, key="compare_k")
    rerank = st.toggle(
        "Re-rank (query expansion)",
        key="compare_rerank",
        help=f"Each query re-ranked by alpha query expansion over its {query.EXPAND_NEIGHBOURS} nearest products, "
        "as the Search page's toggle does; the Metrics page scores it over the whole catalog.",
    )
with controls[1]:
    how = st.radio("Queries", ("Random, one per category", "Pick products"), horizontal=True, key="compare_how")
with controls[2]:
    if how == "Random, one per category":
        n_labels = int(catalog.table[label].astype(str).nunique())
        sub = st.columns([3, 2], vertical_alignment="bottom")
        n_categories = sub[0].slider("Categories", 1, max(2, min(24, n_labels)), min(6, n_labels), key="compare_n")
        if sub[1].button("Shuffle", key="compare_resample", icon=":material/shuffle:"):
            st.session_state["compare_seed"] = st.session_state.get("compare_seed", 0) + 1
        seed = st.session_state.get("compare_seed", 0)
        query_ids = resources.sample_queries(ctx.path, ctx.load_label, ctx.fingerprint, label, n_categories, seed)
    else:
        needle = st.text_input("Find products (name or id)", key="compare_find")
        matches = query.find_products(catalog.table, needle, title_column=ctx.title_column, limit=100)
        picked_before = [i for i in st.session_state.get("compare_picked", []) if i in set(catalog.ids)]
        options = list(dict.fromkeys(picked_before + matches))
        query_ids = st.multiselect(
            "Query products", options, key="compare_picked", format_func=lambda i: f"{i} — {ctx.title(i)}"[:80]
        )

components.require_choice(models, "Pick at least one model above.")
components.require_choice(query_ids, "Pick at least one query product (or choose random queries).")

ready = [m for m in models if components.ensure_embeddings(ctx, m, key="compare") is not None]
if not ready:
    st.stop()
expand = query.EXPAND_NEIGHBOURS if rerank else 0
grid = resources.get_compare_grid(
    ctx.path,
    ctx.load_label,
    ctx.fingerprint,
    ctx.cache_dir,
    tuple(ready),
    tuple(query_ids),
    label,
    k,
    expand,
)
summary = resources.compare_summary(grid)

st.subheader(f"{len(query_ids)} queries × {len(ready)} models, top {k}" + (", re-ranked" if rerank else ""))
means = summary.groupby("model", sort=False)["precision_at_k"].mean()
for column, model in zip(st.columns(max(1, len(ready))), ready):
    column.metric(f"{model}: mean P@{k}", f"{means.get(model, float('nan')):.2f}")

cells = dict(list(grid.groupby(["query_id", "model"], sort=False)))  # {(query_id, model): its rows}
strip = components.strip_width(k, 1000 // max(1, len(ready)) - 20)
widths = [1] + [3] * len(ready)
head = st.columns(widths)
head[0].markdown("**Query**")
for column, model in zip(head[1:], ready):
    column.markdown(f"**{model}**")
for query_id in query_ids:
    st.divider()
    row = st.columns(widths)
    with row[0]:
        components.query_tile(ctx, query_id, label, width=110)
    for column, model in zip(row[1:], ready):
        with column:
            cell = cells.get((query_id, model))
            if cell is None:
                st.caption("no vector for this query (its image could not be read)")
                continue
            precision = float(cell["precision_at_k"].iat[0])
            colour = config.similarity_color(100 * precision)
            st.markdown(f":{colour}-badge[P@{k} = {precision:.2f}]")
            components.result_strip(ctx, cell, width=strip)

st.divider()
exports = st.columns(2)
with exports[0]:
    components.download_csv(
        grid, "Download CSV (one row per query × model × rank)", "lens-compare.csv", key="compare_csv"
    )
with exports[1]:
    components.download_html(
        lambda: components.compare_report(ctx, grid, ready, k, label, expand=expand),
        "Download HTML report (shareable, with thumbnails)",
        "lens-compare-report.html",
        key="compare_html",
    )
