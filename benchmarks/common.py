"""What every benchmark section shares: the run's settings, timers, runs in a fresh process and the markdown table."""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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
    embed_items: int | None = None  # items embedded (cache off) to time a whole-catalog embedding; None: all
    batch_size: int = 32
    index_queries: int = 1000
    trees: tuple[int, ...] = (10, 25, 50, 100)
    search_ks: tuple[int, ...] = (-1, 1000, 2000, 5000, 10000, 20000)
    extra_labels: tuple[str, ...] = ("subCategory",)
    scale_sizes: tuple[int, ...] = (100_000, 1_000_000)
    scale_queries: int = 200
    scale_trees: int = 50
    scale_search_ks: tuple[int, ...] = (1000, 5000, 20000, 50000)
    projection_points: int | None = None  # None: the whole catalog
    projection_models: int | None = None  # None: every model
    dashboard_model: str | None = None  # default: efficientnet-lite0 if benchmarked, else the first model
    dashboard_queries: int = 5
    split_path: Path | None = None  # default: lens.train.split.default_split_path(catalog, seed 0)
    # throughput, index sweep and projection: a trained model runs its base architecture, so by default these run
    # on the non-trained models only (all models when every one is trained); quality runs on every model.
    speed_models: list[str] | None = None
    # throughput only, with seeded random weights (speed does not depend on the weights' values): None = in a full
    # run, every zoo encoder whose weights are not on this machine; none in quick mode
    architecture_models: list[str] | None = None
    architecture_images: int = 64
    log: Log = field(default=print)

    def __post_init__(self) -> None:
        if self.quick:
            self.throughput_images = min(self.throughput_images, 32)
            self.embed_items = min(self.embed_items or 256, 256)
            self.index_queries = min(self.index_queries, 100)
            self.trees = (10, 50)
            self.search_ks = (-1, 1000)
            if self.scale_sizes == (100_000, 1_000_000):
                self.scale_sizes = (20_000,)
            self.scale_queries = min(self.scale_queries, 100)
            self.projection_points = min(self.projection_points or 2000, 2000)
            self.projection_models = min(self.projection_models or 2, 2)
            self.dashboard_queries = min(self.dashboard_queries, 3)
            if self.architecture_models is None:
                self.architecture_models = []


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    """The best wall time of ``repeats`` calls of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def latencies_ms(search: Callable[[np.ndarray], object], queries: np.ndarray) -> np.ndarray:
    """``(Q,)`` float64 milliseconds of ``search`` on each ``(dim,)`` row of ``queries``, one query at a time."""
    out = np.empty(len(queries))
    for i, vector in enumerate(queries):
        started = time.perf_counter()
        search(vector)
        out[i] = time.perf_counter() - started
    return out * 1000.0


def overlap_recall(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean share of each query's exact top k that an approximate index also returned (ANN recall@k).

    The measure of ``lens.index.recall_at_k_vs_exact``, taken here against exact rows computed once for a whole
    sweep of index settings instead of once per setting.

    Args:
        truth: ``(Q, k)`` int row indices of the exact top k (``lens.vectors.rank_by_cosine``).
        found: ``(Q, k')`` int row indices from the approximate index, ``-1`` where it returned fewer.
    """
    shares = [len(set(t.tolist()) & set(f[f >= 0].tolist())) / max(1, len(t)) for t, f in zip(truth, found)]
    return float(np.mean(shares)) if shares else float("nan")


def run_in_fresh_process(target: Callable[..., None], *args: Any) -> Any:
    """Runs ``target(*args, queue)`` in a new interpreter (spawn) and returns what it put on ``queue``.

    A fresh process measures cold starts (imports, numba compilation) and a peak RSS of its own. ``target`` must be a
    module-level function. A worker that dies before reporting raises here instead of leaving the run waiting.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        while True:
            try:
                return queue.get(timeout=1.0)
            except queue_module.Empty:
                if proc.is_alive():
                    continue
                try:  # it may have reported just before exiting
                    return queue.get(timeout=1.0)
                except queue_module.Empty:
                    raise RuntimeError(
                        f"{target.__name__} exited with code {proc.exitcode} before reporting a result"
                    ) from None
    finally:
        proc.join()


def read_proc_mib(path: str, key: str) -> float | None:
    """The ``key:  <n> kB`` line of a /proc file (``/proc/meminfo``, ``/proc/self/status``) in MiB; None where the
    file or the line cannot be read (not Linux)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def total_ram_mib() -> float:
    """This machine's physical memory (MemTotal), NaN where /proc/meminfo is unreadable."""
    mib = read_proc_mib("/proc/meminfo", "MemTotal")
    return float("nan") if mib is None else mib


def markdown_table(table: pd.DataFrame, floatfmt: str = ".3f") -> str:
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
