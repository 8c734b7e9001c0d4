"""Failures: where a model goes wrong — its worst queries (lowest P@k) with their results, the category pairs it
mixes up most, and near-duplicate products above a similarity threshold; CSV exports."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, components, config, resources

components.run_through_app()

st.title("Failures")
st.caption("Exact top-k neighbours of every product (the product itself left out); relevant = same label column value.")
ctx = components.require_context()
label = components.require_label(ctx)

controls = st.columns([2, 1, 1])
with controls[0]:
    model_row = components.model_select(ctx, "Model", key="failures_model")
k = controls[1].slider("k", 1, 20, 10, key="failures_k")
n_worst = controls[2].slider("Worst queries", 5, 50, 10, key="failures_n")
model = model_row["name"]
if not components.require_available(model_row):
    st.stop()
if components.ensure_embeddings(ctx, model, key="failures") is None:
    st.stop()
args = ctx.emb(model)

with st.spinner(f"Ranking every product's top {k} with {model}…"):
    per_query = resources.get_precision_table(*args, label, k)
metric = f"precision@{k}"
if per_query.empty:
    st.warning(f"No product shares its '{label}' value with another one; pick another label column in the sidebar.")
    st.stop()

# ------------------------------------------------------------------------------------------------ worst queries
st.subheader(f"Worst queries (lowest P@{k})")
c1, c2, c3 = st.columns(3)
c1.metric(f"Mean P@{k}", f"{per_query[metric].mean():.3f}")
c2.metric(f"Queries with P@{k} = 0", f"{int((per_query[metric] == 0).sum()):,}")
c3.metric("Queries evaluated", f"{len(per_query):,}")
worst = resources.worst_queries(per_query, metric, n_worst)
worst.insert(1, "title", [ctx.title(i) for i in worst["query_id"]])
st.dataframe(worst, hide_index=True, column_config={metric: st.column_config.NumberColumn(metric, format="%.2f")})
worst_results = resources.get_compare_grid(
    ctx.path, ctx.load_label, ctx.fingerprint, ctx.cache_dir, (model,), tuple(worst["query_id"]), label, k
)
with st.expander(f"Results of the {min(n_worst, 10)} worst queries", expanded=True):
    cells = dict(list(worst_results.groupby("query_id", sort=False)))  # {query_id: its rows}
    for query_id in worst["query_id"].head(10):
        row = st.columns([1, 6])
        with row[0]:
            components.query_tile(ctx, query_id, label, width=96)
        with row[1]:
            cell = cells.get(query_id)
            if cell is not None:
                components.result_strip(ctx, cell, width=components.strip_width(k, 760))
components.download_csv(
    worst_results,
    "Download worst queries CSV (one row per query × rank)",
    f"lens-worst-{model}.csv",
    key="failures_worst_csv",
)

# --------------------------------------------------------------------------------------------- confused pairs
st.subheader(f"Most confused {label} pairs")
pairs = resources.get_confused_pairs(*args, label, k)
if pairs.empty:
    st.success(f"No query has a result with another {label} in its top {k}.")
else:
    left, right = st.columns([1, 1], gap="large")
    with left:
        st.plotly_chart(charts.confused_pairs(pairs), key="failures_pairs_chart")
    with right:
        st.dataframe(pairs, hide_index=True, column_config={"share": st.column_config.NumberColumn(format="%.3f")})
    choice = st.selectbox(
        "Examples of",
        list(range(len(pairs))),
        key="failures_pair",
        format_func=lambda i: f"{pairs['label_a'].iat[i]} ↔ {pairs['label_b'].iat[i]} ({pairs['count'].iat[i]})",
    )
    examples = resources.get_confusion_examples(
        *args, label, k, pairs["label_a"].iat[choice], pairs["label_b"].iat[choice]
    )
    for column, example in zip(st.columns(4), examples.head(4).itertuples()):
        with column:
            components.image_strip(
                ctx,
                [example.query_id, example.result_id],
                [
                    f"query: {example.query_label[:14]}",
                    f"#{example.rank} {example.result_label[:14]} {100 * example.similarity:.0f}%",
                ],
                width=96,
            )
    components.download_csv(
        pairs, "Download confused pairs CSV", f"lens-confused-{model}.csv", key="failures_pairs_csv"
    )

# ----------------------------------------------------------------------------------------------- near duplicates
st.subheader("Near-duplicate products")
threshold = st.slider(
    "Cosine similarity at least",
    0.80,
    1.00,
    0.97,
    0.005,
    format="%.3f",
    key="failures_threshold",
    help="Pairs of different products whose vectors are this close: duplicate listings, or variants the model "
    "cannot tell apart.",
)
with st.spinner("Comparing every pair of products…"):
    dups = resources.get_near_duplicates(*args, float(threshold), label)
shown_note = f" (showing the {len(dups.pairs):,} most similar)" if dups.n_found > len(dups.pairs) else ""
st.markdown(f"**{dups.n_found:,} pairs** at cosine ≥ {threshold:.3f}{shown_note}.")
if not dups.pairs.empty:
    table = dups.pairs.copy()
    table.insert(1, "title_a", [ctx.title(i) for i in table["id_a"]])
    table.insert(3, "title_b", [ctx.title(i) for i in table["id_b"]])
    st.dataframe(
        table, hide_index=True, height=260, column_config={"similarity": st.column_config.NumberColumn(format="%.4f")}
    )
    for column, pair in zip(st.columns(4) + st.columns(4), table.head(8).itertuples()):
        with column:
            colour = config.similarity_color(100 * pair.similarity)
            st.markdown(
                f":{colour}-badge[{100 * pair.similarity:.1f} %]"
                + ("" if pair.same_label else " :red-badge[labels differ]")
            )
            components.image_strip(ctx, [pair.id_a, pair.id_b], [pair.id_a, pair.id_b], width=96)
    components.download_csv(
        pd.DataFrame(table), "Download near-duplicates CSV", f"lens-duplicates-{model}.csv", key="failures_dups_csv"
    )
