"""Plumbing shared by the recipes: run folders, history CSV, validation P@k, final evaluation on the held-out split."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lens.catalog import Catalog
from lens.encoders.trained import save_trained_model
from lens.errors import LensError
from lens.metrics import evaluate_retrieval
from lens.store import cache_key
from lens.train.data import _cache_paths, _decoded_batches, _load, _save, small_images
from lens.train.loop import StepProgress, TrainConfig, epoch_seed, fit
from lens.train.samplers import class_balanced_batches, shuffled_batches
from lens.train.split import Split

Log = Callable[[str], None]


@dataclass
class RunContext:
    """Where a run reads and writes, and how it reports.

    Attributes:
        out_dir: run folder: ``history.csv``, ``checkpoint.pt``, ``metrics.json``.
        models_dir: where the trained model is saved (``None`` = ``$LENS_MODELS_DIR`` or ``<cache>/models``).
        cache_dir: lens cache (stem features, small images, embeddings).
        name: encoder name of the trained model.
        resume: continue from ``out_dir/checkpoint.pt``.
        split_path: the split file used (recorded in the model's config).
        progress: per-step callback factory: ``progress(description) -> (callback, close)``.
        log: one-line messages.
        publish: write the catalog's embeddings into the lens embedding cache after training (so ``evaluate`` is
            instant); verified against the encoder's own image path first.
    """

    out_dir: Path
    models_dir: Path | None = None
    cache_dir: Path | None = None
    name: str = ""
    resume: bool = False
    split_path: Path | None = None
    progress: Callable[[str], tuple[StepProgress | None, Callable[[], None]]] | None = None
    log: Log = lambda _msg: None  # noqa: E731
    publish: bool = True

    def bar(self, desc: str) -> tuple[StepProgress | None, Callable[[], None]]:
        if self.progress is None:
            return None, lambda: None
        return self.progress(desc)


@dataclass
class TrainResult:
    """What a recipe returns: the saved model and its figures."""

    name: str
    model_dir: Path
    history: list[dict[str, float]]
    seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)


def label_codes(labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Integer codes of labels (sorted order), shape (N,), int64."""
    _, codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)
    return codes.astype(np.int64)


def shuffled_epoch(rows: np.ndarray, config: TrainConfig, epoch: int) -> list[np.ndarray]:
    """Epoch ``epoch``'s batches of ``rows``: a seeded shuffle cut into ``config.batch_size`` batches (one batch of
    everything when there are fewer rows), at most ``config.steps_per_epoch`` of them."""
    chosen = [
        rows[b]
        for b in shuffled_batches(
            len(rows), batch_size=min(config.batch_size, len(rows)), seed=epoch_seed(config.seed, epoch)
        )
    ]
    return chosen[: config.steps_per_epoch] if config.steps_per_epoch else chosen


def balanced_epoch(
    rows: np.ndarray, codes: np.ndarray, config: TrainConfig, epoch: int, *, m: int, seed: int | None = None
) -> list[np.ndarray]:
    """Epoch ``epoch``'s class-balanced batches of ``rows`` (``m`` per class, labels ``codes[rows]``):
    ``config.steps_per_epoch`` batches, default one pass over ``rows``."""
    n_batches = config.steps_per_epoch or max(1, len(rows) // config.batch_size)
    local = class_balanced_batches(
        codes[rows],
        m=m,
        batch_size=config.batch_size,
        n_batches=n_batches,
        seed=epoch_seed(config.seed if seed is None else seed, epoch),
    )
    return [rows[b] for b in local]


def inference_vectors(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> np.ndarray:
    """``module(x)`` in inference mode with rows L2-normalised as the losses see them (``F.normalize``): float32
    ``(N, dim)`` numpy. The training-time vectors (validation, held-out metrics, the published catalog vectors)."""
    with torch.inference_mode():
        return F.normalize(module(x), dim=-1).numpy().astype(np.float32)


def precision_at(
    vectors: np.ndarray, labels: Sequence[Any] | np.ndarray, query_idx: Sequence[int] | np.ndarray, k: int = 5
) -> float:
    """Mean precision@k of ``query_idx`` against all other rows of ``vectors`` (relevant = same label)."""
    report = evaluate_retrieval(vectors, list(labels), ks=(k,), query_indices=list(query_idx))
    return float(report.summary[f"precision@{k}"])


def write_history(history: list[dict[str, float]], path: Path) -> Path:
    """One row per epoch: ``epoch, loss, seconds`` and whatever the recipe's epoch callback added (``val_p@5``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in history:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: (int(v) if k == "epoch" else round(float(v), 6)) for k, v in row.items()})
    return path


def split_positions(ids: Sequence[str], split: Split) -> dict[str, np.ndarray]:
    """Row positions in ``ids`` of the split's parts (ids missing from ``ids`` are left out)."""
    pos = {item_id: i for i, item_id in enumerate(ids)}
    return {
        part: np.array([pos[i] for i in getattr(split, part) if i in pos], dtype=np.int64)
        for part in ("train", "val", "query")
    }


def heldout_metrics(
    vectors: np.ndarray, ids: Sequence[str], catalog: Catalog, split: Split, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Metrics with queries = the split's held-out ``query`` ids, gallery = every other catalog item."""
    query_idx = split_positions(ids, split)["query"]
    report = evaluate_retrieval(
        vectors, list(catalog.labels(split.label_column, ids=ids)), list(ids), ks=ks, query_indices=query_idx.tolist()
    )
    return {k: float(v) for k, v in report.summary.items()}


def publish_embeddings(
    name: str,
    catalog: Catalog,
    ids: Sequence[str],
    vectors: np.ndarray,
    ctx: RunContext,
    *,
    check: int = 8,
    check_tolerance: float = 2e-3,
) -> float:
    """Store ``vectors`` (one per catalog id in ``ids``) in the lens embedding cache under encoder ``name``'s key.

    The vectors were computed from the cached stem features, not from images; before storing, ``check`` images are
    embedded through the encoder's own path and compared. Returns the largest absolute difference seen.

    Raises:
        LensError: the two paths disagree by more than ``check_tolerance``.
    """
    from lens.embed import EmbeddingSet, embedding_identity, save_embeddings
    from lens.encoders import create_encoder
    from lens.images import open_image

    encoder = create_encoder(name)
    picks = np.linspace(0, len(ids) - 1, num=min(check, len(ids))).astype(int)
    images = [open_image(catalog.image_path(catalog.index_of(ids[i]))) for i in picks]
    direct = encoder.embed_images(images)
    diff = float(np.abs(direct - vectors[picks]).max())
    if diff > check_tolerance:
        raise LensError(f"trained model '{name}': fast path and image path disagree by {diff:.2e}; not publishing.")
    kept = set(ids)
    failed = [(i, "unreadable image") for i in catalog.ids if i not in kept]
    order = {item_id: n for n, item_id in enumerate(ids)}
    rows = [order[i] for i in catalog.ids if i in kept]
    identity = embedding_identity(catalog, encoder)
    save_embeddings(
        EmbeddingSet(
            vectors=np.ascontiguousarray(vectors[rows], dtype=np.float32),
            ids=[ids[r] for r in rows],
            encoder=name,
            failed=failed,
            key=cache_key(identity),
            identity=identity,
            catalog=catalog.name,
        ),
        ctx.cache_dir,
    )
    return diff


@dataclass
class SmallImages:
    """The catalog as small images for the recipes trained from scratch (autoencoder, mobilenet-small)."""

    images: torch.Tensor  #: uint8 ``(n, 3, size, size)``, one row per id
    ids: list[str]  #: readable catalog items, catalog order
    labels: np.ndarray  #: ``(n,)`` object
    parts: dict[str, np.ndarray]  #: ``train`` / ``val`` / ``query`` row positions


def load_small_images(catalog: Catalog, split: Split, size: int, ctx: RunContext) -> SmallImages:
    """Every readable catalog image at ``size`` px (decoded once per catalog and size, cached), labels and split."""
    bar, close = ctx.bar(f"decode {size}px images")
    try:
        images_np, ids = small_images(catalog, catalog.ids, size, cache_dir=ctx.cache_dir, progress=bar)
    finally:
        close()
    return SmallImages(
        torch.from_numpy(images_np), ids, catalog.labels(split.label_column, ids=ids), split_positions(ids, split)
    )


def timer() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def checkpoint_path(ctx: RunContext) -> Path:
    return ctx.out_dir / "checkpoint.pt"


def base_config(config: TrainConfig, catalog: Catalog, split: Split, ctx: RunContext) -> dict[str, Any]:
    return {
        "catalog": catalog.name,
        "catalog_fingerprint": catalog.fingerprint(),
        "label_column": split.label_column,
        "split": str(ctx.split_path) if ctx.split_path else None,
        "split_counts": {"train": len(split.train), "val": len(split.val), "query": len(split.query)},
        "train": config.to_dict(),
    }


def embed_with_base(catalog: Catalog, base_name: str, ctx: RunContext) -> tuple[Any, Any]:
    """Create the pretrained ``base_name`` encoder and its (cached) embeddings of ``catalog``, with a progress bar."""
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder

    base = create_encoder(base_name)
    bar, close = ctx.bar(f"embed {base_name}")
    try:
        return base, embed_catalog(catalog, base, cache_dir=ctx.cache_dir, progress=bar)
    finally:
        close()


def val_precision_callback(
    embed_rows: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    k: int = 5,
) -> Callable[[int, dict[str, float]], dict[str, float]]:
    """An ``on_epoch`` callback: P@k of the validation items against train + validation, with vectors from
    ``embed_rows(rows)``; empty when there is no validation item."""
    gallery = np.concatenate([train_idx, val_idx])
    queries = np.arange(len(train_idx), len(gallery))

    def on_epoch(epoch: int, row: dict[str, float]) -> dict[str, float]:
        if not len(val_idx):
            return {}
        return {f"val_p@{k}": precision_at(embed_rows(gallery), labels[gallery], queries, k)}

    return on_epoch


#: Augmentation strengths: ``simclr`` is SimCLR's recipe (contrastive views must be hard to match); ``light`` keeps the
#: product recognisable (supervised triplet training: a re-shot photo, not a different object).
AUGMENT: dict[str, dict[str, Any]] = {
    "simclr": {"scale": (0.35, 1.0), "jitter": (0.4, 0.4, 0.4, 0.1), "jitter_p": 0.8, "grey_p": 0.2},
    "light": {"scale": (0.6, 1.0), "jitter": (0.2, 0.2, 0.2, 0.02), "jitter_p": 0.5, "grey_p": 0.05},
}


def augmentation(preprocess, strength: str = "simclr"):  # noqa: ANN001, ANN201
    """PIL image -> augmented, normalised tensor: random resized crop, horizontal flip, colour jitter, greyscale,
    then the backbone's own normalisation (``preprocess``); ``strength`` picks the ranges (:data:`AUGMENT`)."""
    from torchvision.transforms import v2

    p = AUGMENT[strength]
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(preprocess.input_size, scale=p["scale"], antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(*p["jitter"])], p=p["jitter_p"]),
            v2.RandomGrayscale(p=p["grey_p"]),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(preprocess.mean), list(preprocess.std)),
        ]
    )


def augmented_base_views(
    base,
    catalog: Catalog,
    ids: list[str],
    *,
    views: int,
    seed: int,  # noqa: ANN001
    ctx: RunContext,
    strength: str = "simclr",
) -> tuple[np.ndarray, list[str]]:
    """The frozen encoder's vectors of ``views`` seeded augmentations of each image: ``(n, views, dim)``, cached
    under ``<cache>/train-cache/simclr`` (one pass through the encoder per view, then seconds per epoch)."""
    full = {
        "kind": "simclr-base-views",
        **base.identity(),
        "views": views,
        "seed": seed,
        "catalog": catalog.fingerprint(),
        "ids": cache_key({"ids": ids}),
    }
    if strength != "simclr":  # (the simclr key is the one earlier caches were written under)
        full["augment"] = strength
    npy, meta = _cache_paths(ctx.cache_dir, "simclr", full)
    cached = _load(npy, meta)
    if cached is not None:
        return cached
    transform = augmentation(base.spec.preprocess, strength)
    out, kept_all = [], []
    bar, close = ctx.bar(f"{views} augmented views through the frozen {base.spec.name}")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for kept, pil_batch in _decoded_batches(catalog, ids, 16, lambda ims: ims):
                batch = torch.stack([transform(im) for im in pil_batch for _ in range(views)])
                out.append(base.embed_tensor(batch).reshape(len(pil_batch), views, -1))
                kept_all.extend(kept)
                if bar is not None:
                    bar(len(kept_all), len(ids))
    finally:
        close()
    array = np.concatenate(out).astype(np.float32)
    _save(npy, meta, array, kept_all, full)
    return array, kept_all


def fit_with_bar(
    model,
    loss_step,
    batches,
    config: TrainConfig,
    ctx: RunContext,
    *,
    label: str = "",  # noqa: ANN001
    checkpoint: Path | None = None,
    **fit_kwargs: Any,
) -> list[dict[str, float]]:
    """:func:`lens.train.loop.fit` with the run's progress bar, ``--resume`` and checkpoint (default
    ``<run>/checkpoint.pt``); ``fit_kwargs``: ``optimizer``, ``on_epoch``, ``train_mode``."""
    bar, close = ctx.bar(f"train {ctx.name}{' ' + label if label else ''}")
    try:
        return fit(
            model,
            loss_step,
            batches,
            config,
            checkpoint=checkpoint or checkpoint_path(ctx),
            resume=ctx.resume,
            progress=bar,
            **fit_kwargs,
        )
    finally:
        close()


def save_run(
    ctx: RunContext,
    catalog: Catalog,
    state: dict[str, Any],
    config_json: dict[str, Any],
    history: list[dict[str, float]],
    train_seconds: float,
    metrics: dict[str, float],
    ids: Sequence[str],
    vectors: np.ndarray,
) -> TrainResult:
    """Save the model (safetensors + ``config_json``), write ``history.csv`` and, with ``ctx.publish``, store the
    catalog's ``vectors`` in the embedding cache; the run's :class:`TrainResult`."""
    folder = save_trained_model(ctx.name, state, config_json, models_dir=ctx.models_dir)
    write_history(history, ctx.out_dir / "history.csv")
    if ctx.publish:
        metrics["publish_max_abs_diff"] = publish_embeddings(ctx.name, catalog, ids, vectors, ctx)
    return TrainResult(ctx.name, folder, history, train_seconds, metrics)
