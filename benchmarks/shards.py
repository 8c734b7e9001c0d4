"""Sharded Annoy serving (``lens.sharded``) at 1M and 10M synthetic catalog-like vectors.

``python -m benchmarks.shards --size 1m``: 1 vs 4 vs 16 hash shards over the same 1M vectors (512-d,
:func:`benchmarks.scale.clustered_vectors`, calibrated to the catalog), each built in a fresh process by
``lens.sharded.build_sharded`` (``on_disk_build``, one build thread): build time, peak memory (VmHWM, and the
anonymous part of it, RssAnon: what must fit in RAM; file-backed pages of the mmapped index are page cache the kernel
can drop), index size, recall@10 against exact search over all 1M vectors and p50/p99 latency of the fan-out query
(threads, merged by cosine) at a sweep of per-shard search_k.

``python -m benchmarks.shards --size 10m``: 10M vectors never held in memory. One streaming pass generates them a block
at a time, keeps the exact top 10 of each query over all 10M rows and over each shard's rows, and appends each block's
rows to one raw float32 file per hash shard. Then the shards are built ``--jobs`` at a time (2: one per core; each in a
fresh process with one Annoy thread, reading its vectors by memory map, ``on_disk_build``; a built shard's raw file is
deleted at once) until the time box runs out; the report gives each built shard's build
wall and CPU time, memory and size; recall@10 against that shard's exact top 10 and latency, measured shard by shard
(:func:`evaluate_shards`: 16 shards are 26 GiB of index, more than this machine's RAM); when every shard was built,
recall over all 10M of the shards' answers merged as the fan-out merges them; and the fan-out's own latency on a few
queries. Everything written under ``--work`` is deleted at the end, unless ``--keep`` (then ``--reuse`` measures the
kept shards again without building them).

Not part of the test run; the figures go to docs/scale.md ("Sharded serving").
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import latencies_ms, markdown_table, overlap_recall, read_proc_mib, run_in_fresh_process
from benchmarks.scale import clustered_blocks

K = 10


class MemorySampler:
    """Samples /proc/self/status every 50 ms in a thread: the highest RssAnon and VmRSS seen, and VmHWM at the end."""

    def __init__(self) -> None:
        self.anon_mib = 0.0
        self.rss_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.anon_mib = max(self.anon_mib, read_proc_mib("/proc/self/status", "RssAnon") or 0.0)
            self.rss_mib = max(self.rss_mib, read_proc_mib("/proc/self/status", "VmRSS") or 0.0)
            self._stop.wait(0.05)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def hwm_mib(self) -> float:
        return read_proc_mib("/proc/self/status", "VmHWM") or float("nan")


class TopK:
    """The exact top ``k`` (cosine) of each of ``Q`` queries over rows seen block by block (self rows excluded)."""

    def __init__(self, n_queries: int, k: int = K) -> None:
        self.k = k
        self.scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
        self.rows = np.full((n_queries, k), -1, dtype=np.int64)

    def add(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """``scores`` ``(Q, m)`` of the global ``rows`` ``(m,)``; excluded pairs already set to ``-inf``."""
        if scores.shape[1] == 0:
            return
        take = min(self.k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        all_scores = np.concatenate([self.scores, np.take_along_axis(scores, part, axis=1)], axis=1)
        all_rows = np.concatenate([self.rows, rows[part]], axis=1)
        best = np.argsort(-all_scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(all_scores, best, axis=1)
        self.rows = np.take_along_axis(all_rows, best, axis=1)


def exact_truth(blocks: Iterable[tuple[int, np.ndarray]], queries: np.ndarray, query_rows: np.ndarray) -> np.ndarray:
    """``(Q, 10)`` rows of the exact top 10 of ``queries`` over every block (float32 matmul), self excluded."""
    top = TopK(len(queries))
    for start, block in blocks:
        scores = queries @ block.T
        rows = np.arange(start, start + len(block))
        _mask_self(scores, query_rows, start, len(block))
        top.add(scores, rows)
    return top.rows


def _mask_self(scores: np.ndarray, query_rows: np.ndarray, start: int, m: int) -> None:
    inside = (query_rows >= start) & (query_rows < start + m)
    scores[np.flatnonzero(inside), query_rows[inside] - start] = -np.inf


def _slices(vectors: np.ndarray, step: int = 100_000) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(vectors), step):
        yield start, vectors[start : start + step]


def _latency_row(lat: np.ndarray) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


# --------------------------------------------------------------------------------------------------------------
# 1M: 1 vs 4 vs 16 shards


def _million_worker(
    n: int, dim: int, n_shards: int, n_trees: int, search_ks: Sequence[int], n_queries: int, work: str, queue: Any
) -> None:
    from lens.embed import EmbeddingSet
    from lens.sharded import build_sharded, partition_rows

    start_mib = read_proc_mib("/proc/self/status", "VmHWM") or 0.0
    vectors = np.empty((n, dim), dtype=np.float32)
    for start, block in clustered_blocks(n, dim):
        vectors[start : start + len(block)] = block
    ids = [str(row) for row in range(n)]
    embeddings = EmbeddingSet(vectors, ids, encoder=f"synthetic-{dim}d", key=f"synthetic-{n}")
    rng = np.random.default_rng(1)
    query_rows = np.sort(rng.choice(n, size=n_queries, replace=False))
    queries = vectors[query_rows]
    partition = partition_rows(ids, n_shards)
    directory = Path(work) / f"s{n_shards}"
    with MemorySampler() as mem:
        started = time.perf_counter()
        index = build_sharded(embeddings, directory, partition, n_trees=n_trees, n_jobs=1)
        build_s = time.perf_counter() - started
    size_mib = sum(p.stat().st_size for p in directory.glob("*.ann")) / 2**20
    sizes = np.bincount(partition.shard_of, minlength=n_shards)
    truth = exact_truth(_slices(vectors), queries, query_rows)
    rows = []
    for search_k in search_ks:
        index.search_k = search_k
        recall = overlap_recall(truth, index.search_rows(queries, K, exclude_rows=query_rows.tolist()))
        lat = latencies_ms(functools.partial(index.search, k=K), queries)
        rows.append(
            {
                "items": n,
                "shards": n_shards,
                "items_per_shard": int(sizes.max()),
                "search_k": search_k,
                "recall@10": recall,
                **_latency_row(lat),
                "build_s": build_s,
                "index_mib": size_mib,
                "peak_rss_mib": mem.hwm_mib,
                "peak_anon_mib": mem.anon_mib,
                "start_rss_mib": start_mib,
            }
        )
    index.unload()
    queue.put(rows)


def bench_million(
    work: Path,
    *,
    n: int = 1_000_000,
    dim: int = 512,
    shard_counts: Sequence[int] = (1, 4, 16),
    n_trees: int = 50,
    search_ks: Sequence[int] = (1000, 5000, 20000),
    n_queries: int = 200,
) -> pd.DataFrame:
    rows: list[dict] = []
    for n_shards in shard_counts:
        result = run_in_fresh_process(_million_worker, n, dim, n_shards, n_trees, list(search_ks), n_queries, str(work))
        shutil.rmtree(work / f"s{n_shards}", ignore_errors=True)
        rows.extend(result)
        print(json.dumps(result), flush=True)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------
# The sample catalog: every layout in one process, queries interleaved (side by side under the same load)


def bench_catalog(
    catalog_dir: Path,
    work: Path,
    *,
    model: str = "efficientnet-lite0",
    shard_counts: Sequence[int] = (1, 4, 16),
    column: str = "masterCategory",
    n_queries: int = 1000,
    filter_value: str = "Footwear",
) -> pd.DataFrame:
    """Recall@10 against exact search and per-query wall and CPU time of the single lens index, hash shards and
    column shards on the catalog's cached vectors; each query is run on every layout before the next query, so load
    on the shared machine hits every layout alike. Filtered rows: queries restricted to ``column = filter_value``
    (lens.search.search_vector with the allowed ids; the column layout also skips the other shards)."""
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder
    from lens.index import ExactIndex, VectorIndex, build_annoy
    from lens.search import search_vector
    from lens.sharded import build_sharded, catalog_partition, partition_rows

    catalog = load_catalog(catalog_dir)
    embeddings = embed_catalog(catalog, create_encoder(model))
    exact = ExactIndex.from_embeddings(embeddings)
    layouts: dict[str, VectorIndex] = {"1 file (lens.index)": build_annoy(embeddings, work / "single.ann")}
    build_s: dict[str, float] = {}
    for n in shard_counts:
        started = time.perf_counter()
        layouts[f"{n} by hash"] = build_sharded(embeddings, work / f"h{n}", partition_rows(embeddings.ids, n), n_jobs=1)
        build_s[f"{n} by hash"] = time.perf_counter() - started
    name = f"4 by {column}"
    layouts[name] = build_sharded(embeddings, work / "c4", catalog_partition(catalog, embeddings, 4, column), n_jobs=1)
    rng = np.random.default_rng(0)
    rows_q = np.sort(rng.choice(len(embeddings), size=min(n_queries, len(embeddings)), replace=False))
    queries = embeddings.vectors[rows_q]
    truth = exact.search_rows(queries, K, exclude_rows=rows_q.tolist())
    value_of = dict(zip(catalog.table["id"].astype(str), catalog.table[column].astype(str)))
    allowed = {i for i, v in value_of.items() if v == filter_value}
    filtered: dict[str, VectorIndex] = {
        f"{n} by hash, {column}={filter_value}": layouts[f"{n} by hash"] for n in shard_counts if n > 1
    }
    filtered[f"{name}, {column}={filter_value}"] = layouts[name].restrict([filter_value])  # type: ignore[attr-defined]
    filtered_truth = [[h.id for h in search_vector(exact, q, K, allowed=allowed)] for q in queries]
    timings: dict[str, list[tuple[float, float]]] = {k: [] for k in [*layouts, *filtered]}
    for q in queries:
        for key, index in layouts.items():
            wall, cpu = time.perf_counter(), time.process_time()
            index.search(q, K)
            timings[key].append((time.perf_counter() - wall, time.process_time() - cpu))
        for key, index in filtered.items():
            wall, cpu = time.perf_counter(), time.process_time()
            search_vector(index, q, K, allowed=allowed)
            timings[key].append((time.perf_counter() - wall, time.process_time() - cpu))
    out = []
    for key in timings:
        if key in layouts:
            found = layouts[key].search_rows(queries, K, exclude_rows=rows_q.tolist())
            recall = overlap_recall(truth, found)
        else:
            got = [[h.id for h in search_vector(filtered[key], q, K, allowed=allowed)] for q in queries]
            recall = float(np.mean([len(set(g) & set(t)) / max(1, len(t)) for g, t in zip(got, filtered_truth)]))
        wall_ms = np.array([t[0] for t in timings[key]]) * 1000
        cpu_ms = np.array([t[1] for t in timings[key]]) * 1000
        index = layouts.get(key) or filtered[key]
        out.append(
            {
                "layout": key,
                "shards searched": len(getattr(index, "shards", [0])),
                "recall@10": recall,
                "p50_ms": float(np.percentile(wall_ms, 50)),
                "p99_ms": float(np.percentile(wall_ms, 99)),
                "cpu_ms_mean": float(cpu_ms.mean()),
                "build_s": build_s.get(key, float("nan")),
            }
        )
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------------------------
# 10M: streamed to per-shard files, shards built one by one within a time box


def _shard_worker(vec_path: str, rows_path: str, shard: int, dim: int, n_trees: int, out: str, queue: Any) -> None:
    import resource

    from lens.sharded import build_shard

    rows = np.load(rows_path)
    vectors = np.memmap(vec_path, dtype=np.float32, mode="r", shape=(len(rows), dim))
    with MemorySampler() as mem:
        started, cpu = time.perf_counter(), time.process_time()
        build_shard(
            Path(out),
            vectors,
            [str(r) for r in rows.tolist()],
            n_trees=n_trees,
            n_jobs=1,
            encoder=f"synthetic-{dim}d",
            embedding_key="synthetic-10m",
            extra={"shard": shard},
        )
        build_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    usage = resource.getrusage(resource.RUSAGE_SELF)
    queue.put(
        {
            "build_s": build_s,
            "cpu_s": cpu_s,  # the build's own CPU time: what survives a loaded machine
            "process_cpu_s": usage.ru_utime + usage.ru_stime,  # the worker's whole life, imports included
            "peak_rss_mib": mem.hwm_mib,
            "peak_anon_mib": mem.anon_mib,
        }
    )


def build_shards_in_parallel(
    work: Path,
    shard_rows: Sequence[np.ndarray],
    *,
    dim: int,
    n_trees: int,
    jobs: int,
    deadline: float = float("inf"),
    keep_vectors: bool = False,
) -> list[dict[str, Any]]:
    """Build the shards whose raw vectors ``work/vectors-NNN.f32`` were written, ``jobs`` at a time, each in a fresh
    process with one Annoy thread (one process per core: Annoy's build threads share one Python add loop and one
    checksum, so separate processes use the cores better). A shard starts only if the slowest build so far, plus
    10 %, still ends before ``deadline``. A built shard's raw vectors are deleted (unless ``keep_vectors``), so the
    raw files and the index never need the disk together.

    Returns:
        One dict per built shard, in shard order: ``shard``, ``items``, ``build_s`` (wall), ``cpu_s``,
        ``process_cpu_s``, ``index_mib``, ``peak_rss_mib``, ``peak_anon_mib``, ``started_s`` / ``ended_s`` (from the
        first start).
    """
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    built: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def one(s: int) -> dict[str, Any] | None:
        with lock:
            slowest = max((b["build_s"] for b in built), default=0.0)
        if built and time.time() + slowest * 1.1 > deadline:
            print(f"time box: shard {s} not started", flush=True)
            return None
        rows_path = work / f"rows-{s:03d}.npy"
        np.save(rows_path, shard_rows[s])
        out = work / f"shard-{s:03d}.ann"
        started = time.perf_counter() - t0
        result = run_in_fresh_process(
            _shard_worker, str(work / f"vectors-{s:03d}.f32"), str(rows_path), s, dim, n_trees, str(out)
        )
        result.update(
            shard=s,
            items=len(shard_rows[s]),
            index_mib=out.stat().st_size / 2**20,
            started_s=started,
            ended_s=time.perf_counter() - t0,
        )
        rows_path.unlink()
        if not keep_vectors:
            (work / f"vectors-{s:03d}.f32").unlink()
        free_gib = shutil.disk_usage(work).free / 2**30
        print(json.dumps(result | {"disk_free_gib": round(free_gib, 1)}), flush=True)
        with lock:
            built.append(result)
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, range(len(shard_rows))))
    return [r for r in results if r is not None]


def bench_ten_million(
    work: Path,
    *,
    n: int = 10_000_000,
    dim: int = 512,
    n_shards: int = 16,
    n_trees: int = 50,
    search_ks: Sequence[int] = (1000, 5000, 20000),
    n_queries: int = 200,
    deadline: float = float("inf"),
    keep_vectors: bool = False,
    jobs: int = 2,
    reuse: bool = False,
    fanout_queries: int = 20,
    fanout_budget_s: float = 600.0,
    fanout_search_ks: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The 10M run (see the module docstring); ``deadline`` is a ``time.time()`` no shard build may end after
    (judged by the slowest shard built so far); ``jobs`` shards are built at a time
    (:func:`build_shards_in_parallel`).

    With ``reuse``, ``work`` already holds every shard of an earlier run with the same arguments (``--keep``): the
    streaming pass only recomputes the exact top 10 (the generator is seeded, so the rows are the same; each shard's
    row list is checked against the one on disk) and nothing is built."""
    from lens.sharded import MANIFEST, Partition, hash_shard, write_manifest
    from lens.store import load_array, save_array

    work.mkdir(parents=True, exist_ok=True)
    if reuse:
        missing = [s for s in range(n_shards) if not (work / f"shard-{s:03d}.ann").exists()]
        if missing or not (work / MANIFEST).exists():
            raise SystemExit(f"--reuse: {work} lacks the manifest or shards {missing}; run without --reuse.")
    files = [] if reuse else [open(work / f"vectors-{s:03d}.f32", "wb") for s in range(n_shards)]  # noqa: SIM115
    shard_rows: list[list[np.ndarray]] = [[] for _ in range(n_shards)]
    shard_of = np.empty(n, dtype=np.int64)
    global_top: TopK | None = None
    shard_top: list[TopK] = []
    queries: np.ndarray = np.empty((0, dim), dtype=np.float32)
    query_rows: np.ndarray = np.empty(0, dtype=np.int64)
    started, cpu = time.perf_counter(), time.process_time()
    with MemorySampler() as mem:
        for start, block in clustered_blocks(n, dim):
            m = len(block)
            if start == 0:  # queries: rows of the first block (rows are drawn i.i.d., so any block would do)
                rng = np.random.default_rng(1)
                query_rows = np.sort(rng.choice(m, size=n_queries, replace=False))
                queries = block[query_rows].copy()
                global_top = TopK(n_queries)
                shard_top = [TopK(n_queries) for _ in range(n_shards)]
            assert global_top is not None
            rows = np.arange(start, start + m)
            shards = hash_shard([str(r) for r in rows.tolist()], n_shards)
            shard_of[start : start + m] = shards
            scores = queries @ block.T
            _mask_self(scores, query_rows, start, m)
            global_top.add(scores, rows)
            for s in range(n_shards):
                mine = np.flatnonzero(shards == s)
                shard_top[s].add(scores[:, mine], rows[mine])
                if files:
                    files[s].write(np.ascontiguousarray(block[mine]).tobytes())
                shard_rows[s].append(rows[mine])
            if start % 1_000_000 == 0:
                print(f"generated {start + m:,} rows in {time.perf_counter() - started:.0f}s", flush=True)
    for fh in files:
        fh.close()
    stream_s, stream_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    stream_mem = {"peak_rss_mib": mem.hwm_mib, "peak_anon_mib": mem.anon_mib}
    print(f"stream: {stream_s:.0f}s wall, {stream_cpu_s:.0f}s CPU, {stream_mem}", flush=True)
    assert global_top is not None
    rows_of = [np.concatenate(shard_rows[s]) for s in range(n_shards)]
    built: list[dict[str, Any]] = []
    build_wall_s = 0.0
    if reuse:
        for s in range(n_shards):
            loaded = load_array(work / f"shard-{s:03d}.rows.npy", expect={"shard": s})
            if loaded is None or not np.array_equal(loaded[0], rows_of[s]):
                raise SystemExit(f"--reuse: shard {s} of {work} holds other rows (other --items or --shards?).")
    else:
        partition = Partition("hash", shard_of, [[] for _ in range(n_shards)])
        write_manifest(
            work, partition, dim=dim, n_items=n, n_trees=n_trees, search_k=search_ks[0], embedding_key="synthetic-10m"
        )
        for s in range(n_shards):
            save_array(work / f"shard-{s:03d}.rows.npy", rows_of[s], {"shard": s})
        started = time.perf_counter()
        built = build_shards_in_parallel(
            work, rows_of, dim=dim, n_trees=n_trees, jobs=jobs, deadline=deadline, keep_vectors=keep_vectors
        )
        build_wall_s = time.perf_counter() - started
        print(f"shards: {len(built)} of {n_shards} built in {build_wall_s:.0f}s of wall, {jobs} at a time", flush=True)

    manifest = json.loads((work / MANIFEST).read_text())
    done = [b["shard"] for b in built] if not reuse else list(range(n_shards))
    evaluation = evaluate_shards(
        work,
        manifest,
        done,
        queries,
        query_rows,
        [t.rows for t in shard_top],
        global_top.rows if len(done) == n_shards else None,
        search_ks=search_ks,
        fanout_queries=fanout_queries,
        fanout_budget_s=fanout_budget_s,
        fanout_search_ks=fanout_search_ks,
    )
    return {
        "items": n,
        "stream_s": stream_s,
        "stream_cpu_s": stream_cpu_s,
        "stream_mem": stream_mem,
        "build_wall_s": build_wall_s,
        "build_cpu_s": sum(b["cpu_s"] for b in built),
        "jobs": jobs,
        "reused_shards": reuse,
        "built": built,
        "index_gib": sum((work / f"shard-{s:03d}.ann").stat().st_size for s in done) / 2**30,
        "ram_gib": (read_proc_mib("/proc/meminfo", "MemTotal") or float("nan")) / 1024,
        "query_rows": query_rows.tolist(),
        **evaluation,
    }


def evaluate_shards(
    work: Path,
    manifest: dict[str, Any],
    done: Sequence[int],
    queries: np.ndarray,
    query_rows: np.ndarray,
    shard_truth: Sequence[np.ndarray],
    global_truth: np.ndarray | None,
    *,
    search_ks: Sequence[int],
    fanout_queries: int = 20,
    fanout_budget_s: float = 600.0,
    fanout_search_ks: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Recall and latency of the built shards, shard by shard, then of the fan-out.

    Shard-major: each shard answers every query at every search_k while it is the one in page cache, and each
    query's per-shard top 10 (rows and cosines) is kept; merging them by cosine (ties to the lower row) is exactly
    what the fan-out does (:meth:`lens.sharded.ShardedIndex.search_rows`), so recall over all items needs no
    query-major pass over every shard. That matters at 10M: 16 shards are 26 GiB of index, more than this machine's
    RAM, and a query-major pass would fault pages in from disk for each query. The fan-out itself is then timed on
    ``fanout_queries`` queries (stopping after ``fanout_budget_s``; at each of ``fanout_search_ks``, default all), as
    one host serving every shard would run it.

    Returns:
        ``per_shard`` rows (recall@10 against that shard's exact top 10, p50/p99 ms, CPU ms per query),
        ``fan_out`` rows (recall@10 over all items when every shard was built, the summed CPU ms of one query over
        the shards, and the fan-out's measured p50/p99/CPU ms) and ``merged_rows`` (search_k -> ``(Q, 10)`` rows).
    """
    from lens.sharded import ShardedIndex

    n_queries = len(queries)
    index = ShardedIndex(work, manifest, list(done))
    candidates = {sk: (np.full((n_queries, 0), -1, np.int64), np.full((n_queries, 0), -np.inf)) for sk in search_ks}
    per_shard: list[dict[str, Any]] = []
    for s in done:
        opened = time.perf_counter()
        shard = index.shard(s)  # verified (SHA-256 of the file) and mapped
        open_s = time.perf_counter() - opened
        rows_s = index._rows[s]
        for search_k in search_ks:
            index.search_k = search_k
            found = np.full((n_queries, K), -1, dtype=np.int64)
            scores = np.full((n_queries, K), -np.inf)
            for q, vector in enumerate(queries):
                local, sims = shard._search_rows(vector, K + 1)
                keep = rows_s[local] != query_rows[q]
                got_rows, got_sims = rows_s[local][keep][:K], sims[keep][:K]
                found[q, : len(got_rows)] = got_rows
                scores[q, : len(got_rows)] = got_sims
            rows_c, scores_c = candidates[search_k]
            candidates[search_k] = (np.hstack([rows_c, found]), np.hstack([scores_c, scores]))
            cpu = time.process_time()
            lat = latencies_ms(functools.partial(shard.search, k=K), queries)
            row = {
                "shard": s,
                "search_k": search_k,
                "recall@10": overlap_recall(shard_truth[s], found),
                **_latency_row(lat),
                "cpu_ms_mean": (time.process_time() - cpu) * 1000 / n_queries,
                "open_s": open_s,
            }
            per_shard.append(row)
            print(json.dumps(row), flush=True)
    fan_out: list[dict[str, Any]] = []
    merged_rows: dict[int, list[list[int]]] = {}
    for search_k in search_ks:
        rows_c, scores_c = candidates[search_k]
        merged = np.full((n_queries, K), -1, dtype=np.int64)
        for q in range(n_queries):
            valid = rows_c[q] >= 0
            order = np.lexsort((rows_c[q][valid], -scores_c[q][valid]))[:K]
            merged[q, : len(order)] = rows_c[q][valid][order]
        merged_rows[search_k] = merged.tolist()
        mine = [r for r in per_shard if r["search_k"] == search_k]
        row = {
            "shards searched": len(done),
            "search_k": search_k,
            "shard CPU ms summed": sum(r["cpu_ms_mean"] for r in mine),
            "slowest shard p50_ms": max(r["p50_ms"] for r in mine),
        }
        if global_truth is not None:
            row["recall@10 (all items)"] = overlap_recall(global_truth, merged)
        fan_out.append(row)
        print(json.dumps(row), flush=True)
    for row in fan_out:  # the fan-out as one host serves it: every shard opened, each query in threads over all
        if fanout_search_ks is not None and row["search_k"] not in fanout_search_ks:
            continue
        index.search_k = int(row["search_k"])
        timed: list[tuple[float, float]] = []  # (wall ms, CPU ms) per query
        budget = time.perf_counter() + fanout_budget_s
        for vector in queries[:fanout_queries]:
            wall, cpu = time.perf_counter(), time.process_time()
            index.search(vector, K)
            timed.append(((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
            if time.perf_counter() > budget:
                break
        wall_ms = np.array([t[0] for t in timed])
        row.update(
            {
                "fan-out queries timed": len(timed),
                "fan-out p50_ms": float(np.percentile(wall_ms, 50)),
                "fan-out p99_ms": float(np.percentile(wall_ms, 99)),
                "fan-out cpu_ms_mean": float(np.mean([t[1] for t in timed])),
            }
        )
        print(json.dumps(row), flush=True)
    index.unload()
    return {"per_shard": per_shard, "fan_out": fan_out, "merged_rows": merged_rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("catalog", "1m", "10m"), required=True)
    parser.add_argument("--catalog", default="../shared/data/fashion-products", help="--size catalog: the catalog")
    parser.add_argument("--items", type=int, default=None, help="override the item count (a quick try)")
    parser.add_argument("--work", default="/tmp/lens-shards", help="scratch folder (deleted at the end)")
    parser.add_argument("--out", default="bench-out", help="folder for the CSV / JSON results")
    parser.add_argument("--shards", default=None, help="1m: comma-separated shard counts (1,4,16); 10m: one count")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--until", default=None, help="10m: UTC HH:MM by which shard builds must end")
    parser.add_argument("--jobs", type=int, default=2, help="10m: shards built at a time (one process each)")
    parser.add_argument("--keep", action="store_true", help="10m: keep --work (the shards) for a later --reuse")
    parser.add_argument("--reuse", action="store_true", help="10m: measure the shards a --keep run left in --work")
    parser.add_argument("--fanout-queries", type=int, default=20, help="10m: queries timed on the 16-shard fan-out")
    parser.add_argument(
        "--fanout-budget", type=float, default=600.0, help="10m: seconds of fan-out timing per search_k"
    )
    parser.add_argument(
        "--fanout-search-ks", default=None, help="10m: comma-separated search_k the fan-out is timed at"
    )
    args = parser.parse_args(argv)
    work = Path(args.work)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if args.size == "catalog":
            table = bench_catalog(Path(args.catalog), work, n_queries=args.queries)
            table.to_csv(out / "shards-catalog.csv", index=False)
            print(markdown_table(table))
        elif args.size == "1m":
            counts = tuple(int(c) for c in (args.shards or "1,4,16").split(","))
            table = bench_million(work, n=args.items or 1_000_000, shard_counts=counts, n_queries=args.queries)
            table.to_csv(out / "shards-1m.csv", index=False)
            print(markdown_table(table))
        else:
            deadline = float("inf")
            if args.until:
                import datetime as _dt

                hh, mm = (int(x) for x in args.until.split(":"))
                now = _dt.datetime.now(_dt.UTC)
                deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
            result = bench_ten_million(
                work,
                n=args.items or 10_000_000,
                n_shards=int(args.shards or 16),
                n_queries=args.queries,
                deadline=deadline,
                jobs=args.jobs,
                reuse=args.reuse,
                fanout_queries=args.fanout_queries,
                fanout_budget_s=args.fanout_budget,
                fanout_search_ks=[int(k) for k in args.fanout_search_ks.split(",")] if args.fanout_search_ks else None,
            )
            (out / "shards-10m.json").write_text(json.dumps(result, indent=1))
            for name in ("built", "per_shard", "fan_out"):
                if result[name]:
                    print(markdown_table(pd.DataFrame(result[name])))
    finally:
        if not (args.size == "10m" and args.keep):
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
