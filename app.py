"""lens dashboard entry: ``streamlit run app.py`` (or ``./run.sh``).

Navigation is ``st.navigation`` over the files in ``pages/``; pages only call lens through ``dashboard``.
"""

import streamlit as st

st.set_page_config(page_title="lens", page_icon=":mag:", layout="wide")

navigation = st.navigation([st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True)])
navigation.run()
