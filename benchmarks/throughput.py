"""Speed sections: encoder throughput per precision / memory-layout mode, and the time to embed the catalog.

Every figure is measured in this run next to its baseline: each mode against the same model's plain ``fp32`` forward
pass, on the same preprocessed images.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.common import BenchConfig, markdown_table, timed
from lens.catalog import Catalog
from lens.embed import embed_catalog
from lens.encoders import create_encoder, engine_choice
from lens.encoders.base import TorchImageEncoder, preprocess_images
from lens.encoders.trained import find_trained_models, read_model_config
from lens.errors import LensError
from lens.images import open_image


def _count_batchnorms(module: torch.nn.Module) -> int:
    """BatchNorm layers left in ``module`` (lens's fp32 path folds them into the convolutions)."""
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _set_layout(encoder: TorchImageEncoder, channels_last: bool) -> None:
    """Switch an encoder's module and input between NCHW and channels_last (4-D weights re-laid out in place)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    encoder.model = encoder.model.to(memory_format=fmt)
    encoder.channels_last = channels_last


def throughput_modes(
    model: str, *, pretrained: bool = True
) -> list[tuple[str, Callable[[], TorchImageEncoder | None], bool]]:
    """``(mode name, build the encoder for it, is lens's default)`` for ``model``, plain fp32 first.

    ``fp32``: the module as loaded, NCHW, no BatchNorm folding; ``fp32+channels_last``: the same module and input in
    channels_last; lens's fp32 path (``fp32+bn-folded`` plus ``+channels_last`` when the spec says so; left out when
    it folds nothing, as it then equals one of the first two); lens's bf16 path (``bf16`` autocast, ``+channels_last``
    when the spec says so, BatchNorm never folded). Modes are built here from lens's encoders, never by changing them.
    ``pretrained=False`` builds every mode with lens's seeded random weights (architecture speed only).
    """
    create = functools.partial(create_encoder, pretrained=pretrained, engine="torch")  # the torch modes
    probe = create(model, precision="bf16")  # precision bf16: the module as loaded, BatchNorm not folded
    if not isinstance(probe, TorchImageEncoder):
        return []
    spec = probe.spec
    on_onnx = engine_choice(model).engine == "onnx"  # what create_encoder(model) runs by default
    default = "onnx" if on_onnx else create(model).precision
    folded = create(model, precision="fp32")
    folds = isinstance(folded, TorchImageEncoder) and _count_batchnorms(folded.model) < _count_batchnorms(probe.model)
    del folded
    cl = "+channels_last" if spec.channels_last else ""

    def unfolded_fp32(channels_last: bool) -> Callable[[], TorchImageEncoder]:
        def build() -> TorchImageEncoder:
            encoder = create(model, precision="bf16")  # not folded; switched to fp32 below
            assert isinstance(encoder, TorchImageEncoder)
            encoder.precision = "fp32"
            _set_layout(encoder, channels_last)
            return encoder

        return build

    modes: list[tuple[str, Callable[[], TorchImageEncoder | None], bool]] = [
        ("fp32", unfolded_fp32(False), default == "fp32" and not folds and not spec.channels_last),
        ("fp32+channels_last", unfolded_fp32(True), default == "fp32" and not folds and spec.channels_last),
    ]
    if folds:
        modes.append((f"fp32+bn-folded{cl}", lambda: create(model, precision="fp32"), default == "fp32"))  # type: ignore[arg-type,return-value]
    modes.append((f"bf16{cl}", lambda: create(model, precision="bf16"), default == "bf16"))  # type: ignore[arg-type,return-value]
    if on_onnx:
        onnx = functools.partial(create_encoder, model, pretrained=pretrained, engine="onnx")
        modes.append(("onnxruntime fp32", onnx, True))  # type: ignore[arg-type]
    return modes


def bench_throughput(catalog: Catalog, config: BenchConfig) -> pd.DataFrame:
    """img/s of the forward pass at ``batch_size`` per model and mode (see :func:`throughput_modes`), all in this run.

    Columns: ``mode``, ``default`` (the mode ``create_encoder(model)`` runs), ``img_per_s``, ``speedup_vs_fp32``
    (img/s over the same model's plain ``fp32`` row), ``preprocess_img_per_s`` (resize + crop + normalise, timed
    apart from the forward pass) and each mode's min / mean cosine to the plain ``fp32`` vectors of the same images.
    """
    sample = catalog.sample(min(config.throughput_images, len(catalog)), seed=1)
    all_images = [open_image(path) for path in sample.image_paths()]
    rows = []
    jobs = [(m, True) for m in (config.speed_models or config.models)]
    jobs += [(m, False) for m in (config.architecture_models or [])]
    for model, pretrained in jobs:
        images = all_images if pretrained else all_images[: config.architecture_images]
        try:
            modes = throughput_modes(model, pretrained=pretrained)
        except LensError as exc:  # e.g. an architecture whose code needs a package this machine lacks
            config.log(f"throughput {model}: skipped ({exc})")
            continue
        if not modes:
            continue
        preprocess = create_encoder(model, pretrained=pretrained).spec.preprocess
        prep_s = timed(lambda: preprocess_images(images, preprocess))  # noqa: B023 - called in this iteration
        batch = preprocess_images(images, preprocess)
        model_rows: list[dict[str, Any]] = []
        vectors: dict[str, np.ndarray] = {}
        for mode, build, is_default in modes:
            encoder = build()
            assert encoder is not None
            encoder.embed_tensor(batch[: config.batch_size])  # warm-up: oneDNN picks kernels on first call

            def run(encoder: TorchImageEncoder = encoder, batch: torch.Tensor = batch) -> np.ndarray:
                step = config.batch_size
                return np.concatenate([encoder.embed_tensor(batch[i : i + step]) for i in range(0, len(batch), step)])

            outputs: list[np.ndarray] = []
            seconds = timed(lambda: outputs.append(run()), repeats=2)  # noqa: B023 - called in this iteration
            vectors[mode] = outputs[-1]
            del encoder
            model_rows.append(
                {
                    "model": model,
                    "weights": "pretrained" if pretrained else "random (speed only)",
                    "mode": mode,
                    "default": is_default,
                    "batch": config.batch_size,
                    "img_per_s": len(batch) / seconds,
                    "preprocess_img_per_s": len(images) / prep_s,
                }
            )
            config.log(f"throughput {model} {mode}: {model_rows[-1]['img_per_s']:.1f} img/s")
        reference = vectors["fp32"]
        fp32_img_per_s = next(row["img_per_s"] for row in model_rows if row["mode"] == "fp32")
        for row in model_rows:
            cosine = (vectors[row["mode"]] * reference).sum(axis=1)
            row["speedup_vs_fp32"] = row["img_per_s"] / fp32_img_per_s
            row["min_cos_vs_fp32"] = float(cosine.min())
            row["mean_cos_vs_fp32"] = float(cosine.mean())
        rows.extend(model_rows)
    columns = [
        "model",
        "weights",
        "mode",
        "default",
        "batch",
        "img_per_s",
        "speedup_vs_fp32",
        "preprocess_img_per_s",
        "min_cos_vs_fp32",
        "mean_cos_vs_fp32",
    ]
    return pd.DataFrame(rows, columns=columns)


def bench_embed_catalog(catalog: Catalog, config: BenchConfig) -> pd.DataFrame:
    """Seconds to embed the catalog (``config.embed_items`` sampled items in quick mode) per speed model, measured
    now with the cache off: JPEG decode + preprocessing + forward pass in the encoder's default mode, batch
    ``batch_size``, as ``embed_catalog`` runs it (loading the weights is not included)."""
    items = catalog if config.embed_items is None else catalog.sample(min(config.embed_items, len(catalog)), seed=3)
    rows = []
    for model in config.speed_models or config.models:
        encoder = create_encoder(model)
        started = time.perf_counter()
        emb = embed_catalog(items, encoder, use_cache=False, batch_size=config.batch_size)  # reads, writes nothing
        seconds = time.perf_counter() - started
        rows.append(
            {
                "model": model,
                "timed_as": model,
                "items": len(items),
                "embed_catalog_s": seconds,
                "img_per_s": len(emb) / seconds,
            }
        )
        config.log(f"embed {model}: {len(items)} images in {seconds:.1f}s ({rows[-1]['img_per_s']:.1f} img/s)")
    return pd.DataFrame(rows, columns=["model", "timed_as", "items", "embed_catalog_s", "img_per_s"])


def _trained_base(model: str) -> str | None:
    """The encoder a trained model runs its images through (``base_encoder``, or a text-align model's
    ``image_encoder``), None for a model trained from scratch or not found."""
    folder = find_trained_models().get(model)
    if folder is None:
        return None
    try:
        config = read_model_config(folder)
    except LensError:
        return None
    arch = config.get("arch")
    arch = arch if isinstance(arch, dict) else {}
    base = config.get("base_encoder") or arch.get("base_encoder") or arch.get("image_encoder")
    return str(base) if base else None


def merge_embed_timings(loads: pd.DataFrame, timings: pd.DataFrame) -> pd.DataFrame:
    """One row per model: the cached-load figures plus the measured embedding time, a trained model taking its
    base encoder's (``timed_as``); NaN where neither the model nor its base was timed."""
    timed = {row.model: row for row in timings.itertuples(index=False)}
    rows = []
    for row in loads.to_dict("records"):
        source = row["model"] if row["model"] in timed else _trained_base(row["model"])
        hit = timed.get(source) if source else None
        rows.append(
            {
                **row,
                "timed_as": source if hit is not None else "",
                "items": hit.items if hit is not None else float("nan"),
                "embed_catalog_s": hit.embed_catalog_s if hit is not None else float("nan"),
                "img_per_s": hit.img_per_s if hit is not None else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def embed_lines(embed_table: pd.DataFrame, config: BenchConfig) -> list[str]:
    """The report's section on embedding the catalog (prose + table)."""
    return [
        "## Embedding the catalog (default mode of each encoder)",
        "",
        "`embed_catalog_s` / `img_per_s`: measured in this run with the cache off (`embed_catalog(...,"
        " use_cache=False)`: JPEG decode + preprocessing + forward pass, batch "
        + str(config.batch_size)
        + ", weights already loaded) on `items` images"
        + (
            f" (a {config.embed_items}-item sample: quick run)"
            if config.embed_items is not None
            else " (the whole catalog)"
        )
        + ". A trained model built on a base encoder (frozen backbone + head, fine-tuned copy, text-align's image"
        " tower) embeds at its base's speed, so it is not re-embedded: its row repeats the figures of the encoder"
        " named in `timed_as`; models trained from scratch are not timed (empty `timed_as`)."
        " `cached_load_s`: loading the cached vectors (checksum verified).",
        "",
        markdown_table(embed_table, ".2f"),
        "",
    ]


def throughput_lines(throughput: pd.DataFrame, config: BenchConfig) -> list[str]:
    """The report's throughput section: what each mode is, then the table."""
    return [
        f"## Encoder throughput (forward pass, batch {config.batch_size}, {config.throughput_images} catalog images)",
        "",
        f"Throughput, index sweep and projection run on: {', '.join(config.speed_models or [])} (a trained model runs"
        " its base architecture, so its speed is its base's; quality above and below covers every model).",
        "",
        "Modes, all measured in this run on the same preprocessed images:",
        "",
        "- `fp32`: the module as loaded, NCHW, float32, BatchNorm kept: the baseline (`speedup_vs_fp32` 1.0).",
        "- `fp32+channels_last`: the same module with weights and input in channels_last (NHWC) memory format.",
        "- `fp32+bn-folded[+channels_last]`: lens's fp32 path, BatchNorm folded into the convolutions (only for"
        " models that have BatchNorm to fold), channels_last when the encoder uses it.",
        "- `bf16[+channels_last]`: lens's bf16 path, CPU autocast to bfloat16, BatchNorm not folded, channels_last"
        " when the encoder uses it.",
        "",
        "`default` marks the mode `create_encoder(model)` runs (the embeddings above); `speedup_vs_fp32` is img/s"
        " over the same model's `fp32` row; cosines compare each mode's vectors with the `fp32` ones, image by image.",
        f"Rows with weights `random (speed only)` are zoo encoders whose weights are not on this machine, run with"
        f" lens's seeded random weights on {config.architecture_images} of the images: the time per image does not"
        " depend on the weights' values, so these are the speeds the pretrained models will have; their cosines"
        " compare modes of the same random network.",
        "",
        markdown_table(throughput, ".4f"),
        "",
    ]
