"""Every Streamlit cache of the dashboard lives here; pages call these, never lens's heavy modules directly.

``st.cache_resource`` for objects shared read-only across sessions (catalogs, encoders); ``st.cache_data`` for tables.
Arguments are strings and ints so that cache keys stay cheap and explicit.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from lens.catalog import Catalog, default_catalog_path, load_catalog
from lens.encoders import list_encoders


@st.cache_resource(max_entries=4, show_spinner="Loading catalog…")
def get_catalog(path: str, label_column: str = "articleType") -> Catalog:
    return load_catalog(path, label_column=label_column)


def default_catalog() -> str:
    return str(default_catalog_path())


@st.cache_data(ttl=60, show_spinner=False)
def encoder_table() -> pd.DataFrame:
    rows = []
    for info in list_encoders():
        rows.append(
            {
                "encoder": info.name,
                "family": info.spec.family,
                "dim": info.spec.dim,
                "input px": info.spec.preprocess.input_size,
                "precision": info.spec.precision,
                "available": info.available,
                "weights": info.status.where if info.available else f"unavailable — {info.status.remedy}",
            }
        )
    return pd.DataFrame(rows)
