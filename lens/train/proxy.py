"""``proxy-<backbone>``: a head on a frozen pretrained encoder trained with a proxy / classification metric loss.

The loss is one of pytorch-metric-learning's (``--loss``, :data:`lens.train.losses.METRIC_LOSSES`): Proxy-Anchor
(the default, chosen on validation P@5; docs/training.md), normalized softmax, ArcFace, CosFace, or Multi-Similarity with its
miner. The proxies train in their own optimizer parameter group at ``--loss-lr``, as pml documents. Everything else is
the frozen-head path of ``triplet-<backbone>``: the backbone's catalog vectors come from the embedding cache, the head
is residual and zero-initialised (training starts exactly at the pretrained space), batches are class-balanced, and
the saved model is a ``head`` encoder like the triplet heads. Backbone ``concat`` = the three pretrained backbones'
L2-normalised vectors side by side (:mod:`lens.encoders.composite`).

``--trainable-blocks k`` (:func:`train_proxy_blocks`) then fine-tunes the backbone's last ``k`` blocks with the head,
on the frozen stem's output computed once per catalog (and, with ``--views v``, for ``v`` augmented views of each
training photo), so no step runs the frozen trunk; the saved model is then an ``embedder`` that runs end to end.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lens.catalog import Catalog
from lens.train.common import (
    AUGMENT,
    RunContext,
    TrainResult,
    balanced_epoch,
    embed_with_base,
    fit_with_bar,
    inference_vectors,
    label_codes,
    timer,
    val_precision_callback,
)
from lens.train.frozen import (
    BackboneConfig,
    BlocksSetup,
    blocks_setup,
    blocks_views,
    head_setup,
    save_blocks_run,
    save_head_run,
)
from lens.train.loop import batchnorms_to_eval, setting
from lens.train.losses import METRIC_LOSSES, MetricLoss
from lens.train.registry import register_recipe
from lens.train.split import Split


@dataclass
class ProxyConfig(BackboneConfig):
    """``proxy-<backbone>`` settings; the defaults were chosen on validation P@5 (docs/training.md)."""

    backbone: str = setting(
        "efficientnet-lite2", "pretrained backbone (efficientnet-lite2, concat, mobilenet-v2, lite0)"
    )
    loss: str = setting("proxy-anchor", "metric loss", choices=tuple(METRIC_LOSSES))
    epochs: int = setting(40, "passes over the training split", minimum=1)
    lr: float = setting(1e-3, "learning rate (AdamW) of the head")
    loss_lr: float = setting(1e-2, "learning rate (AdamW) of the loss's proxies (their own parameter group)")
    m_per_class: int = setting(4, "items per class in a class-balanced batch", minimum=1)
    temperature: float | None = setting(None, "normalized-softmax temperature (default 0.05)")
    margin: float | None = setting(
        None, "loss margin (proxy-anchor 0.1, arcface 28.6 degrees, cosface 0.35; default: the loss's own)"
    )
    scale: float | None = setting(None, "arcface / cosface logit scale (default 64)")
    alpha: float | None = setting(None, "proxy-anchor alpha (32) / multi-similarity alpha (2)")
    embedding_dim: int = setting(0, "output dimension (0 = the backbone's)", minimum=0)
    backbone_lr_scale: float = setting(
        0.01, "fine-tuning (--trainable-blocks): learning-rate factor of the pretrained blocks (x --lr)"
    )
    augment_views: int = setting(
        0,
        "fine-tuning (--trainable-blocks): augmented views of each training photo through the frozen stem, computed "
        "once (each epoch samples the plain photo or one view)",
        flag="--views",
        minimum=0,
    )
    ft_epochs: int = setting(3, "fine-tuning (--trainable-blocks): epochs after the head's (--epochs)", minimum=1)
    patience: int = setting(
        2, "fine-tuning: stop after this many epochs without a better validation P@5 (the best is kept)", minimum=1
    )
    augment: str = setting("light", "fine-tuning views: augmentation strength", choices=tuple(AUGMENT))
    ft_lr_scale: float = setting(
        0.1, "fine-tuning: learning-rate factor of the head and the proxies after the head stage (x --lr, --loss-lr)"
    )

    def loss_params(self) -> dict[str, float | None]:
        return {"temperature": self.temperature, "margin": self.margin, "scale": self.scale, "alpha": self.alpha}


@register_recipe(
    "proxy",
    ProxyConfig,
    backbone_suffix=True,
    summary="proxy / classification metric loss (normalized softmax, proxy-anchor, arcface, ...) on a frozen CNN",
)
def train_proxy(catalog: Catalog, split: Split, config: ProxyConfig, ctx: RunContext) -> TrainResult:
    """Train a head on ``config.backbone``'s frozen vectors with ``config.loss``; save as ``ctx.name``; evaluate.

    With ``config.trainable_blocks`` >= 1 the head is then fine-tuned together with the backbone's last blocks
    (:func:`train_proxy_blocks`)."""
    if config.trainable_blocks:
        return train_proxy_blocks(catalog, split, config, ctx)
    elapsed = timer()
    setup = head_setup(catalog, split, config, ctx, dim=config.embedding_dim)
    codes = label_codes(setup.labels)
    codes_t = torch.from_numpy(codes)
    train_idx, val_idx = setup.parts["train"], setup.parts["val"]
    loss_fn = MetricLoss(config.loss, int(codes.max()) + 1, int(setup.arch["dim"]), **config.loss_params())
    # head + proxies in one module, so the checkpoint (and --resume) carries both; only the head is saved as the model
    model = nn.ModuleDict({"head": setup.head, "loss": loss_fn})
    groups: list[dict] = [{"params": list(setup.head.parameters()), "lr": config.lr}]
    if list(loss_fn.parameters()):
        groups.append({"params": list(loss_fn.parameters()), "lr": config.loss_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)

    def loss_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        return loss_fn(F.normalize(setup.head(setup.vectors[index]), dim=-1), codes_t[index])

    history = fit_with_bar(
        model,
        loss_step,
        lambda epoch: balanced_epoch(train_idx, codes, config, epoch, m=config.m_per_class),
        config,
        ctx,
        optimizer=optimizer,
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
        pooling=f"trained {config.loss} head",
        description=f"{config.backbone} (frozen) + head trained with pytorch-metric-learning's {config.loss} loss on "
        f"{catalog.name}",
    )


def _pooled_rows(catalog: Catalog, setup: BlocksSetup, config: ProxyConfig, ctx: RunContext) -> torch.Tensor:
    """The frozen backbone's L2-normalised pooled vectors of ``setup.ids``, ``(n, dim)``: from the lens embedding
    cache (what ``proxy-<backbone>`` trains on) when it holds every id, else through the frozen top."""
    if config.backbone != "tiny":
        _base, image_set = embed_with_base(catalog, config.backbone, ctx)
        position = {item_id: row for row, item_id in enumerate(image_set.ids)}
        if all(item_id in position for item_id in setup.ids):
            return torch.from_numpy(image_set.vectors[[position[i] for i in setup.ids]])
    chunks = [torch.from_numpy(setup.features[start : start + 256]) for start in range(0, len(setup.features), 256)]
    return torch.from_numpy(np.concatenate([inference_vectors(setup.model.top, chunk) for chunk in chunks]))


def train_proxy_blocks(catalog: Catalog, split: Split, config: ProxyConfig, ctx: RunContext) -> TrainResult:
    """``proxy-<backbone> --trainable-blocks k``: the proxy head, then the backbone's last ``k`` blocks with it.

    Two stages (linear probe, then fine-tune):

    1. ``--epochs`` epochs of exactly ``proxy-<backbone>``: the residual head and the proxies on the frozen
       backbone's cached pooled vectors (seconds per epoch).
    2. up to ``--ft-epochs`` epochs of the last ``k`` blocks (lr x ``--backbone-lr-scale``), the head and the
       proxies (their stage-1 rates x ``--ft-lr-scale``) together, on the frozen stem's cached output: each step
       takes, per photo, the plain view or one of its ``--views`` augmented views (computed once through the stem,
       float16). Every learning rate warms up linearly over the first fine-tuning epoch; BatchNorm statistics stay
       frozen. After every epoch, validation P@5; training stops after ``--patience`` epochs without a better one,
       and the best weights (stage 1's included: a fine-tune that never helps keeps the pretrained blocks) are the
       model.

    The saved model is an ``embedder`` (stem + trained blocks + L2 normalisation + head, every weight), so a query
    photo runs end to end; its catalog vectors come from the cached stem output and are checked against that path.
    """
    elapsed = timer()
    setup = blocks_setup(catalog, split, config, ctx, embedding_dim=0, hidden=config.hidden)
    model, codes = setup.model, label_codes(setup.labels)
    codes_t = torch.from_numpy(codes)
    train_idx, val_idx = setup.parts["train"], setup.parts["val"]
    loss_fn = MetricLoss(config.loss, int(codes.max()) + 1, setup.backbone.dim, **config.loss_params())
    head = model.head
    pooled = _pooled_rows(catalog, setup, config, ctx)

    # stage 1: the head alone on the cached pooled vectors (the head normalises its input itself)
    head_only = nn.ModuleDict({"head": head, "loss": loss_fn})
    head_groups: list[dict] = [{"params": list(head.parameters()), "lr": config.lr}]
    if list(loss_fn.parameters()):
        head_groups.append({"params": list(loss_fn.parameters()), "lr": config.loss_lr})

    def head_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        return loss_fn(F.normalize(head(pooled[index]), dim=-1), codes_t[index])

    def balanced(epoch: int) -> list[np.ndarray]:
        return balanced_epoch(train_idx, codes, config, epoch, m=config.m_per_class)

    history = fit_with_bar(
        head_only,
        head_step,
        balanced,
        config,
        ctx,
        label="head",
        checkpoint=ctx.out_dir / "head-checkpoint.pt",
        optimizer=torch.optim.AdamW(head_groups, weight_decay=config.weight_decay),
        on_epoch=val_precision_callback(
            lambda rows: inference_vectors(head, pooled[torch.from_numpy(rows)]), setup.labels, train_idx, val_idx
        ),
    )
    for row in history:
        row["stage"] = 1.0

    # stage 2: blocks + head + proxies on the cached stem output, one random view per photo per step
    view_maps, view_rows = (
        blocks_views(
            setup, catalog, train_idx, views=config.augment_views, seed=config.seed, ctx=ctx, strength=config.augment
        )
        if config.augment_views
        else (np.zeros((0, 0), np.float16), np.zeros(0, np.int64))
    )
    view_of = np.full(len(setup.ids), -1, dtype=np.int64)
    view_of[view_rows] = np.arange(len(view_rows))
    blocks = [p for p in model.top.parameters() if p.requires_grad]
    groups: list[dict] = [
        {"params": blocks, "lr": config.lr * config.backbone_lr_scale},
        {"params": list(head.parameters()), "lr": config.lr * config.ft_lr_scale},
    ]
    if list(loss_fn.parameters()):
        groups.append({"params": list(loss_fn.parameters()), "lr": config.loss_lr * config.ft_lr_scale})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    peak = [group["lr"] for group in groups]
    warmup = max(1, len(balanced(0)))
    steps = [0]
    full = nn.ModuleDict({"model": model, "loss": loss_fn})

    def ft_step(batch: np.ndarray) -> torch.Tensor:
        # every group warms up over the first epoch: a fresh AdamW at the head stage's rates jolted the trained
        # head (measured: training loss 0.21 -> 0.49, validation P@5 0.900 -> 0.894 -> 0.879)
        steps[0] += 1
        for group, top in zip(optimizer.param_groups, peak, strict=True):
            group["lr"] = top * min(1.0, steps[0] / warmup)
        pick = torch.randint(0, config.augment_views + 1, (len(batch),)).numpy() if config.augment_views else None
        maps = torch.from_numpy(setup.features[batch])
        if pick is not None:
            chosen = np.flatnonzero((pick > 0) & (view_of[batch] >= 0))
            if len(chosen):
                augmented = view_maps[view_of[batch[chosen]], pick[chosen] - 1]
                maps[torch.from_numpy(chosen)] = torch.from_numpy(augmented.astype(np.float32))
        return loss_fn(F.normalize(model.embed_stem_output(maps), dim=-1), codes_t[torch.from_numpy(batch)])

    validate = val_precision_callback(setup.embed_rows, setup.labels, train_idx, val_idx)
    best_p = [history[-1].get("val_p@5", -1.0) if history else -1.0]
    best_state = [copy.deepcopy(full.state_dict())]
    since = [0]

    def on_ft_epoch(epoch: int, row: dict[str, float]) -> dict[str, float]:
        out = dict(validate(epoch, row))
        score = out.get("val_p@5", 0.0)
        if score > best_p[0]:
            best_p[0], best_state[0], since[0] = score, copy.deepcopy(full.state_dict()), 0
        else:
            since[0] += 1
        return {**out, "stage": 2.0, **({"stop": 1.0} if since[0] >= config.patience else {})}

    history += fit_with_bar(
        full,
        ft_step,
        lambda epoch: balanced_epoch(train_idx, codes, config, epoch, m=config.m_per_class, seed=config.seed + 1),
        replace(config, epochs=config.ft_epochs),
        ctx,
        label="blocks",
        optimizer=optimizer,
        on_epoch=on_ft_epoch,
        train_mode=batchnorms_to_eval,
    )
    full.load_state_dict(best_state[0])
    model.eval()
    return save_blocks_run(
        setup,
        catalog,
        split,
        config,
        ctx,
        history,
        elapsed(),
        pooling=f"last {config.trainable_blocks} blocks fine-tuned + {config.loss} head",
        description=f"{setup.backbone.name}, last {config.trainable_blocks} blocks fine-tuned with a residual head "
        f"under pytorch-metric-learning's {config.loss} loss ({config.augment_views} augmented views per photo) on "
        f"{catalog.name}",
        augment_views=config.augment_views,
        best_val_p5=best_p[0],
    )
