"""Embedding heads on a frozen encoder's vectors (``type: "head"``): the triplet and SimCLR head models.

The shared scaffolding of every trained head lives here once: :func:`mlp` (Linear-act-Linear, the layout of the
triplet / SimCLR / mobilenet-small heads and the text-align projections), :class:`ResidualHead`, and
:func:`project_rows` (vectors through a head, L2-normalised numpy out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lens.encoders.base import Encoder, EncoderSpec, Precision
from lens.errors import LensError
from lens.vectors import l2_normalize


def mlp(in_dim: int, hidden: int, out_dim: int, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``Linear(in_dim, hidden) -> activation -> Linear(hidden, out_dim)`` (state-dict keys ``0.*`` and ``2.*``)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), activation(), nn.Linear(hidden, out_dim))


class ResidualHead(nn.Module):
    """``x + Linear(ReLU(Linear(x)))`` with the last layer zero-initialised: training starts exactly at the
    pretrained embedding (same neighbours, same P@5) and the triplet loss only has to improve on it. A randomly
    initialised head first scrambles a good space: measured on the catalog, val P@5 fell from 0.811 to 0.75 and was
    still below the pretrained backbone after 10 epochs."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


def build_head(arch: dict[str, Any]) -> nn.Module:
    """Embedding head on a frozen encoder's vectors: residual (``dim`` 0 or = ``in_dim``), Linear-ReLU-Linear
    (``hidden`` > 0) or Linear. ``arch``: ``{"in_dim", "hidden", "dim"}``."""
    in_dim, hidden, dim = int(arch["in_dim"]), int(arch.get("hidden") or 0), int(arch["dim"])
    if dim in (0, in_dim) and hidden:
        return ResidualHead(in_dim, hidden)
    if hidden:
        return mlp(in_dim, hidden, dim)
    return nn.Linear(in_dim, dim)


def project_rows(module: Callable[[torch.Tensor], torch.Tensor], rows: np.ndarray | torch.Tensor) -> np.ndarray:
    """``module`` applied to ``rows`` (float32 ``(N, d)``) in inference mode: L2-normalised float32 ``(N, dim)``."""
    x = rows if isinstance(rows, torch.Tensor) else torch.from_numpy(np.asarray(rows, dtype=np.float32))
    with torch.inference_mode():
        out = module(x).float()
    return l2_normalize(out.numpy())


def frozen_base(name: str, weights_id: str | None, precision: Precision | None, model: str) -> Encoder:
    """The pretrained encoder a trained head runs on, checked to have the weights the head was trained on."""
    from lens.encoders import create_encoder

    base = create_encoder(name, precision=precision)
    if weights_id and base.weights_id != weights_id:
        raise LensError(
            f"trained model '{model}' was trained on {name} weights {weights_id}, but this machine has "
            f"{base.weights_id}; retrain it."
        )
    return base


class OnFrozenEncoder(Encoder):
    """A frozen pretrained encoder (``base``) followed by a trained module on its vectors; the weights id covers both.

    Built from a saved model: ``config["arch"]`` names the base as ``<arch_prefix>_encoder`` (its weights id and
    precision as ``<arch_prefix>_weights_id`` / ``_precision``); :meth:`build_module` rebuilds the trained module,
    into which ``state`` (the saved weights, hash ``weights_id``) is loaded strictly.
    """

    arch_prefix: ClassVar[str] = "base"

    def __init__(
        self,
        spec: EncoderSpec,
        config: dict[str, Any],
        state: dict[str, Any],
        weights_id: str,
        *,
        precision: Precision | None = None,
    ) -> None:
        arch, prefix = config["arch"], self.arch_prefix
        base = frozen_base(
            arch[f"{prefix}_encoder"],
            arch.get(f"{prefix}_weights_id"),
            precision or arch.get(f"{prefix}_precision"),
            spec.name,
        )
        super().__init__(spec, f"{weights_id}+{base.weights_id}", precision=base.precision)
        self.base = base
        self.arch = dict(arch)  #: the saved architecture (``config["arch"]``)
        module = self.build_module(arch)
        module.load_state_dict(state, strict=True)
        self.module = module.eval()

    def build_module(self, arch: dict[str, Any]) -> nn.Module:
        raise NotImplementedError


class HeadEncoder(OnFrozenEncoder):
    """A frozen pretrained encoder followed by a trained embedding head (``triplet-<backbone>`` / ``simclr-<backbone>``
    with every backbone layer frozen)."""

    def build_module(self, arch: dict[str, Any]) -> nn.Module:
        return build_head(arch)

    @property
    def head(self) -> nn.Module:
        return self.module

    def head_vectors(self, features: np.ndarray) -> np.ndarray:
        """Base-encoder vectors ``(N, d)`` -> this encoder's vectors ``(N, dim)``, float32, L2-normalised."""
        return project_rows(self.head, features)

    def base_and_head(self) -> tuple[Encoder, Callable[[np.ndarray], np.ndarray]]:
        return self.base, self.head_vectors

    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        return self.head_vectors(self.base.embed_images(images, batch_size=max(1, len(images))))
