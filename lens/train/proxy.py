"""``proxy-<backbone>``: a head on a frozen pretrained encoder trained with a proxy / classification metric loss.

The loss is one of pytorch-metric-learning's (``--loss``, :data:`lens.train.losses.METRIC_LOSSES`): Proxy-Anchor
(the default, chosen on validation P@5; docs/training.md), normalized softmax, ArcFace, CosFace, or Multi-Similarity with its
miner. The proxies train in their own optimizer parameter group at ``--loss-lr``, as pml documents. Everything else is
the frozen-head path of ``triplet-<backbone>``: the backbone's catalog vectors come from the embedding cache, the head
is residual and zero-initialised (training starts exactly at the pretrained space), batches are class-balanced, and
the saved model is a ``head`` encoder like the triplet heads. Backbone ``concat`` = the three pretrained backbones'
L2-normalised vectors side by side (:mod:`lens.encoders.composite`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lens.catalog import Catalog
from lens.train.common import (
    RunContext,
    TrainResult,
    balanced_epoch,
    fit_with_bar,
    label_codes,
    timer,
    val_precision_callback,
)
from lens.train.frozen import BackboneConfig, head_setup, save_head_run
from lens.train.loop import setting
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

    def loss_params(self) -> dict[str, float | None]:
        return {"temperature": self.temperature, "margin": self.margin, "scale": self.scale, "alpha": self.alpha}


@register_recipe(
    "proxy",
    ProxyConfig,
    backbone_suffix=True,
    summary="proxy / classification metric loss (normalized softmax, proxy-anchor, arcface, ...) on a frozen CNN",
)
def train_proxy(catalog: Catalog, split: Split, config: ProxyConfig, ctx: RunContext) -> TrainResult:
    """Train a head on ``config.backbone``'s frozen vectors with ``config.loss``; save as ``ctx.name``; evaluate."""
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
