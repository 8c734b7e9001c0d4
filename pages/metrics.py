"""Metrics: retrieval quality per model for the chosen label column — P@k, R@k, hit@k, mAP@k, MAP@R, R-precision —
as a table, charts, a per-category heatmap and table; CSV exports."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, components, query, resources

components.run_through_app()

K_CHOICES = (1, 5, 10, 20, 50)
SAMPLE_SIZES = (500, 1000, 2000, 5000)

st.title("Metrics")
st.caption(
    "Every query is a catalog product searched against the rest of the catalog (exact cosine ranking; the query "
    "never counts as its own match). Relevant = same value in the label column. **recall@k** = share of *all* "
    "relevant items found in the top k; **hit@k** = at least one relevant item in the top k; **map@k** = AP@k "
    "normalised by min(k, R); **map@r** and **r_precision** as in Musgrave et al. 2020."
)
ctx = components.require_context()
label = components.require_label(ctx)
catalog = ctx.catalog

models = components.models_multiselect(ctx, "Models", key="metrics_models", max_default=6)
controls = st.columns([2, 2, 2])
ks = controls[0].multiselect("Cut-offs k", K_CHOICES, default=[1, 5, 10], key="metrics_ks")
big = len(catalog) > 3000
queries = controls[1].radio(
    "Queries",
    ("All products", "A random sample"),
    index=1 if big else 0,
    horizontal=True,
    key="metrics_queries",
    help="A sample of queries is searched against the whole catalog: faster, with a small sampling error.",
)
sample_size = None
if queries == "A random sample":
    sizes = [s for s in SAMPLE_SIZES if s < len(catalog)] or [len(catalog)]
    sample_size = controls[1].select_slider(
        "Sample size", sizes, value=2000 if 2000 in sizes else sizes[-1], key="metrics_n"
    )
average = controls[2].radio(
    "Average", ("micro (over queries)", "macro (over categories)"), horizontal=True, key="metrics_average"
)
rerank = controls[2].toggle(
    "With query expansion (re-ranking)",
    key="metrics_rerank",
    help="Each query re-ranked by alpha query expansion over its 3 nearest products, as the Search page's toggle "
    "does: compare the table with and without it.",
)

components.require_choice(models, "Pick at least one model above.")
if not ks:
    st.warning("Pick at least one cut-off k.")
    st.stop()
ks_t = tuple(sorted(ks))

reports = {}
for model in models:
    if components.ensure_embeddings(ctx, model, key="metrics") is None:
        continue
    with st.spinner(f"Evaluating {model} on {sample_size or len(catalog):,} queries…"):
        reports[model] = resources.get_report(
            ctx.path,
            ctx.load_label,
            model,
            ctx.fingerprint,
            ctx.cache_dir,
            label,
            ks_t,
            sample_size,
            0,
            query.EXPAND_NEIGHBOURS if rerank else 0,
        )
if not reports:
    st.stop()

first = next(iter(reports.values()))
keys = first.metric_keys
summary = resources.metrics_summary(reports, macro=average.startswith("macro"))
st.subheader("Summary")
st.dataframe(
    summary.drop(columns=["average", "label"]),
    hide_index=True,
    column_config={key: st.column_config.NumberColumn(key, format="%.3f") for key in keys},
)
skipped = int(first.summary["n_skipped"])
if skipped:
    st.caption(f"{skipped:,} queries have no other product with their label and are left out of every mean.")
components.download_csv(summary, "Download summary CSV", f"lens-metrics-{label}.csv", key="metrics_csv")

figure = charts.metrics_by_model(summary, keys)
st.plotly_chart(figure, key="metrics_chart")

st.subheader(f"Per {label}")
metric = st.selectbox(
    "Metric", keys, index=keys.index(f"precision@{ks_t[min(1, len(ks_t) - 1)]}"), key="metrics_metric"
)
matrix = resources.per_category_matrix(reports, metric)
if not matrix.empty:
    st.plotly_chart(charts.category_heatmap(matrix, metric, label), key="metrics_heatmap")
    sizes = first.per_category.set_index("label")["n_queries"]
    table = matrix.reset_index()
    table.insert(1, "queries", table["label"].map(sizes).fillna(0).astype(int))
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            m: st.column_config.ProgressColumn(m, min_value=0.0, max_value=1.0, format="%.2f") for m in reports
        },
    )
per_category = pd.concat(
    [report.per_category.assign(model=model, label_column=label) for model, report in reports.items()],
    ignore_index=True,
)
exports = st.columns(2)
with exports[0]:
    components.download_csv(
        per_category, f"Download per-{label} CSV", f"lens-metrics-per-{label}.csv", key="metrics_cat_csv"
    )
with exports[1]:
    queries_note = f"{sample_size:,} sampled queries" if sample_size else f"all {len(catalog):,} products as queries"
    components.download_html(
        lambda: components.metrics_report(
            ctx,
            summary.drop(columns=["average", "label"]),
            figure,
            matrix.reset_index() if not matrix.empty else per_category,
            label,
            f"{average}; {queries_note}; relevant = same {label}.",
        ),
        "Download HTML report (shareable)",
        f"lens-metrics-{label}.html",
        key="metrics_html",
    )
