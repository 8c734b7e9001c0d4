"""Dashboard section: the Search page through Streamlit's AppTest in a fresh process, cold start and warm query."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import BenchConfig, markdown_table, run_in_fresh_process
from lens.catalog import Catalog
from lens.embed import EmbeddingSet

APP = Path(__file__).resolve().parents[1] / "app.py"
"""The dashboard's entry, beside this package at the repository root."""


def _dashboard_worker(env: dict[str, str], product_ids: list[str], queue: Any) -> None:
    """Fresh process: cold = first run of the app and the Search page (imports, catalog, cached embeddings,
    index); warm = typing a product id into the Search page's product box until its results are rendered."""
    os.environ.update(env)
    started = time.perf_counter()
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=600)
    at.run()
    at.switch_page("pages/search.py").run()
    cold = time.perf_counter() - started
    errors = [str(e.value) for e in [*at.exception, *at.error]]
    warm = []
    n_results = 0
    for item_id in product_ids:
        started = time.perf_counter()
        at.text_input(key="search_product_query").set_value(item_id).run()
        warm.append(time.perf_counter() - started)
        errors += [str(e.value) for e in [*at.exception, *at.error]]
        results = at.session_state["search_results"] if "search_results" in at.session_state else None  # noqa: SIM401 - AppTest's state has no .get
        n_results = 0 if results is None else len(results)
    queue.put(
        {
            "cold_start_s": cold,
            "warm_query_p50_ms": float(np.percentile(np.array(warm) * 1000, 50)),
            "warm_query_max_ms": float(np.max(warm) * 1000),
            "queries": len(warm),
            "results": n_results,
            "errors": "; ".join(errors)[:300] or "none",
        }
    )


def bench_dashboard(catalog: Catalog, embeddings: dict[str, EmbeddingSet], config: BenchConfig) -> pd.DataFrame:
    """Search page through Streamlit's AppTest in a fresh process: cold start (embeddings cached) and warm query."""
    model = config.dashboard_model or (
        "efficientnet-lite0" if "efficientnet-lite0" in embeddings else next(iter(embeddings))
    )
    emb = embeddings[model]
    rng = np.random.default_rng(2)
    product_ids = [
        emb.ids[i] for i in rng.choice(len(emb), size=min(config.dashboard_queries, len(emb)), replace=False)
    ]
    env = {
        "LENS_CATALOG": str(catalog.root),
        "LENS_DEFAULT_MODEL": model,
        "LENS_LABEL": catalog.label_column,
        "LENS_OFFLINE": "1",
    }
    if config.cache_dir:
        env["LENS_CACHE_DIR"] = str(config.cache_dir)
    result = run_in_fresh_process(_dashboard_worker, env, product_ids)
    config.log(
        f"dashboard {model}: cold {result['cold_start_s']:.1f}s, warm query {result['warm_query_p50_ms']:.0f} ms"
    )
    return pd.DataFrame([{"model": model, "page": "search", **result}])


def dashboard_lines(dashboard: pd.DataFrame) -> list[str]:
    """The report's dashboard section."""
    return [
        "## Dashboard: Search page through Streamlit's AppTest",
        "",
        "A fresh process with the embeddings already cached. `cold_start_s`: from importing Streamlit to the Search page"
        " rendered with its default product's results (catalog, encoder, cached embeddings, index); `warm_query_*`:"
        " typing a catalog product id into the product box until that product's results are rendered (script"
        " rerun incl. query embedding lookup, search and result grid; the browser's own rendering is not included).",
        "",
        markdown_table(dashboard, ".1f"),
        "",
    ]
