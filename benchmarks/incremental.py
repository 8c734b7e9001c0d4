"""What a catalog update costs: embed a catalog, add products, embed again (per-item store), against embedding the
updated catalog from scratch; and the Ray Data path against the local one on the same catalog.

    python -m benchmarks.incremental [--catalog DIR] [--base 2000] [--added 100] [--model efficientnet-lite0]
        [--ray-workers 1,2] [--out docs/scale-incremental.md]

The sample catalog's first ``base + added`` photos are copied into a temporary folder (never into the repo); the
catalog before the update is the first ``base`` of them. Every pass runs with its own empty cache.

    python -m benchmarks.incremental --index-update [--catalog DIR] [--model mobilenet-v2] [--added 100]
        [--removed 50] [--edited 20] [--queries 1000] [--out FILE]

The Annoy index after a catalog update (:mod:`lens.delta`): the whole catalog's main index, then a new version
(``--removed`` products dropped, ``--edited`` given another photo, ``--added`` new ones; the photos are copied and
the new ones generated, mirrored and cropped from catalog photos, in a temporary folder). Measured side by side: the
index update (diff + delta) against a full rebuild, recall@10 of both against the exact index of the new catalog,
and query latency of the main index alone, main + delta, and the rebuilt index. Runs in ``$LENS_CACHE_DIR`` (the
catalog's embeddings should be there: seed it from ``~/.cache/lens/embeddings/<model>``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import markdown_table
from lens.catalog import load_catalog
from lens.embed import embed_catalog, embed_files
from lens.encoders import create_encoder


def _copy_catalog(source: Path, n: int, folder: Path) -> Path:
    table = pd.read_csv(source / "catalog.csv", dtype=str, keep_default_na=False).head(n)
    (folder / "images").mkdir(parents=True)
    for rel in table["image"]:
        target = folder / "images" / Path(rel).name
        shutil.copyfile(source / rel, target)
    table["image"] = ["images/" + Path(rel).name for rel in table["image"]]
    table.to_csv(folder / "catalog.csv", index=False)
    return folder


def _variant(source: Path, target: Path, rng: np.random.Generator) -> None:
    """Another photo of a product: ``source`` mirrored and cropped by 4-12 % on each side, saved at ``target``."""
    from PIL import Image, ImageOps

    with Image.open(source) as opened:
        image = ImageOps.mirror(opened.convert("RGB"))
    w, h = image.size
    box = [int(w * rng.uniform(0.04, 0.12)), int(h * rng.uniform(0.04, 0.12))]
    image.crop((box[0], box[1], w - box[0], h - box[1])).save(target, quality=90)


def _latencies(indexes: dict[str, Any], queries: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Milliseconds per query of each index, the indexes taking turns on each query (the same load on each)."""
    names = list(indexes)
    times: dict[str, list[float]] = {name: [] for name in names}
    for q, vector in enumerate(queries):
        for name in names[q % len(names) :] + names[: q % len(names)]:
            started = time.perf_counter()
            indexes[name].search(vector, k)
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: np.asarray(values) for name, values in times.items()}


def index_update(args: argparse.Namespace) -> list[str]:
    """The ``--index-update`` section: markdown lines."""
    from lens.delta import DeltaIndex, drop_delta, update_index
    from lens.index import DEFAULT_N_TREES, ExactIndex, build_annoy, build_index, index_path, recall_at_k_vs_exact
    from lens.itemstore import ItemStore
    from lens.store import resolve_cache_dir

    cache = resolve_cache_dir(None)
    encoder = create_encoder(args.model)
    catalog = load_catalog(Path(args.catalog), cache_dir=cache)
    counted: list[int] = []

    def compute(part, enc, batch_size=32, progress=None):  # noqa: ANN001, ANN202
        counted.append(len(part))
        return embed_files(part, enc, batch_size, progress)

    base = embed_catalog(catalog, encoder, cache_dir=cache, compute=compute)
    # A cache made before the per-item store existed holds the catalog's vectors only: put them in the store, so
    # the update embeds only its new photos (what a cache filled by this lens does by itself).
    store = ItemStore(cache, encoder.name, encoder.identity())
    digests = dict(zip(catalog.ids, catalog.image_digests()))
    if len(store.lookup([digests[i] for i in base.ids])) < len(base):
        store.add([digests[i] for i in base.ids], base.vectors)
    started = time.perf_counter()
    main = build_index(base, cache_dir=cache)
    main_seconds = time.perf_counter() - started

    rng = np.random.default_rng(0)
    table = catalog.table.copy()
    picked = rng.choice(len(table), args.removed + args.edited, replace=False)
    removed = set(table["id"].iloc[picked[: args.removed]])
    edited = set(table["id"].iloc[picked[args.removed :]])
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lens-index-update-") as tmp:
        root = Path(tmp) / "catalog"
        (root / "images").mkdir(parents=True)
        kept = table[~table["id"].isin(removed)].copy()
        new_rel = []
        for item_id, rel in zip(kept["id"], kept["image"]):
            target = root / "images" / Path(rel).name
            if item_id in edited:
                _variant(catalog.root / rel, target, rng)
            else:
                shutil.copyfile(catalog.root / rel, target)
            new_rel.append("images/" + Path(rel).name)
        kept["image"] = new_rel
        sources = table.iloc[rng.choice(len(table), args.added, replace=False)].copy()
        sources["id"] = [f"new-{i:05d}" for i in range(args.added)]
        for item_id, rel in zip(sources["id"], list(sources["image"])):
            _variant(catalog.root / rel, root / "images" / f"{item_id}.jpg", rng)
        sources["image"] = [f"images/{i}.jpg" for i in sources["id"]]
        pd.concat([kept, sources]).to_csv(root / "catalog.csv", index=False)
        updated_catalog = load_catalog(root, cache_dir=cache)

        counted.clear()
        started = time.perf_counter()
        updated = embed_catalog(updated_catalog, encoder, cache_dir=cache, compute=compute)
        embed_seconds = time.perf_counter() - started
        # The command line, end to end (start-up, the cached vectors, the index), on the same cached embeddings.
        # Side by side, --repeats rounds (medians): the command line end to end (start-up, the cached vectors, the
        # index) and the library calls, each update starting afresh (no delta, no index of the new catalog).
        own = index_path(cache, updated, DEFAULT_N_TREES)
        times: dict[str, list[float]] = {"cli --update": [], "cli --rebuild": [], "update": [], "rebuild": []}
        printed = ""
        for _ in range(args.repeats):
            for flag in ("--update", "--rebuild"):
                argv = [sys.executable, "-m", "lens", "index", "--models", args.model, "--catalog", str(root), flag]
                started = time.perf_counter()
                done = subprocess.run([*argv, "--quiet"], capture_output=True, text=True, check=True)
                times[f"cli {flag}"].append(time.perf_counter() - started)
                printed = done.stdout.strip() if flag == "--update" else printed
                drop_delta(own)
            for file in (own, own.with_suffix(".json")):
                file.unlink()  # the rebuilt index would be served before any delta
            fresh = dataclasses.replace(updated)  # no memoised row hash: each call pays for what a new process does
            started = time.perf_counter()
            update = update_index(fresh, cache_dir=cache)
            times["update"].append(time.perf_counter() - started)
            assert isinstance(update.index, DeltaIndex), update.describe()
            drop_delta(own)
            fresh = dataclasses.replace(updated)
            started = time.perf_counter()
            rebuilt = build_annoy(fresh, Path(tmp) / "rebuilt.ann")
            times["rebuild"].append(time.perf_counter() - started)
        update = update_index(updated, cache_dir=cache)
        median = {name: float(np.median(values)) for name, values in times.items()}
        update_seconds, rebuild_seconds = median["update"], median["rebuild"]

        exact = ExactIndex.from_embeddings(updated)
        changed = [updated.position(i) for i in [*update.diff.added, *update.diff.edited]]
        others = np.setdiff1d(np.arange(len(updated)), changed)
        rows = np.concatenate([changed, rng.choice(others, max(0, args.queries - len(changed)), replace=False)])
        queries = updated.vectors[rows]
        recall = {
            "main + delta": recall_at_k_vs_exact(update.index, exact, queries, 10, exclude_rows=rows.tolist()),
            "full rebuild": recall_at_k_vs_exact(rebuilt, exact, queries, 10, exclude_rows=rows.tolist()),
        }
        on_changed = {
            "main + delta": recall_at_k_vs_exact(
                update.index, exact, queries[: len(changed)], 10, exclude_rows=rows[: len(changed)].tolist()
            ),
            "full rebuild": recall_at_k_vs_exact(
                rebuilt, exact, queries[: len(changed)], 10, exclude_rows=rows[: len(changed)].tolist()
            ),
        }
        ms = _latencies(
            {"main index alone (old catalog)": main, "main + delta": update.index, "full rebuild": rebuilt}, queries
        )
        d = update.diff
        steps = pd.DataFrame(
            [
                {"step": f"main index of the {len(base):,} items, built in full", "seconds": round(main_seconds, 2)},
                {
                    "step": f"embed the new catalog ({counted[0] if counted else 0} photos embedded)",
                    "seconds": round(embed_seconds, 2),
                },
                {
                    "step": f"index update: diff + delta of {len(d.delta_ids)} vectors, {len(d.tombstones)} tombstones",
                    "seconds": round(update_seconds, 2),
                },
                {
                    "step": f"full rebuild of the {len(updated):,}-item index instead",
                    "seconds": round(rebuild_seconds, 2),
                },
                {"step": "`python -m lens index --update`, end to end", "seconds": round(median["cli --update"], 2)},
                {"step": "`python -m lens index --rebuild`, end to end", "seconds": round(median["cli --rebuild"], 2)},
            ]
        )
        quality = pd.DataFrame(
            [
                {
                    "index": name,
                    "recall@10 vs exact": recall.get(name, float("nan")),
                    "recall@10, changed items as queries": on_changed.get(name, float("nan")),
                    "p50 ms": float(np.percentile(values, 50)),
                    "p99 ms": float(np.percentile(values, 99)),
                }
                for name, values in ms.items()
            ]
        )
        lines = [
            f"# Index update after a catalog change ({args.model}; +{len(d.added)} added, {len(d.edited)} edited, "
            f"-{len(d.removed)} removed on {len(base):,} items; {len(queries)} queries, self excluded)",
            "",
            markdown_table(steps, floatfmt=".2f"),
            "",
            markdown_table(quality),
            "",
            f"Index update vs full rebuild: {rebuild_seconds / max(update_seconds, 1e-9):.0f}x less time. "
            f"{update.describe()}",
            "",
            f"`index --update` printed: {printed}",
            "",
            f"Seconds: medians of {args.repeats} rounds, the four runs of a round side by side.",
        ]
    print("\n".join(lines))
    return lines


def index_update_synthetic(sizes: list[int], churn: float = 0.01, queries: int = 200) -> list[str]:
    """The index update against a full rebuild on the benchmark's calibrated synthetic vectors (512-d): ``churn`` of
    the items changed (half added, 30 % removed, 20 % edited). Markdown lines."""
    from benchmarks.scale import clustered_vectors
    from lens.delta import update_index
    from lens.embed import EmbeddingSet, save_embeddings
    from lens.index import ExactIndex, build_annoy, build_index, recall_at_k_vs_exact

    rows = []
    for n in sizes:
        n_added, n_removed = round(n * churn * 0.5), round(n * churn * 0.3)
        n_edited = round(n * churn) - n_added - n_removed
        vectors = clustered_vectors(n + n_added + n_edited, seed=1)
        ids = [f"{i:08d}" for i in range(n + n_added)]
        base = EmbeddingSet(vectors=vectors[:n], ids=ids[:n], encoder="synthetic", key=f"synthetic-{n}-v1")
        new_vectors = np.concatenate([vectors[:n], vectors[n : n + n_added]])
        new_vectors[n_removed : n_removed + n_edited] = vectors[n + n_added :]  # edited: another vector
        keep = np.arange(n_removed, n + n_added)
        new = EmbeddingSet(
            vectors=new_vectors[keep], ids=[ids[i] for i in keep], encoder="synthetic", key=f"synthetic-{n}-v2"
        )
        with tempfile.TemporaryDirectory(prefix="lens-delta-synthetic-") as cache:
            save_embeddings(base, cache)
            started = time.perf_counter()
            build_index(base, cache_dir=cache)
            main_seconds = time.perf_counter() - started
            started = time.perf_counter()
            update = update_index(new, cache_dir=cache)
            update_seconds = time.perf_counter() - started
            started = time.perf_counter()
            rebuilt = build_annoy(dataclasses.replace(new), Path(cache) / "rebuilt.ann")
            rebuild_seconds = time.perf_counter() - started
            picked = np.random.default_rng(0).choice(len(new), queries, replace=False)
            exact = ExactIndex.from_embeddings(new)
            q = new.vectors[picked]
            ms = _latencies({"delta": update.index, "rebuilt": rebuilt}, q)
            rows.append(
                {
                    "items": n,
                    "changed": update.diff.changed,
                    "main build s": round(main_seconds, 1),
                    "update s": round(update_seconds, 2),
                    "full rebuild s": round(rebuild_seconds, 1),
                    "recall@10 main + delta": recall_at_k_vs_exact(
                        update.index, exact, q, 10, exclude_rows=picked.tolist()
                    ),
                    "recall@10 rebuilt": recall_at_k_vs_exact(rebuilt, exact, q, 10, exclude_rows=picked.tolist()),
                    "p50 ms main + delta": float(np.percentile(ms["delta"], 50)),
                    "p50 ms rebuilt": float(np.percentile(ms["rebuilt"], 50)),
                }
            )
            update.index.unload()  # type: ignore[attr-defined]
            rebuilt.unload()
    lines = [
        f"# Index update vs full rebuild, synthetic 512-d vectors ({churn:.0%} of the items changed)",
        "",
        markdown_table(pd.DataFrame(rows)),
    ]
    print("\n".join(lines))
    return lines


def index_update_sharded(
    sizes: list[int], n_shards: int = 4, churn: float = 0.01, queries: int = 200, rebuild_up_to: int = 300_000
) -> list[str]:
    """A sharded index's update (:func:`lens.sharded.update_sharded_index`: a delta per shard) against its full
    build, on the calibrated synthetic vectors (512-d, 50 trees per shard, one annoy build thread): ``churn`` of the
    items changed (half added, 30 % removed, 20 % edited), routed to their hash shards. Measured: the full sharded
    build of the older catalog, the update, one shard rebuilt alone (what a shard past the threshold costs), and up to
    ``rebuild_up_to`` items a full sharded build of the new catalog; recall@10 against exact search and p50 latency
    of the older index, the updated one and the rebuilt one. Markdown lines."""
    import gc
    import resource

    from benchmarks.scale import clustered_vectors
    from benchmarks.shards import _slices, exact_truth
    from lens.catalog import Catalog
    from lens.embed import EmbeddingSet, save_embeddings
    from lens.sharded import _publish_shard, build_sharded_index, manifest_partition, update_sharded_index

    no_catalog: Catalog = None  # type: ignore[assignment]  # sharding by hash reads no column

    def recall(index: Any, vectors: np.ndarray, picked: np.ndarray) -> float:
        # exact top 10 by streamed float32 products: ExactIndex would hold a float64 copy (4 GB at 1M x 512)
        truth = exact_truth(_slices(vectors), vectors[picked], picked)
        found = index.search_rows(vectors[picked], 10, exclude_rows=picked.tolist())
        return float(np.mean([len(set(t.tolist()) & set(f[f >= 0].tolist())) / 10 for t, f in zip(truth, found)]))

    rows = []
    for n in sizes:
        n_added, n_removed = round(n * churn * 0.5), round(n * churn * 0.3)
        n_edited = round(n * churn) - n_added - n_removed
        vectors = clustered_vectors(n + n_added + n_edited, seed=1)
        ids = [f"{i:08d}" for i in range(n + n_added)]
        base = EmbeddingSet(vectors=vectors[:n], ids=ids[:n], encoder="synthetic", key=f"synthetic-{n}-s-v1")
        kept = n - n_removed
        new_vectors = np.empty((kept + n_added, vectors.shape[1]), dtype=np.float32)
        new_vectors[:kept] = vectors[n_removed:n]
        new_vectors[:n_edited] = vectors[n + n_added :]  # the first n_edited kept items get another vector
        new_vectors[kept:] = vectors[n : n + n_added]
        new = EmbeddingSet(
            vectors=new_vectors, ids=ids[n_removed:n] + ids[n:], encoder="synthetic", key=f"synthetic-{n}-s-v2"
        )
        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory(prefix="lens-sharded-update-", dir=os.environ.get("TMPDIR")) as cache:
            save_embeddings(base, cache)  # the older catalog's vectors, read back by the update's diff
            started = time.perf_counter()
            older, _ = build_sharded_index(no_catalog, base, n_shards, cache_dir=cache, n_jobs=1)
            build_seconds = time.perf_counter() - started
            picked = rng.choice(n, queries, replace=False)
            q = base.vectors[picked]
            recall_older = recall(older, base.vectors, picked)
            ms_older = _latencies({"older": older}, q)["older"]
            older.unload()
            del base, vectors, q
            gc.collect()
            started = time.perf_counter()
            update = update_sharded_index(no_catalog, new, n_shards, cache_dir=cache, rebuild="never", n_jobs=1)
            update_seconds = time.perf_counter() - started
            picked = rng.choice(len(new), queries, replace=False)
            q = new.vectors[picked]
            recall_updated = recall(update.index, new.vectors, picked)
            ms_updated = _latencies({"updated": update.index}, q)["updated"]
            update.index.unload()
            partition = manifest_partition(update.index.manifest, no_catalog, new)
            started = time.perf_counter()
            _publish_shard(update.index.directory, new, partition, 0, n_trees=50, search_k=1000, n_jobs=1)
            shard_seconds = time.perf_counter() - started
            row = {
                "items": n,
                "shards": n_shards,
                "changed": sum(d.changed for d in update.deltas.values()),
                "full sharded build s": round(build_seconds, 1),
                "update s": round(update_seconds, 1),
                "one shard rebuilt s": round(shard_seconds, 1),
                "recall@10 older index": recall_older,
                "recall@10 updated": recall_updated,
                "p50 ms older": round(float(np.percentile(ms_older, 50)), 2),
                "p50 ms updated": round(float(np.percentile(ms_updated, 50)), 2),
            }
            if n <= rebuild_up_to:
                started = time.perf_counter()
                rebuilt, _ = build_sharded_index(
                    no_catalog, new, n_shards, cache_dir=Path(cache) / "full", rebuild=True, n_jobs=1
                )
                row["full rebuild s"] = round(time.perf_counter() - started, 1)
                row["recall@10 rebuilt"] = recall(rebuilt, new.vectors, picked)
                row["p50 ms rebuilt"] = round(float(np.percentile(_latencies({"r": rebuilt}, q)["r"], 50)), 2)
                rebuilt.unload()
            row["peak RSS MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            rows.append(row)
            print(row, flush=True)
    lines = [
        f"# Sharded index update vs full build, synthetic 512-d vectors ({churn:.0%} of the items changed, "
        f"{n_shards} hash shards, 50 trees, search_k 1,000 per shard, {queries} queries)",
        "",
        markdown_table(pd.DataFrame(rows)),
    ]
    print("\n".join(lines))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incremental", description=__doc__)
    parser.add_argument("--catalog", default=os.environ.get("LENS_CATALOG", "../shared/data/fashion-products"))
    parser.add_argument("--base", type=int, default=2000)
    parser.add_argument("--added", type=int, default=100)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--ray-workers", default="1,2", help="comma-separated worker counts; '' skips Ray")
    parser.add_argument("--out", default=None)
    parser.add_argument("--index-update", action="store_true", help="measure the index update (lens.delta) instead")
    parser.add_argument("--removed", type=int, default=50, help="--index-update: products removed")
    parser.add_argument("--edited", type=int, default=20, help="--index-update: products given another photo")
    parser.add_argument("--queries", type=int, default=1000, help="--index-update: queries for recall and latency")
    parser.add_argument("--repeats", type=int, default=3, help="--index-update: rounds of the timed update/rebuild")
    parser.add_argument(
        "--synthetic", default="", help="--index-update: comma-separated sizes of synthetic catalogs to measure instead"
    )
    parser.add_argument(
        "--sharded", type=int, default=0, help="--index-update --synthetic: a sharded index of this many shards"
    )
    args = parser.parse_args(argv)
    if args.index_update:
        sizes = [int(v) for v in args.synthetic.split(",") if v.strip()]
        if args.sharded and sizes:
            lines = index_update_sharded(sizes, args.sharded)
        else:
            lines = index_update_synthetic(sizes) if sizes else index_update(args)
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        return 0
    encoder = create_encoder(args.model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lens-incremental-") as tmp:
        root = _copy_catalog(Path(args.catalog), args.base + args.added, Path(tmp) / "catalog")
        full = load_catalog(root, cache_dir=Path(tmp) / "memo")
        before = full.subset(list(range(args.base)))
        counted: list[int] = []

        def compute(catalog, enc, batch_size=32, progress=None):  # noqa: ANN001, ANN202
            counted.append(len(catalog))
            return embed_files(catalog, enc, batch_size, progress)

        embed_catalog(before, encoder, use_cache=False)  # warm-up: the ONNX session, the page cache
        cache = Path(tmp) / "cache"
        started = time.perf_counter()
        embed_catalog(before, encoder, cache_dir=cache, compute=compute)
        first = time.perf_counter() - started
        started = time.perf_counter()
        updated = embed_catalog(full, encoder, cache_dir=cache, compute=compute)
        update = time.perf_counter() - started
        started = time.perf_counter()
        scratch = embed_catalog(full, encoder, use_cache=False)
        from_scratch = time.perf_counter() - started
        same = float(np.min(np.sum(updated.vectors * scratch.vectors, axis=1)))
        rows += [
            {"pass": f"first catalog ({args.base:,} photos)", "embedded": counted[0], "seconds": round(first, 1)},
            {
                "pass": f"+{args.added} products, per-item store",
                "embedded": counted[1],
                "seconds": round(update, 1),
            },
            {
                "pass": f"the {len(full):,} from scratch (no store)",
                "embedded": len(full),
                "seconds": round(from_scratch, 1),
            },
        ]
        print(markdown_table(pd.DataFrame(rows)))
        print(f"min cosine (update vs scratch, row by row): {same:.6f}")
        ray_rows = []
        workers = [int(w) for w in args.ray_workers.split(",") if w.strip()]
        if workers:
            from lens.distributed import _init, _ray, embed_catalog_ray

            for n in workers:
                ray = _ray()
                _init(ray, None, n)
                try:
                    embed_catalog_ray(before, args.model, workers=n, use_cache=False)  # actors + sessions warm
                    started = time.perf_counter()
                    _, on_ray = embed_catalog_ray(full, args.model, workers=n, use_cache=False)
                    seconds = time.perf_counter() - started
                finally:
                    ray.shutdown()
                cos = float(np.min(np.sum(on_ray.vectors * scratch.vectors, axis=1)))
                ray_rows.append(
                    {
                        "path": f"Ray Data, {n} worker(s)",
                        "seconds": round(seconds, 1),
                        "img/s": round(len(full) / seconds, 1),
                        "vs local": f"{from_scratch / seconds:.2f}x",
                        "min cosine to local": f"{cos:.6f}",
                    }
                )
            ray_rows.insert(
                0,
                {
                    "path": "local (threads + ONNX Runtime)",
                    "seconds": round(from_scratch, 1),
                    "img/s": round(len(full) / from_scratch, 1),
                    "vs local": "1.00x",
                    "min cosine to local": "1.000000",
                },
            )
            print(markdown_table(pd.DataFrame(ray_rows)))
    if args.out:
        text = [
            f"# Catalog updates and Ray Data ({args.model}, {args.base:,} + {args.added} photos)",
            "",
            markdown_table(pd.DataFrame(rows)),
            "",
            f"Min cosine, updated vs from scratch, row by row: {same:.6f}.",
        ]
        if ray_rows:
            text += ["", markdown_table(pd.DataFrame(ray_rows))]
        Path(args.out).write_text("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
