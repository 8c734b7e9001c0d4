"""Index section: lens's Annoy index over an n_trees x search_k sweep against its exact numpy index, on the catalog."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import BenchConfig, latencies_ms, markdown_table, overlap_recall
from lens.embed import EmbeddingSet
from lens.index import ExactIndex, build_annoy
from lens.vectors import rank_by_cosine


def _row(
    embeddings: EmbeddingSet,
    index: str,
    n_trees: int,
    search_k: int,
    build_s: float,
    size_mib: float,
    lat: np.ndarray,
    recall: float,
    k: int,
) -> dict[str, object]:
    return {
        "model": embeddings.encoder,
        "index": index,
        "n_trees": n_trees,
        "search_k": search_k,
        "build_s": build_s,
        "size_mib": size_mib,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        f"recall@{k}": recall,
    }


def bench_index(embeddings: EmbeddingSet, config: BenchConfig, work_dir: Path, k: int = 10) -> pd.DataFrame:
    """Annoy build time, size, p50/p95 latency and recall@k vs exact over n_trees x search_k; exact as baseline.

    Latencies are ``index.search`` one query at a time, as the dashboard and the CLI call it; the exact top k that
    recall is measured against is computed once, batched, by ``lens.vectors.rank_by_cosine`` (self excluded).
    """
    rng = np.random.default_rng(0)
    n_queries = min(config.index_queries, len(embeddings))
    rows_q = np.sort(rng.choice(len(embeddings), size=n_queries, replace=False))
    queries = embeddings.vectors[rows_q]
    exact = ExactIndex.from_embeddings(embeddings)
    truth, _ = rank_by_cosine(queries, exact.vectors, k, exclude=rows_q)
    lat = latencies_ms(functools.partial(exact.search, k=k), queries)
    rows = [_row(embeddings, "exact (numpy)", 0, 0, 0.0, embeddings.vectors.nbytes / 2**20, lat, 1.0, k)]
    for n_trees in config.trees:
        path = work_dir / f"{embeddings.encoder}-t{n_trees}.ann"
        started = time.perf_counter()
        index = build_annoy(embeddings, path, n_trees=n_trees)
        build_s = time.perf_counter() - started
        for search_k in config.search_ks:
            index.search_k = search_k
            recall = overlap_recall(truth, index.search_rows(queries, k, exclude_rows=rows_q.tolist()))
            lat = latencies_ms(functools.partial(index.search, k=k), queries)
            rows.append(
                _row(embeddings, "annoy", n_trees, search_k, build_s, path.stat().st_size / 2**20, lat, recall, k)
            )
            config.log(f"index {embeddings.encoder} trees={n_trees} search_k={search_k}: recall {recall:.3f}")
        index.unload()
    return pd.DataFrame(rows)


def index_lines(index_table: pd.DataFrame, config: BenchConfig) -> list[str]:
    """The report's index section."""
    return [
        f"## Index: Annoy vs exact, recall@10 and latency over {config.index_queries} queries (self excluded)",
        "",
        "`search_k = -1` is annoy's default (n_trees x k).",
        "",
        markdown_table(index_table, ".3f"),
        "",
    ]
