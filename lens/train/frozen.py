"""Scaffolding shared by the recipes that start from a pretrained encoder (``triplet``, ``simclr``), written once.

Two ways to train on a pretrained CNN, each with a setup (data the recipe's loss runs on) and a save step:

- head only (``trainable_blocks=0``): the encoder stays frozen; its catalog vectors come from the lens embedding cache
  and a small head (:mod:`lens.encoders.trained.heads`) trains on them: :func:`head_setup`, :func:`save_head_run`.
- top blocks too (``trainable_blocks=k``): the backbone is cut into a frozen stem and ``k`` trainable top blocks; the
  stem's output is computed once per catalog (cached): :func:`blocks_setup`, :func:`save_blocks_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lens.catalog import Catalog
from lens.encoders.base import Encoder, Preprocess
from lens.encoders.trained.embedder import Embedder, SplitBackbone, build_split_backbone, embedder_head
from lens.encoders.trained.heads import build_head
from lens.train.common import (
    RunContext,
    TrainResult,
    augmentation,
    base_config,
    embed_with_base,
    heldout_metrics,
    inference_vectors,
    save_run,
    split_positions,
)
from lens.train.data import stem_features, stem_views
from lens.train.loop import TrainConfig, freeze, setting
from lens.train.split import Split


@dataclass
class BackboneConfig(TrainConfig):
    """Settings shared by the recipes on a pretrained backbone (``triplet-<backbone>``, ``simclr-<backbone>``)."""

    backbone: str = setting("mobilenet-v2", "pretrained backbone (mobilenet-v2, efficientnet-lite0/lite2)")
    lr: float = setting(1e-4, "learning rate (AdamW) of the new layers; pretrained blocks use lr x backbone-lr-scale")
    backbone_lr_scale: float = setting(1.0, "learning-rate factor of the unfrozen pretrained blocks")
    trainable_blocks: int = setting(0, "top backbone blocks that train (0 = all frozen, head only)", minimum=0)
    hidden: int = setting(1024, "head on the frozen backbone: hidden width", minimum=1)

    def model_name(self) -> str:
        return f"{self.recipe}-{self.backbone}"


@dataclass
class HeadSetup:
    """A frozen pretrained encoder and what a head trains on: its catalog vectors, their labels, the split."""

    base: Encoder
    ids: list[str]
    vectors: torch.Tensor  #: ``(n, d)`` float32, L2-normalised, one row per id
    labels: np.ndarray  #: ``(n,)`` object
    parts: dict[str, np.ndarray]  #: ``train`` / ``val`` / ``query`` row positions
    arch: dict[str, Any]  #: the saved head's architecture
    head: torch.nn.Module

    def embed_rows(self, rows: np.ndarray) -> np.ndarray:
        """This head's L2-normalised vectors of ``rows``: float32 ``(len(rows), dim)``."""
        return inference_vectors(self.head, self.vectors[torch.from_numpy(rows)])


def head_setup(catalog: Catalog, split: Split, config: BackboneConfig, ctx: RunContext, *, dim: int) -> HeadSetup:
    """Embed ``catalog`` with the pretrained ``config.backbone`` (cached), seed torch and build a new head
    (``dim`` 0: the base's width, residual)."""
    base, image_set = embed_with_base(catalog, config.backbone, ctx)
    ids = image_set.ids
    torch.manual_seed(config.seed)
    arch = {
        "type": "head",
        "base_encoder": config.backbone,
        "base_weights_id": base.weights_id,
        "base_precision": base.precision,
        "in_dim": base.dim,
        "hidden": config.hidden,
        "dim": dim or base.dim,
    }
    return HeadSetup(
        base,
        ids,
        torch.from_numpy(image_set.vectors),
        catalog.labels(split.label_column, ids=ids),
        split_positions(ids, split),
        arch,
        build_head(arch),
    )


def save_head_run(
    setup: HeadSetup,
    catalog: Catalog,
    split: Split,
    config: TrainConfig,
    ctx: RunContext,
    history: list[dict[str, float]],
    train_seconds: float,
    *,
    pooling: str,
    description: str,
    **extra: Any,
) -> TrainResult:
    """Evaluate the trained head on the held-out queries and save it (``kind: "head"``); ``extra``: more config keys."""
    base = setup.base
    return _save_frozen_run(
        ctx,
        catalog,
        split,
        config,
        history,
        train_seconds,
        model_fields={
            "kind": "head",
            "arch": setup.arch,
            "dim": setup.arch["dim"],
            "preprocess": base.spec.preprocess.key(),
            "precision": base.precision,
            "pooling": pooling,
        },
        description=description,
        base=(base.name, base.weights_id),
        state=setup.head.state_dict(),
        embed_rows=setup.embed_rows,
        ids=setup.ids,
        extra=extra,
    )


def _save_frozen_run(
    ctx: RunContext,
    catalog: Catalog,
    split: Split,
    config: TrainConfig,
    history: list[dict[str, float]],
    train_seconds: float,
    *,
    model_fields: dict[str, Any],
    description: str,
    base: tuple[str, str],
    state: dict[str, Any],
    embed_rows: Callable[[np.ndarray], np.ndarray],
    ids: list[str],
    extra: dict[str, Any],
) -> TrainResult:
    """Evaluate on the held-out queries and save: the one ``config.json`` layout of head and blocks runs (``kind``,
    ``recipe``, ``arch``, ``dim``, ``preprocess``, ``precision``, [``pooling``], ``description``, the base, the
    training settings, history and held-out figures, then ``extra``)."""
    vectors = embed_rows(np.arange(len(ids)))
    metrics = heldout_metrics(vectors, ids, catalog, split)
    fields = dict(model_fields)
    config_json = {
        "kind": fields.pop("kind"),
        "recipe": config.recipe,
        **fields,
        "description": description,
        "base_encoder": base[0],
        "base_weights_id": base[1],
        "license": "as the base weights",
        **base_config(config, catalog, split, ctx),
        "history": history,
        "train_seconds": train_seconds,
        "heldout": metrics,
        **extra,
    }
    return save_run(ctx, catalog, state, config_json, history, train_seconds, metrics, ids, vectors)


@dataclass
class BlocksSetup:
    """A pretrained backbone cut into a frozen stem and trainable top blocks, with the stem's catalog output."""

    backbone: SplitBackbone
    model: Embedder
    arch: dict[str, Any]
    features: np.ndarray  #: stem output ``(n, C, H, W)`` float32, one row per id
    ids: list[str]
    labels: np.ndarray
    parts: dict[str, np.ndarray]

    def embed_rows(self, rows: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's L2-normalised vectors of ``rows`` (from the cached stem output): float32 ``(len(rows), dim)``."""
        chunks = (
            torch.from_numpy(self.features[rows[start : start + batch_size]])
            for start in range(0, len(rows), batch_size)
        )
        return np.concatenate([inference_vectors(self.model.embed_stem_output, chunk) for chunk in chunks])


def blocks_setup(
    catalog: Catalog, split: Split, config: BackboneConfig, ctx: RunContext, *, embedding_dim: int, hidden: int = 0
) -> BlocksSetup:
    """Seed torch, cut the pretrained ``config.backbone`` (last ``config.trainable_blocks`` blocks train), add a
    head (``embedding_dim`` 0: none, or with ``hidden`` the residual head) and compute the frozen stem's output for
    every catalog item (cached)."""
    torch.manual_seed(config.seed)
    backbone = build_split_backbone(config.backbone, config.trainable_blocks, pretrained=True)
    arch = {
        "type": "embedder",
        "backbone": backbone.name,
        "trainable_blocks": config.trainable_blocks,
        "embedding_dim": embedding_dim,
        "backbone_dim": backbone.dim,
        **({"hidden": hidden} if hidden else {}),
    }
    model = Embedder(freeze(backbone.stem), backbone.top, embedder_head(backbone.dim, embedding_dim, hidden))
    features, ids = _stem_features(model, arch, backbone.weights_id, catalog, ctx, backbone.preprocess)
    return BlocksSetup(
        backbone, model, arch, features, ids, catalog.labels(split.label_column, ids=ids), split_positions(ids, split)
    )


def _stem_features(
    model: Embedder, arch: dict[str, Any], weights_id: str, catalog: Catalog, ctx: RunContext, preprocess: Preprocess
) -> tuple[np.ndarray, list[str]]:
    bar, close = ctx.bar(f"{arch['backbone']} frozen stem")
    try:
        return stem_features(
            model.stem,
            catalog,
            catalog.ids,
            preprocess,
            {"backbone": arch["backbone"], "weights": weights_id, "trainable_blocks": arch["trainable_blocks"]},
            cache_dir=ctx.cache_dir,
            batch_size=32,
            progress=bar,
        )
    finally:
        close()


def blocks_views(
    setup: BlocksSetup, catalog: Catalog, rows: np.ndarray, *, views: int, seed: int, ctx: RunContext, strength: str
) -> tuple[np.ndarray, np.ndarray]:
    """The frozen stem's output for ``views`` seeded augmentations (:func:`lens.train.common.augmentation`,
    ``strength``) of the items at ``rows``: float16 ``(n, views, C, H, W)`` (cached) and their row positions
    (unreadable images left out). One pass through the stem per view, once per catalog; then every epoch samples
    one view per photo and only the trainable top runs."""
    ids = [setup.ids[int(r)] for r in rows]
    arch = setup.arch
    bar, close = ctx.bar(f"{views} augmented views through the frozen {arch['backbone']} stem")
    try:
        array, kept = stem_views(
            setup.model.stem,
            catalog,
            ids,
            augmentation(setup.backbone.preprocess, strength),
            {
                "backbone": arch["backbone"],
                "weights": setup.backbone.weights_id,
                "trainable_blocks": arch["trainable_blocks"],
                "preprocess": setup.backbone.preprocess.key(),
                "augment": strength,
            },
            views=views,
            seed=seed,
            cache_dir=ctx.cache_dir,
            progress=bar,
        )
    finally:
        close()
    position = {item_id: row for row, item_id in enumerate(setup.ids)}
    return array, np.array([position[i] for i in kept], dtype=np.int64)


def save_blocks_run(
    setup: BlocksSetup,
    catalog: Catalog,
    split: Split,
    config: TrainConfig,
    ctx: RunContext,
    history: list[dict[str, float]],
    train_seconds: float,
    *,
    description: str,
    **extra: Any,
) -> TrainResult:
    """Evaluate the fine-tuned model on the held-out queries and save it (``kind: "image"``, every weight);
    ``extra``: more config keys (``pooling`` first when given)."""
    backbone = setup.backbone
    return _save_frozen_run(
        ctx,
        catalog,
        split,
        config,
        history,
        train_seconds,
        model_fields={
            "kind": "image",
            "arch": setup.arch,
            "dim": setup.arch["embedding_dim"] or backbone.dim,
            "preprocess": backbone.preprocess.key(),
            "precision": "fp32",
            **({"pooling": extra.pop("pooling")} if "pooling" in extra else {}),
        },
        description=description,
        base=(backbone.name, backbone.weights_id),
        state=setup.model.state_dict(),
        embed_rows=setup.embed_rows,
        ids=setup.ids,
        extra=extra,
    )
