"""``python -m lens bench``: measure lens on a catalog, every speed next to its baseline from the same run.

Sections so far: retrieval quality per encoder (exact search, by the catalog's label column and, when present,
subCategory), encoder throughput per precision mode, and the Annoy n_trees / search_k sweep against exact search.
Writes ``benchmark.md`` plus one CSV per section into the output folder. Not part of the test run.
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
    log: Log = field(default=print)

    def __post_init__(self) -> None:
        if self.quick:
            self.throughput_images = min(self.throughput_images, 32)
            self.index_queries = min(self.index_queries, 100)
            self.trees = (10, 50)
            self.search_ks = (-1, 5000)


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
    for model in config.models:
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

    quality, per_category = bench_quality(catalog, embeddings, config)
    throughput = bench_throughput(catalog, config)
    index_tables = [bench_index(emb, config, out / "indexes") for emb in embeddings.values()]
    index_table = pd.concat(index_tables, ignore_index=True)
    for ann in (out / "indexes").glob("*"):
        ann.unlink()

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
    md_path = out / "benchmark.md"
    md_path.write_text("\n".join(lines))
    config.log(f"wrote {md_path}")
    return md_path


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


def _scale_worker(n: int, dim: int, n_trees: int, search_ks: Sequence[int], n_queries: int, path: str, queue) -> None:  # noqa: ANN001
    """Runs in a fresh process so that ru_maxrss is this size's peak memory alone."""
    import resource

    from annoy import AnnoyIndex as _Annoy

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
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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
