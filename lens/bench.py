"""``python -m lens bench``: measure lens on a catalog, every speed next to its baseline from the same run.

Sections: retrieval quality per encoder (exact search, every item a query, by the catalog's label column and, when
present, subCategory); the same on the saved held-out split with the published P@5 figures beside it, and text->image
recall for text-capable models; encoder throughput per precision mode; the Annoy n_trees / search_k sweep against
exact search; Annoy at scale on synthetic clustered 512-d vectors (100k and 1M items; each size in a fresh process for
its peak memory); UMAP cold/warm and PCA time per model; the dashboard's Search page cold start and warm query through
Streamlit's AppTest. Writes ``benchmark.md``, one CSV per section and PNG charts (drawn with Pillow) into the output
folder. Not part of the default test run beyond ``tests/test_bench.py`` (quick mode on a tiny catalog).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lens.catalog import Catalog
from lens.embed import EmbeddingSet, embed_catalog
from lens.encoders import create_encoder
from lens.encoders.base import TorchImageEncoder, preprocess_images
from lens.evaluate import evaluate_embeddings
from lens.images import open_image
from lens.index import ExactIndex, build_annoy

Log = Callable[[str], None]


@dataclass
class BenchConfig:
    """What to measure; ``quick`` shrinks every section to finish in a few minutes on 2 cores."""

    models: list[str]
    out_dir: Path
    cache_dir: str | None = None
    quick: bool = False
    ks: tuple[int, ...] = (1, 5, 10)
    throughput_images: int = 128
    batch_size: int = 32
    index_queries: int = 1000
    trees: tuple[int, ...] = (10, 25, 50, 100)
    search_ks: tuple[int, ...] = (-1, 2000, 5000, 10000, 20000, 50000)
    extra_labels: tuple[str, ...] = ("subCategory",)
    scale_sizes: tuple[int, ...] = (100_000, 1_000_000)
    scale_queries: int = 200
    scale_trees: int = 50
    scale_search_ks: tuple[int, ...] = (5000, 20000)
    projection_points: int | None = None  # None: the whole catalog
    projection_models: int | None = None  # None: every model
    dashboard_model: str | None = None  # default: efficientnet-lite0 if benchmarked, else the first model
    dashboard_queries: int = 5
    split_path: Path | None = None  # default: lens.train.split.default_split_path(catalog, seed 0)
    # throughput, index sweep and projection: a trained model runs its base architecture, so by default these run
    # on the non-trained models only (all models when every one is trained); quality runs on every model.
    speed_models: list[str] | None = None
    log: Log = field(default=print)

    def __post_init__(self) -> None:
        if self.quick:
            self.throughput_images = min(self.throughput_images, 32)
            self.index_queries = min(self.index_queries, 100)
            self.trees = (10, 50)
            self.search_ks = (-1, 5000)
            if self.scale_sizes == (100_000, 1_000_000):
                self.scale_sizes = (20_000,)
            self.scale_queries = min(self.scale_queries, 100)
            self.projection_points = min(self.projection_points or 2000, 2000)
            self.projection_models = min(self.projection_models or 2, 2)
            self.dashboard_queries = min(self.dashboard_queries, 3)


def machine_description() -> dict[str, str]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "bf16 autocast": "yes",
    }


def _timed(fn: Callable[[], object], repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bench_throughput(catalog: Catalog, config: BenchConfig) -> pd.DataFrame:
    """img/s of the forward pass at ``batch_size`` for fp32 (as loaded), fp32 with BatchNorm folded, and bf16
    autocast, plus each mode's cosine to plain fp32 on the same images; preprocessing timed separately."""
    sample = catalog.sample(min(config.throughput_images, len(catalog)), seed=1)
    images = [open_image(path) for path in sample.image_paths()]
    rows = []
    for model in config.speed_models or config.models:
        reference: np.ndarray | None = None
        default_precision = create_encoder(model).precision
        for mode in ("fp32-unfolded", "fp32", "bf16"):
            encoder = create_encoder(model, precision="bf16" if mode == "fp32-unfolded" else mode)  # type: ignore[arg-type]
            if mode == "fp32-unfolded":
                encoder.precision = "fp32"  # same module as bf16 mode, i.e. BatchNorm not folded
            if not isinstance(encoder, TorchImageEncoder):
                continue
            prep_s = _timed(lambda: preprocess_images(images, encoder.spec.preprocess))
            batch = preprocess_images(images, encoder.spec.preprocess)
            encoder.embed_tensor(batch[: config.batch_size])  # warm-up: oneDNN picks kernels on first call

            def run() -> np.ndarray:
                return np.concatenate(
                    [encoder.embed_tensor(batch[i : i + config.batch_size]) for i in range(0, len(batch), config.batch_size)]
                )

            seconds = _timed(run, repeats=2)
            vectors = run()
            if reference is None:
                reference = vectors
            cosine = (vectors * reference).sum(axis=1)
            rows.append(
                {
                    "model": model,
                    "mode": mode,
                    "default": mode == default_precision,
                    "batch": config.batch_size,
                    "img_per_s": len(batch) / seconds,
                    "preprocess_img_per_s": len(images) / prep_s,
                    "min_cos_vs_fp32": float(cosine.min()),
                    "mean_cos_vs_fp32": float(cosine.mean()),
                }
            )
            config.log(f"throughput {model} {mode}: {rows[-1]['img_per_s']:.1f} img/s")
    return pd.DataFrame(rows)


def bench_quality(
    catalog: Catalog, embeddings: dict[str, EmbeddingSet], config: BenchConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Micro and macro retrieval metrics per model and label column (exact search, every item a query)."""
    rows = []
    per_category = []
    labels = [catalog.label_column, *[c for c in config.extra_labels if c in catalog.columns and c != catalog.label_column]]
    for model, emb in embeddings.items():
        for label in labels:
            report = evaluate_embeddings(emb, catalog, label_column=label, ks=config.ks)
            counts = {
                "n_queries": report.summary["n_queries"],
                "n_skipped": report.summary["n_skipped"],
                "n_categories": report.macro["n_categories"],
            }
            for average, values in (("micro", report.summary), ("macro", report.macro)):
                metrics = {k: v for k, v in values.items() if not k.startswith("n_")}
                rows.append({"model": model, "label": label, "average": average, **metrics, **counts})
            if label == catalog.label_column:
                per_category.append(report.per_category.assign(model=model))
            config.log(f"quality {model} by {label}: P@5 {report.summary['precision@5']:.3f}")
    return pd.DataFrame(rows), pd.concat(per_category, ignore_index=True) if per_category else pd.DataFrame()


def _latencies(search: Callable[[np.ndarray], object], queries: np.ndarray) -> np.ndarray:
    out = np.empty(len(queries))
    for i, vector in enumerate(queries):
        started = time.perf_counter()
        search(vector)
        out[i] = time.perf_counter() - started
    return out * 1000.0


def bench_index(embeddings: EmbeddingSet, config: BenchConfig, work_dir: Path, k: int = 10) -> pd.DataFrame:
    """Annoy build time, size, p50/p95 latency and recall@k vs exact over n_trees x search_k; exact as baseline."""
    rng = np.random.default_rng(0)
    n_queries = min(config.index_queries, len(embeddings))
    rows_q = np.sort(rng.choice(len(embeddings), size=n_queries, replace=False))
    queries = embeddings.vectors[rows_q]
    exact = ExactIndex.from_embeddings(embeddings)
    truth = exact.search_rows(queries, k, exclude_rows=rows_q)
    lat = _latencies(lambda v: exact.search(v, k), queries)
    rows = [
        {
            "model": embeddings.encoder,
            "index": "exact (numpy)",
            "n_trees": 0,
            "search_k": 0,
            "build_s": 0.0,
            "size_mib": embeddings.vectors.nbytes / 2**20,
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            f"recall@{k}": 1.0,
        }
    ]
    for n_trees in config.trees:
        path = work_dir / f"{embeddings.encoder}-t{n_trees}.ann"
        started = time.perf_counter()
        index = build_annoy(embeddings, path, n_trees=n_trees)
        build_s = time.perf_counter() - started
        for search_k in config.search_ks:
            index.search_k = search_k
            found = index.search_rows(queries, k, exclude_rows=rows_q)
            recall = np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found)])
            lat = _latencies(lambda v: index.search(v, k), queries)
            rows.append(
                {
                    "model": embeddings.encoder,
                    "index": "annoy",
                    "n_trees": n_trees,
                    "search_k": search_k,
                    "build_s": build_s,
                    "size_mib": path.stat().st_size / 2**20,
                    "p50_ms": float(np.percentile(lat, 50)),
                    "p95_ms": float(np.percentile(lat, 95)),
                    f"recall@{k}": float(recall),
                }
            )
            config.log(f"index {embeddings.encoder} trees={n_trees} search_k={search_k}: recall {recall:.3f}")
        index.unload()
    return pd.DataFrame(rows)


def _md(table: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub markdown table (pandas.to_markdown needs tabulate, which lens does not depend on)."""
    def fmt(v: object) -> str:
        if isinstance(v, (float, np.floating)):
            if float(v).is_integer() and abs(float(v)) >= 2:  # counts (n_queries, items) read as floats
                return str(int(v))
            return format(float(v), floatfmt)
        return str(v)

    head = "| " + " | ".join(str(c) for c in table.columns) + " |"
    sep = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, sep, *body])


PUBLISHED_P5 = {"fine-tuned CLIP": 0.886, "fine-tuned ResNet-50": 0.851, "Siamese": 0.607, "VAE": 0.490}


def run_benchmark(catalog: Catalog, config: BenchConfig) -> Path:
    """Run every section, write ``benchmark.md`` and CSVs into ``config.out_dir``; returns the markdown path."""
    out = config.out_dir
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    config.log(f"benchmark on {machine['cpu']} ({machine['cores']} cores), catalog {catalog.name} ({len(catalog)} items)")

    embed_rows = []
    embeddings: dict[str, EmbeddingSet] = {}
    for model in config.models:
        encoder = create_encoder(model)
        emb = embed_catalog(catalog, encoder, cache_dir=config.cache_dir, use_cache=True)
        started = time.perf_counter()
        embed_catalog(catalog, encoder, cache_dir=config.cache_dir, use_cache=True)  # now certainly a cache hit
        cached_load_s = time.perf_counter() - started
        embeddings[model] = emb
        seconds = emb.seconds  # recorded when the vectors were computed, also when they come from the cache
        embed_rows.append(
            {
                "model": model,
                "precision": encoder.precision,
                "items": len(catalog),
                "embedded": len(emb),
                "failed": len(emb.failed),
                "embed_catalog_s": seconds,
                "img_per_s": len(catalog) / seconds if seconds > 0 else float("nan"),
                "cached_load_s": cached_load_s,
            }
        )
        config.log(f"embedded {model}: {len(emb)} vectors in {seconds:.0f}s{' (from cache)' if emb.from_cache else ''}")
    embed_table = pd.DataFrame(embed_rows)

    if config.speed_models is None:
        base = [m for m in config.models if _family(m) != "trained"]
        config.speed_models = base or list(config.models)
    speed = {m: embeddings[m] for m in config.speed_models if m in embeddings}
    config.log(f"quality on {len(embeddings)} models; speed sections on {', '.join(speed)}")
    quality, per_category = bench_quality(catalog, embeddings, config)
    throughput = bench_throughput(catalog, config)
    index_tables = [bench_index(emb, config, out / "indexes") for emb in speed.values()]
    index_table = pd.concat(index_tables, ignore_index=True)
    for ann in (out / "indexes").glob("*"):
        ann.unlink()
    split, split_path = find_split(catalog, config)
    if split is not None:
        heldout, text_table = bench_heldout(catalog, embeddings, split, config)
    else:
        config.log(f"no held-out split at {split_path}: held-out section skipped")
        heldout, text_table = pd.DataFrame(), pd.DataFrame()
    scale = bench_scale(config.scale_sizes, out / "indexes", n_trees=config.scale_trees,
                        search_ks=config.scale_search_ks, n_queries=config.scale_queries, log=config.log)
    projection = bench_projection(speed, config, out / "indexes")
    dashboard = bench_dashboard(catalog, embeddings, config)
    for leftover in (out / "indexes").glob("*"):
        leftover.unlink()
    (out / "indexes").rmdir()
    charts = write_charts(index_table, throughput, scale, out)
    heldout.to_csv(out / "heldout_quality.csv", index=False)
    text_table.to_csv(out / "text_to_image.csv", index=False)
    scale.to_csv(out / "scale.csv", index=False)
    projection.to_csv(out / "projection.csv", index=False)
    dashboard.to_csv(out / "dashboard.csv", index=False)

    quality.to_csv(out / "quality.csv", index=False)
    per_category.to_csv(out / "quality_per_category.csv", index=False)
    throughput.to_csv(out / "throughput.csv", index=False)
    embed_table.to_csv(out / "embed_catalog.csv", index=False)
    index_table.to_csv(out / "index.csv", index=False)

    metric_cols = [f"precision@{k}" for k in config.ks] + [f"recall@{config.ks[-1]}", "hit@5", f"map@{config.ks[-1]}", "map@r", "r_precision"]
    metric_cols = [c for c in metric_cols if c in quality.columns]
    lines = [
        f"# lens benchmark — {machine['date']}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items() if k != "date"),
        f"Catalog: `{catalog.name}` ({len(catalog)} items, source {catalog.source}); "
        f"{'quick run' if config.quick else 'full run'}.",
        "",
        "## Retrieval quality (exact search; every item is a query, the rest of the catalog is the gallery)",
        "",
        "Relevant = same label. recall@k = share of all relevant items found in the top k; hit@k = at least one.",
        "",
        "Trained models were trained on about 70 % of these items (their split's train part), so their rows in this "
        "section are optimistic: compare models on the held-out section below.",
        "",
    ]
    for (label, average), group in quality.groupby(["label", "average"], sort=False):
        lines += [f"### by {label}, {average} average", "", _md(group[["model", *metric_cols, "n_queries", "n_skipped"]]), ""]
    lines += [
        "Published P@5 on this data family, for reference (fine-tuned models, other splits): "
        + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED_P5.items()) + ".",
        "",
        "## Embedding the catalog (default precision of each encoder)",
        "",
        _md(embed_table, ".1f"),
        "",
        f"## Encoder throughput (forward pass, batch {config.batch_size}, {config.throughput_images} catalog images)",
        "",
        f"Throughput, index sweep and projection run on: {', '.join(config.speed_models or [])} (a trained model runs"
        " its base architecture, so its speed is its base's; quality above and below covers every model).",
        "",
        "`fp32-unfolded`: plain fp32 (channels_last); `fp32`: BatchNorm folded into the convolutions (lens's fp32 "
        "path); `bf16`: CPU autocast to bfloat16 (channels_last, BatchNorm not folded). Cosines are to `fp32-unfolded`.",
        "",
        _md(throughput, ".4f"),
        "",
        f"## Index: Annoy vs exact, recall@10 and latency over {config.index_queries} queries (self excluded)",
        "",
        "`search_k = -1` is annoy's default (n_trees x k).",
        "",
        _md(index_table, ".3f"),
        "",
    ]
    lines += heldout_lines(heldout, text_table, split, split_path, metric_cols)
    lines += scale_lines(scale, config)
    lines += [
        "## Projection: UMAP and PCA time per model",
        "",
        "lens.projection.umap_2d with lens's defaults (n_neighbors 15, min_dist 0.1, cosine, seed 0: single-threaded)"
        " on " + (f"a {config.projection_points}-point sample" if config.projection_points else "the whole catalog")
        + ". Each model in a fresh process: `umap_cold_s` is the first call (imports umap, compiles numba code unless"
        " numba's on-disk cache already holds it), `umap_warm_s` the second call on the same vectors; PCA is"
        " lens.projection.pca_2d.",
        "",
        _md(projection, ".2f") if len(projection) else "(no models)",
        "",
        "## Dashboard: Search page through Streamlit's AppTest",
        "",
        "A fresh process with the embeddings already cached. `cold_start_s`: from importing Streamlit to the Search page"
        " rendered with its default product's results (catalog, encoder, cached embeddings, index); `warm_query_*`:"
        " typing a catalog product id into the product box until that product's results are rendered (script"
        " rerun incl. query embedding lookup, search and result grid; the browser's own rendering is not included).",
        "",
        _md(dashboard, ".1f"),
        "",
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


def heldout_lines(heldout: pd.DataFrame, text_table: pd.DataFrame, split, split_path: Path,  # noqa: ANN001
                  metric_cols: list[str]) -> list[str]:
    lines = ["## Retrieval quality on the held-out split", ""]
    if split is None or not len(heldout):
        return lines + [f"No saved held-out split for this catalog ({split_path}); `python -m lens train` makes one.", ""]
    lines += [
        f"Queries = the {len(split.query)} held-out ids of `{split_path.name}` (seed {split.seed}, never seen by the"
        " trained models); gallery = the whole catalog minus the query; exact search.",
        "",
    ]
    cols = [c for c in metric_cols if c in heldout.columns]
    for (label, average), group in heldout.groupby(["label", "average"], sort=False):
        lines += [f"### held-out, by {label}, {average} average", "", _md(group[["model", *cols, "n_queries"]]), ""]
    first = heldout[(heldout["label"] == heldout["label"].iat[0]) & (heldout["average"] == "micro")]
    ours = [{"model": m, "precision@5": p} for m, p in zip(first["model"], first["precision@5"])]
    table = pd.DataFrame(sorted(ours + PUBLISHED_ROWS, key=lambda r: -r["precision@5"]))
    lines += [
        f"### P@5 next to the published numbers (ours: held-out, by {heldout['label'].iat[0]}, micro)",
        "",
        "The published figures come from other papers' splits and label sets on this data family; they are a"
        " reference point, not a like-for-like comparison.",
        "",
        _md(table),
        "",
        "### Text -> image (query = the held-out product's productDisplayName, hit = its own photo among the whole"
        " catalog)",
        "",
        _md(text_table) if len(text_table) else "No text-capable model available.",
        "",
    ]
    return lines


def scale_lines(scale: pd.DataFrame, config: BenchConfig) -> list[str]:
    lines = [
        f"## Scale: Annoy on synthetic clustered 512-d vectors (n_trees {config.scale_trees}, "
        f"{config.scale_queries} queries)",
        "",
        "1,000 random unit centres plus Gaussian noise, L2-normalised (neighbourhoods exist, as in real embedding"
        " spaces). Each size in a fresh process: `peak_rss_mib` is that process's peak RSS (VmHWM: vectors + annoy's"
        " in-memory build), `start_rss_mib` the same before any vector exists (Python + torch imports); `exact_ms_per_query` is batched exact numpy search over the same vectors (the baseline);"
        " recall@10 is against it, self excluded. Well-separated clusters make this data easier for Annoy than real"
        " embeddings: read its recall as an upper bound, and the catalog sweep above for real recall.",
        "",
        _md(scale, ".2f") if len(scale) else "(no sizes)",
        "",
        "### Where one machine stops being enough",
        "",
        "- Memory: the float32 vectors alone are 2 GiB per million items at 512-d (4 KiB each); exact search needs"
        " them in RAM, and Annoy's build holds its own copy plus the trees (peak RSS above). The saved Annoy file is"
        " about the vectors plus the trees (`size_mib`). On this 24 GiB machine, that puts the in-memory build limit at"
        " a few million 512-d items; annoy's `on_disk_build` builds into a file instead of RAM and raises that limit"
        " to the disk, at a slower build.",
        "- Query time: Annoy's latency grows slowly with size at a fixed search_k, but recall falls as the catalog"
        " grows; holding recall means a larger search_k (more latency) or more trees (bigger file, longer build).",
        "- What lens does today: one Annoy file per (encoder, catalog), built once on one machine and loaded with"
        " mmap, so every process on that machine (CLI, each Streamlit session) shares the same pages of the file"
        " read-only; the index is immutable, so adding items means a rebuild; exact numpy search is the fallback"
        " and the oracle.",
        "- What it would need beyond one machine: build with `on_disk_build`; shard the catalog (e.g. by category or"
        " hash) into several Annoy files on several hosts and merge their top-k; or move to a vector store with"
        " incremental inserts and quantisation (IVF-PQ, HNSW). lens implements none of these today.",
        "",
    ]
    return lines


def _family(model: str) -> str:
    from lens.encoders import list_encoders

    return next((info.spec.family for info in list_encoders() if info.name == model), "")


def default_models() -> list[str]:
    from lens.encoders import list_encoders

    return [info.name for info in list_encoders(available_only=True, include_test=False)]


def run_from_cli(catalog: Catalog, models: Sequence[str], out_dir: str, *, quick: bool, cache_dir: str | None) -> Path:
    return run_benchmark(catalog, BenchConfig(models=list(models), out_dir=Path(out_dir), cache_dir=cache_dir, quick=quick))


# ---------------------------------------------------------------------------------------------------- scale


def clustered_vectors(n: int, dim: int = 512, *, n_clusters: int = 1000, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors around ``n_clusters`` random centres: a stand-in for a large catalog's
    embeddings (neighbourhoods exist, as in real embedding spaces, unlike uniform random vectors)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        stop = min(start + step, n)
        assign = rng.integers(0, n_clusters, size=stop - start)
        block = centres[assign] + (noise / np.sqrt(dim)) * rng.standard_normal((stop - start, dim)).astype(np.float32)
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int, exclude_rows: np.ndarray) -> np.ndarray:
    """Exact top-k rows by cosine, chunked over the gallery so 1M x 512 fits in memory."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), 200_000):
        scores = queries @ vectors[start : start + 200_000].T
        rows = np.arange(start, start + scores.shape[1])
        scores[rows[None, :] == exclude_rows[:, None]] = -np.inf
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_rows = np.concatenate([best_rows, np.broadcast_to(rows, scores.shape)], axis=1)
        top = np.argpartition(-merged_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, top, axis=1)
        best_rows = np.take_along_axis(merged_rows, top, axis=1)
    return best_rows


def _peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM (per address space, so it starts afresh after exec), else
    ru_maxrss (which Linux carries over from the parent across fork + exec, so it can report the parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scale_worker(n: int, dim: int, n_trees: int, search_ks: Sequence[int], n_queries: int, path: str, queue) -> None:  # noqa: ANN001
    """Runs in a fresh process so that its peak RSS is this size's peak memory alone."""
    from annoy import AnnoyIndex as _Annoy

    start_rss_mib = _peak_rss_mib()  # interpreter + imports (torch)
    vectors = clustered_vectors(n, dim)
    rng = np.random.default_rng(1)
    rows_q = np.sort(rng.choice(n, size=n_queries, replace=False))
    queries = vectors[rows_q]
    started = time.perf_counter()
    truth = _exact_topk(vectors, queries, 10, rows_q)
    exact_ms = (time.perf_counter() - started) / n_queries * 1000.0
    index = _Annoy(dim, "angular")
    index.set_seed(0)
    started = time.perf_counter()
    for row, vector in enumerate(vectors):
        index.add_item(row, vector)
    index.build(n_trees, n_jobs=-1)
    build_s = time.perf_counter() - started
    index.save(path)
    size_mib = Path(path).stat().st_size / 2**20
    del vectors
    index.unload()
    index = _Annoy(dim, "angular")
    index.load(path)
    rows = []
    for search_k in search_ks:
        lat = []
        found = []
        for vector, skip in zip(queries, rows_q):
            t = time.perf_counter()
            got = index.get_nns_by_vector(vector, 11, search_k=search_k)
            lat.append(time.perf_counter() - t)
            found.append([r for r in got if r != skip][:10])
        recall = float(np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth, found)]))
        rows.append(
            {
                "items": n,
                "dim": dim,
                "n_trees": n_trees,
                "search_k": search_k,
                "build_s": build_s,
                "size_mib": size_mib,
                "p50_ms": float(np.percentile(np.array(lat) * 1000, 50)),
                "p95_ms": float(np.percentile(np.array(lat) * 1000, 95)),
                "recall@10": recall,
                "exact_ms_per_query": exact_ms,
                "peak_rss_mib": _peak_rss_mib(),
                "start_rss_mib": start_rss_mib,
            }
        )
    index.unload()
    queue.put(rows)


def bench_scale(
    sizes: Sequence[int], work_dir: Path, *, dim: int = 512, n_trees: int = 50,
    search_ks: Sequence[int] = (5000, 20000), n_queries: int = 200, log: Log = print,
) -> pd.DataFrame:
    """Annoy at catalog sizes beyond the sample: build time, peak memory, file size, latency, recall vs exact."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rows: list[dict] = []
    work_dir.mkdir(parents=True, exist_ok=True)
    for n in sizes:
        path = work_dir / f"scale-{n}.ann"
        queue = ctx.Queue()
        proc = ctx.Process(target=_scale_worker, args=(n, dim, n_trees, list(search_ks), n_queries, str(path), queue))
        proc.start()
        result = queue.get()
        proc.join()
        path.unlink(missing_ok=True)
        rows.extend(result)
        log(f"scale {n}: build {result[0]['build_s']:.0f}s, {result[0]['size_mib']:.0f} MiB, recall {result[-1]['recall@10']:.3f}")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- held-out quality


PUBLISHED_ROWS = [
    {"model": "fine-tuned CLIP (published)", "precision@5": 0.886},
    {"model": "fine-tuned ResNet-50 (published)", "precision@5": 0.851},
    {"model": "Siamese (published)", "precision@5": 0.607},
    {"model": "VAE (published)", "precision@5": 0.490},
]


def find_split(catalog: Catalog, config: BenchConfig):  # noqa: ANN201 - lens.train.split.Split | None
    """The saved held-out split of this catalog (``config.split_path`` or the default path), or None."""
    from lens.errors import LensError
    from lens.train.split import default_split_path, load_split

    path = config.split_path or default_split_path(catalog, 0, config.cache_dir)
    if not Path(path).is_file():
        return None, Path(path)
    try:
        return load_split(path, catalog), Path(path)
    except LensError as exc:
        config.log(f"held-out split {path} unusable: {exc}")
        return None, Path(path)


def bench_heldout(
    catalog: Catalog, embeddings: dict[str, EmbeddingSet], split, config: BenchConfig  # noqa: ANN001
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quality with queries = the split's held-out ids, gallery = the whole catalog minus the query (exact search);
    and text->image R@1/5/10 for text-capable models (query = the product's name, hit = its own photo)."""
    rows: list[dict] = []
    text_rows: list[dict] = []
    labels = [catalog.label_column, *[c for c in config.extra_labels if c in catalog.columns and c != catalog.label_column]]
    title = "productDisplayName" if "productDisplayName" in catalog.columns else None
    for model, emb in embeddings.items():
        present = set(emb.ids)
        query_ids = [i for i in split.query if i in present]
        if not query_ids:
            continue
        for label in labels:
            report = evaluate_embeddings(emb, catalog, label_column=label, ks=config.ks, query_ids=query_ids)
            counts = {"n_queries": report.summary["n_queries"], "n_skipped": report.summary["n_skipped"],
                      "n_categories": report.macro["n_categories"]}
            for average, values in (("micro", report.summary), ("macro", report.macro)):
                metrics = {k: v for k, v in values.items() if not k.startswith("n_")}
                rows.append({"model": model, "label": label, "average": average, **metrics, **counts})
            config.log(f"held-out {model} by {label}: P@5 {report.summary['precision@5']:.3f}")
        encoder = create_encoder(model)
        if title is None or not encoder.spec.supports_text:
            continue
        texts = [str(catalog.table[title].iat[catalog.index_of(i)]) or i for i in query_ids]
        started = time.perf_counter()
        text_vectors = encoder.embed_texts(texts)
        text_s = time.perf_counter() - started
        own = np.array([emb.position(i) for i in query_ids])
        sims = text_vectors @ emb.vectors.T
        own_sim = sims[np.arange(len(own)), own]
        rank = (sims > own_sim[:, None]).sum(axis=1)  # 0 = own photo first
        text_rows.append({"model": model, "n_queries": len(own),
                          **{f"recall@{k}": float((rank < k).mean()) for k in (1, 5, 10)},
                          "median_rank": float(np.median(rank) + 1), "text_ms_per_query": text_s / len(own) * 1000})
        config.log(f"text->image {model}: R@10 {text_rows[-1]['recall@10']:.3f}")
    return pd.DataFrame(rows), pd.DataFrame(text_rows)


# ---------------------------------------------------------------------------------------------------- projection


def _projection_worker(vectors_path: str, queue) -> None:  # noqa: ANN001
    """Fresh process: the first UMAP call includes importing umap and compiling its numba code (cold)."""
    from lens.projection import pca_2d, umap_2d

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
    import multiprocessing as mp

    from lens.projection import sample_rows

    ctx = mp.get_context("spawn")
    work_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    models = list(embeddings)[: config.projection_models] if config.projection_models else list(embeddings)
    for model in models:
        emb = embeddings[model]
        picked = sample_rows(len(emb), config.projection_points, seed=0)
        path = work_dir / f"proj-{model}.npy"
        np.save(path, emb.vectors[picked])
        queue = ctx.Queue()
        proc = ctx.Process(target=_projection_worker, args=(str(path), queue))
        proc.start()
        result = queue.get()
        proc.join()
        path.unlink(missing_ok=True)
        rows.append({"model": model, "points": len(picked), "dim": emb.vectors.shape[1], **result})
        config.log(f"projection {model}: UMAP cold {result['umap_cold_s']:.1f}s warm {result['umap_warm_s']:.1f}s")
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------- dashboard


def _dashboard_worker(env: dict[str, str], product_ids: list[str], queue) -> None:  # noqa: ANN001
    """Fresh process: cold = first run of the app and the Search page (imports, catalog, cached embeddings,
    index); warm = typing a product id into the Search page's product box until its results are rendered."""
    os.environ.update(env)
    started = time.perf_counter()
    from streamlit.testing.v1 import AppTest

    app = str(Path(__file__).resolve().parents[1] / "app.py")
    at = AppTest.from_file(app, default_timeout=600)
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
        results = at.session_state["search_results"] if "search_results" in at.session_state else None
        n_results = 0 if results is None else len(results)
    queue.put({"cold_start_s": cold, "warm_query_p50_ms": float(np.percentile(np.array(warm) * 1000, 50)),
               "warm_query_max_ms": float(np.max(warm) * 1000), "queries": len(warm), "results": n_results,
               "errors": "; ".join(errors)[:300] or "none"})


def bench_dashboard(catalog: Catalog, embeddings: dict[str, EmbeddingSet], config: BenchConfig) -> pd.DataFrame:
    """Search page through Streamlit's AppTest in a fresh process: cold start (embeddings cached) and warm query."""
    import multiprocessing as mp

    model = config.dashboard_model or ("efficientnet-lite0" if "efficientnet-lite0" in embeddings else next(iter(embeddings)))
    emb = embeddings[model]
    rng = np.random.default_rng(2)
    product_ids = [emb.ids[i] for i in rng.choice(len(emb), size=min(config.dashboard_queries, len(emb)), replace=False)]
    env = {"LENS_CATALOG": str(catalog.root), "LENS_DEFAULT_MODEL": model, "LENS_LABEL": catalog.label_column,
           "LENS_OFFLINE": "1"}
    if config.cache_dir:
        env["LENS_CACHE_DIR"] = str(config.cache_dir)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_dashboard_worker, args=(env, product_ids, queue))
    proc.start()
    result = queue.get()
    proc.join()
    config.log(f"dashboard {model}: cold {result['cold_start_s']:.1f}s, warm query {result['warm_query_p50_ms']:.0f} ms")
    return pd.DataFrame([{"model": model, "page": "search", **result}])


# -------------------------------------------------------------------------------------------------------- charts


_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        hi = lo + 1.0
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: Path, *, title: str, xlabel: str,
               ylabel: str, logx: bool = False, size: tuple[int, int] = (900, 560)) -> Path:
    """A PNG line chart (markers + lines, one colour per series, legend) drawn with Pillow."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 80, 220, 40, 60
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    xs_all = [x for xs, _ in series.values() for x in xs if np.isfinite(x) and (x > 0 or not logx)]
    ys_all = [y for _, ys in series.values() for y in ys if np.isfinite(y)]
    tx = (lambda v: np.log10(v)) if logx else (lambda v: v)  # noqa: E731
    x_lo, x_hi = (min(map(tx, xs_all)), max(map(tx, xs_all))) if xs_all else (0.0, 1.0)
    y_lo, y_hi = (min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    if y_hi <= y_lo:
        y_lo, y_hi = y_lo - 0.05, y_hi + 0.05
    pad = (y_hi - y_lo) * 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (tx(x) - x_lo) / (x_hi - x_lo) * (w - left - right),
                h - bottom - (y - y_lo) / (y_hi - y_lo) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in _nice_ticks(x_lo, x_hi):
        x = left + (v - x_lo) / (x_hi - x_lo) * (w - left - right)
        draw.line([x, h - bottom, x, h - bottom + 5], fill="black")
        draw.text((x - 15, h - bottom + 8), f"{10 ** v if logx else v:.3g}", fill="black")
    for v in _nice_ticks(y_lo, y_hi):
        y = h - bottom - (v - y_lo) / (y_hi - y_lo) * (h - top - bottom)
        draw.line([left - 5, y, left, y], fill="black")
        draw.line([left, y, w - right, y], fill=(230, 230, 230))
        draw.text((left - 50, y - 6), f"{v:.3g}", fill="black")
    draw.text((left, 12), title, fill="black")
    draw.text(((w - right + left) / 2 - 60, h - 25), xlabel + (" (log scale)" if logx else ""), fill="black")
    draw.text((8, top - 20), ylabel, fill="black")
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        points = [px(x, y) for x, y in sorted(zip(xs, ys)) if np.isfinite(x) and np.isfinite(y) and (x > 0 or not logx)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ly = top + 10 + 18 * i
        draw.rectangle([w - right + 10, ly, w - right + 22, ly + 12], fill=colour)
        draw.text((w - right + 28, ly), name[:28], fill="black")
    img.save(path)
    return path


def bar_chart(labels: Sequence[str], values: Sequence[float], path: Path, *, title: str, ylabel: str,
              colours: Sequence[int] | None = None, legend: dict[str, int] | None = None) -> Path:
    """A PNG vertical bar chart with value labels, drawn with Pillow."""
    from PIL import Image, ImageDraw

    n = max(len(labels), 1)
    w, h = max(600, 40 + 38 * n + 200), 560
    left, right, top, bottom = 70, 200, 40, 170
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    finite = [v for v in values if np.isfinite(v)]
    hi = max(finite) * 1.1 if finite and max(finite) > 0 else 1.0
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in _nice_ticks(0.0, hi):
        y = h - bottom - v / hi * (h - top - bottom)
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((left - 55, y - 6), f"{v:.3g}", fill="black")
    slot = (w - left - right) / n
    for i, (label, value) in enumerate(zip(labels, values)):
        colour = _PALETTE[(colours[i] if colours else 0) % len(_PALETTE)]
        x0 = left + i * slot + slot * 0.15
        x1 = left + (i + 1) * slot - slot * 0.15
        if np.isfinite(value):
            y = h - bottom - value / hi * (h - top - bottom)
            draw.rectangle([x0, y, x1, h - bottom], fill=colour)
            draw.text((x0, y - 12), f"{value:.0f}", fill="black")
        # vertical label, one character per line is unreadable; draw it rotated via a small image
        text_img = Image.new("RGB", (bottom - 10, 12), "white")
        ImageDraw.Draw(text_img).text((0, 0), label[: (bottom - 10) // 6], fill="black")
        rotated = text_img.rotate(90, expand=True)
        img.paste(rotated, (int((x0 + x1) / 2 - 6), h - bottom + 5))
    draw.text((left, 12), title, fill="black")
    draw.text((8, top - 20), ylabel, fill="black")
    for i, (name, c) in enumerate((legend or {}).items()):
        ly = top + 10 + 18 * i
        draw.rectangle([w - right + 10, ly, w - right + 22, ly + 12], fill=_PALETTE[c % len(_PALETTE)])
        draw.text((w - right + 28, ly), name[:28], fill="black")
    img.save(path)
    return path


def write_charts(index_table: pd.DataFrame, throughput: pd.DataFrame, scale: pd.DataFrame, out: Path) -> list[Path]:
    """recall-vs-latency per model (annoy sweep, exact as a point), throughput per model x mode, scale sweep."""
    paths = []
    if len(index_table):
        series = {}
        for model, group in index_table.groupby("model", sort=False):
            annoy = group[group["index"] == "annoy"]
            for n_trees, g in annoy.groupby("n_trees"):
                series[f"{model} t{n_trees}"] = (g["p50_ms"].tolist(), g["recall@10"].tolist())
            exact = group[group["index"] != "annoy"]
            series[f"{model} exact"] = (exact["p50_ms"].tolist(), exact["recall@10"].tolist())
        paths.append(line_chart(series, out / "recall_vs_latency.png", title="Index: recall@10 vs p50 query latency",
                                xlabel="p50 latency, ms", ylabel="recall@10", logx=True))
    if len(throughput):
        modes = list(dict.fromkeys(throughput["mode"]))
        paths.append(bar_chart([f"{m} {mode}" for m, mode in zip(throughput["model"], throughput["mode"])],
                               throughput["img_per_s"].tolist(), out / "throughput.png",
                               title="Encoder throughput (forward pass, batch 32)", ylabel="img/s",
                               colours=[modes.index(m) for m in throughput["mode"]],
                               legend={m: i for i, m in enumerate(modes)}))
    if len(scale):
        series = {f"{n:,} items": (g["p50_ms"].tolist(), g["recall@10"].tolist()) for n, g in scale.groupby("items")}
        paths.append(line_chart(series, out / "scale_recall_vs_latency.png",
                                title="Scale (synthetic 512-d): recall@10 vs p50 latency", xlabel="p50 latency, ms",
                                ylabel="recall@10", logx=True))
    return paths
