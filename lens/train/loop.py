"""One training loop for every recipe: ``fit(model, loss_step, batches, config, on_epoch=...)``.

Reproducibility: each epoch reseeds torch from ``(config.seed, epoch)`` and recipes draw their batches from the same
pair, so an epoch does the same work whether the run was resumed or not. Checkpoints (model + optimizer + history)
are written after every epoch with ``torch.save`` and read back with ``weights_only=True`` (no arbitrary pickle).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lens.cache import atomic_write
from lens.errors import LensError

StepProgress = Callable[[int, int], None]
"""``progress(step, steps_in_epoch)`` after each optimisation step (the CLI passes tqdm)."""


@dataclass
class TrainConfig:
    """Every knob of a training run. Recipes read the fields they use; all go into the saved model's config.

    Attributes:
        recipe: recipe name, e.g. ``"triplet"``.
        backbone: pretrained encoder the recipe starts from (triplet, simclr, text-align), or ``None``.
        epochs: passes over the training split (``steps_per_epoch`` batches each when set).
        batch_size: items per step (pairs for text-align, images before augmentation for simclr).
        lr: Adam learning rate of the new layers; pretrained layers use ``lr * backbone_lr_scale``.
        backbone_lr_scale: learning-rate factor for unfrozen pretrained layers.
        weight_decay: AdamW weight decay.
        seed: the one seed: same seed, same data order, same model.
        m_per_class: items per class in a class-balanced batch.
        margin: triplet margin on cosine similarity.
        temperature: NT-Xent temperature, or the initial InfoNCE temperature (text-align; learnable there).
        trainable_blocks: how many top blocks of the pretrained backbone train; the rest is frozen (and its output
            is computed once and cached).
        embedding_dim: size of the output vector (0 = keep the backbone's pooled features).
        input_size: image side in pixels for recipes trained from scratch (autoencoder, mobilenet-small).
        steps_per_epoch: cap on batches per epoch (``None`` = one pass over the training split).
        head_epochs: epochs of the second stage (mobilenet-small's triplet head).
        variant: recipe variant (autoencoder: ``"ae"`` or ``"vae"``).
    """

    recipe: str = ""
    backbone: str | None = None
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    seed: int = 0
    m_per_class: int = 4
    margin: float = 0.2
    temperature: float = 0.07
    trainable_blocks: int = 3
    embedding_dim: int = 256
    input_size: int = 64
    steps_per_epoch: int | None = None
    head_epochs: int = 5
    variant: str = "ae"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**31 - 1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def fit(
    model: nn.Module,
    loss_step: Callable[[Any], torch.Tensor],
    batches: Callable[[int], Iterable[Any]],
    config: TrainConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch: Callable[[int, dict[str, float]], dict[str, float] | None] | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    progress: StepProgress | None = None,
    train_mode: Callable[[nn.Module], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.epochs`` epochs; return one history row per epoch.

    Args:
        model: holds every parameter that trains (and is what the checkpoint saves).
        loss_step: ``loss_step(batch) -> scalar loss`` (a closure over the model and the loss module).
        batches: ``batches(epoch) -> iterable of batches``; must depend only on ``epoch`` and the seed.
        config: the run's settings (``epochs``, ``lr``, ``weight_decay``, ``seed``).
        optimizer: default AdamW over the parameters that require gradients.
        on_epoch: ``on_epoch(epoch, row) -> extra columns`` after each epoch (e.g. validation P@5), in eval mode.
        checkpoint: file written after every epoch; with ``resume=True`` the run continues from it.
        resume: continue from ``checkpoint`` if it exists (same config, same seed).
        progress: ``progress(step, steps)`` after each step.
        train_mode: called after ``model.train()`` each epoch, e.g. to keep frozen BatchNorms in eval mode.

    Raises:
        LensError: the loss became NaN or infinite (the message names the epoch and step).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LensError("nothing to train: every parameter of the model is frozen.")
    if optimizer is None:
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    history: list[dict[str, float]] = []
    start_epoch = 0
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt_path is not None and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if state.get("recipe") != config.recipe or int(state.get("seed", -1)) != config.seed:
            raise LensError(
                f"checkpoint {ckpt_path} is from recipe {state.get('recipe')!r} seed {state.get('seed')}, not "
                f"{config.recipe!r} seed {config.seed}; delete it or drop --resume."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = [dict(row) for row in state["history"]]
        start_epoch = int(state["epoch"]) + 1

    for epoch in range(start_epoch, config.epochs):
        seed_everything(epoch_seed(config.seed, epoch))
        model.train()
        if train_mode is not None:
            train_mode(model)
        started = time.perf_counter()
        epoch_batches = list(batches(epoch))
        total, count = 0.0, 0
        for step, batch in enumerate(epoch_batches):
            loss = loss_step(batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise LensError(f"loss became {value} at epoch {epoch + 1}, step {step + 1}; lower --lr.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += value
            count += 1
            if progress is not None:
                progress(step + 1, len(epoch_batches))
        row: dict[str, float] = {
            "epoch": float(epoch + 1),
            "loss": total / max(count, 1),
            "seconds": time.perf_counter() - started,
        }
        model.eval()
        if on_epoch is not None:
            with torch.no_grad():
                row.update(on_epoch(epoch, row) or {})
        history.append(row)
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, model, optimizer, epoch, history, config)
    model.eval()
    return history


def _save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, history: list[dict[str, float]],
    config: TrainConfig,
) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "history": history,
        "recipe": config.recipe,
        "seed": config.seed,
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))
