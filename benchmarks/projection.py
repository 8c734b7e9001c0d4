"""Projection section: lens.projection's UMAP (cold and warm) and PCA time per model, each model in a fresh process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import BenchConfig, markdown_table, run_in_fresh_process
from lens.embed import EmbeddingSet
from lens.projection import pca_2d, sample_rows, umap_2d


def _projection_worker(vectors_path: str, queue: Any) -> None:
    """Fresh process: the first UMAP call includes importing umap and compiling its numba code (cold)."""
    vectors = np.load(vectors_path)
    started = time.perf_counter()
    umap_2d(vectors)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    umap_2d(vectors)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    pca_2d(vectors)
    pca = time.perf_counter() - started
    queue.put({"umap_cold_s": cold, "umap_warm_s": warm, "pca_s": pca})


def bench_projection(embeddings: dict[str, EmbeddingSet], config: BenchConfig, work_dir: Path) -> pd.DataFrame:
    """UMAP (lens.projection.umap_2d, lens's defaults) cold and warm per model, each in a fresh process; PCA too."""
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    models = list(embeddings)[: config.projection_models] if config.projection_models else list(embeddings)
    for model in models:
        emb = embeddings[model]
        picked = sample_rows(len(emb), config.projection_points, seed=0)
        path = work_dir / f"proj-{model}.npy"
        np.save(path, emb.vectors[picked])
        result = run_in_fresh_process(_projection_worker, str(path))
        path.unlink(missing_ok=True)
        rows.append({"model": model, "points": len(picked), "dim": emb.vectors.shape[1], **result})
        config.log(f"projection {model}: UMAP cold {result['umap_cold_s']:.1f}s warm {result['umap_warm_s']:.1f}s")
    return pd.DataFrame(rows)


def projection_lines(projection: pd.DataFrame, config: BenchConfig) -> list[str]:
    """The report's projection section."""
    return [
        "## Projection: UMAP and PCA time per model",
        "",
        "lens.projection.umap_2d with lens's defaults (n_neighbors 15, min_dist 0.1, cosine, seed 0: single-threaded)"
        " on "
        + (f"a {config.projection_points}-point sample" if config.projection_points else "the whole catalog")
        + ". Each model in a fresh process: `umap_cold_s` is the first call (imports umap; lens computes the exact"
        " k-NN graph itself and umap's numba code comes from numba's on-disk cache, compiled only by the first"
        " process on a machine), `umap_warm_s` the second call on the same vectors; PCA is"
        " lens.projection.pca_2d.",
        "",
        markdown_table(projection, ".2f") if len(projection) else "(no models)",
        "",
    ]
