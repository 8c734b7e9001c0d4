"""Embedding a catalog on Ray Data: decoding in CPU tasks, the encoder in a pool of actors (one model per actor, one
GPU per actor where the cluster has GPUs), the vectors back in lens's embedding store under the same key as the local
path, so every other part of lens reads them unchanged.

    python -m lens embed --ray [--address auto|ray://host:10001] [--workers N] [--batch B]

Without an address, Ray starts on this machine (``ray.init(num_cpus=N)``) and stops afterwards. The pipeline:

1. ``from_items`` of the catalog rows (row number, image path);
2. ``map_batches(decode)``: each file to its ``(S, S, 3)`` uint8 crop (the local path's own decode,
   :func:`lens.embed.prepare_image`), unreadable files marked with their reason;
3. ``map_batches(EmbedActor, concurrency=N)``: each actor loads the encoder once and runs the forward pass;
4. the driver collects ``(row, vector)`` and puts them in catalog order: the same ids, the same order, the same
   vectors as the local path (row by row up to float rounding; tested).

A model that is unknown or whose weights are missing fails before Ray starts; a cluster that cannot be reached, or a
worker that dies, fails with a :class:`~lens.errors.LensError` and publishes nothing (the store is written only
after every row is back).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lens.catalog import Catalog
from lens.embed import EmbeddingSet, ProgressCallback, embed_catalog, pixel_preprocess, prepare_image
from lens.encoders import Encoder, create_encoder
from lens.encoders.engines import THREADS_ENV
from lens.errors import LensError

_REPO_ROOT = str(Path(__file__).resolve().parents[1])


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise LensError(
            f"Ray Data is not installed ({exc}): install it with `pip install 'ray[data]'` (requirements.txt pins it), "
            "or embed without --ray."
        ) from None
    return ray


def _decode(batch: dict[str, np.ndarray], *, preprocess: Any) -> dict[str, np.ndarray]:
    """Ray task: files -> uint8 crops (zeros where unreadable) + ``ok`` + ``reason``."""
    size = preprocess.input_size
    rows = batch["row"]
    pixels = np.zeros((len(rows), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(rows), dtype=bool)
    reasons = np.empty(len(rows), dtype=object)
    for i, (path, name) in enumerate(zip(batch["path"], batch["name"])):
        item, reason = prepare_image(str(path), str(name), preprocess)
        reasons[i] = reason or ""
        if item is not None:
            pixels[i], ok[i] = item, True
    return {"row": rows, "pixels": pixels, "ok": ok, "reason": reasons}


class EmbedActor:
    """Ray actor: one encoder, built once; embeds decoded crops (or, for encoders with their own preprocessing,
    opens the files itself)."""

    def __init__(self, name: str, options: dict[str, Any], threads: int, models_dir: str | None = None) -> None:
        os.environ[THREADS_ENV] = str(threads)  # ONNX Runtime's intra-op threads: this actor's share of the cores
        import torch

        torch.set_num_threads(threads)
        if models_dir:  # a model trained on this catalog (the build's models folder) is known by name here too
            from lens.encoders.trained import refresh_trained_models

            refresh_trained_models(models_dir)
        self.encoder = create_encoder(name, **options)
        self.preprocess = pixel_preprocess(self.encoder)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from lens.encoders.base import pixels_to_batch

        rows = batch["row"]
        vectors = np.zeros((len(rows), self.encoder.dim), dtype=np.float32)
        if self.preprocess is not None:
            ok = batch["ok"].astype(bool)
            reasons = batch["reason"]
            if ok.any():
                tensor = pixels_to_batch(np.ascontiguousarray(batch["pixels"][ok]), self.preprocess)
                vectors[ok] = self.encoder.embed_tensor(tensor)  # type: ignore[attr-defined]
        else:
            ok = np.zeros(len(rows), dtype=bool)
            reasons = np.empty(len(rows), dtype=object)
            images = []
            for i, (path, name) in enumerate(zip(batch["path"], batch["name"])):
                image, reason = prepare_image(str(path), str(name), None)
                reasons[i] = reason or ""
                if image is not None:
                    ok[i] = True
                    images.append(image)
            if images:
                vectors[ok] = self.encoder.embed_images(images, batch_size=len(images))
        return {"row": rows, "vector": vectors, "ok": ok, "reason": reasons}


def check_ray(workers: int, address: str | None = None) -> None:
    """What :func:`ray_compute` checks before any work: Ray Data importable, ``workers`` >= 1, ``address`` answers.

    Raises:
        LensError: Ray is not installed, ``workers`` < 1, or nothing answers at ``address``.
    """
    _ray()
    if workers < 1:
        raise LensError(f"--workers must be at least 1, got {workers}.")
    if address:
        _reachable(address)  # before any work, whether or not Ray is already running in this process


def ray_installed() -> bool:
    """Whether Ray Data can be imported here (checked without importing it: the dashboard asks on every rerun)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def ray_compute(
    *,
    workers: int = 2,
    address: str | None = None,
    encoder_options: dict[str, Any] | None = None,
    gpus_per_worker: float | None = None,
    models_dir: str | os.PathLike | None = None,
) -> Callable[..., tuple[np.ndarray, list[str], list[tuple[str, str]]]]:
    """A ``compute`` for :func:`lens.embed.embed_catalog` that runs the catalog pass on Ray Data (``models_dir``:
    trained models the actors must know by name, as the build's)."""
    if workers < 1:
        raise LensError(f"--workers must be at least 1, got {workers}.")
    if address:
        _reachable(address)  # before any work, whether or not Ray is already running in this process

    def compute(
        catalog: Catalog, encoder: Encoder, batch_size: int = 32, progress: ProgressCallback | None = None
    ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        ray = _ray()
        started_here = not ray.is_initialized()
        if started_here:
            _init(ray, address, workers)
        try:
            return _run(
                ray,
                catalog,
                encoder,
                batch_size,
                progress,
                workers,
                encoder_options or {},
                gpus_per_worker,
                str(models_dir) if models_dir is not None else None,
            )
        finally:
            if started_here:
                ray.shutdown()

    return compute


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nothing listens on (``host:port`` or ``ray://host:port``): Ray itself retries a dead
    address for minutes. ``auto`` and ``local`` are left to Ray, which answers them at once.

    Raises:
        LensError: the host does not resolve, or nothing accepts a connection on the port.
    """
    if address in ("auto", "local"):
        return
    rest = address.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise LensError(
            f"--address {address!r} is not a Ray address: use auto, host:port (the head's GCS port, 6379) or "
            "ray://host:10001."
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise LensError(
            f"Could not start or reach the Ray cluster at {address!r}: nothing answers on {host}:{port} ({exc}). "
            "Check the address (`ray status` on the head node), or embed without --address (Ray starts on this "
            "machine), or without --ray."
        ) from None


def _init(ray: Any, address: str | None, workers: int) -> None:
    pythonpath = os.pathsep.join(p for p in (_REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    for key in ("LENS_CACHE_DIR", "LENS_MODELS_DIR", "LENS_WEIGHTS_DIR", "LENS_OFFLINE", "LENS_ENGINE"):
        if key in os.environ:
            env[key] = os.environ[key]
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers, **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError, ...
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        raise LensError(
            f"Could not start or reach {where}: {type(exc).__name__}: {exc}. Check the address (`ray status` on the "
            "head node), or embed without --address (Ray starts on this machine), or without --ray."
        ) from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def actor_gpus(resources: dict[str, Any], workers: int) -> float:
    """GPUs each embedding actor asks for: 1 when the cluster has a GPU per actor, an equal share of fewer GPUs
    (actors then share a device; Ray sets each one's ``CUDA_VISIBLE_DEVICES``), 0 on a CPU-only cluster (Ray then
    hides every GPU from the actor, so its encoder runs on the CPU)."""
    cluster_gpus = float(resources.get("GPU", 0) or 0)
    if cluster_gpus <= 0:
        return 0.0
    return 1.0 if cluster_gpus >= workers else cluster_gpus / workers


def _run(
    ray: Any,
    catalog: Catalog,
    encoder: Encoder,
    batch_size: int,
    progress: ProgressCallback | None,
    workers: int,
    options: dict[str, Any],
    gpus_per_worker: float | None,
    models_dir: str | None = None,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    ids = catalog.ids
    paths = catalog.image_paths()
    total = len(ids)
    preprocess = pixel_preprocess(encoder)
    items = [{"row": i, "path": str(paths[i]), "name": f"{ids[i]} ({paths[i]})"} for i in range(total)]
    blocks = max(1, min(total, max(2 * workers, total // max(batch_size, 1))))
    dataset = ray.data.from_items(items, override_num_blocks=blocks)
    if preprocess is not None:
        dataset = dataset.map_batches(
            _decode, fn_kwargs={"preprocess": preprocess}, batch_size=batch_size, batch_format="numpy"
        )
    gpus = gpus_per_worker if gpus_per_worker is not None else actor_gpus(ray.cluster_resources(), workers)
    threads = 1 if gpus == 0 else 4
    dataset = dataset.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"name": encoder.name, "options": options, "threads": threads, "models_dir": models_dir},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus,
        num_cpus=1,
    )
    out = np.zeros((total, encoder.dim), dtype=np.float32)
    ok = np.zeros(total, dtype=bool)
    reasons: dict[int, str] = {}
    seen = 0
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = batch["row"].astype(int)
            out[rows] = batch["vector"]
            ok[rows] = batch["ok"]
            for row, good, reason in zip(rows, batch["ok"], batch["reason"]):
                if not good:
                    reasons[int(row)] = str(reason) or "unreadable"
            seen += len(rows)
            if progress is not None:
                progress(min(seen, total), total)
    except LensError:
        raise
    except Exception as exc:  # noqa: BLE001 - RayTaskError, ActorDiedError, ... : one clear line, nothing published
        message = str(exc).strip().splitlines()
        cause = next((line for line in reversed(message) if "Error" in line), message[-1] if message else "")
        raise LensError(
            f"Embedding '{encoder.name}' on Ray failed ({type(exc).__name__}: {cause[:300]}); nothing was saved. "
            "Fix the cause and run again, or embed without --ray."
        ) from None
    if seen != total:
        raise LensError(f"Ray returned {seen} of {total} rows for '{encoder.name}'; nothing was saved. Run it again.")
    kept = np.flatnonzero(ok)
    failed = [(ids[row], reasons.get(row, "unreadable")) for row in range(total) if not ok[row]]
    return out[kept], [ids[row] for row in kept], failed


def embed_catalog_ray(
    catalog: Catalog,
    model: str,
    *,
    workers: int = 2,
    address: str | None = None,
    batch_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    engine: str | None = None,
    use_cache: bool = True,
    progress: ProgressCallback | None = None,
) -> tuple[Encoder, EmbeddingSet]:
    """Embed ``catalog`` with ``model`` on Ray (see the module docstring); the result is cached like the local one.

    The encoder is built here first: an unknown model or missing weights fail before Ray starts, and its identity
    is the cache key (a trained head on a pretrained backbone runs the backbone on Ray, the head here).
    """
    options: dict[str, Any] = {"weights_dir": weights_dir, "engine": engine, "cache_dir": cache_dir}
    encoder = create_encoder(model, **options)
    compute = ray_compute(workers=workers, address=address, encoder_options=options)
    embeddings = embed_catalog(
        catalog,
        encoder,
        cache_dir=cache_dir,
        use_cache=use_cache,
        batch_size=batch_size,
        progress=progress,
        compute=compute,
    )
    return encoder, embeddings
