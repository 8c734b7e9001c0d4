"""int8 on ONNX Runtime against fp32: held-out precision@5 on the saved split, for the CNN encoders (issue 10).

    python -m benchmarks.int8 [--models mobilenet-v2,efficientnet-lite0,efficientnet-lite2] [--out bench-out/int8.md]

For each model: the fp32 catalog embeddings (lens's default engine, from the cache), the graph statically quantized
by ``lens.encoders.engines.quantize_int8`` calibrated on photos of the split's train part (never a held-out query),
the whole catalog embedded again through that int8 graph (cache off: int8 vectors never enter the fp32 cache), and
``lens.evaluate.evaluate_embeddings`` on the split's held-out queries for both, as ``python -m lens evaluate --split``
computes it. A model passes when |P@5 int8 - P@5 fp32| < 0.005 (the bar of issue 10).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lens.catalog import default_catalog_path, load_catalog
from lens.embed import embed_catalog
from lens.encoders import create_encoder, engines
from lens.encoders.base import TorchImageEncoder, preprocess_images
from lens.evaluate import evaluate_embeddings
from lens.images import open_image
from lens.train.split import get_split

MODELS = ("mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2")
MAX_P5_CHANGE = 0.005


def measure(model: str, catalog, split, calibration_ids: Sequence[str]) -> dict[str, object]:  # noqa: ANN001
    fp32_encoder = create_encoder(model, engine="onnx")
    assert isinstance(fp32_encoder, TorchImageEncoder)
    fp32 = embed_catalog(catalog, fp32_encoder, use_cache=True)
    started = time.perf_counter()
    runner = fp32_encoder.onnx_runner()
    assert isinstance(runner, engines.OnnxRunner) and runner.path is not None
    paths = catalog.subset(calibration_ids).image_paths()
    pixels = preprocess_images([open_image(p) for p in paths], fp32_encoder.spec.preprocess).numpy()
    graph = engines.quantize_int8(runner.path.read_bytes(), pixels)
    quantize_s = time.perf_counter() - started
    int8_encoder = create_encoder(model, engine="onnx")
    assert isinstance(int8_encoder, TorchImageEncoder)
    int8_runner = engines.OnnxRunner(graph)
    int8_encoder.set_engine("onnx", "int8 (measured)", loader=lambda: int8_runner, strict=True)
    started = time.perf_counter()
    int8 = embed_catalog(catalog, int8_encoder, use_cache=False)
    embed_s = time.perf_counter() - started
    queries = list(split.query)
    report_fp32 = evaluate_embeddings(fp32, catalog, ks=(1, 5, 10), query_ids=queries)
    report_int8 = evaluate_embeddings(int8, catalog, ks=(1, 5, 10), query_ids=queries)
    order = [int8.ids.index(i) for i in fp32.ids]
    cosine = (fp32.vectors * int8.vectors[order]).sum(1)
    p5, p5_int8 = report_fp32.summary["precision@5"], report_int8.summary["precision@5"]
    return {
        "model": model,
        "queries": len(queries),
        "P@5 fp32": p5,
        "P@5 int8": p5_int8,
        "change": p5_int8 - p5,
        "P@1 fp32": report_fp32.summary["precision@1"],
        "P@1 int8": report_int8.summary["precision@1"],
        "mAP@10 fp32": report_fp32.summary["map@10"],
        "mAP@10 int8": report_int8.summary["map@10"],
        "cos min": float(cosine.min()),
        "cos mean": float(cosine.mean()),
        "int8 catalog img/s": len(int8) / embed_s,
        "quantize_s": quantize_s,
        "passes": abs(p5_int8 - p5) < MAX_P5_CHANGE,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=None)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--calibration", type=int, default=192, help="train-part photos to calibrate on")
    parser.add_argument("--out", default="bench-out/int8.md")
    args = parser.parse_args(argv)
    catalog = load_catalog(args.catalog or default_catalog_path())
    split, split_path = get_split(catalog)
    rng = np.random.default_rng(0)
    train = sorted(split.train)
    calibration_ids = [train[i] for i in rng.choice(len(train), size=args.calibration, replace=False)]
    lines = [
        "# int8 (ONNX Runtime static QDQ) vs fp32: held-out precision@5",
        "",
        f"Split {split_path.name}: {len(split.query)} held-out queries, gallery = the whole catalog (as"
        f" `python -m lens evaluate --split`); calibration on {len(calibration_ids)} train-part photos.",
        "",
    ]
    rows = []
    for model in args.models.split(","):
        print(time.strftime("%H:%M:%S"), model, flush=True)
        rows.append(measure(model, catalog, split, calibration_ids))
        print(rows[-1], flush=True)
    head = list(rows[0])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
