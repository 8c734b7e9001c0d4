"""``text-align``: text -> image search without CLIP weights.

A frozen pretrained image encoder (default ``efficientnet-lite0``, its pooled 1280-d vectors, taken from the lens
embedding cache when present) and the frozen sentence encoder all-MiniLM-L6-v2 (384-d) are each followed by a
trainable projection (2-layer MLP) into a shared ``embedding_dim`` space, trained with CLIP's symmetric InfoNCE and a
learnable temperature on (photo, ``productDisplayName``) pairs of the training split.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lens.catalog import Catalog
from lens.errors import LensError
from lens.train.common import (
    RunContext, fit_with_bar, embed_with_base, TrainResult, base_config, heldout_metrics, split_positions, timer, write_history,
)
from lens.train.loop import TrainConfig, epoch_seed
from lens.train.losses import SymmetricInfoNCE
from lens.train.samplers import shuffled_batches
from lens.train.split import Split

TEXT_COLUMN = "productDisplayName"


class Projections(nn.Module):
    """``image``: d_img -> dim and ``text``: d_txt -> dim, each Linear-GELU-Linear."""

    def __init__(self, image_dim: int, text_dim: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.image = nn.Sequential(nn.Linear(image_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.text = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def build_projections(arch: dict[str, Any]) -> Projections:
    return Projections(int(arch["image_dim"]), int(arch["text_dim"]), int(arch["dim"]), int(arch["hidden"]))


class _Trainable(nn.Module):
    def __init__(self, projections: Projections, loss: SymmetricInfoNCE) -> None:
        super().__init__()
        self.projections, self.loss = projections, loss


def text_to_image_recall(text_vectors: np.ndarray, image_vectors: np.ndarray, target_rows: np.ndarray,
                         ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """R@k: share of text queries whose own image (row ``target_rows[i]`` of ``image_vectors``) is in the top k."""
    sims = text_vectors @ image_vectors.T
    own = sims[np.arange(len(target_rows)), target_rows]
    rank = (sims > own[:, None]).sum(axis=1)  # 0 = first; ties count in the query's favour
    return {f"text_r@{k}": float((rank < k).mean()) for k in ks}


def train_text_align(catalog: Catalog, split: Split, config: TrainConfig, ctx: RunContext,
                     text_column: str = TEXT_COLUMN) -> TrainResult:
    """Train the two projections; save as ``ctx.name``; report image retrieval and text->image R@k on held-out items."""
    from lens.encoders.minilm import MINILM_DIM, MINILM_NAME, load_minilm
    from lens.encoders.trained import load_trained_encoder, save_trained_model

    if text_column not in catalog.columns:
        raise LensError(f"text-align needs a text column {text_column!r}; catalog {catalog.name!r} has "
                        f"{', '.join(catalog.columns)}.")
    elapsed = timer()
    base_name = config.backbone or "efficientnet-lite0"
    base, image_set = embed_with_base(catalog, base_name, ctx)
    ids = image_set.ids
    titles = [str(catalog.table[text_column].iat[catalog.index_of(i)]) for i in ids]
    ctx.log(f"text-align: embedding {len(titles)} titles with {MINILM_NAME}")
    text_feats = load_minilm().embed(titles)
    image_feats = image_set.vectors

    torch.manual_seed(config.seed)
    arch = {"type": "text-align", "image_encoder": base_name, "image_weights_id": base.weights_id,
            "image_precision": base.precision, "image_dim": base.dim, "text_model": MINILM_NAME,
            "text_dim": MINILM_DIM, "dim": config.embedding_dim, "hidden": 512}
    projections = build_projections(arch)
    model = _Trainable(projections, SymmetricInfoNCE(config.temperature))
    parts = split_positions(ids, split)
    train_idx, val_idx = parts["train"], parts["val"]
    img_t, txt_t = torch.from_numpy(image_feats), torch.from_numpy(text_feats)
    n_batches = config.steps_per_epoch

    def batches(epoch: int):  # noqa: ANN202
        chosen = shuffled_batches(len(train_idx), batch_size=min(config.batch_size, len(train_idx)),
                                  seed=epoch_seed(config.seed, epoch))
        chosen = [train_idx[b] for b in chosen]
        return chosen[:n_batches] if n_batches else chosen

    def loss_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        return model.loss(projections.image(img_t[index]), projections.text(txt_t[index]))

    def on_epoch(epoch: int, row: dict[str, float]) -> dict[str, float]:
        extra = {"temperature": model.loss.temperature}
        if len(val_idx):
            with torch.inference_mode():
                iv = nn.functional.normalize(projections.image(img_t[torch.from_numpy(val_idx)]), dim=-1).numpy()
                tv = nn.functional.normalize(projections.text(txt_t[torch.from_numpy(val_idx)]), dim=-1).numpy()
            extra["val_text_r@5"] = text_to_image_recall(tv, iv, np.arange(len(val_idx)), (5,))["text_r@5"]
        return extra

    history = fit_with_bar(model, loss_step, batches, config, ctx, on_epoch=on_epoch)
    train_seconds = elapsed()

    config_json = {
        "kind": "text-align", "recipe": config.recipe, "arch": arch, "dim": config.embedding_dim,
        "preprocess": base.spec.preprocess.key(), "precision": base.precision, "pooling": "trained projection",
        "description": f"{base_name} + {MINILM_NAME}, projections trained with InfoNCE on {catalog.name} titles",
        "license": "as the base weights (Apache-2.0)", "temperature": model.loss.temperature,
        **base_config(config, catalog, split, ctx), "history": history, "train_seconds": train_seconds,
    }
    folder = save_trained_model(ctx.name, projections.state_dict(), config_json, models_dir=ctx.models_dir)
    encoder = load_trained_encoder(folder)
    image_vecs = encoder.project_image_features(image_feats)
    text_vecs = encoder.project_text_features(text_feats)
    metrics = heldout_metrics(image_vecs, ids, catalog, split)
    query = parts["query"]
    metrics.update(text_to_image_recall(text_vecs[query], image_vecs, query))
    heldout_only = text_to_image_recall(text_vecs[query], image_vecs[query], np.arange(len(query)))
    metrics.update({f"{k}_heldout_gallery": v for k, v in heldout_only.items()})
    write_history(history, ctx.out_dir / "history.csv")
    if ctx.publish:
        from lens.train.common import publish_embeddings

        metrics["publish_max_abs_diff"] = publish_embeddings(ctx.name, catalog, ids, image_vecs, ctx)
    return TrainResult(ctx.name, folder, history, train_seconds, metrics)
