"""``simclr-<backbone>``: self-supervised fine-tuning with NT-Xent on two augmentations of each image; no labels.

Augmentations: random resized crop (scale 0.35-1), horizontal flip, colour jitter (p 0.8), greyscale (p 0.2), then
the backbone's own normalisation. To keep this to minutes on a CPU, the backbone is cut as in the triplet recipe: the
frozen part's output is computed once per augmented view (``views`` views of each of up to ``max_images`` training
images, seeded, cached), and each step draws two different views of every image in the batch and trains the head (or
the top blocks) plus a projection MLP (SimCLR's g). The encoder drops the projection, as in SimCLR. Labels are used
only to report validation P@5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lens.catalog import Catalog
from lens.encoders.trained.heads import mlp
from lens.train.common import (
    RunContext,
    TrainResult,
    augmentation,
    augmented_base_views,
    fit_with_bar,
    shuffled_epoch,
    timer,
    val_precision_callback,
)
from lens.train.data import _cache_paths, _decoded_batches, _load, _save, cache_key
from lens.train.frozen import BackboneConfig, blocks_setup, head_setup, save_blocks_run, save_head_run
from lens.train.loop import batchnorms_to_eval, setting
from lens.train.losses import NTXentPairLoss
from lens.train.registry import register_recipe
from lens.train.split import Split

#: SimCLR's projection g (dropped after training): backbone width -> 512 -> 128.
PROJECTION_HIDDEN, PROJECTION_DIM = 512, 128


@dataclass
class SimCLRConfig(BackboneConfig):
    """``simclr-<backbone>`` settings; why these defaults: docs/training.md."""

    epochs: int = setting(10, "passes over the augmented training images", minimum=1)
    temperature: float = setting(0.1, "NT-Xent temperature")
    views: int = setting(
        2, "augmented views of each training photo through the frozen backbone (pairs drawn from them)", minimum=2
    )
    max_images: int = setting(1000, "training photos to augment (a seeded sample when there are more)", minimum=1)


def _views_per_image(ids: list[str], train_rows: np.ndarray, config: SimCLRConfig) -> list[str]:
    """The training ids whose views are made: all, or a seeded sample of ``config.max_images`` (catalog order)."""
    train_ids = [ids[i] for i in train_rows]
    if config.max_images < len(train_ids):
        rng = np.random.default_rng(config.seed)
        train_ids = [train_ids[i] for i in np.sort(rng.choice(len(train_ids), config.max_images, replace=False))]
    return train_ids


def _pair_loss(
    embed: Callable[[torch.Tensor], torch.Tensor], projection: nn.Module, views: torch.Tensor, loss_fn: NTXentPairLoss
) -> Callable[[np.ndarray], torch.Tensor]:
    """``loss_step(batch)``: two different random views of every image of the batch, through ``embed`` then
    ``projection``, scored by NT-Xent."""
    n_views = views.shape[1]

    def loss_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        pick = torch.stack([torch.randperm(n_views)[:2] for _ in range(len(index))])  # two different views each
        return loss_fn(projection(embed(views[index, pick[:, 0]])), projection(embed(views[index, pick[:, 1]])))

    return loss_step


def augmented_stem_views(
    stem: nn.Module,
    catalog: Catalog,
    ids: list[str],
    preprocess,
    identity: dict,
    *,  # noqa: ANN001
    views: int,
    seed: int,
    ctx: RunContext,
) -> tuple[np.ndarray, list[str]]:
    """Stem output of ``views`` seeded augmentations of each image: float32 ``(n, views, C, H, W)`` (cached)."""
    full = {
        "kind": "simclr-views",
        **identity,
        "views": views,
        "seed": seed,
        "catalog": catalog.fingerprint(),
        "ids": cache_key({"ids": ids}),
        "preprocess": preprocess.key(),
    }
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


def train_simclr_head(catalog: Catalog, split: Split, config: SimCLRConfig, ctx: RunContext) -> TrainResult:
    """``trainable_blocks=0``: the backbone stays frozen; NT-Xent trains a residual head (zero-initialised, so it
    starts at the pretrained space) through a projection MLP that is dropped afterwards. Views of up to
    ``max_images`` training images go through the frozen encoder once (cached); the catalog's own vectors come from
    the lens embedding cache."""
    elapsed = timer()
    setup = head_setup(catalog, split, config, ctx, dim=0)
    head = setup.head
    projection = mlp(setup.base.dim, PROJECTION_HIDDEN, PROJECTION_DIM)
    train_ids = _views_per_image(setup.ids, setup.parts["train"], config)
    view_np, _ = augmented_base_views(setup.base, catalog, train_ids, views=config.views, seed=config.seed, ctx=ctx)
    view_t = torch.from_numpy(view_np)
    loss_step = _pair_loss(head, projection, view_t, NTXentPairLoss(temperature=config.temperature))
    history = fit_with_bar(
        nn.ModuleDict({"head": head, "projection": projection}),
        loss_step,
        lambda epoch: shuffled_epoch(np.arange(len(view_t)), config, epoch),
        config,
        ctx,
        on_epoch=val_precision_callback(setup.embed_rows, setup.labels, setup.parts["train"], setup.parts["val"]),
    )
    return save_head_run(
        setup,
        catalog,
        split,
        config,
        ctx,
        history,
        elapsed(),
        pooling="trained residual head",
        description=f"{config.backbone} (frozen) + residual head trained with SimCLR NT-Xent (no labels) on "
        f"{catalog.name}",
        simclr_images=len(view_t),
        simclr_views=config.views,
    )


@register_recipe(
    "simclr",
    SimCLRConfig,
    backbone_suffix=True,
    summary="self-supervised SimCLR (NT-Xent on augmented views) on a pretrained CNN; no labels",
)
def train_simclr(catalog: Catalog, split: Split, config: SimCLRConfig, ctx: RunContext) -> TrainResult:
    """SimCLR fine-tuning; ``trainable_blocks=0`` (default) keeps the backbone frozen (:func:`train_simclr_head`)."""
    if config.trainable_blocks == 0:
        return train_simclr_head(catalog, split, config, ctx)
    elapsed = timer()
    setup = blocks_setup(catalog, split, config, ctx, embedding_dim=0)
    model, backbone = setup.model, setup.backbone
    projection = mlp(backbone.dim, PROJECTION_HIDDEN, PROJECTION_DIM)
    train_ids = _views_per_image(setup.ids, setup.parts["train"], config)
    view_feats, _ = augmented_stem_views(
        model.stem,
        catalog,
        train_ids,
        backbone.preprocess,
        {"backbone": backbone.name, "weights": backbone.weights_id, "trainable_blocks": config.trainable_blocks},
        views=config.views,
        seed=config.seed,
        ctx=ctx,
    )
    view_t = torch.from_numpy(view_feats)
    loss_step = _pair_loss(model.embed_stem_output, projection, view_t, NTXentPairLoss(temperature=config.temperature))
    optimizer = torch.optim.AdamW(
        [
            {"params": list(model.top.parameters()), "lr": config.lr * config.backbone_lr_scale},
            {"params": list(projection.parameters()), "lr": config.lr},
        ],
        weight_decay=config.weight_decay,
    )
    history = fit_with_bar(
        nn.ModuleDict({"model": model, "projection": projection}),
        loss_step,
        lambda epoch: shuffled_epoch(np.arange(len(view_t)), config, epoch),
        config,
        ctx,
        optimizer=optimizer,
        on_epoch=val_precision_callback(setup.embed_rows, setup.labels, setup.parts["train"], setup.parts["val"]),
        train_mode=batchnorms_to_eval,
    )
    return save_blocks_run(
        setup,
        catalog,
        split,
        config,
        ctx,
        history,
        elapsed(),
        pooling="global average pooling",
        description=f"{backbone.name} fine-tuned with SimCLR NT-Xent (no labels) on {catalog.name}",
        simclr_images=len(view_t),
        simclr_views=config.views,
    )
