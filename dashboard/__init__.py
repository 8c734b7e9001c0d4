"""Streamlit helpers for lens: cached loaders (resources.py) and rendering (components.py)."""
