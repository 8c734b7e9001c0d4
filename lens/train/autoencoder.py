"""``autoencoder``: convolutional autoencoder (optionally a VAE); the embedding is the 128-d bottleneck.

Encoder: conv 3->32->64->128->256 (4x4, stride 2, ReLU), then a linear layer to the 128-d bottleneck; the decoder
mirrors it with transposed convolutions and ends in a sigmoid. Loss: MSE between the reconstruction and the input in
[0, 1] (VAE: plus ``beta`` x KL divergence, embedding = the posterior mean). Adam, lr 1e-4 by default. Images are
``input_size`` px (default 64): the bottleneck is what is compared, and a 4x4x256 map from 64 px keeps every step
cheap on a CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lens.catalog import Catalog
from lens.encoders.base import Preprocess
from lens.train.common import (
    RunContext, fit_with_bar, save_run, TrainResult, base_config, heldout_metrics, precision_at, split_positions, timer,
)
from lens.train.data import small_images
from lens.train.loop import TrainConfig, epoch_seed
from lens.train.samplers import shuffled_batches
from lens.train.split import Split

CHANNELS = (32, 64, 128, 256)
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


class _Encoder(nn.Module):
    def __init__(self, input_size: int, bottleneck: int, variational: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for c_out in CHANNELS:
            layers += [nn.Conv2d(c, c_out, 4, stride=2, padding=1), nn.ReLU()]
            c = c_out
        self.convs = nn.Sequential(*layers)
        self.side = input_size // 2 ** len(CHANNELS)
        flat = CHANNELS[-1] * self.side * self.side
        self.mu = nn.Linear(flat, bottleneck)
        self.logvar = nn.Linear(flat, bottleneck) if variational else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.convs(x).flatten(1)
        return self.mu(h), (self.logvar(h) if self.logvar is not None else None)


class _Bottleneck(nn.Module):
    """Inference module: images -> bottleneck (posterior mean for the VAE)."""

    def __init__(self, encoder: _Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)[0]


class ConvAutoencoder(nn.Module):
    def __init__(self, input_size: int = 64, bottleneck: int = 128, variational: bool = False) -> None:
        super().__init__()
        if input_size % 2 ** len(CHANNELS):
            raise ValueError(f"input_size must be a multiple of {2 ** len(CHANNELS)}, got {input_size}")
        self.encoder = _Encoder(input_size, bottleneck, variational)
        side = self.encoder.side
        self.expand = nn.Linear(bottleneck, CHANNELS[-1] * side * side)
        layers: list[nn.Module] = []
        rev = list(CHANNELS[::-1]) + [3]
        for i in range(len(CHANNELS)):
            layers.append(nn.ConvTranspose2d(rev[i], rev[i + 1], 4, stride=2, padding=1))
            layers.append(nn.ReLU() if i < len(CHANNELS) - 1 else nn.Sigmoid())
        self.decoder = nn.Sequential(*layers)
        self.side = side

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mu, logvar = self.encoder(x)
        z = mu
        if logvar is not None and self.training:
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        h = self.expand(z).view(len(z), CHANNELS[-1], self.side, self.side)
        return self.decoder(h), mu, logvar

    def encoder_module(self) -> nn.Module:
        return _Bottleneck(self.encoder)


def build_autoencoder(arch: dict[str, Any]) -> ConvAutoencoder:
    return ConvAutoencoder(int(arch["input_size"]), int(arch["bottleneck"]), arch.get("variant") == "vae")


def autoencoder_loss(model: ConvAutoencoder, images01: torch.Tensor, beta: float = 1e-3) -> torch.Tensor:
    """MSE(reconstruction, input in [0, 1]); VAE: + beta * KL(q(z|x) || N(0, I)) per bottleneck unit."""
    x = (images01 - 0.5) / 0.5
    recon, mu, logvar = model(x)
    loss = F.mse_loss(recon, images01)
    if logvar is not None:
        kl = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        loss = loss + beta * kl
    return loss


def train_autoencoder(catalog: Catalog, split: Split, config: TrainConfig, ctx: RunContext) -> TrainResult:

    elapsed = timer()
    size = config.input_size
    bar, close = ctx.bar(f"decode {size}px images")
    try:
        images_np, ids = small_images(catalog, catalog.ids, size, cache_dir=ctx.cache_dir, progress=bar)
    finally:
        close()
    images = torch.from_numpy(images_np)
    parts = split_positions(ids, split)
    train_idx, val_idx = parts["train"], parts["val"]
    torch.manual_seed(config.seed)
    variant = config.variant if config.variant in ("ae", "vae") else "ae"
    arch = {"type": "autoencoder", "input_size": size, "bottleneck": config.embedding_dim, "variant": variant}
    model = build_autoencoder(arch)
    beta = float(config.extra.get("beta", 1e-3))

    def batches(epoch: int):  # noqa: ANN202
        chosen = [train_idx[b] for b in shuffled_batches(len(train_idx), batch_size=min(config.batch_size, len(train_idx)),
                                                         seed=epoch_seed(config.seed, epoch))]
        return chosen[: config.steps_per_epoch] if config.steps_per_epoch else chosen

    def loss_step(batch: np.ndarray) -> torch.Tensor:
        return autoencoder_loss(model, images[torch.from_numpy(batch)].float().div_(255.0), beta)

    all_labels = catalog.labels(split.label_column)
    labels = np.array([all_labels[catalog.index_of(i)] for i in ids], dtype=object)
    gallery = np.concatenate([train_idx, val_idx])

    def embed(rows: np.ndarray) -> np.ndarray:
        enc = model.encoder_module().eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(rows), 256):
                x = (images[torch.from_numpy(rows[start : start + 256])].float() / 255.0 - 0.5) / 0.5
                out.append(F.normalize(enc(x), dim=-1))
        return torch.cat(out).numpy().astype(np.float32)

    def on_epoch(epoch: int, row: dict[str, float]) -> dict[str, float]:
        if not len(val_idx):
            return {}
        with torch.inference_mode():
            x = images[torch.from_numpy(val_idx)].float() / 255.0
            val_mse = float(F.mse_loss(model((x - 0.5) / 0.5)[0], x))
        return {"val_mse": val_mse,
                "val_p@5": precision_at(embed(gallery), labels[gallery], np.arange(len(train_idx), len(gallery)), 5)}

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history = fit_with_bar(model, loss_step, batches, config, ctx, optimizer=optimizer, on_epoch=on_epoch)
    train_seconds = elapsed()
    vectors = embed(np.arange(len(ids)))
    metrics = heldout_metrics(vectors, ids, catalog, split)
    pre = Preprocess(input_size=size, crop_pct=1.0, mean=MEAN, std=STD)
    config_json = {
        "kind": "image", "recipe": config.recipe, "arch": arch, "dim": config.embedding_dim,
        "preprocess": pre.key(), "precision": "fp32", "pooling": "bottleneck" + (" (posterior mean)" if variant == "vae" else ""),
        "description": f"convolutional {'VAE' if variant == 'vae' else 'autoencoder'} ({size}px, "
                       f"{config.embedding_dim}-d bottleneck) trained on {catalog.name}",
        "license": "trained from scratch by lens",
        **base_config(config, catalog, split, ctx), "history": history, "train_seconds": train_seconds,
        "heldout": metrics,
    }
    state = model.encoder_module().state_dict()
    return save_run(ctx, catalog, state, config_json, history, train_seconds, metrics, ids, vectors)
