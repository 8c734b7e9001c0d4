"""``triplet-<backbone>``: a pretrained CNN trained with a cosine triplet loss, batch-hard mining, m-per-class batches.

By default (``trainable_blocks=0``) every backbone layer stays frozen and a residual head trains on the backbone's
cached catalog vectors: seconds per epoch. With ``trainable_blocks=k`` the backbone's last ``k`` blocks train too, on
the cached output of the frozen stem; BatchNorm statistics stay frozen. Label = the split's label column
(``articleType`` by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lens.catalog import Catalog
from lens.train.common import (
    RunContext,
    TrainResult,
    augmented_base_views,
    balanced_epoch,
    fit_with_bar,
    label_codes,
    timer,
    val_precision_callback,
)
from lens.train.frozen import BackboneConfig, HeadSetup, blocks_setup, head_setup, save_blocks_run, save_head_run
from lens.train.loop import batchnorms_to_eval, setting
from lens.train.losses import BatchHardTripletLoss
from lens.train.registry import register_recipe
from lens.train.split import Split


@dataclass
class TripletConfig(BackboneConfig):
    """``triplet-<backbone>`` settings; why these defaults: docs/training.md."""

    epochs: int = setting(20, "passes over the training split", minimum=1)
    m_per_class: int = setting(4, "items per class in a class-balanced batch", minimum=1)
    margin: float = setting(0.2, "triplet margin on cosine similarity")
    embedding_dim: int = setting(0, "output dimension (0 = the backbone's)", minimum=0)
    augment_views: int = setting(
        0, "augmented views of each training photo through the frozen backbone (head only)", flag="--views", minimum=0
    )


def augmented_bank(setup: HeadSetup, catalog: Catalog, views: int, seed: int, ctx: RunContext) -> torch.Tensor:
    """``(n, 1 + views, dim)``: slot 0 is each item's catalog vector, slots 1.. the frozen encoder's vectors of
    ``views`` light augmentations of the training items (crop, flip, mild colour jitter; seeded, cached). Items with
    no views (not in training, or unreadable) repeat their catalog vector, so a random slot is always valid."""
    bank = setup.vectors.unsqueeze(1).repeat(1, 1 + views, 1)
    if views:
        train_ids = [setup.ids[i] for i in setup.parts["train"]]
        view_np, kept = augmented_base_views(
            setup.base, catalog, train_ids, views=views, seed=seed, ctx=ctx, strength="light"
        )
        position = {item_id: row for row, item_id in enumerate(setup.ids)}
        bank[torch.tensor([position[i] for i in kept], dtype=torch.long), 1:] = torch.from_numpy(view_np)
    return bank


def train_triplet_head(catalog: Catalog, split: Split, config: TripletConfig, ctx: RunContext) -> TrainResult:
    """``trainable_blocks=0``: every backbone layer frozen; a head trains on its pooled vectors.

    The backbone's vectors come from the lens embedding cache (computed once per catalog by ``embed``/``evaluate``),
    so training costs seconds per epoch; the saved encoder runs the pretrained encoder, then the head.
    """
    elapsed = timer()
    setup = head_setup(catalog, split, config, ctx, dim=config.embedding_dim)
    head, codes = setup.head, label_codes(setup.labels)
    codes_t = torch.from_numpy(codes)
    train_idx, val_idx = setup.parts["train"], setup.parts["val"]
    loss_fn = BatchHardTripletLoss(margin=config.margin)
    bank = augmented_bank(setup, catalog, config.augment_views, config.seed, ctx)

    def loss_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        pick = torch.randint(0, bank.shape[1], (len(index),))  # the clean photo or one of its augmented views
        return loss_fn(F.normalize(head(bank[index, pick]), dim=-1), codes_t[index])

    history = fit_with_bar(
        head,
        loss_step,
        lambda epoch: balanced_epoch(train_idx, codes, config, epoch, m=config.m_per_class),
        config,
        ctx,
        on_epoch=val_precision_callback(setup.embed_rows, setup.labels, train_idx, val_idx),
    )
    return save_head_run(
        setup,
        catalog,
        split,
        config,
        ctx,
        history,
        elapsed(),
        pooling="trained triplet head",
        description=f"{config.backbone} (frozen) + triplet head trained with batch-hard cosine triplet loss on "
        f"{catalog.name}",
        augment_views=bank.shape[1] - 1,
    )


@register_recipe(
    "triplet",
    TripletConfig,
    backbone_suffix=True,
    summary="batch-hard cosine triplet loss on a pretrained CNN (frozen + head, or top blocks too)",
)
def train_triplet(catalog: Catalog, split: Split, config: TripletConfig, ctx: RunContext) -> TrainResult:
    """Train ``config.backbone`` with batch-hard triplet loss; save as ``ctx.name``; evaluate on the held-out split.

    ``trainable_blocks=0`` trains only a head on the frozen backbone (:func:`train_triplet_head`); ``k >= 1`` also
    trains the backbone's last ``k`` blocks on cached stem features.
    """
    if config.trainable_blocks == 0:
        return train_triplet_head(catalog, split, config, ctx)
    elapsed = timer()
    setup = blocks_setup(catalog, split, config, ctx, embedding_dim=config.embedding_dim)
    model, codes = setup.model, label_codes(setup.labels)
    features_t, codes_t = torch.from_numpy(setup.features), torch.from_numpy(codes)
    train_idx, val_idx = setup.parts["train"], setup.parts["val"]
    loss_fn = BatchHardTripletLoss(margin=config.margin)

    def loss_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        return loss_fn(F.normalize(model.embed_stem_output(features_t[index]), dim=-1), codes_t[index])

    optimizer = torch.optim.AdamW(
        [
            {
                "params": [p for p in model.top.parameters() if p.requires_grad],
                "lr": config.lr * config.backbone_lr_scale,
            },
            {"params": list(model.head.parameters()), "lr": config.lr},
        ],
        weight_decay=config.weight_decay,
    )
    history = fit_with_bar(
        model,
        loss_step,
        lambda epoch: balanced_epoch(train_idx, codes, config, epoch, m=config.m_per_class),
        config,
        ctx,
        optimizer=optimizer,
        on_epoch=val_precision_callback(setup.embed_rows, setup.labels, train_idx, val_idx),
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
        description=f"{setup.backbone.name} fine-tuned with batch-hard cosine triplet loss on {catalog.name}",
    )
