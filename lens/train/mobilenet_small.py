"""``mobilenet-small``: a ~0.45M-parameter network of inverted residual blocks, trained from scratch.

Stage 1 trains it as a category classifier (cross-entropy) on the training split, with flips and small shifts as
augmentation. Stage 2 freezes that backbone and trains a Siamese/triplet embedding head on its pooled features
(batch-hard cosine triplet loss, m-per-class batches). The encoder is backbone + head; the classifier's held-out
accuracy and the head's retrieval metrics are both reported. Inputs are small (``input_size``, default 96 px for
product photos, 32 px for Fashion-MNIST): a network this size trained for minutes on a CPU gains little from more.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from lens.catalog import Catalog
from lens.encoders.base import Preprocess
from lens.train.backbones import freeze
from lens.train.common import (
    RunContext, fit_with_bar, save_run, TrainResult, base_config, heldout_metrics, label_codes, precision_at, split_positions, timer,
)
from lens.train.data import small_images
from lens.train.loop import TrainConfig, epoch_seed
from lens.train.losses import BatchHardTripletLoss
from lens.train.samplers import class_balanced_batches, shuffled_batches
from lens.train.split import Split

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
# (expansion t, output channels c, repeats n, first stride s), MobileNetV2's table scaled down.
SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 40, 2, 2), (4, 64, 3, 2), (4, 96, 2, 1), (4, 128, 1, 2))
FEATURE_DIM = 384


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(Conv2dNormActivation(c_in, hidden, 1, activation_layer=nn.ReLU6))
        layers += [
            Conv2dNormActivation(hidden, hidden, 3, stride=stride, groups=hidden, activation_layer=nn.ReLU6),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class SmallMobileNet(nn.Module):
    """Images -> pooled ``(N, FEATURE_DIM)`` features."""

    def __init__(self, settings: tuple = SETTINGS, feature_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        layers: list[nn.Module] = [Conv2dNormActivation(3, 16, 3, stride=2, activation_layer=nn.ReLU6)]
        c = 16
        for t, c_out, n, s in settings:
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        layers.append(Conv2dNormActivation(c, feature_dim, 1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


class Classifier(nn.Module):
    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.backbone = SmallMobileNet()
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(FEATURE_DIM, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.backbone(x)))


def make_head(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURE_DIM, FEATURE_DIM), nn.ReLU(), nn.Linear(FEATURE_DIM, dim))


class EmbeddingModel(nn.Module):
    """The encoder: shared backbone + Siamese/triplet head."""

    def __init__(self, backbone: SmallMobileNet, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_embedding_model(arch: dict[str, Any]) -> EmbeddingModel:
    return EmbeddingModel(SmallMobileNet(), make_head(int(arch["embedding_dim"])))


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


def train_mobilenet_small(catalog: Catalog, split: Split, config: TrainConfig, ctx: RunContext) -> TrainResult:
    """Stage 1 classifier, stage 2 triplet head; save as ``ctx.name``."""

    elapsed = timer()
    size = config.input_size
    bar, close = ctx.bar(f"decode {size}px images")
    try:
        images_np, ids = small_images(catalog, catalog.ids, size, cache_dir=ctx.cache_dir, progress=bar)
    finally:
        close()
    images = torch.from_numpy(images_np)
    parts = split_positions(ids, split)
    all_labels = catalog.labels(split.label_column)
    labels = np.array([all_labels[catalog.index_of(i)] for i in ids], dtype=object)
    codes = label_codes(labels)
    train_idx, val_idx, query_idx = parts["train"], parts["val"], parts["query"]
    n_classes = int(codes.max()) + 1
    codes_t = torch.from_numpy(codes)

    # ---- stage 1: classifier
    torch.manual_seed(config.seed)
    classifier = Classifier(n_classes)
    n_params = count_parameters(classifier.backbone)
    pad = max(1, size // 16)

    def cls_batches(epoch: int):  # noqa: ANN202
        chosen = [train_idx[b] for b in shuffled_batches(len(train_idx), batch_size=config.batch_size,
                                                           seed=epoch_seed(config.seed, epoch))]
        return chosen[: config.steps_per_epoch] if config.steps_per_epoch else chosen

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

    cls_config = TrainConfig(**{**config.to_dict(), "recipe": config.recipe + ":classifier"})
    history = fit_with_bar(classifier, cls_step, cls_batches, cls_config, ctx,
                           on_epoch=cls_epoch, checkpoint=ctx.out_dir / "checkpoint-classifier.pt", label="classifier")
    for row in history:
        row["stage"] = 1.0
    classifier_accuracy = accuracy(query_idx)

    # ---- stage 2: triplet head on the frozen backbone's pooled features
    backbone = freeze(classifier.backbone)
    pooled = _pooled(backbone, images)
    torch.manual_seed(config.seed + 1)
    head = make_head(config.embedding_dim)
    loss_fn = BatchHardTripletLoss(margin=config.margin)
    train_codes = codes[train_idx]
    n_batches = config.steps_per_epoch or max(1, len(train_idx) // config.batch_size)

    def head_batches(epoch: int):  # noqa: ANN202
        local = class_balanced_batches(train_codes, m=config.m_per_class, batch_size=config.batch_size,
                                       n_batches=n_batches, seed=epoch_seed(config.seed + 1, epoch))
        return [train_idx[b] for b in local]

    def head_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        return loss_fn(F.normalize(head(pooled[index]), dim=-1), codes_t[index])

    gallery = np.concatenate([train_idx, val_idx])

    def head_epoch(epoch: int, row: dict[str, float]) -> dict[str, float]:
        if not len(val_idx):
            return {}
        vectors = F.normalize(head(pooled[torch.from_numpy(gallery)]), dim=-1).numpy()
        return {"val_p@5": precision_at(vectors, labels[gallery], np.arange(len(train_idx), len(gallery)), 5)}

    head_config = TrainConfig(**{**config.to_dict(), "recipe": config.recipe + ":head", "epochs": config.head_epochs})
    head_history = fit_with_bar(head, head_step, head_batches, head_config, ctx,
                                on_epoch=head_epoch, checkpoint=ctx.out_dir / "checkpoint-head.pt", label="triplet head")
    for row in head_history:
        row["stage"] = 2.0
    train_seconds = elapsed()

    model = EmbeddingModel(backbone, head).eval()
    with torch.inference_mode():
        vectors = F.normalize(head(pooled), dim=-1).numpy().astype(np.float32)
    metrics = heldout_metrics(vectors, ids, catalog, split)
    classifier_vectors = F.normalize(pooled, dim=-1).numpy()
    metrics.update({"classifier_accuracy": classifier_accuracy, "backbone_parameters": n_params,
                    "classifier_features_p@5": heldout_metrics(classifier_vectors, ids, catalog, split)["precision@5"]})
    arch = {"type": "mobilenet-small", "embedding_dim": config.embedding_dim, "feature_dim": FEATURE_DIM,
            "n_classes": n_classes}
    pre = Preprocess(input_size=size, crop_pct=1.0, mean=MEAN, std=STD)
    config_json = {
        "kind": "image", "recipe": config.recipe, "arch": arch, "dim": config.embedding_dim,
        "preprocess": pre.key(), "precision": "fp32", "license": "trained from scratch by lens",
        "description": f"{n_params / 1e6:.2f}M-param inverted-residual CNN from scratch ({size}px) + triplet head",
        **base_config(config, catalog, split, ctx), "history": history + head_history,
        "train_seconds": train_seconds, "heldout": metrics,
    }
    return save_run(ctx, catalog, model.state_dict(), config_json, history + head_history, train_seconds, metrics, ids, vectors)
