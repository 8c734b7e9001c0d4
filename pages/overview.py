"""Overview: the catalog and the encoders (placeholder until the dashboard issue lands the other pages)."""

import streamlit as st

from dashboard import resources
from lens.errors import LensError

st.title("lens — visual product search")
try:
    catalog = resources.get_catalog(resources.default_catalog())
except LensError as exc:
    st.error(str(exc))
    st.stop()

st.subheader(f"Catalog: {catalog.name}")
c1, c2, c3 = st.columns(3)
c1.metric("Items", f"{len(catalog):,}")
c2.metric(f"{catalog.label_column} values", catalog.table[catalog.label_column].nunique())
c3.metric("Source", catalog.source)
counts = catalog.table[catalog.label_column].value_counts().rename_axis(catalog.label_column).reset_index(name="items")
st.bar_chart(counts.head(30), x=catalog.label_column, y="items")

st.subheader("Encoders")
st.dataframe(resources.encoder_table(), hide_index=True, use_container_width=True)
st.caption("Build embeddings and indexes with `python -m lens index --models all`; search from the command line "
           "with `python -m lens search --image PATH`.")
