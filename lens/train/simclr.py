"""``simclr-<backbone>``: self-supervised fine-tuning with NT-Xent on two augmentations of each image; no labels.

Augmentations: random resized crop (scale 0.35-1), horizontal flip, colour jitter (p 0.8), greyscale (p 0.2), then
the backbone's own normalisation. To keep this to minutes on a CPU, the backbone is cut as in the triplet recipe: the
frozen stem's output is computed once per augmented view (``views`` views of each of up to ``max_images`` training
images, seeded, cached), and each step draws two different views of every image in the batch and trains the top blocks
plus a projection MLP (SimCLR's g). The encoder keeps the backbone's pooled features (the projection is dropped, as in
SimCLR). Labels are used only to report validation P@5.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lens.catalog import Catalog
from lens.train.backbones import batchnorms_to_eval, build_split_backbone, freeze
from lens.train.common import (
    RunContext, fit_with_bar, save_run, augmentation, augmented_base_views, embed_with_base, val_precision_callback, TrainResult, base_config, heldout_metrics, split_positions, timer,
)
from lens.train.data import _cache_paths, _decoded_batches, _load, _save
from lens.train.loop import TrainConfig, epoch_seed
from lens.train.losses import NTXentPairLoss
from lens.train.samplers import shuffled_batches
from lens.train.split import Split
from lens.train.triplet import Embedder, embed_features, stem_features_for


def augmented_stem_views(stem: nn.Module, catalog: Catalog, ids: list[str], preprocess, identity: dict, *,  # noqa: ANN001
                         views: int, seed: int, ctx: RunContext) -> tuple[np.ndarray, list[str]]:
    """Stem output of ``views`` seeded augmentations of each image: float32 ``(n, views, C, H, W)`` (cached)."""
    from lens.train.data import cache_key

    full = {"kind": "simclr-views", **identity, "views": views, "seed": seed, "catalog": catalog.fingerprint(),
            "ids": cache_key({"ids": ids}), "preprocess": preprocess.key()}
    npy, meta = _cache_paths(ctx.cache_dir, "simclr", full)
    cached = _load(npy, meta)
    if cached is not None:
        return cached
    transform = augmentation(preprocess)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    out, kept_all = [], []
    bar, close = ctx.bar("augmented views through the frozen stem")
    try:
        with torch.inference_mode():
            for kept, pil_batch in _decoded_batches(catalog, ids, 16, lambda ims: ims):
                batch = torch.stack([transform(im) for im in pil_batch for _ in range(views)])
                feats = stem(batch).float().numpy()
                out.append(feats.reshape(len(pil_batch), views, *feats.shape[1:]))
                kept_all.extend(kept)
                if bar is not None:
                    bar(len(kept_all), len(ids))
    finally:
        close()
        torch.random.set_rng_state(generator_state)
    array = np.concatenate(out)
    _save(npy, meta, array, kept_all, full)
    return array, kept_all


def train_simclr_head(catalog: Catalog, split: Split, config: TrainConfig, ctx: RunContext) -> TrainResult:
    """``trainable_blocks=0``: the backbone stays frozen; NT-Xent trains a residual head (zero-initialised, so it
    starts at the pretrained space) through a projection MLP that is dropped afterwards. Views of up to
    ``max_images`` training images go through the frozen encoder once (cached); the catalog's own vectors come from
    the lens embedding cache."""
    from lens.train.triplet import _embed_vectors, build_head

    elapsed = timer()
    base_name = config.backbone or "mobilenet-v2"
    base, image_set = embed_with_base(catalog, base_name, ctx)
    ids = image_set.ids
    vectors_t = torch.from_numpy(image_set.vectors)
    parts = split_positions(ids, split)
    train_ids = [ids[i] for i in parts["train"]]
    max_images = int(config.extra.get("max_images", 0)) or len(train_ids)
    if max_images < len(train_ids):
        rng = np.random.default_rng(config.seed)
        train_ids = [train_ids[i] for i in np.sort(rng.choice(len(train_ids), max_images, replace=False))]
    views = int(config.extra.get("views", 2))
    view_np, _ = augmented_base_views(base, catalog, train_ids, views=views, seed=config.seed, ctx=ctx)
    view_t = torch.from_numpy(view_np)
    torch.manual_seed(config.seed)
    arch = {"type": "head", "base_encoder": base_name, "base_weights_id": base.weights_id,
            "base_precision": base.precision, "in_dim": base.dim, "hidden": int(config.extra.get("hidden", 1024)),
            "dim": base.dim}
    head = build_head(arch)
    projection = nn.Sequential(nn.Linear(base.dim, 512), nn.ReLU(), nn.Linear(512, 128))
    trainable = nn.ModuleDict({"head": head, "projection": projection})
    loss_fn = NTXentPairLoss(temperature=config.temperature)

    def batches(epoch: int):  # noqa: ANN202
        chosen = shuffled_batches(len(view_t), batch_size=min(config.batch_size, len(view_t)),
                                  seed=epoch_seed(config.seed, epoch))
        return chosen[: config.steps_per_epoch] if config.steps_per_epoch else chosen

    def loss_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        pick = torch.stack([torch.randperm(views)[:2] for _ in range(len(index))])
        za = projection(head(view_t[index, pick[:, 0]]))
        zb = projection(head(view_t[index, pick[:, 1]]))
        return loss_fn(za, zb)

    all_labels = catalog.labels(split.label_column)
    labels = np.array([all_labels[catalog.index_of(i)] for i in ids], dtype=object)
    train_idx, val_idx = parts["train"], parts["val"]
    on_epoch = val_precision_callback(lambda rows: _embed_vectors(head, vectors_t[torch.from_numpy(rows)]), labels, train_idx, val_idx)

    history = fit_with_bar(trainable, loss_step, batches, config, ctx, on_epoch=on_epoch)
    train_seconds = elapsed()
    vectors = _embed_vectors(head, vectors_t)
    metrics = heldout_metrics(vectors, ids, catalog, split)
    config_json = {
        "kind": "head", "recipe": config.recipe, "arch": arch, "dim": base.dim,
        "preprocess": base.spec.preprocess.key(), "precision": base.precision, "pooling": "trained residual head",
        "description": f"{base_name} (frozen) + residual head trained with SimCLR NT-Xent (no labels) on {catalog.name}",
        "base_encoder": base_name, "base_weights_id": base.weights_id, "license": "as the base weights",
        **base_config(config, catalog, split, ctx), "history": history, "train_seconds": train_seconds,
        "heldout": metrics, "simclr_images": len(view_t), "simclr_views": views,
    }
    return save_run(ctx, catalog, head.state_dict(), config_json, history, train_seconds, metrics, ids, vectors)


def train_simclr(catalog: Catalog, split: Split, config: TrainConfig, ctx: RunContext) -> TrainResult:
    """SimCLR fine-tuning; ``trainable_blocks=0`` (default) keeps the backbone frozen (:func:`train_simclr_head`)."""

    if config.trainable_blocks == 0:
        return train_simclr_head(catalog, split, config, ctx)
    elapsed = timer()
    torch.manual_seed(config.seed)
    backbone = build_split_backbone(config.backbone or "mobilenet-v2", config.trainable_blocks, pretrained=True)
    arch = {"type": "embedder", "backbone": backbone.name, "trainable_blocks": config.trainable_blocks,
            "embedding_dim": 0, "backbone_dim": backbone.dim}
    stem = freeze(backbone.stem)
    model = Embedder(stem, backbone.top, nn.Identity())
    projection = nn.Sequential(nn.Linear(backbone.dim, 512), nn.ReLU(), nn.Linear(512, 128))
    trainable = nn.ModuleDict({"model": model, "projection": projection})

    features, ids = stem_features_for(model, arch, backbone.weights_id, catalog, ctx, backbone.preprocess)
    parts = split_positions(ids, split)
    train_ids = [ids[i] for i in parts["train"]]
    max_images = int(config.extra.get("max_images", 0)) or len(train_ids)
    if max_images < len(train_ids):
        rng = np.random.default_rng(config.seed)
        train_ids = [train_ids[i] for i in np.sort(rng.choice(len(train_ids), max_images, replace=False))]
    views = int(config.extra.get("views", 2))
    view_feats, _ = augmented_stem_views(
        stem, catalog, train_ids, backbone.preprocess,
        {"backbone": backbone.name, "weights": backbone.weights_id, "trainable_blocks": config.trainable_blocks},
        views=views, seed=config.seed, ctx=ctx)
    view_t = torch.from_numpy(view_feats)
    loss_fn = NTXentPairLoss(temperature=config.temperature)

    def batches(epoch: int):  # noqa: ANN202
        chosen = shuffled_batches(len(view_t), batch_size=min(config.batch_size, len(view_t)),
                                  seed=epoch_seed(config.seed, epoch))
        return chosen[: config.steps_per_epoch] if config.steps_per_epoch else chosen

    def loss_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        pick = torch.stack([torch.randperm(views)[:2] for _ in range(len(index))])  # two different views each
        a = view_t[index, pick[:, 0]]
        b = view_t[index, pick[:, 1]]
        za = projection(model.embed_stem_output(a))
        zb = projection(model.embed_stem_output(b))
        return loss_fn(za, zb)

    all_labels = catalog.labels(split.label_column)
    labels = np.array([all_labels[catalog.index_of(i)] for i in ids], dtype=object)
    train_idx, val_idx = parts["train"], parts["val"]
    on_epoch = val_precision_callback(lambda rows: embed_features(model, features[rows]), labels, train_idx, val_idx)

    optimizer = torch.optim.AdamW(
        [{"params": [p for p in model.top.parameters()], "lr": config.lr * config.backbone_lr_scale},
         {"params": list(projection.parameters()), "lr": config.lr}],
        weight_decay=config.weight_decay,
    )
    history = fit_with_bar(trainable, loss_step, batches, config, ctx,
                           optimizer=optimizer, on_epoch=on_epoch, train_mode=batchnorms_to_eval)
    train_seconds = elapsed()
    vectors = embed_features(model, features)
    metrics = heldout_metrics(vectors, ids, catalog, split)
    config_json = {
        "kind": "image", "recipe": config.recipe, "arch": arch, "dim": backbone.dim,
        "preprocess": backbone.preprocess.key(), "precision": "fp32", "pooling": "global average pooling",
        "description": f"{backbone.name} fine-tuned with SimCLR NT-Xent (no labels) on {catalog.name}",
        "base_encoder": backbone.name, "base_weights_id": backbone.weights_id, "license": "as the base weights",
        **base_config(config, catalog, split, ctx), "history": history, "train_seconds": train_seconds,
        "heldout": metrics, "simclr_images": len(view_t), "simclr_views": views,
    }
    return save_run(ctx, catalog, model.state_dict(), config_json, history, train_seconds, metrics, ids, vectors)
