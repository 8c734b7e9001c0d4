"""Engines and the catalog pass, measured side by side in one process (issue 10, parts 1 and 2).

    python -m benchmarks.engines [--catalog DIR] [--slice 1000] [--reps 3] [--zoo] [--out bench-out/engines.md]

1. Forward pass only, batch 32, the same preprocessed catalog photos for every engine, modes interleaved (one
   batch of each mode per round, ``--reps`` rounds, median img/s):
   torch fp32 eager (the module as loaded: BatchNorm not folded, NCHW) | lens's torch default (before this change:
   BN folded + channels_last, bf16 autocast where the spec says so) | ONNX Runtime fp32 (lens's default now) |
   ONNX Runtime int8 (static QDQ quantization calibrated on 192 other catalog photos). Cosine of each to torch
   fp32, row by row, on 64 photos. Real weights for mobilenet-v2 / efficientnet-lite0 / -lite2; ``--zoo`` adds
   resnet50, efficientnet-b0/b4, ViT-B/16, CLIP ViT-B/32 and DINOv2-S with random weights (speed only).
2. Catalog pass on a slice of the real catalog: forward alone on in-memory pixels vs end to end from the files
   (decode + preprocess + forward) for lens's default path, plus the pipeline and engine of main before this change.
   Interleaved rounds; median img/s; end-to-end / forward ratio.
3. Quality on the slice (leave-one-out, articleType): precision@5 of the default path, of main's path, of int8,
   and the top-5 neighbour overlap with the default path.

The machine is shared (2 cores): absolute img/s move with the load; ratios within one round are what to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lens.catalog import default_catalog_path, load_catalog
from lens.embed import embed_catalog
from lens.encoders import create_encoder, engines
from lens.encoders.base import TorchImageEncoder, preprocess_images
from lens.images import open_image
from lens.metrics import evaluate_retrieval
from lens.vectors import l2_normalize

REAL = ["mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2"]
ZOO = ["resnet50", "efficientnet-b0", "efficientnet-b4", "vit-b16", "clip-vit-b32", "dinov2-small"]
BATCH = 32

Embed = Callable[[torch.Tensor], np.ndarray]


def log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ main's pipeline


def preprocess_v0(images, preprocess) -> torch.Tensor:  # noqa: ANN001
    """lens's preprocessing before this change: per image resize, crop, to tensor; then stack, float, normalise."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    mode = InterpolationMode.BICUBIC if preprocess.interpolation == "bicubic" else InterpolationMode.BILINEAR
    tensors = []
    for image in images:
        image = TF.resize(image, preprocess.resize_size, interpolation=mode)
        image = TF.center_crop(image, [preprocess.input_size, preprocess.input_size])
        tensors.append(TF.pil_to_tensor(image))
    batch = torch.stack(tensors).float().div_(255.0)
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std)


def catalog_pass_v0(paths: list[Path], embed: Embed, preprocess) -> np.ndarray:  # noqa: ANN001
    """lens's catalog pass before this change: one thread decodes the next batch (full decode) while the main
    thread preprocesses and runs the current one."""
    chunks = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
    out = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(lambda c: [open_image(p) for p in c], chunks[0])
        for n in range(len(chunks)):
            images = pending.result()
            if n + 1 < len(chunks):
                pending = pool.submit(lambda c: [open_image(p) for p in c], chunks[n + 1])
            out.append(embed(preprocess_v0(images, preprocess)))
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------------ helpers


def torch_fp32_eager(name: str, pretrained: bool) -> Embed:
    """The module as loaded (no BatchNorm folding, NCHW), fp32, under inference_mode."""
    encoder = create_encoder(name, engine="torch", precision="bf16", pretrained=pretrained)  # bf16: nothing folded
    assert isinstance(encoder, TorchImageEncoder)
    model = encoder.model.to(memory_format=torch.contiguous_format).eval()

    def run(batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            features = model(batch)
        return l2_normalize(features.float().reshape(len(batch), -1).numpy())

    return run


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def openvino_mode(graph_path: Path, precision: str) -> Embed:
    """OpenVINO's CPU plugin on lens's cached fp32 ONNX graph, inference precision ``f32`` or ``bf16`` (an outside
    reference: benchmark-only, pinned in requirements-bench.txt; lens never runs it)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        str(graph_path),
        "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": engines.lens_threads()},
    )
    request = compiled.create_infer_request()

    def run(batch: torch.Tensor) -> np.ndarray:
        result = request.infer({0: np.ascontiguousarray(batch.numpy(), dtype=np.float32)})
        return l2_normalize(np.asarray(next(iter(result.values())), dtype=np.float32).reshape(len(batch), -1))

    return run


def paired_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of ``slow[i] / fast[i]`` (seconds, one round each): how many times the throughput of
    ``fast`` is that of ``slow``."""
    return statistics.median(a / b for a, b in zip(slow, fast))


def median_rate(times: list[float], n: int) -> float:
    return n / statistics.median(times)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def p_at_5(vectors: np.ndarray, labels: np.ndarray) -> float:
    return float(evaluate_retrieval(vectors, labels, ks=(5,)).summary["precision@5"])


def top5(vectors: np.ndarray) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :5]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a, b)]))


# ------------------------------------------------------------------------------------------------------ sections


def forward_section(name: str, photos: list, calibration: list, reps: int, pretrained: bool, int8: bool) -> dict:
    log(f"forward {name}: building")
    spec_pre = create_encoder(name, engine="torch", pretrained=pretrained).spec.preprocess
    batch = preprocess_images(photos[:BATCH], spec_pre)
    check = [preprocess_images(photos[i : i + BATCH], spec_pre) for i in range(0, 64, BATCH)]
    default_torch = create_encoder(name, engine="torch", pretrained=pretrained)  # main's default
    onnx = create_encoder(name, engine="onnx", pretrained=pretrained)
    modes: dict[str, Embed] = {
        "torch fp32 eager": torch_fp32_eager(name, pretrained),
        f"torch default ({default_torch.precision})": default_torch.embed_tensor,
        "ONNX Runtime fp32": onnx.embed_tensor,
    }
    onnx.embed_tensor(batch[:2])  # export (or load) outside the timing
    if int8:
        log(f"forward {name}: int8 calibration on {len(calibration)} photos")
        graph = onnx.onnx_runner().path.read_bytes()
        calib = preprocess_images(calibration, spec_pre).numpy()
        runner = engines.OnnxRunner(engines.quantize_int8(graph, calib))
        modes["ONNX Runtime int8"] = lambda b: l2_normalize(runner(b.numpy()))
    if openvino_installed():
        for precision in ("f32", "bf16"):
            try:
                modes[f"OpenVINO {precision} (reference)"] = openvino_mode(onnx.onnx_runner().path, precision)
            except Exception as exc:  # an outside reference only: its failure must not lose lens's figures
                log(f"forward {name}: OpenVINO {precision} failed: {exc!r}")
    for fn in modes.values():  # warm-up
        fn(batch)
    times: dict[str, list[float]] = {label: [] for label in modes}
    for rep in range(reps):
        for label, fn in modes.items():
            times[label].append(timed(lambda fn=fn: fn(batch)))
        log(f"forward {name}: round {rep + 1}/{reps}", {k: round(BATCH / v[-1], 1) for k, v in times.items()})
    reference = np.concatenate([modes["torch fp32 eager"](b) for b in check])
    rows = {}
    for label, fn in modes.items():
        vectors = np.concatenate([fn(b) for b in check])
        cosine = (vectors * reference).sum(1)
        rows[label] = {
            "img/s": median_rate(times[label], BATCH),
            "best": BATCH / min(times[label]),
            "times": times[label],
            "cos_min": float(cosine.min()),
            "cos_mean": float(cosine.mean()),
        }
    rows["_modes"] = modes
    rows["_onnx"] = onnx
    rows["_default_torch"] = default_torch
    return rows


def catalog_section(name: str, slice_catalog, reps: int, fwd: dict) -> dict:  # noqa: ANN001
    onnx, default_torch = fwd["_onnx"], fwd["_default_torch"]
    preprocess = onnx.spec.preprocess
    paths = slice_catalog.image_paths()
    log(f"catalog {name}: preparing {len(paths)} photos in memory")
    pixels = [
        preprocess_images([open_image(p, draft_size=preprocess.resize_size) for p in paths[i : i + BATCH]], preprocess)
        for i in range(0, len(paths), BATCH)
    ]
    n = len(paths)
    runs: dict[str, Callable[[], np.ndarray]] = {
        "forward only (ONNX fp32)": lambda: np.concatenate([onnx.embed_tensor(b) for b in pixels]),
        "end to end, lens now": lambda: embed_catalog(slice_catalog, onnx, use_cache=False, batch_size=BATCH).vectors,
        "end to end, main (v0 pipeline, torch default)": lambda: catalog_pass_v0(
            paths, default_torch.embed_tensor, preprocess
        ),
        "forward only (torch default)": lambda: np.concatenate([default_torch.embed_tensor(b) for b in pixels]),
    }
    times: dict[str, list[float]] = {label: [] for label in runs}
    vectors: dict[str, np.ndarray] = {}
    for rep in range(reps):
        for label, fn in runs.items():
            started = time.perf_counter()
            vectors[label] = fn()
            times[label].append(time.perf_counter() - started)
        log(f"catalog {name}: round {rep + 1}/{reps}", {k: round(n / v[-1], 1) for k, v in times.items()})
    rates = {label: median_rate(t, n) for label, t in times.items()}
    labels = slice_catalog.labels()
    now = vectors["end to end, lens now"]
    main = vectors["end to end, main (v0 pipeline, torch default)"]
    # main's pipeline with the ONNX engine: what the pixel pipeline alone changes
    v0_onnx = catalog_pass_v0(paths, onnx.embed_tensor, preprocess)
    quality = {
        "P@5 lens now": p_at_5(now, labels),
        "P@5 main": p_at_5(main, labels),
        "P@5 v0 pipeline + ONNX fp32": p_at_5(v0_onnx, labels),
        "top-5 overlap now vs main": overlap(top5(now), top5(main)),
        "top-5 overlap pipeline only (v0 vs now, both ONNX)": overlap(top5(now), top5(v0_onnx)),
        "cos min pipeline only": float((now * v0_onnx).sum(1).min()),
    }
    if "ONNX Runtime int8" in fwd["_modes"]:
        int8 = fwd["_modes"]["ONNX Runtime int8"]
        int8_vectors = np.concatenate([int8(b) for b in pixels])
        quality["P@5 int8"] = p_at_5(int8_vectors, labels)
        quality["top-5 overlap int8 vs fp32"] = overlap(top5(now), top5(int8_vectors))
    return {"rates": rates, "quality": quality, "n": n, "times": times}


# ------------------------------------------------------------------------------------------------------------ GPU


def gpu_status() -> str | None:
    """``None`` when lens would run on a GPU here (driver visible, torch with CUDA); else why not, in words."""
    gpu_info = engines.visible_gpu()
    if gpu_info is None:
        return "no GPU (no NVIDIA driver visible, or LENS_DEVICE=cpu)"
    if not torch.cuda.is_available():
        return f"no GPU usable: {gpu_info.name} is visible but torch {torch.__version__} has no CUDA"
    return None


def gpu_section(name: str, photos: list, reps: int, pretrained: bool = True) -> list[dict]:
    """GPU rows of the engines table: torch on CUDA fp32 (TF32 off, lens's candidate), torch on CUDA with TF32
    (reference: its cosine says why it is off), ONNX Runtime's CUDA provider fp32 (lens's other candidate; a row
    saying why when onnxruntime-gpu is missing), and what ``engine="auto"`` picks, with both figures lens measured.
    Batch :data:`lens.encoders.gpu.GPU_BATCH`, modes interleaved, ``reps`` rounds, median img/s; cosine to torch
    fp32 on the CPU, row by row."""
    from lens.encoders import gpu
    from lens.vectors import l2_normalize

    cpu = create_encoder(name, engine="torch", precision="fp32", pretrained=pretrained)
    assert isinstance(cpu, TorchImageEncoder)
    spec_pre = cpu.spec.preprocess
    tiles = (photos * (gpu.GPU_BATCH // max(len(photos), 1) + 1))[: gpu.GPU_BATCH]
    batch = preprocess_images(tiles, spec_pre).numpy()
    with torch.inference_mode():
        reference = l2_normalize(cpu.model(torch.from_numpy(batch[:64])).float().reshape(64, -1).numpy())
    modes: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    rows: list[dict] = []
    builders = {
        "torch cuda fp32 (TF32 off)": lambda: gpu.TorchCudaRunner(cpu),
        "torch cuda TF32 (reference)": lambda: gpu.TorchCudaRunner(cpu, tf32=True),
        "ONNX Runtime CUDA fp32": lambda: gpu.build_ort_cuda(cpu),
    }
    for label, build in builders.items():
        try:
            modes[label] = build()
        except Exception as exc:  # a missing provider is a row with its reason, not a lost table
            rows.append(
                {"model": name, "mode": label, "img/s": float("nan"), "cos_min": float("nan"), "note": str(exc)}
            )
    for fn in modes.values():
        for _ in range(gpu.WARMUP_CALLS):
            fn(batch)
    times: dict[str, list[float]] = {label: [] for label in modes}
    for _ in range(reps):
        for label, fn in modes.items():
            times[label].append(timed(lambda fn=fn: fn(batch)))
    for label, fn in modes.items():
        cosine = (l2_normalize(fn(batch[:64])) * reference).sum(1)
        rows.append(
            {
                "model": name,
                "mode": label,
                "img/s": median_rate(times[label], len(batch)),
                "cos_min": float(cosine.min()),
                "note": "",
            }
        )
    auto = create_encoder(name, pretrained=pretrained)  # engine auto: lens measures both (or reads its record)
    assert isinstance(auto, TorchImageEncoder)
    auto.embed_tensor(batch[:2])
    figures = ", ".join(f"{k} {v:.0f}" for k, v in sorted((auto.engine_figures or {}).items()))
    rows.append(
        {
            "model": name,
            "mode": f"lens picks: {auto.engine} on {auto.device}",
            "img/s": (auto.engine_figures or {}).get(auto.engine, float("nan")),
            "cos_min": float("nan"),
            "note": f"lens's own measurement: {figures}" if figures else auto.engine_reason,
        }
    )
    del modes
    torch.cuda.empty_cache()
    return rows


def gpu_lines(rows: list[dict], status: str | None) -> list[str]:
    """The report's GPU section: the table, or the line saying there is no GPU."""
    import pandas as pd

    from benchmarks.common import markdown_table

    lines = ["## Engines on the GPU", ""]
    if status is not None:
        return [*lines, f"{status}: no GPU rows (torch cuda fp32, ONNX Runtime CUDA fp32, lens's pick).", ""]
    return [
        *lines,
        f"{torch.cuda.get_device_name()}, batch 128, img/s:",
        "",
        markdown_table(pd.DataFrame(rows), ".3f"),
        "",
    ]


# ---------------------------------------------------------------------------------------- python -m benchmarks

#: A mode is a correct path when every row's cosine to torch fp32 eager is at least this (float rounding, not a
#: coarser number format); the goal "lens's default >= 90% of the fastest correct path" compares among these.
CORRECT_COSINE = 0.999


def bench_engines(catalog, models: list[str], *, reps: int = 3, slice_items: int = 1000, log_fn=print) -> tuple:  # noqa: ANN001
    """The engines table of ``python -m benchmarks``: forward img/s per engine mode in one process (interleaved
    rounds), ratios per round, the catalog pass end to end vs forward, and issue 10's goals as ratios.

    Returns ``(modes, goals)`` DataFrames. ``models``: the CNNs among the benchmarked models (others are skipped).
    """
    import pandas as pd

    names = [m for m in models if m in REAL]
    if not names or len(catalog) < 512:
        return pd.DataFrame(), pd.DataFrame()
    photos = [open_image(p) for p in catalog.image_paths()[-64:]]
    calibration = [open_image(p) for p in catalog.image_paths()[-256:-64]]
    slice_catalog = catalog.subset(range(min(slice_items, len(catalog) - 256)))
    mode_rows, goal_rows = [], []
    for name in names:
        fwd = forward_section(name, photos, calibration, reps, True, int8=True)
        cells = {k: v for k, v in fwd.items() if not k.startswith("_")}
        eager, default = cells["torch fp32 eager"]["times"], cells["ONNX Runtime fp32"]["times"]
        for label, c in cells.items():
            mode_rows.append(
                {
                    "model": name,
                    "mode": label + (" = lens default" if label == "ONNX Runtime fp32" else ""),
                    "img/s": c["img/s"],
                    "x fp32 eager": paired_ratio(eager, c["times"]),
                    "x lens default": paired_ratio(default, c["times"]),
                    "cos_min": c["cos_min"],
                    "correct": c["cos_min"] >= CORRECT_COSINE,
                }
            )
        correct = [label for label, c in cells.items() if c["cos_min"] >= CORRECT_COSINE]
        fastest = max(correct, key=lambda label: cells[label]["img/s"])
        result = catalog_section(name, slice_catalog, max(2, reps - 1), fwd)
        t = result["times"]
        goal_rows.append(
            {
                "model": name,
                "fastest correct path": fastest,
                "default / fastest correct (goal >= 0.90)": paired_ratio(cells[fastest]["times"], default),
                "default / fp32 eager (goal >= 4)": paired_ratio(eager, default),
                "end to end / forward (goal >= 0.80)": paired_ratio(
                    t["forward only (ONNX fp32)"], t["end to end, lens now"]
                ),
                "end to end img/s": result["rates"]["end to end, lens now"],
                "P@5 int8 - fp32 (slice)": result["quality"].get("P@5 int8", float("nan"))
                - result["quality"]["P@5 lens now"],
            }
        )
        log_fn(
            f"engines {name}: fastest correct {fastest}; "
            + str({k: v for k, v in goal_rows[-1].items() if k != "model"})
        )
        if gpu_status() is None:
            for row in gpu_section(name, photos, reps):
                mode_rows.append(
                    {
                        "model": name,
                        "mode": f"GPU: {row['mode']}",
                        "img/s": row["img/s"],
                        "cos_min": row["cos_min"],
                        "correct": row["cos_min"] >= CORRECT_COSINE,
                    }
                )
        engines.clear_sessions()
    return pd.DataFrame(mode_rows), pd.DataFrame(goal_rows)


def engines_lines(modes, goals, *, reps: int, slice_items: int) -> list[str]:  # noqa: ANN001
    """The report's engines section."""
    from benchmarks.common import markdown_table

    lines = [
        "## Engines: forward pass per engine, side by side in one process",
        "",
        f"Batch {BATCH}, the same 32 preprocessed catalog photos for every mode, modes interleaved ({reps} rounds,"
        " median img/s); ratios are medians of per-round ratios (the modes of a round ran seconds apart, so machine"
        " load cancels out). `cos_min`: lowest row cosine to torch fp32 eager over 64 photos; a path is *correct* at"
        f" >= {CORRECT_COSINE}. torch tuned = lens's torch path (BatchNorm folded, channels_last, bf16 autocast where"
        " the spec says so); ONNX Runtime int8 = static QDQ calibrated on 192 other catalog photos; OpenVINO (pinned in"
        " requirements-bench.txt, skipped when missing) runs lens's cached ONNX graph as an outside reference.",
        "",
    ]
    if not len(modes):
        return [*lines, "(no CNN among the benchmarked models)", ""]
    status = gpu_status()
    lines += [
        f"GPU: {status}." if status else "GPU rows (`GPU: ...`): batch 128, img/s, cosine to torch fp32 on the CPU.",
        "",
    ]
    lines += [
        markdown_table(modes, ".3f"),
        "",
        f"Goals of issue 10 as ratios (catalog pass on the first {slice_items} catalog photos: end to end from the"
        " files vs the forward pass alone on the same photos already in memory):",
        "",
        markdown_table(goals, ".3f"),
        "",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", default=None, help="catalog folder (default: the default catalog, as for lens)")
    parser.add_argument("--slice", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--models", default=",".join(REAL))
    parser.add_argument("--zoo", action="store_true", help="also the random-weight zoo (forward only)")
    parser.add_argument("--no-catalog", action="store_true", help="forward section only")
    parser.add_argument("--out", default="bench-out/engines.md")
    args = parser.parse_args()

    catalog = load_catalog(args.catalog or default_catalog_path())
    slice_catalog = catalog.subset(range(min(args.slice, len(catalog))))
    photos = [open_image(p) for p in catalog.image_paths()[-64:]]  # forward-section photos: outside the slice
    calibration = [open_image(p) for p in catalog.image_paths()[-256:-64]]  # 192 others for int8 calibration
    lines = [
        "# Engines, side by side in one process",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · torch {torch.__version__} · {engines.lens_threads()} cores · "
        f"load average {os.getloadavg()[0]:.1f} at start · batch {BATCH} · median of {args.reps} interleaved rounds",
        "",
        "## Forward pass (img/s; cosine to torch fp32 eager, min / mean over 64 photos)",
        "",
        "| encoder | torch fp32 eager | lens torch default (main) | ONNX Runtime fp32 (lens now) | ONNX Runtime int8 "
        "| ONNX fp32 / torch default | ONNX fp32 / fp32 eager |",
        "|---|---|---|---|---|---|---|",
    ]
    forward: dict[str, dict] = {}
    best_lines = [
        "",
        "Best round of each mode (closest to an unloaded machine), img/s:",
        "",
        "| encoder | torch fp32 eager | lens torch default | ONNX Runtime fp32 | ONNX Runtime int8 |",
        "|---|---|---|---|---|",
    ]
    names = [(m, True) for m in args.models.split(",") if m] + ([(m, False) for m in ZOO] if args.zoo else [])
    for name, pretrained in names:
        try:
            rows = forward_section(name, photos, calibration, args.reps, pretrained, int8=pretrained)
        except Exception as exc:  # one encoder failing must not lose the others' figures
            log(f"forward {name}: FAILED {exc!r}")
            lines.append(f"| {name} | failed: {exc.__class__.__name__}: {str(exc)[:120]} |||||")
            continue
        forward[name] = rows
        cells = {k: v for k, v in rows.items() if not k.startswith("_")}
        eager = cells["torch fp32 eager"]["img/s"]
        default_label = next(k for k in cells if k.startswith("torch default"))

        def cell(label: str, cells=cells) -> str:
            if label not in cells:
                return "–"
            c = cells[label]
            return f"{c['img/s']:.1f} ({c['cos_min']:.4f} / {c['cos_mean']:.4f})"

        weights = "" if pretrained else " (random weights)"
        # ratios per round (the modes of one round ran within seconds of each other), then their median
        vs_default = paired_ratio(cells[default_label]["times"], cells["ONNX Runtime fp32"]["times"])
        vs_eager = paired_ratio(cells["torch fp32 eager"]["times"], cells["ONNX Runtime fp32"]["times"])
        lines.append(
            f"| {name}{weights} | {eager:.1f} | {cell(default_label)} {default_label[14:]} | {cell('ONNX Runtime fp32')}"
            f" | {cell('ONNX Runtime int8')} | {vs_default:.2f}x | {vs_eager:.2f}x |"
        )
        best_lines.append(
            f"| {name}{weights} | "
            + " | ".join(
                f"{cells[k]['best']:.1f}" if k in cells else "–"
                for k in ("torch fp32 eager", default_label, "ONNX Runtime fp32", "ONNX Runtime int8")
            )
            + " |"
        )
        write(args.out, lines + best_lines)
    lines += best_lines
    status = gpu_status()
    gpu_rows: list[dict] = []
    if status is None:
        for name, pretrained in names:
            try:
                gpu_rows += gpu_section(name, photos, args.reps, pretrained)
            except Exception as exc:  # one encoder failing must not lose the others' figures
                log(f"gpu {name}: FAILED {exc!r}")
    lines += ["", *gpu_lines(gpu_rows, status)]
    write(args.out, lines)
    if not args.no_catalog:
        lines += [
            "",
            f"## Catalog pass on {len(slice_catalog)} real photos (img/s)",
            "",
            "| encoder | forward only (ONNX fp32) | end to end, lens now | **end to end / forward** | "
            "end to end, main | forward only, torch default | now / main end to end |",
            "|---|---|---|---|---|---|---|",
        ]
        quality_lines = [
            "",
            "## Quality on the slice (leave-one-out precision@5, articleType)",
            "",
            "| encoder | P@5 lens now | P@5 main | P@5 v0 pipeline + ONNX | top-5 overlap now vs main | "
            "top-5 overlap, pipeline only | min cosine, pipeline only | P@5 int8 | top-5 overlap int8 vs fp32 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, _ in [n for n in names if n[1]]:
            if name not in forward:
                continue
            result = catalog_section(name, slice_catalog, max(2, args.reps - 1), forward[name])
            r, q = result["rates"], result["quality"]
            fwd, now = r["forward only (ONNX fp32)"], r["end to end, lens now"]
            main_e2e = r["end to end, main (v0 pipeline, torch default)"]
            t = result["times"]
            e2e_ratio = paired_ratio(t["forward only (ONNX fp32)"], t["end to end, lens now"])
            speedup = paired_ratio(t["end to end, main (v0 pipeline, torch default)"], t["end to end, lens now"])
            lines.append(
                f"| {name} | {fwd:.1f} | {now:.1f} | **{e2e_ratio:.0%}** | {main_e2e:.1f} | "
                f"{r['forward only (torch default)']:.1f} | {speedup:.2f}x |"
            )
            quality_lines.append(
                f"| {name} | {q['P@5 lens now']:.4f} | {q['P@5 main']:.4f} | {q['P@5 v0 pipeline + ONNX fp32']:.4f} | "
                f"{q['top-5 overlap now vs main']:.3f} | {q['top-5 overlap pipeline only (v0 vs now, both ONNX)']:.3f} | "
                f"{q['cos min pipeline only']:.5f} | {q.get('P@5 int8', float('nan')):.4f} | "
                f"{q.get('top-5 overlap int8 vs fp32', float('nan')):.3f} |"
            )
            write(args.out, lines + quality_lines)
        lines += quality_lines
    lines += ["", f"load average at the end {os.getloadavg()[0]:.1f}"]
    write(args.out, lines)
    print("\n".join(lines))
    return 0


def write(path: str, lines: list[str]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
