"""Ray Data embedding against the local path on the same photos, in interleaved rounds.

    python -m benchmarks.ray_embed [--catalog DIR] [--photos 800] [--model mobilenet-v2] [--workers 1,2]
        [--rounds 3] [--out FILE]

The first ``--photos`` rows of the catalog (read in place, never copied) are embedded with no cache: by the local
path (:func:`lens.embed.embed_catalog`: decode threads + the engine's own threads), then on Ray Data with each
worker count, and again, ``--rounds`` times, so that a load that comes and goes hits every path alike. One local Ray
instance with as many CPUs as the largest worker count serves every Ray run (its worker processes, their imports and
the page cache warm after one untimed run per worker count); each timed Ray run includes its actors' start-up (one
encoder loaded per actor), as every ``lens embed --ray`` pays it. Reports seconds per round, the median, img/s, the
ratio to the local path's median and the smallest row-by-row cosine to the local vectors.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import markdown_table
from lens.catalog import load_catalog
from lens.embed import embed_catalog
from lens.encoders import create_encoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", default=os.environ.get("LENS_CATALOG", "../shared/data/fashion-products"))
    parser.add_argument("--photos", type=int, default=800)
    parser.add_argument("--model", default="mobilenet-v2")
    parser.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from lens.distributed import _init, _ray, embed_catalog_ray

    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    with tempfile.TemporaryDirectory(prefix="lens-ray-bench-") as tmp:
        catalog = load_catalog(Path(args.catalog), cache_dir=Path(tmp)).subset(list(range(args.photos)))
        encoder = create_encoder(args.model)
        reference = embed_catalog(catalog, encoder, use_cache=False, batch_size=args.batch)  # warm-up + reference
        ray = _ray()
        started = time.perf_counter()
        _init(ray, None, max(workers))
        init_s = time.perf_counter() - started
        seconds: dict[str, list[float]] = {"local": []}
        cosines: dict[str, float] = {"local": 1.0}
        try:
            for n in workers:  # untimed: worker processes import torch / onnxruntime once
                embed_catalog_ray(catalog, args.model, workers=n, use_cache=False, batch_size=args.batch)
                seconds[f"ray-{n}"] = []
            for round_ in range(args.rounds):
                started = time.perf_counter()
                embed_catalog(catalog, encoder, use_cache=False, batch_size=args.batch)
                seconds["local"].append(time.perf_counter() - started)
                for n in workers:
                    started = time.perf_counter()
                    _, out = embed_catalog_ray(catalog, args.model, workers=n, use_cache=False, batch_size=args.batch)
                    seconds[f"ray-{n}"].append(time.perf_counter() - started)
                    assert out.ids == reference.ids
                    cos = float(np.min(np.sum(out.vectors * reference.vectors, axis=1)))
                    cosines[f"ray-{n}"] = min(cosines.get(f"ray-{n}", 1.0), cos)
                print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f}s" for k, v in seconds.items()), flush=True)
        finally:
            ray.shutdown()
    local = statistics.median(seconds["local"])
    rows = []
    for name, values in seconds.items():
        med = statistics.median(values)
        rows.append(
            {
                "path": "local (threads + engine)" if name == "local" else f"Ray Data, {name.split('-')[1]} worker(s)",
                "seconds per round": " / ".join(f"{v:.1f}" for v in values),
                "median s": round(med, 1),
                "img/s": round(args.photos / med, 1),
                "vs local": f"{local / med:.2f}x",
                "min cosine to local": f"{cosines[name]:.6f}",
            }
        )
    text = [
        f"# Ray Data vs local embedding ({args.model}, {args.photos} photos, {args.rounds} interleaved rounds)",
        "",
        markdown_table(pd.DataFrame(rows)),
        "",
        f"Local Ray start (ray.init, num_cpus={max(workers)}): {init_s:.1f} s, paid once per command, not in the rows.",
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
    ]
    print("\n".join(text))
    if args.out:
        Path(args.out).write_text("\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
