"""What a catalog update costs: embed a catalog, add products, embed again (per-item store), against embedding the
updated catalog from scratch; and the Ray Data path against the local one on the same catalog.

    python -m benchmarks.incremental [--catalog DIR] [--base 2000] [--added 100] [--model efficientnet-lite0]
        [--ray-workers 1,2] [--out docs/scale-incremental.md]

The sample catalog's first ``base + added`` photos are copied into a temporary folder (never into the repo); the
catalog before the update is the first ``base`` of them. Every pass runs with its own empty cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.incremental", description=__doc__)
    parser.add_argument("--catalog", default=os.environ.get("LENS_CATALOG", "../shared/data/fashion-products"))
    parser.add_argument("--base", type=int, default=2000)
    parser.add_argument("--added", type=int, default=100)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--ray-workers", default="1,2", help="comma-separated worker counts; '' skips Ray")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
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
