"""`python -m benchmarks --quick` on a tiny generated catalog: the report has every section and every figure is a finite
number; the benchmark package stays outside lens."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmarks.charts import line_chart
from benchmarks.common import BenchConfig, overlap_recall, run_in_fresh_process
from benchmarks.run import run_benchmark
from benchmarks.scale import clustered_vectors
from benchmarks.throughput import merge_embed_timings
from lens.catalog import load_catalog
from lens.cli import main as lens_main
from lens.train.split import get_split

SECTIONS = (
    "## Retrieval quality",
    "## Retrieval quality on the held-out split",
    "### P@5 next to the published numbers",
    "### Text -> image",
    "## Encoder throughput",
    "## Index",
    "## Scale",
    "### Where one machine stops being enough",
    "## Projection",
    "## Dashboard",
    "## Charts and raw figures",
)
CSVS = {
    "quality.csv": "precision@5",
    "throughput.csv": "img_per_s",
    "index.csv": "recall@10",
    "embed_catalog.csv": "embed_catalog_s",
    "heldout_quality.csv": "precision@5",
    "scale.csv": "peak_rss_mib",
    "projection.csv": "umap_cold_s",
    "dashboard.csv": "warm_query_p50_ms",
}


@pytest.mark.slow
def test_quick_benchmark_writes_finite_figures(small_catalog_dir: Path, lens_cache_dir: Path, tmp_path: Path) -> None:
    catalog = load_catalog(small_catalog_dir)
    get_split(catalog)  # the saved held-out split that `train` would have made
    out = tmp_path / "bench"
    config = BenchConfig(
        models=["tiny"],
        out_dir=out,
        quick=True,
        scale_sizes=(1500,),
        scale_queries=20,
        scale_search_ks=(100, 1000),
        projection_points=24,
        log=lambda _: None,
        architecture_models=["tiny"],
        architecture_images=8,
    )
    md = run_benchmark(catalog, config)
    text = md.read_text()
    for heading in SECTIONS:
        assert heading in text, heading
    assert "0.886" in text and "0.490" in text, "published P@5 figures next to ours"
    for name, column in CSVS.items():
        table = pd.read_csv(out / name)
        assert len(table) > 0 and column in table.columns, name
        numbers = table.select_dtypes("number").drop(columns=["n_truncated"], errors="ignore")
        assert np.isfinite(numbers.to_numpy(dtype=float)).all(), name
    index = pd.read_csv(out / "index.csv")
    assert (index["recall@10"] <= 1.0).all() and (
        index.loc[index["index"] == "exact (numpy)", "recall@10"] == 1.0
    ).all()
    heldout = pd.read_csv(out / "heldout_quality.csv")
    assert set(heldout["average"]) == {"micro", "macro"} and {"articleType", "subCategory"} <= set(heldout["label"])
    scale = pd.read_csv(out / "scale.csv")
    assert set(scale["items"]) == {1500} and scale["recall@10"].between(0, 1).all() and (scale["size_mib"] > 0).all()
    throughput = pd.read_csv(out / "throughput.csv")
    assert {"fp32", "fp32+channels_last", "bf16"} <= set(throughput["mode"]), "tiny: no BatchNorm, not channels_last"
    assert (throughput.groupby(["model", "weights"])["default"].sum() == 1).all(), "exactly one default mode per model"
    assert set(throughput["weights"]) == {"pretrained", "random (speed only)"}, "architecture-only rows are labelled"
    pretrained = throughput.loc[throughput["weights"] == "pretrained"]
    assert pretrained.loc[pretrained["model"] == "tiny"].set_index("mode").loc["fp32", "default"], "tiny runs fp32"
    assert (throughput.loc[throughput["mode"] == "fp32", "speedup_vs_fp32"] == 1.0).all()
    assert (throughput.loc[throughput["mode"] == "fp32", "min_cos_vs_fp32"] > 0.9999).all()
    embed = pd.read_csv(out / "embed_catalog.csv")
    assert (
        (embed["embed_catalog_s"] > 0).all()
        and (embed["items"] == len(catalog)).all()
        and (embed["img_per_s"] > 0).all()
    )
    assert "`embed_catalog_s` / `img_per_s`: measured in this run" in text
    dashboard = pd.read_csv(out / "dashboard.csv")
    assert dashboard["errors"].iat[0] == "none" and dashboard["results"].iat[0] > 0
    for png in ("recall_vs_latency.png", "throughput.png", "scale_recall_vs_latency.png"):
        with Image.open(out / png) as image:
            assert image.size[0] > 100 and image.size[1] > 100, png
        assert f"]({png})" in text
    assert not list(out.rglob("*.ann")) and not list(out.rglob("*.npy")), "no index or vector files left behind"


def test_clustered_vectors_are_unit_and_clustered() -> None:
    vectors = clustered_vectors(1000, 64, latent_dim=16, n_groups=3)
    assert vectors.shape == (1000, 64) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = vectors @ vectors.T
    np.fill_diagonal(cosines, -np.inf)
    nearest = cosines.max(axis=1)  # best non-self cosine
    typical = np.median(cosines[np.isfinite(cosines)])
    assert nearest.mean() > 0.8 and nearest.mean() - typical > 0.3, "points have close neighbours (their cluster)"
    # not a set of separated blobs: a point's 10th neighbour is well below its 1st (overlapping clusters)
    tenth = np.sort(cosines, axis=1)[:, -10]
    assert (nearest - tenth).mean() > 0.01


def test_clustered_vectors_are_deterministic_for_a_seed() -> None:
    first = clustered_vectors(300, 32, seed=7)
    assert np.array_equal(first, clustered_vectors(300, 32, seed=7))
    assert not np.allclose(first, clustered_vectors(300, 32, seed=8))


def test_embed_timings_merge_by_model_and_leave_untimed_models_empty() -> None:
    loads = pd.DataFrame(
        [{"model": "tiny", "cached_load_s": 0.1}, {"model": "not-a-trained-model", "cached_load_s": 0.2}]
    )
    timings = pd.DataFrame(
        [{"model": "tiny", "timed_as": "tiny", "items": 10, "embed_catalog_s": 2.0, "img_per_s": 5.0}]
    )
    merged = merge_embed_timings(loads, timings).set_index("model")
    assert merged.loc["tiny", "embed_catalog_s"] == 2.0 and merged.loc["tiny", "timed_as"] == "tiny"
    assert (
        np.isnan(merged.loc["not-a-trained-model", "embed_catalog_s"])
        and merged.loc["not-a-trained-model", "timed_as"] == ""
    )


def test_line_chart_survives_degenerate_series(tmp_path: Path) -> None:
    path = line_chart(
        {"one point": ([1.0], [1.0]), "empty": ([], [])},
        tmp_path / "c.png",
        title="t",
        xlabel="x",
        ylabel="y",
        logx=True,
    )
    with Image.open(path) as image:
        assert image.size == (900, 560)


REPO = Path(__file__).resolve().parents[1]


def test_overlap_recall_counts_shared_rows_and_ignores_padding() -> None:
    truth = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    found = np.array([[3, 2, 9, -1], [4, 5, 6, 7]])
    assert overlap_recall(truth, found) == pytest.approx((2 / 4 + 4 / 4) / 2)


def test_a_worker_that_dies_before_reporting_raises_instead_of_hanging() -> None:
    with pytest.raises(RuntimeError, match="exited with code 1"):
        run_in_fresh_process(os._exit, 3)  # os._exit(3, queue): a TypeError in the child, which exits with 1


def test_lens_bench_points_to_the_benchmarks_package(capsys: pytest.CaptureFixture[str]) -> None:
    assert lens_main(["bench", "--out", "bench-out", "--quick"]) == 2
    assert "python -m benchmarks" in capsys.readouterr().err


def test_benchmarks_cli_takes_lens_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--out", "--quick", "--models", "--catalog", "--cache-dir", "--label"):
        assert option in done.stdout, option


def test_lens_never_imports_benchmarks() -> None:
    for path in sorted((REPO / "lens").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not any(n == "benchmarks" or n.startswith("benchmarks.") for n in names), f"{path} imports {names}"


def test_reference_indexes_on_the_same_vectors(tmp_path: Path) -> None:
    """hnswlib and faiss (when installed) beside Annoy and exact search: the exact rows find every true neighbour,
    every approximate row a share in [0, 1], Annoy (lens) most of them at its default search_k; no files left."""
    from benchmarks.reference import ANNOY_SEARCH_KS, bench_reference, best_at, missing_libraries
    from benchmarks.scale import clustered_vectors

    table = bench_reference(clustered_vectors(600, 64), "clustered", tmp_path, n_queries=50, log=lambda _: None)
    recall = table.set_index(["index", "setting"])["recall@10"]
    assert recall.loc[("exact (lens, numpy)", "-")] == 1.0
    assert recall.between(0, 1).all() and (table["p50_ms"] > 0).all() and (table["size_mib"] > 0).all()
    annoy = table[table["index"].str.startswith("annoy")]
    assert list(annoy["setting"]) == [f"search_k {k}" for k in ANNOY_SEARCH_KS]
    assert annoy.loc[annoy["setting"] == "search_k 1000", "recall@10"].iat[0] >= 0.9
    libraries = {"hnswlib": "hnswlib", "faiss-cpu": "faiss IndexFlatIP (exact)"}
    for library, prefix in libraries.items():
        assert table["index"].str.startswith(prefix).any() == (library not in missing_libraries()), library
    if "faiss-cpu" not in missing_libraries():
        assert recall.loc[("faiss IndexFlatIP (exact)", "-")] == 1.0
    best = best_at(table)
    assert (best["recall@10"] >= 0.95).all() and best["index"].is_unique
    assert not list(tmp_path.rglob("*.*")), "index files removed"
