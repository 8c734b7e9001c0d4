"""Models trained on a catalog (``python -m lens train``): saved as safetensors + json config, loaded back as encoders
by name.

Layout: ``<models dir>/<name>/model.safetensors`` and ``config.json`` (recipe, architecture, preprocessing, training
settings, split, metrics). The models folder is ``$LENS_MODELS_DIR`` or ``<cache>/models``
(``$LENS_CACHE_DIR/models``, default ``~/.cache/lens/models``). Every model found there is registered in the encoder
registry (family ``"trained"``) when ``lens.encoders`` is imported and again after each save, so ``create_encoder``,
``list_encoders`` and ``python -m lens evaluate --models <name>`` see it like any other encoder. Registration reads only
the small json files; weights load in ``create_encoder``.

The architectures live beside this module, one per ``arch["type"]`` (:data:`ARCHITECTURES`): ``embedder``
(fine-tuned pretrained CNN), ``autoencoder``, ``mobilenet-small``, and the two kinds that run on a frozen pretrained
encoder, ``head`` (:mod:`.heads`) and ``text-align`` (:mod:`.text_align`), and ``ensemble`` (:mod:`.ensemble`: several
heads on different frozen encoders, one vector). The training recipes build their models
from these modules; nothing here imports the training package (inference needs no losses, samplers or splits).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lens.encoders import _registry
from lens.encoders.base import Encoder, EncoderSpec, Precision, Preprocess, TorchImageEncoder
from lens.encoders.weights import TrainedWeights, file_sha256
from lens.errors import LensError, UnknownEncoderError
from lens.store import default_cache_dir, read_json, utc_now

MODELS_DIR_ENV = "LENS_MODELS_DIR"
FAMILY = "trained"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "lens-trained-v1"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
#: ``arch["type"]`` of an image model -> the module (beside this one) whose ``build_model(arch)`` rebuilds it.
ARCHITECTURES = {"embedder": "embedder", "autoencoder": "autoencoder", "mobilenet-small": "mobilenet_small"}


def default_models_dir() -> Path:
    """``$LENS_MODELS_DIR`` if set, else ``<lens cache>/models``."""
    value = os.environ.get(MODELS_DIR_ENV)
    return Path(value).expanduser() if value else default_cache_dir() / "models"


def _models_dir(models_dir: str | os.PathLike | None) -> Path:
    return Path(models_dir).expanduser() if models_dir is not None else default_models_dir()


def check_model_name(name: str) -> str:
    """A trained model's name: lower-case letters, digits, ``.-_``; not the name of a built-in encoder."""
    if not _NAME_RE.match(name):
        raise LensError(f"model name {name!r} is not allowed: use lower-case letters, digits, '.', '-', '_' (max 64).")
    if name in _registry.registered_names() and name not in _registry.registered_names(FAMILY):
        raise LensError(f"model name {name!r} is a built-in encoder; pick another --name.")
    return name


def save_trained_model(
    name: str, state_dict: dict[str, Any], config: dict[str, Any], *, models_dir: str | os.PathLike | None = None
) -> Path:
    """Write ``<models dir>/<name>/model.safetensors`` and ``config.json`` atomically; register the model.

    Args:
        name: encoder name to register.
        state_dict: tensors of the inference model (what ``config['arch']`` rebuilds).
        config: json-serialisable; must hold ``kind`` (``"image"`` or ``"text-align"``), ``arch``, ``dim``,
            ``preprocess`` (a :class:`Preprocess` as dict) and ``recipe``.

    Returns:
        The model's folder.
    """
    from safetensors.torch import save_file

    check_model_name(name)
    for key in ("kind", "arch", "dim", "preprocess", "recipe"):
        if key not in config:
            raise LensError(f"trained model config lacks {key!r}.")
    root = _models_dir(models_dir)
    folder = root / name
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    # Both files are written into a hidden staging folder, which then replaces the model folder by rename: a crash
    # (kill -9) at any point leaves the previous model or none, never new weights beside an old config.
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".tmp"))
    try:
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "name": name,
            **config,
            "weights_sha256": file_sha256(staging / WEIGHTS_NAME),
            "saved": utc_now(),
        }
        (staging / CONFIG_NAME).write_text(json.dumps(meta, indent=1, default=_json_default), encoding="utf-8")
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".old"))
            os.replace(folder, old / name)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    refresh_trained_models(models_dir)
    return folder


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def read_model_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a trained model folder.

    Raises:
        LensError: missing or malformed.
    """
    path = Path(folder) / CONFIG_NAME
    config = read_json(path)
    if config is None:
        raise LensError(
            f"{path} {'is not a JSON object' if path.is_file() else 'not found'}: {folder} is not a trained lens model."
        )
    if config.get("format") != FORMAT:
        raise LensError(f"{path} has format {config.get('format')!r}, expected {FORMAT!r}.")
    return config


def find_trained_models(models_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """``{name: folder}`` of every model under the models folder (sorted by name; unreadable ones skipped)."""
    root = _models_dir(models_dir)
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    # hidden folders are a save in progress (or one a crash left behind): never a model
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
            try:
                config = read_model_config(folder)
            except LensError:
                continue
            name = str(config.get("name", folder.name))
            if _NAME_RE.match(name):
                found[name] = folder
    return found


def _spec_from_config(name: str, folder: Path, config: dict[str, Any]) -> EncoderSpec:
    pre = dict(config["preprocess"])
    for key in ("mean", "std"):
        pre[key] = tuple(float(v) for v in pre[key])
    text = config["kind"] == "text-align"
    return EncoderSpec(
        name=name,
        family=FAMILY,
        dim=int(config["dim"]),
        preprocess=Preprocess(**pre),
        weights=f"trained by lens ({config['recipe']}) on catalog '{config.get('catalog', '?')}', {folder}",
        license=str(config.get("license", "as the base weights")),
        modalities=("image", "text") if text else ("image",),
        pooling=str(config.get("pooling", "learned embedding head")),
        description=str(config.get("description", f"{config['recipe']} trained on {config.get('catalog', '?')}")),
        precision=str(config.get("precision", "fp32")),  # type: ignore[arg-type]
        channels_last=False,
    )


def refresh_trained_models(models_dir: str | os.PathLike | None = None) -> list[str]:
    """(Re-)register every trained model under the models folder; drop registrations of models no longer there.

    Returns:
        The registered names.
    """
    for name in _registry.registered_names(FAMILY):
        _registry.unregister_encoder(name)
    names = []
    for name, folder in find_trained_models(models_dir).items():
        if name in _registry.registered_names():
            warnings.warn(
                f"trained model {folder} is named like the built-in encoder {name!r}; it is ignored.", stacklevel=2
            )
            continue
        try:
            spec = _spec_from_config(name, folder, read_model_config(folder))
        except (LensError, KeyError, TypeError, ValueError):
            continue
        weights = TrainedWeights(folder / WEIGHTS_NAME, where=spec.weights)
        _registry.register_encoder(spec, weights=weights)(_make_builder(folder))
        names.append(name)
    return names


def _make_builder(folder: Path):  # noqa: ANN202
    def build(spec: EncoderSpec, weights_path: Path | None, *, precision: Precision | None = None) -> Encoder:
        return load_trained_encoder(folder, spec=spec, precision=precision)

    return build


def build_image_model(arch: dict[str, Any]):  # noqa: ANN201 - torch.nn.Module
    """Rebuild (random weights) the ``nn.Module`` that ``arch`` describes: images ``(N,3,S,S)`` -> ``(N, dim)``."""
    kind = arch.get("type")
    if kind not in ARCHITECTURES:
        raise LensError(f"unknown trained architecture {kind!r}; this lens cannot load it.")
    return importlib.import_module(f"{__name__}.{ARCHITECTURES[kind]}").build_model(arch)


def _upgrade_state(arch: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint keys of older lens versions -> today's module names (the weights are unchanged)."""
    if arch.get("type") == "mobilenet-small":
        from lens.encoders.trained.mobilenet_small import remap_state

        return remap_state(state)
    return state


def load_trained_encoder(
    folder: str | os.PathLike, *, spec: EncoderSpec | None = None, precision: Precision | None = None
) -> Encoder:
    """Build the encoder saved in ``folder`` (eval mode, weights loaded)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_model_config(folder)
    spec = spec or _spec_from_config(str(config["name"]), folder, config)
    weights = folder / WEIGHTS_NAME
    state = load_file(str(weights))
    weights_id = file_sha256(weights)
    if config["kind"] == "text-align":
        from lens.encoders.trained.text_align import TextAlignEncoder

        return TextAlignEncoder(spec, config, state, weights_id, precision=precision)
    if config["kind"] == "head":
        from lens.encoders.trained.heads import HeadEncoder

        return HeadEncoder(spec, config, state, weights_id, precision=precision)
    if config["kind"] == "ensemble":
        from lens.encoders.trained.ensemble import EnsembleEncoder

        return EnsembleEncoder(spec, config, state, weights_id, precision=precision)
    model = build_image_model(config["arch"])
    model.load_state_dict(_upgrade_state(config["arch"], state), strict=True)
    return TorchImageEncoder(spec, model.eval(), weights_id, precision=precision or "fp32", fold_bn=True)


def trained_model_folder(name: str, models_dir: str | os.PathLike | None = None) -> Path:
    """Folder of trained model ``name``.

    Raises:
        UnknownEncoderError: no such model (the message lists the trained models present).
    """
    found = find_trained_models(models_dir)
    if name not in found:
        raise UnknownEncoderError(
            f"No trained model '{name}' in {_models_dir(models_dir)}. Trained models there: "
            f"{', '.join(found) or 'none'}. Train one with `python -m lens train <recipe>`."
        )
    return found[name]


refresh_trained_models()
