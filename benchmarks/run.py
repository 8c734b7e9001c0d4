"""Runs every benchmark section on a catalog and writes the report: ``benchmark.md``, one CSV per section, PNG charts.

Sections (one module each): retrieval quality per encoder (exact search, every item a query, by the catalog's label
column and, when present, subCategory); the same on the saved held-out split with the published P@5 figures beside it,
and text->image recall for text-capable models (``quality``); the time to embed the catalog, measured with the cache
off, and encoder throughput per mode (fp32, fp32+channels_last, lens's fp32 and bf16 paths) (``throughput``); the Annoy
n_trees / search_k sweep against exact search (``index``); Annoy at scale on synthetic 512-d vectors calibrated to the
catalog's recall (100k and 1M items; each size in a fresh process for its peak memory) (``scale``); UMAP cold/warm and
PCA time per model (``projection``); the dashboard's Search page cold start and warm query through Streamlit's AppTest
(``dashboard``). Not part of the default test run beyond ``tests/test_bench.py`` (quick mode on a tiny catalog).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from pathlib import Path

import pandas as pd
import torch

from benchmarks.charts import write_charts
from benchmarks.common import BenchConfig, total_ram_mib
from benchmarks.dashboard import bench_dashboard, dashboard_lines
from benchmarks.engines import bench_engines, engines_lines
from benchmarks.index import bench_index, index_lines
from benchmarks.projection import bench_projection, projection_lines
from benchmarks.quality import bench_heldout, bench_quality, find_split, heldout_lines, metric_columns, quality_lines
from benchmarks.reference import bench_reference, reference_lines
from benchmarks.scale import bench_scale, scale_lines
from benchmarks.throughput import (
    bench_embed_catalog,
    bench_throughput,
    embed_lines,
    merge_embed_timings,
    throughput_lines,
)
from lens.catalog import Catalog
from lens.embed import EmbeddingSet, embed_catalog
from lens.encoders import create_encoder, list_encoders


def machine_description() -> dict[str, str]:
    """What the figures were measured on: date, CPU model, cores, torch threads, versions, memory."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "memory": f"{total_ram_mib() / 1024:.0f} GiB",
        "bf16 autocast": "yes",
    }


def _family(model: str) -> str:
    return next((info.spec.family for info in list_encoders() if info.name == model), "")


def _embed_all(catalog: Catalog, config: BenchConfig) -> tuple[dict[str, EmbeddingSet], pd.DataFrame]:
    """Every model's embeddings (from the cache when there) and the time to load them back from the cache."""
    embed_rows = []
    embeddings: dict[str, EmbeddingSet] = {}
    for model in config.models:
        encoder = create_encoder(model)
        emb = embed_catalog(catalog, encoder, cache_dir=config.cache_dir, use_cache=True)
        started = time.perf_counter()
        embed_catalog(catalog, encoder, cache_dir=config.cache_dir, use_cache=True)  # now certainly a cache hit
        cached_load_s = time.perf_counter() - started
        embeddings[model] = emb
        embed_rows.append(
            {
                "model": model,
                "precision": encoder.precision,
                "catalog_items": len(catalog),
                "embedded": len(emb),
                "failed": len(emb.failed),
                "cached_load_s": cached_load_s,
            }
        )
        config.log(f"embeddings {model}: {len(emb)} vectors{' (from cache)' if emb.from_cache else ''}")
    return embeddings, pd.DataFrame(embed_rows)


def run_benchmark(catalog: Catalog, config: BenchConfig) -> Path:
    """Run every section, write ``benchmark.md`` and CSVs into ``config.out_dir``; returns the markdown path."""
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    work = out / "indexes"  # index and vector files of the sections; emptied and removed before the report
    machine = machine_description()
    config.log(
        f"benchmark on {machine['cpu']} ({machine['cores']} cores), catalog {catalog.name} ({len(catalog)} items)"
    )

    if config.speed_models is None:
        base = [m for m in config.models if _family(m) != "trained"]
        config.speed_models = base or list(config.models)
    embeddings, loads = _embed_all(catalog, config)
    embed_table = merge_embed_timings(loads, bench_embed_catalog(catalog, config))

    if config.architecture_models is None:
        config.architecture_models = [
            info.name for info in list_encoders() if not info.available and info.spec.family not in ("trained", "test")
        ]
    speed = {m: embeddings[m] for m in config.speed_models if m in embeddings}
    config.log(f"quality on {len(embeddings)} models; speed sections on {', '.join(speed)}")
    quality, per_category = bench_quality(catalog, embeddings, config)
    throughput = bench_throughput(catalog, config)
    engine_reps, engine_slice = (2, 128) if config.quick else (3, 1000)
    engine_modes, engine_goals = bench_engines(
        catalog, list(speed), reps=engine_reps, slice_items=engine_slice, log_fn=config.log
    )
    index_table = pd.concat([bench_index(emb, config, work) for emb in speed.values()], ignore_index=True)
    reference_model = "efficientnet-lite0" if "efficientnet-lite0" in speed else next(iter(speed), None)
    reference = (
        bench_reference(
            speed[reference_model].vectors, reference_model, work, n_queries=config.index_queries, log=config.log
        )
        if reference_model
        else pd.DataFrame()
    )
    for leftover in work.glob("*"):
        leftover.unlink()
    split, split_path = find_split(catalog, config)
    if split is not None:
        heldout, text_table = bench_heldout(catalog, embeddings, split, config)
    else:
        config.log(f"no held-out split at {split_path}: held-out section skipped")
        heldout, text_table = pd.DataFrame(), pd.DataFrame()
    scale = bench_scale(
        config.scale_sizes,
        work,
        n_trees=config.scale_trees,
        search_ks=config.scale_search_ks,
        n_queries=config.scale_queries,
        log=config.log,
    )
    projection = bench_projection(speed, config, work)
    dashboard = bench_dashboard(catalog, embeddings, config)
    for leftover in work.glob("*"):
        leftover.unlink()
    work.rmdir()
    charts = write_charts(index_table, throughput, scale, out)
    tables = {
        "heldout_quality": heldout,
        "text_to_image": text_table,
        "scale": scale,
        "projection": projection,
        "dashboard": dashboard,
        "quality": quality,
        "quality_per_category": per_category,
        "throughput": throughput,
        "embed_catalog": embed_table,
        "index": index_table,
        "engines": engine_modes,
        "engine_goals": engine_goals,
        "index_reference": reference,
    }
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)

    metric_cols = metric_columns(quality, config.ks)
    lines = [
        f"# lens benchmark — {machine['date']}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k != "date"),
        f"Catalog: `{catalog.name}` ({len(catalog)} items, source {catalog.source}); "
        f"{'quick run' if config.quick else 'full run'}.",
        "",
        *quality_lines(quality, metric_cols),
        *embed_lines(embed_table, config),
        *throughput_lines(throughput, config),
        *engines_lines(engine_modes, engine_goals, reps=engine_reps, slice_items=engine_slice),
        *index_lines(index_table, config),
        *reference_lines(reference),
        *heldout_lines(heldout, text_table, split, split_path, metric_cols),
        *scale_lines(scale, config),
        *projection_lines(projection, config),
        *dashboard_lines(dashboard),
        "## Charts and raw figures",
        "",
        *[f"![{p.stem}]({p.name})" for p in charts],
        "",
        "CSVs: " + ", ".join(sorted(p.name for p in out.glob("*.csv"))) + ".",
        "",
    ]
    md_path = out / "benchmark.md"
    md_path.write_text("\n".join(lines))
    config.log(f"wrote {md_path}")
    return md_path
