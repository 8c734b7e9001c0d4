"""``mobilenet-small``: a ~0.39M-parameter MobileNetV2 (:mod:`lens.encoders.trained.mobilenet_small`) from scratch.

Stage 1 trains it as a category classifier (cross-entropy) on the training split, with flips and small shifts as
augmentation. Stage 2 freezes that backbone and trains a Siamese/triplet embedding head on its pooled features
(batch-hard cosine triplet loss, m-per-class batches). The encoder is backbone + head; the classifier's held-out
accuracy and the head's retrieval metrics are both reported. Inputs are small (``input_size``, default 96 px for
product photos, 32 px for Fashion-MNIST): a network this size trained for minutes on a CPU gains little from more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lens.catalog import Catalog
from lens.encoders.base import Preprocess
from lens.encoders.trained.mobilenet_small import FEATURE_DIM, MEAN, STD, EmbeddingModel, SmallMobileNet, make_head
from lens.train.common import (
    RunContext,
    TrainResult,
    balanced_epoch,
    base_config,
    fit_with_bar,
    heldout_metrics,
    inference_vectors,
    label_codes,
    load_small_images,
    precision_at,
    save_run,
    shuffled_epoch,
    timer,
)
from lens.train.loop import TrainConfig, freeze, setting
from lens.train.losses import BatchHardTripletLoss
from lens.train.registry import register_recipe
from lens.train.split import Split


@dataclass
class MobileNetSmallConfig(TrainConfig):
    """``mobilenet-small`` settings; why these defaults: docs/training.md."""

    epochs: int = setting(8, "classifier epochs (stage 1)", minimum=1)
    lr: float = setting(3e-3, "learning rate (AdamW)")
    input_size: int = setting(96, "image side in pixels", minimum=8)
    embedding_dim: int = setting(128, "output dimension of the triplet head", minimum=1)
    head_epochs: int = setting(5, "epochs of the triplet head (stage 2)", minimum=1)
    m_per_class: int = setting(4, "items per class in a class-balanced batch (stage 2)", minimum=1)
    margin: float = setting(0.2, "triplet margin on cosine similarity (stage 2)")


class Classifier(nn.Module):
    """Stage 1: the backbone with a dropout + linear classifier."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.backbone = SmallMobileNet()
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(FEATURE_DIM, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone(x)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _normalise(batch_uint8: torch.Tensor) -> torch.Tensor:
    x = batch_uint8.float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def _augment(batch: torch.Tensor, pad: int) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to ``pad`` pixels (replicate padding), per image."""
    n, _, h, w = batch.shape
    flip = torch.rand(n) < 0.5
    batch = torch.where(flip.view(n, 1, 1, 1), batch.flip(3), batch)
    if pad:
        padded = F.pad(batch, (pad, pad, pad, pad), mode="replicate")
        dx = torch.randint(0, 2 * pad + 1, (n,))
        dy = torch.randint(0, 2 * pad + 1, (n,))
        batch = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    return batch


def _pooled(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out.append(backbone(_normalise(images[start : start + batch_size])))
    return torch.cat(out)


@register_recipe(
    "mobilenet-small",
    MobileNetSmallConfig,
    summary="small MobileNetV2 from scratch: classifier, then a triplet head on its frozen features",
)
def train_mobilenet_small(catalog: Catalog, split: Split, config: MobileNetSmallConfig, ctx: RunContext) -> TrainResult:
    """Stage 1 classifier, stage 2 triplet head; save as ``ctx.name``."""
    elapsed = timer()
    size = config.input_size
    data = load_small_images(catalog, split, size, ctx)
    images, ids, labels = data.images, data.ids, data.labels
    codes = label_codes(labels)
    train_idx, val_idx, query_idx = data.parts["train"], data.parts["val"], data.parts["query"]
    codes_t = torch.from_numpy(codes)

    # ---- stage 1: classifier
    torch.manual_seed(config.seed)
    classifier = Classifier(int(codes.max()) + 1)
    n_params = count_parameters(classifier.backbone)
    pad = max(1, size // 16)

    def cls_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        x = _normalise(_augment(images[index], pad))
        return F.cross_entropy(classifier(x), codes_t[index], label_smoothing=0.1)

    def accuracy(rows: np.ndarray) -> float:
        if len(rows) == 0:
            return float("nan")
        with torch.inference_mode():
            feats = _pooled(classifier.backbone, images[torch.from_numpy(rows)])
            pred = classifier.fc(feats).argmax(1).numpy()
        return float((pred == codes[rows]).mean())

    def cls_epoch(epoch: int, row: dict[str, float]) -> dict[str, float]:
        return {"val_accuracy": accuracy(val_idx)} if len(val_idx) else {}

    cls_config = replace(config, recipe=config.recipe + ":classifier")
    history = fit_with_bar(
        classifier,
        cls_step,
        lambda epoch: shuffled_epoch(train_idx, cls_config, epoch),
        cls_config,
        ctx,
        on_epoch=cls_epoch,
        checkpoint=ctx.out_dir / "checkpoint-classifier.pt",
        label="classifier",
    )
    for row in history:
        row["stage"] = 1.0
    classifier_accuracy = accuracy(query_idx)

    # ---- stage 2: triplet head on the frozen backbone's pooled features
    backbone = freeze(classifier.backbone)
    pooled = _pooled(backbone, images)
    torch.manual_seed(config.seed + 1)
    head = make_head(config.embedding_dim)
    loss_fn = BatchHardTripletLoss(margin=config.margin)

    def head_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        return loss_fn(F.normalize(head(pooled[index]), dim=-1), codes_t[index])

    gallery = np.concatenate([train_idx, val_idx])

    def head_epoch(epoch: int, row: dict[str, float]) -> dict[str, float]:
        if not len(val_idx):
            return {}
        vectors = inference_vectors(head, pooled[torch.from_numpy(gallery)])
        return {"val_p@5": precision_at(vectors, labels[gallery], np.arange(len(train_idx), len(gallery)), 5)}

    head_config = replace(config, recipe=config.recipe + ":head", epochs=config.head_epochs)
    head_history = fit_with_bar(
        head,
        head_step,
        lambda epoch: balanced_epoch(train_idx, codes, config, epoch, m=config.m_per_class, seed=config.seed + 1),
        head_config,
        ctx,
        on_epoch=head_epoch,
        checkpoint=ctx.out_dir / "checkpoint-head.pt",
        label="triplet head",
    )
    for row in head_history:
        row["stage"] = 2.0
    train_seconds = elapsed()

    model = EmbeddingModel(backbone, head).eval()
    vectors = inference_vectors(head, pooled)
    metrics = heldout_metrics(vectors, ids, catalog, split)
    metrics.update(
        {
            "classifier_accuracy": classifier_accuracy,
            "backbone_parameters": n_params,
            "classifier_features_p@5": heldout_metrics(inference_vectors(nn.Identity(), pooled), ids, catalog, split)[
                "precision@5"
            ],
        }
    )
    arch = {
        "type": "mobilenet-small",
        "embedding_dim": config.embedding_dim,
        "feature_dim": FEATURE_DIM,
        "n_classes": int(codes.max()) + 1,
    }
    config_json = {
        "kind": "image",
        "recipe": config.recipe,
        "arch": arch,
        "dim": config.embedding_dim,
        "preprocess": Preprocess(input_size=size, crop_pct=1.0, mean=MEAN, std=STD).key(),
        "precision": "fp32",
        "license": "trained from scratch by lens",
        "description": f"{n_params / 1e6:.2f}M-param inverted-residual CNN from scratch ({size}px) + triplet head",
        **base_config(config, catalog, split, ctx),
        "history": history + head_history,
        "train_seconds": train_seconds,
        "heldout": metrics,
    }
    return save_run(
        ctx, catalog, model.state_dict(), config_json, history + head_history, train_seconds, metrics, ids, vectors
    )
