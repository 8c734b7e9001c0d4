"""Convolutional autoencoders and VAEs trained from scratch (``type: "autoencoder"``); the embedding is the bottleneck.

Encoder: conv 3->32->64->128->256 (4x4, stride 2, ReLU), then a linear layer to the bottleneck; the decoder mirrors it
with transposed convolutions and ends in a sigmoid. The saved encoder is :class:`Bottleneck` (the posterior mean for
the VAE); the decoder exists only while training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CHANNELS = (32, 64, 128, 256)
#: Input normalisation: pixels in [0, 1] -> [-1, 1].
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


class Bottleneck(nn.Module):
    """Inference module: images -> bottleneck ``(N, bottleneck)`` (posterior mean for the VAE)."""

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

    def encoder_module(self) -> Bottleneck:
        return Bottleneck(self.encoder)


def build_autoencoder(arch: dict[str, Any]) -> ConvAutoencoder:
    """``arch``: ``{"type": "autoencoder", "input_size", "bottleneck", "variant": "ae" | "vae"}``."""
    return ConvAutoencoder(int(arch["input_size"]), int(arch["bottleneck"]), arch.get("variant") == "vae")


def build_model(arch: dict[str, Any]) -> nn.Module:
    """The inference module of a saved autoencoder: images ``(N, 3, S, S)`` -> bottleneck ``(N, bottleneck)``."""
    return build_autoencoder(arch).encoder_module()
