"""Streamlit helpers for lens, used by app.py and pages/.

resources.py   every st.cache_resource / st.cache_data loader, and the calls into lens
components.py  catalog context, sidebar, model pickers, build buttons, result cards, image strips, CSV exports
charts.py      every plotly figure, from tables (no Streamlit)
query.py       the Search query (upload checks, crops, image/text/mixed vector, label, results table), product look-up,
               column roles (no Streamlit: unit-testable)
config.py      environment variables, limits, colour bands (no Streamlit)
"""
