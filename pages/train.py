"""Train: a recipe, its backbone and settings (the recipe's defaults shown), started as a background job; its live
curves and ETA, stop and resume; past runs with their settings, history and held-out figures; delete a model."""

from __future__ import annotations

import streamlit as st

from dashboard import components, training

components.run_through_app()

st.title("Train a model on the catalog")
ctx = components.require_context()

st.subheader("New run")
training.recipe_form(ctx)

st.subheader("Current run")
training.run_watch(ctx)

st.subheader("Past runs")
training.past_runs(ctx)
st.caption(
    "The same from a terminal: `python -m lens train <recipe> --help` lists a recipe's settings; "
    "`python -m lens status` shows a running build. Figures and defaults: docs/training.md."
)
