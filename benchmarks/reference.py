"""Reference indexes: hnswlib and faiss-cpu beside lens's Annoy, on the same vectors (issue 10, part 3).

Same vectors, queries and exact top 10 (self excluded) for every index; latencies one query at a time with one
thread, as lens's dashboard and CLI call an index (annoy searches on one thread; hnswlib and faiss are told to use
one); recall@10 = mean share of each query's exact top 10 found. Build time with every core, memory as the saved
index file (Annoy's file is its memory image; hnswlib's and faiss's are their in-memory layouts, vectors included).

hnswlib and faiss-cpu are benchmark-only (requirements-bench.txt); lens does not depend on them. When one is missing
its rows are skipped with a line in the log and the report.

    python -m benchmarks.reference [--sizes catalog,100000] [--out bench-out/reference]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import Log, markdown_table
from lens.embed import EmbeddingSet
from lens.index import ExactIndex, build_annoy
from lens.vectors import rank_by_cosine

K = 10
ANNOY_SEARCH_KS = (500, 1000, 1500, 2000, 5000)
HNSW_EFS = (10, 16, 24, 32, 48, 64, 128)
IVF_NPROBES = (1, 2, 4, 8, 16, 32)


def missing_libraries() -> list[str]:
    """The reference libraries that are not installed (``pip install -r requirements-bench.txt`` brings them)."""
    return [
        name
        for name, module in (("hnswlib", "hnswlib"), ("faiss-cpu", "faiss"))
        if not importlib.util.find_spec(module)
    ]


def _search_loop(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, rows_q: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One query at a time: ``(Q, K)`` found rows (self dropped, -1 padded) and ``(Q,)`` latencies in ms.

    ``search(vector)`` returns the row indices of the ``K + 1`` nearest items, best first.
    """
    found = np.full((len(queries), K), -1, dtype=np.int64)
    lat = np.empty(len(queries))
    for i, vector in enumerate(queries):
        started = time.perf_counter()
        rows = search(vector)
        lat[i] = time.perf_counter() - started
        rows = [r for r in np.asarray(rows).tolist() if r != rows_q[i] and r >= 0][:K]
        found[i, : len(rows)] = rows
    return found, lat * 1000.0


def _recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t.tolist()) & set(f[f >= 0].tolist())) / K for t, f in zip(truth, found)]))


def bench_reference(
    vectors: np.ndarray,
    name: str,
    work_dir: Path,
    *,
    n_queries: int = 1000,
    annoy_trees: int = 50,
    log: Log = print,
) -> pd.DataFrame:
    """Exact numpy, Annoy (lens), hnswlib and faiss (flat, HNSW, IVF) on ``(N, dim)`` L2-normalised ``vectors``.

    Returns one row per (index, setting): build_s, size_mib, p50/p99 ms, recall@10.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    n, dim = vectors.shape
    if n <= 4 * K:
        log(f"reference {name}: {n} vectors are too few for a recall@{K} comparison: skipped")
        return pd.DataFrame()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(0)
    rows_q = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    queries = vectors[rows_q]
    truth, _ = rank_by_cosine(queries, vectors, K, exclude=rows_q, chunk_size=64)
    threads = os.cpu_count() or 1
    out: list[dict[str, object]] = []

    def add(index: str, setting: str, build_s: float, size_mib: float, found: np.ndarray, lat: np.ndarray) -> None:
        row = {
            "vectors": name,
            "items": n,
            "index": index,
            "setting": setting,
            "build_s": build_s,
            "size_mib": size_mib,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            f"recall@{K}": _recall(truth, found),
        }
        out.append(row)
        log(f"reference {name} {index} {setting}: recall {row[f'recall@{K}']:.3f} p50 {row['p50_ms']:.3f} ms")

    # exact: lens's own ExactIndex (numpy), one query at a time
    exact = ExactIndex(vectors, [str(i) for i in range(n)], encoder=name)
    found, lat = _search_loop(lambda v: exact._search_rows(v, K + 1)[0], queries, rows_q)  # noqa: SLF001
    add("exact (lens, numpy)", "-", 0.0, vectors.nbytes / 2**20, found, lat)

    # Annoy through lens (what lens serves)
    path = work_dir / f"{name}-t{annoy_trees}.ann"
    started = time.perf_counter()
    ids = [str(i) for i in range(n)]
    annoy = build_annoy(EmbeddingSet(vectors, ids, encoder=name), path, n_trees=annoy_trees)
    build_s = time.perf_counter() - started
    raw = annoy._index  # noqa: SLF001 - the row-level search, without lens's id mapping, as the other libraries
    for search_k in ANNOY_SEARCH_KS:
        found, lat = _search_loop(
            lambda v, s=search_k: raw.get_nns_by_vector(v.tolist(), K + 1, search_k=s), queries, rows_q
        )
        add(
            f"annoy (lens), {annoy_trees} trees",
            f"search_k {search_k}",
            build_s,
            path.stat().st_size / 2**20,
            found,
            lat,
        )
    annoy.unload()
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)

    missing = missing_libraries()
    if missing:
        log(f"reference {name}: {', '.join(missing)} not installed (pip install -r requirements-bench.txt): skipped")
    if "hnswlib" not in missing:
        import hnswlib

        for m in (16, 32):
            index = hnswlib.Index(space="ip", dim=dim)
            index.init_index(max_elements=n, M=m, ef_construction=200, random_seed=0)
            index.set_num_threads(threads)
            started = time.perf_counter()
            index.add_items(vectors, np.arange(n))
            build_s = time.perf_counter() - started
            index.set_num_threads(1)
            hpath = work_dir / f"{name}-hnsw{m}.bin"
            index.save_index(str(hpath))
            size = hpath.stat().st_size / 2**20
            hpath.unlink()
            for ef in HNSW_EFS:
                index.set_ef(max(ef, K + 1))
                found, lat = _search_loop(lambda v, i=index: i.knn_query(v, k=K + 1)[0][0], queries, rows_q)
                add(f"hnswlib M={m}", f"ef {max(ef, K + 1)}", build_s, size, found, lat)
            del index
    if "faiss-cpu" not in missing:
        import faiss

        def faiss_size(index: object, tag: str) -> float:
            fpath = work_dir / f"{name}-{tag}.faiss"
            faiss.write_index(index, str(fpath))
            size = fpath.stat().st_size / 2**20
            fpath.unlink()
            return size

        faiss.omp_set_num_threads(threads)
        flat = faiss.IndexFlatIP(dim)
        started = time.perf_counter()
        flat.add(vectors)
        build_s = time.perf_counter() - started
        faiss.omp_set_num_threads(1)
        found, lat = _search_loop(lambda v: flat.search(v[None], K + 1)[1][0], queries, rows_q)
        add("faiss IndexFlatIP (exact)", "-", build_s, faiss_size(flat, "flat"), found, lat)
        del flat

        faiss.omp_set_num_threads(threads)
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 200
        started = time.perf_counter()
        hnsw.add(vectors)
        build_s = time.perf_counter() - started
        size = faiss_size(hnsw, "hnsw")
        faiss.omp_set_num_threads(1)
        for ef in HNSW_EFS:
            hnsw.hnsw.efSearch = max(ef, K + 1)
            found, lat = _search_loop(lambda v: hnsw.search(v[None], K + 1)[1][0], queries, rows_q)
            add("faiss IndexHNSWFlat M=32", f"efSearch {max(ef, K + 1)}", build_s, size, found, lat)
        del hnsw

        nlist = max(1, round(math.sqrt(n)))  # the usual sqrt(N) lists
        faiss.omp_set_num_threads(threads)
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        started = time.perf_counter()
        ivf.train(vectors)
        ivf.add(vectors)
        build_s = time.perf_counter() - started
        size = faiss_size(ivf, "ivf")
        faiss.omp_set_num_threads(1)
        for nprobe in IVF_NPROBES:
            ivf.nprobe = nprobe
            found, lat = _search_loop(lambda v: ivf.search(v[None], K + 1)[1][0], queries, rows_q)
            add(f"faiss IndexIVFFlat nlist={nlist}", f"nprobe {nprobe}", build_s, size, found, lat)
        del ivf, quantizer
        faiss.omp_set_num_threads(threads)
    return pd.DataFrame(out)


def best_at(table: pd.DataFrame, recall: float = 0.95) -> pd.DataFrame:
    """Per (vectors, index): the fastest setting (p50) that reaches ``recall``, the headline comparison."""
    ok = table[table[f"recall@{K}"] >= recall]
    if not len(ok):
        return ok
    return ok.loc[ok.groupby(["vectors", "index"], sort=False)["p50_ms"].idxmin()].reset_index(drop=True)


def reference_lines(table: pd.DataFrame, note: str = "") -> list[str]:
    """The report's reference-index section."""
    missing = missing_libraries()
    lines = [
        f"## Index reference points: Annoy (lens) vs hnswlib and faiss-cpu, recall@{K} vs latency",
        "",
        "Same vectors, same queries, exact top 10 with the query itself excluded; one query at a time on one thread"
        " (as lens calls its index); build on every core; size = the saved index file (hnswlib and faiss keep the"
        " vectors inside it, Annoy's file does not: lens keeps them beside it in its embeddings .npy).",
        "",
    ]
    if missing:
        lines += [f"Skipped: {', '.join(missing)} not installed (`pip install -r requirements-bench.txt`).", ""]
    if note:
        lines += [note, ""]
    if not len(table):
        return [*lines, "(no rows)", ""]
    best = best_at(table)
    lines += [
        f"Fastest setting of each index that reaches recall@{K} >= 0.95:",
        "",
        markdown_table(best, ".3f") if len(best) else "(none reaches it)",
        "",
        "Every setting:",
        "",
        markdown_table(table, ".3f"),
        "",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=None)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--sizes", default="catalog,100000", help="'catalog' and/or synthetic sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--out", default="bench-out/reference")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    for size in args.sizes.split(","):
        if size == "catalog":
            from lens.catalog import default_catalog_path, load_catalog
            from lens.embed import embed_catalog
            from lens.encoders import create_encoder

            catalog = load_catalog(args.catalog or default_catalog_path())
            emb = embed_catalog(catalog, create_encoder(args.model), use_cache=True)
            tables.append(bench_reference(emb.vectors, f"{args.model} catalog", out / "work", n_queries=args.queries))
        else:
            from benchmarks.scale import clustered_vectors

            vectors = clustered_vectors(int(size), 1280)
            tables.append(
                bench_reference(
                    vectors, f"synthetic 1280-d {int(size):,}", out / "work", n_queries=min(args.queries, 300)
                )
            )
        table = pd.concat(tables, ignore_index=True)
        table.to_csv(out / "reference.csv", index=False)
        (out / "reference.md").write_text("\n".join(reference_lines(table)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
