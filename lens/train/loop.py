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
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lens.errors import LensError
from lens.store import atomic_write, read_json, write_json

StepProgress = Callable[[int, int], None]
"""``progress(step, steps_in_epoch)`` after each optimisation step (the CLI passes tqdm)."""


def setting(
    default: Any, help: str, *, flag: str | None = None, minimum: int | None = None, choices: tuple[str, ...] = ()
) -> Any:
    """A recipe setting: a dataclass field that also says how ``python -m lens train <recipe>`` offers it.

    Args:
        default: the recipe's default (docs/training.md's figures were made with these).
        help: one line for ``--help``.
        flag: the command-line spelling (default ``--field-name``).
        minimum: smallest allowed value (checked when the config is made).
        choices: allowed values of a text setting.
    """
    return field(default=default, metadata={"help": help, "flag": flag, "min": minimum, "choices": choices})


def flag_of(item: Field) -> str:
    """The command-line flag of a config field: ``--batch`` for ``batch_size``, else ``--field-name``."""
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


@dataclass
class TrainConfig:
    """The settings every recipe has; each recipe's config (a subclass, registered with the recipe) adds its own.

    ``fit`` reads ``recipe``, ``epochs``, ``lr``, ``weight_decay`` and ``seed``; everything goes into the saved model's
    ``config.json`` (``train``). Fields made with :func:`setting` become the recipe's command-line flags.

    Attributes:
        recipe: recipe name, e.g. ``"triplet"`` (checkpoints of another recipe are refused on resume).
        seed: the one seed: same seed, same split, same data order, same model (the CLI's ``--seed``).
    """

    recipe: str = ""
    epochs: int = setting(5, "passes over the training split", minimum=1)
    batch_size: int = setting(64, "items per step", flag="--batch", minimum=1)
    lr: float = setting(1e-3, "learning rate (AdamW) of the new layers")
    weight_decay: float = setting(1e-4, "AdamW weight decay")
    seed: int = 0
    steps_per_epoch: int | None = setting(None, "cap on batches per epoch (None: one pass)", minimum=1)

    def __post_init__(self) -> None:
        for item in fields(self):
            low, value = item.metadata.get("min"), getattr(self, item.name)
            if low is not None and value is not None and value < low:
                wanted = "a positive integer" if low == 1 else f"{low} or more"
                raise LensError(f"{flag_of(item)} must be {wanted}, got {value}.")
            if item.metadata.get("choices") and value not in item.metadata["choices"]:
                raise LensError(f"{flag_of(item)} must be one of {', '.join(item.metadata['choices'])}, got {value!r}.")

    def model_name(self) -> str:
        """Default encoder name of the trained model."""
        return self.recipe

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
        on_epoch: ``on_epoch(epoch, row) -> extra columns`` after each epoch (e.g. validation P@5), in eval mode; a
            true ``"stop"`` entry (not kept as a column) ends training after this epoch (early stopping).
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
        state = _read_checkpoint(ckpt_path)
        if state["recipe"] != config.recipe or state["seed"] != config.seed:
            raise LensError(
                f"checkpoint {ckpt_path} is from recipe {state['recipe']!r} seed {state['seed']}, not "
                f"{config.recipe!r} seed {config.seed}; delete it or drop --resume."
            )
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history = [{str(k): float(v) for k, v in dict(row).items()} for row in state["history"]]
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise LensError(
                f"checkpoint {ckpt_path} does not fit this model ({exc.__class__.__name__}: "
                f"{(str(exc).strip().splitlines() or [''])[0][:200]}); delete it or drop --resume."
            ) from None
        start_epoch = state["epoch"] + 1

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
        stop = False
        if on_epoch is not None:
            with torch.no_grad():
                extra = dict(on_epoch(epoch, row) or {})
            stop = bool(extra.pop("stop", False))
            row.update(extra)
        history.append(row)
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, model, optimizer, epoch, history, config)
            write_json(
                live_history_path(ckpt_path), {"recipe": config.recipe, "epochs": config.epochs, "history": history}
            )
        if stop:
            break
    model.eval()
    return history


def live_history_path(checkpoint: str | os.PathLike) -> Path:
    """``<checkpoint>.history.json``: the epochs done so far, beside the checkpoint, rewritten after every epoch (JSON,
    so a dashboard can draw the curves of a running job without loading torch)."""
    path = Path(checkpoint)
    return path.with_name(path.stem + ".history.json")


def read_live_history(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Every epoch done so far by the runs whose checkpoints are in ``run_dir``, in the order they ran (a recipe with
    two stages, such as ``mobilenet-small``, has two files: their rows get ``stage`` 1 and 2); ``[]`` when none."""
    files = sorted(Path(run_dir).glob("*.history.json"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    rows: list[dict[str, float]] = []
    for stage, path in enumerate(files, start=1):
        data = read_json(path) or {}
        for row in data.get("history") or []:
            if isinstance(row, dict):
                rows.append(
                    {**{k: float(v) for k, v in row.items()}, **({"stage": float(stage)} if len(files) > 1 else {})}
                )
    return rows


def _save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    history: list[dict[str, float]],
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


def freeze(module: nn.Module) -> nn.Module:
    """Turn off gradients of every parameter of ``module`` and put it in eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def batchnorms_to_eval(module: nn.Module) -> None:
    """A ``train_mode`` for :func:`fit`: BatchNorm running statistics stay frozen while fine-tuning (their affine
    weights still train).

    Class-balanced batches of 64 are a poor estimate of the catalog's statistics; frozen ImageNet statistics are
    the usual choice for fine-tuning with small batches, and make the trained model exact to fold at inference.
    """
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The resume checkpoint at ``path``, checked to be one :func:`fit` wrote; ``LensError`` (with the remedy) if not.

    Read with ``weights_only=True``: a file holding other Python objects is refused, never unpickled.
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
        raise LensError(
            f"{path} is not a lens training checkpoint that can be read safely ({exc.__class__.__name__}); "
            "delete it (or the run folder) or drop --resume."
        ) from None
    fields = {"recipe": str, "seed": int, "epoch": int, "model": dict, "optimizer": dict, "history": list}
    if not isinstance(state, dict) or any(
        not isinstance(state.get(name), kind) or isinstance(state.get(name), bool) for name, kind in fields.items()
    ):
        raise LensError(
            f"{path} is not a lens training checkpoint (it lacks recipe, seed, epoch, model, optimizer or history); "
            "delete it (or the run folder) or drop --resume."
        )
    return state
