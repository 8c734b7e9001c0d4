"""Overview: the catalog (size, counts per category, a sample of products), the background build of every model
(state, progress, ETA, log; start and stop) and the models' state on the catalog (weights, embeddings, index)."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, components, resources

components.run_through_app()

st.title("lens — visual product search")
ctx = components.require_context()
catalog = ctx.catalog
label = ctx.label_column if ctx.label_column in catalog.columns else ctx.load_label

st.subheader(f"Catalog: {catalog.name}")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Items", f"{len(catalog):,}")
c2.metric(f"{label} values", f"{catalog.table[label].nunique():,}")
c3.metric("Source", catalog.source)
c4.metric("Rows dropped", f"{len(catalog.problems):,}", help="Rows whose image file is missing (skipped when loading).")
st.caption(f"Folder: `{catalog.root}`")

counts = catalog.table[label].astype(str).value_counts().rename_axis(label).reset_index(name="items")
left, right = st.columns([1, 1], gap="large")
with left:
    st.plotly_chart(charts.category_counts(counts, label, total=len(counts)), key="overview_counts")
    with st.expander(f"All {len(counts)} values of {label}"):
        st.dataframe(counts, hide_index=True, height=240)
with right:
    seed = st.session_state.setdefault("overview_seed", 0)
    head = st.columns([3, 1], vertical_alignment="bottom")
    head[0].markdown("**A sample of products**")
    if head[1].button("Shuffle", key="overview_shuffle", icon=":material/shuffle:"):
        st.session_state["overview_seed"] = seed = seed + 1
    sample = resources.sample_ids(catalog.ids, 12, seed)
    components.product_grid(ctx, sample, n_cols=4, caption_columns=[label])

st.subheader("Build")
components.build_panel(ctx)
st.caption(
    "The same from a terminal: `python -m lens build --detach` starts it, `python -m lens status` shows it. "
    "A finished model is kept: a later build (or a restart) goes on from where this one stopped."
)

st.subheader("Models")
states = components.model_states(ctx)
states = states.sort_values("weights", kind="stable").reset_index(drop=True)  # "available" before "missing"


def grey_unavailable(row):  # noqa: ANN001, ANN202 - pandas Styler callback
    colour = "color: #9ca3af" if row["weights"] == "missing" else ""
    return [colour] * len(row)


st.dataframe(
    states.style.apply(grey_unavailable, axis=1),
    hide_index=True,
    height=36 * (len(states) + 1) + 3,  # every model visible without scrolling
    column_config={
        "encoder": st.column_config.TextColumn("encoder", width="medium"),
        "remedy": st.column_config.TextColumn("how to get the weights", width="large"),
        "vectors": st.column_config.NumberColumn("vectors", format="%d"),
    },
)
st.caption(
    "**weights**: whether the model's weights are on this machine (greyed rows: missing, with the remedy). "
    "**embeddings**: whether this catalog's vectors are cached for the model. **index**: whether its Annoy index "
    "is built. Search works without an index on small catalogs (exact search)."
)

st.caption("Search: `python -m lens search --image PATH`.")
