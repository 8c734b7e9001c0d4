"""`bench --quick` on a tiny generated catalog: the report has its sections and every figure is a finite number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lens.catalog import load_catalog
from lens.bench import BenchConfig, run_benchmark


def test_quick_benchmark_writes_finite_figures(small_catalog_dir: Path, lens_cache_dir: Path, tmp_path: Path) -> None:
    catalog = load_catalog(small_catalog_dir)
    out = tmp_path / "bench"
    md = run_benchmark(catalog, BenchConfig(models=["tiny"], out_dir=out, quick=True, log=lambda _: None))
    text = md.read_text()
    for heading in ("## Retrieval quality", "## Encoder throughput", "## Index"):
        assert heading in text
    for name in ("quality.csv", "throughput.csv", "index.csv", "embed_catalog.csv"):
        table = pd.read_csv(out / name)
        assert len(table) > 0, name
        numbers = table.select_dtypes("number").drop(columns=["n_truncated"], errors="ignore")
        assert np.isfinite(numbers.to_numpy(dtype=float)).all(), name
    index = pd.read_csv(out / "index.csv")
    assert (index["recall@10"] <= 1.0).all() and (index.loc[index["index"] == "exact (numpy)", "recall@10"] == 1.0).all()
