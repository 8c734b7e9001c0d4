"""lens dashboard entry: ``streamlit run app.py`` (or ``./run.sh``).

Navigation is ``st.navigation`` over the files in ``pages/`` (the only navigation mechanism: there is no automatic
``pages/`` discovery once ``st.navigation`` is called). The sidebar (catalog, label column) is drawn here, so it is
the same on every page; pages only call lens through ``dashboard``. Static files (icon, logo, CSS) live in ``assets/``.
"""

from pathlib import Path

import streamlit as st

from dashboard import components

ASSETS = Path(__file__).resolve().parent / "assets"

st.set_page_config(page_title="lens", page_icon=str(ASSETS / "icon.png"), layout="wide")
st.logo(str(ASSETS / "logo.svg"), icon_image=str(ASSETS / "icon.png"))
st.html(f"<style>{(ASSETS / 'style.css').read_text(encoding='utf-8')}</style>")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/search.py", title="Search", icon=":material/image_search:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/projections.py", title="Projections", icon=":material/scatter_plot:"),
    st.Page("pages/metrics.py", title="Metrics", icon=":material/leaderboard:"),
    st.Page("pages/failures.py", title="Failures", icon=":material/report:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
]

navigation = st.navigation(PAGES)
components.sidebar()
with components.inside_app():  # what components.run_through_app checks on every page
    navigation.run()
