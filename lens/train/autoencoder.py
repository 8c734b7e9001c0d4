"""``autoencoder``: convolutional autoencoder (``--variant vae`` for the VAE); the embedding is the bottleneck.

The model (:mod:`lens.encoders.trained.autoencoder`): conv 3->32->64->128->256 (4x4, stride 2, ReLU) and a linear
layer to the ``embedding_dim`` bottleneck; the decoder mirrors it with transposed convolutions and ends in a sigmoid.
Loss: MSE between the reconstruction and the input in [0, 1] (VAE: plus ``beta`` x KL divergence, embedding = the
posterior mean). Adam, lr 1e-4 by default. Images are ``input_size`` px (default 64): the bottleneck is what is
compared, and a 4x4x256 map from 64 px keeps every step cheap on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lens.catalog import Catalog
from lens.encoders.base import Preprocess
from lens.encoders.trained.autoencoder import MEAN, STD, ConvAutoencoder, build_autoencoder
from lens.train.common import (
    RunContext,
    TrainResult,
    base_config,
    fit_with_bar,
    heldout_metrics,
    inference_vectors,
    load_small_images,
    precision_at,
    save_run,
    shuffled_epoch,
    timer,
)
from lens.train.loop import TrainConfig, setting
from lens.train.registry import register_recipe
from lens.train.split import Split


@dataclass
class AutoencoderConfig(TrainConfig):
    """``autoencoder`` settings; why these defaults: docs/training.md."""

    epochs: int = setting(10, "passes over the training split", minimum=1)
    lr: float = setting(1e-4, "Adam learning rate")
    weight_decay: float = setting(0.0, "Adam weight decay (L2)")
    input_size: int = setting(64, "image side in pixels (a multiple of 16)", minimum=16)
    embedding_dim: int = setting(128, "bottleneck size = output dimension", minimum=1)
    variant: str = setting("ae", "plain or variational", choices=("ae", "vae"))
    beta: float = setting(1e-3, "VAE: weight of the KL term")

    def model_name(self) -> str:
        return "vae" if self.variant == "vae" else self.recipe


def autoencoder_loss(model: ConvAutoencoder, images01: torch.Tensor, beta: float = 1e-3) -> torch.Tensor:
    """MSE(reconstruction, input in [0, 1]); VAE: + beta * KL(q(z|x) || N(0, I)) per bottleneck unit."""
    x = (images01 - 0.5) / 0.5
    recon, mu, logvar = model(x)
    loss = F.mse_loss(recon, images01)
    if logvar is not None:
        kl = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        loss = loss + beta * kl
    return loss


@register_recipe("autoencoder", AutoencoderConfig, summary="convolutional autoencoder or VAE trained from scratch")
def train_autoencoder(catalog: Catalog, split: Split, config: AutoencoderConfig, ctx: RunContext) -> TrainResult:
    """Train the autoencoder on the training split; the saved encoder is its bottleneck (posterior mean: VAE)."""
    elapsed = timer()
    size, variant = config.input_size, config.variant
    data = load_small_images(catalog, split, size, ctx)
    images, ids, labels = data.images, data.ids, data.labels
    train_idx, val_idx = data.parts["train"], data.parts["val"]
    torch.manual_seed(config.seed)
    arch = {"type": "autoencoder", "input_size": size, "bottleneck": config.embedding_dim, "variant": variant}
    model = build_autoencoder(arch)

    def normalised(rows: np.ndarray) -> torch.Tensor:
        return (images[torch.from_numpy(rows)].float() / 255.0 - 0.5) / 0.5

    def embed(rows: np.ndarray) -> np.ndarray:
        encoder = model.encoder_module().eval()
        return np.concatenate(
            [inference_vectors(encoder, normalised(rows[start : start + 256])) for start in range(0, len(rows), 256)]
        )

    def loss_step(batch: np.ndarray) -> torch.Tensor:
        return autoencoder_loss(model, images[torch.from_numpy(batch)].float().div_(255.0), config.beta)

    gallery = np.concatenate([train_idx, val_idx])

    def on_epoch(epoch: int, row: dict[str, float]) -> dict[str, float]:
        if not len(val_idx):
            return {}
        with torch.inference_mode():
            x = images[torch.from_numpy(val_idx)].float() / 255.0
            val_mse = float(F.mse_loss(model((x - 0.5) / 0.5)[0], x))
        return {
            "val_mse": val_mse,
            "val_p@5": precision_at(embed(gallery), labels[gallery], np.arange(len(train_idx), len(gallery)), 5),
        }

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history = fit_with_bar(
        model,
        loss_step,
        lambda epoch: shuffled_epoch(train_idx, config, epoch),
        config,
        ctx,
        optimizer=optimizer,
        on_epoch=on_epoch,
    )
    train_seconds = elapsed()
    vectors = embed(np.arange(len(ids)))
    metrics = heldout_metrics(vectors, ids, catalog, split)
    config_json = {
        "kind": "image",
        "recipe": config.recipe,
        "arch": arch,
        "dim": config.embedding_dim,
        "preprocess": Preprocess(input_size=size, crop_pct=1.0, mean=MEAN, std=STD).key(),
        "precision": "fp32",
        "pooling": "bottleneck" + (" (posterior mean)" if variant == "vae" else ""),
        "description": f"convolutional {'VAE' if variant == 'vae' else 'autoencoder'} ({size}px, "
        f"{config.embedding_dim}-d bottleneck) trained on {catalog.name}",
        "license": "trained from scratch by lens",
        **base_config(config, catalog, split, ctx),
        "history": history,
        "train_seconds": train_seconds,
        "heldout": metrics,
    }
    return save_run(
        ctx, catalog, model.encoder_module().state_dict(), config_json, history, train_seconds, metrics, ids, vectors
    )
