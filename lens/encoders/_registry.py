"""A timm-style encoder registry: ``@register_encoder(spec, weights=...)`` on a builder, then ``create_encoder(name)``."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import pickle
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lens.encoders.base import PIXEL_PIPELINE, Encoder, EncoderSpec, Precision, TorchImageEncoder, random_init
from lens.encoders.engines import EngineChoice, attach_engine, choose_engine
from lens.encoders.hub import HubWeights
from lens.encoders.weights import (
    TrainedWeights,
    WeightsFile,
    WeightsStatus,
    find_weights,
    resolve_weights,
    user_weights_dir,
)
from lens.errors import LensError, UnknownEncoderError, WeightsUnavailableError
from lens.store import cache_key, read_json, resolve_cache_dir, utc_now, write_json

try:
    from safetensors import SafetensorError as _SafetensorError
except ImportError:  # pragma: no cover - safetensors is a dependency of transformers and timm

    class _SafetensorError(Exception):  # type: ignore[no-redef]
        pass


Builder = Callable[..., Encoder]
"""``builder(spec, weights_path, precision=...) -> Encoder``.

``weights_path`` is the resolved checkpoint file (``WeightsFile``) or folder (``HubWeights``); ``None`` asks for the
architecture with seeded random weights (weight-free encoders, ``create_encoder(..., pretrained=False)``).
"""

Weights = WeightsFile | HubWeights | TrainedWeights


@dataclass(frozen=True)
class RegistryEntry:
    spec: EncoderSpec
    builder: Builder
    weights: Weights | None
    parts: tuple[str, ...] = ()  #: a composite's encoders (``concat``): available when all of them are


@dataclass(frozen=True)
class EncoderInfo:
    """A row of ``list_encoders()``: the spec plus whether the weights are on this machine now.

    ``spec.precision`` is the precision ``create_encoder(name)`` will run with on the engine chosen for it
    (``engine``: fp32 on ONNX Runtime), which is what the embedding cache keys of this machine hold.
    """

    spec: EncoderSpec
    status: WeightsStatus
    engine: EngineChoice | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def available(self) -> bool:
        return self.status.available


_REGISTRY: dict[str, RegistryEntry] = {}


def register_encoder(
    spec: EncoderSpec, *, weights: Weights | None = None, parts: tuple[str, ...] = ()
) -> Callable[[Builder], Builder]:
    """Register ``builder`` under ``spec.name`` (``parts``: the encoders a composite runs, whose weights it needs);
    re-registering a name is a programming error."""

    def decorator(builder: Builder) -> Builder:
        if spec.name in _REGISTRY:
            raise ValueError(f"encoder '{spec.name}' is already registered")
        _REGISTRY[spec.name] = RegistryEntry(spec, builder, weights, tuple(parts))
        return builder

    return decorator


def unregister_encoder(name: str) -> None:
    """Remove ``name`` from the registry (trained models come and go with their folders); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def registered_names(family: str | None = None) -> list[str]:
    """Registered encoder names, optionally only those of one ``family``, sorted."""
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.spec.family == family)


def _entry(name: str) -> RegistryEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownEncoderError(f"Unknown encoder '{name}'. Known encoders: {known}.") from None


def get_spec(name: str, *, engine: str | None = None) -> EncoderSpec:
    """The spec of ``name`` as ``create_encoder(name, engine=engine)`` builds it (its ``precision`` is the engine's
    default: fp32 where ONNX Runtime runs it); ``engine=None`` reads ``$LENS_ENGINE`` (default ``auto``)."""
    return _effective(_entry(name).spec, engine, None)[0]


def engine_choice(name: str, *, engine: str | None = None, precision: Precision | None = None) -> EngineChoice:
    """Which engine ``create_encoder(name, engine=engine, precision=precision)`` runs on, and why (nothing built)."""
    return _effective(_entry(name).spec, engine, precision)[1]


def _effective(spec: EncoderSpec, engine: str | None, precision: Precision | None) -> tuple[EncoderSpec, EngineChoice]:
    choice = choose_engine(spec, engine=engine, precision=precision)
    if choice.precision != spec.precision:
        spec = replace(spec, precision=choice.precision)
    return spec, choice


def encoder_status(name: str, weights_dir: str | os.PathLike | None = None) -> WeightsStatus:
    """Whether ``name``'s weights are on this machine (never downloads)."""
    entry = _entry(name)
    for part in entry.parts:
        status = encoder_status(part, weights_dir)
        if not status.available:
            return WeightsStatus(
                False, None, status.where, f"'{name}' runs {part}, whose weights are missing: {status.remedy}"
            )
    if entry.parts:
        return WeightsStatus(True, None, f"its parts' weights ({', '.join(entry.parts)})", "")
    if entry.weights is None:
        # trained models carry their weights folder in spec.weights; the test encoder has none
        where = entry.spec.weights if entry.spec.family == "trained" else "built in (no pretrained weights)"
        return WeightsStatus(True, None, where, "")
    return find_weights(entry.weights, weights_dir)


def list_encoders(
    *,
    available_only: bool = False,
    include_test: bool = True,
    weights_dir: str | os.PathLike | None = None,
    engine: str | None = None,
) -> list[EncoderInfo]:
    """Every registered encoder with its availability and the engine it runs on (``engine`` as for
    :func:`create_encoder`), sorted by name."""
    rows = []
    for name in sorted(_REGISTRY):
        entry = _REGISTRY[name]
        if not include_test and entry.spec.family == "test":
            continue
        spec, choice = _effective(entry.spec, engine, None)
        info = EncoderInfo(spec, encoder_status(name, weights_dir), choice)
        if available_only and not info.available:
            continue
        rows.append(info)
    return rows


def create_encoder(
    name: str,
    *,
    precision: Precision | None = None,
    weights_dir: str | os.PathLike | None = None,
    pretrained: bool = True,
    engine: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Encoder:
    """Build encoder ``name`` in eval mode with its weights loaded, on the engine that runs it fastest.

    Args:
        name: a registered name (``list_encoders()``).
        precision: ``"fp32"`` or ``"bf16"``; default: the engine's default (fp32 on ONNX Runtime, else the spec's
            measured torch default).
        weights_dir: the user's weights folder, searched first (default ``$LENS_WEIGHTS_DIR``).
        pretrained: ``False`` builds the architecture with seeded random weights and no lookup at all (like timm's
            ``create_model(pretrained=False)``): for tests and speed measurements, never for search.
        engine: ``"auto"`` (ONNX Runtime where measured faster, else torch), ``"torch"`` or ``"onnx"``; ``None``
            reads ``$LENS_ENGINE`` (default ``auto``). See :mod:`lens.encoders.engines`.
        cache_dir: where exported ONNX graphs are cached (default ``$LENS_CACHE_DIR`` or ``~/.cache/lens``).

    Raises:
        UnknownEncoderError: the name is not registered (the message lists the known ones).
        WeightsUnavailableError: the weights are neither local nor downloadable, or the local copy cannot be loaded
            (the message says how to fix it).
        LensError: an unknown engine, or ``engine="onnx"`` with bf16 or without onnxruntime.
    """
    entry = _entry(name)
    spec, choice = _effective(entry.spec, engine, precision)
    # On torch the builder gets the caller's precision as before (None: its own default; a trained model's builder
    # then uses the precision its base was trained with); ONNX Runtime runs fp32.
    build_precision: Precision | None = (
        choice.precision if choice.engine == "onnx" or choice.device == "cuda" else precision
    )
    stack = _building_stack()
    stack.append({})
    try:
        encoder = _build(entry, spec, build_precision, weights_dir=weights_dir, pretrained=pretrained)
        attach_engine(encoder, choice, cache_dir=cache_dir)
    finally:
        parts = stack.pop()
    if stack:  # built inside another encoder's build (a trained head's base, a composite's part)
        stack[-1][name] = parts
    if pretrained and precision is None:  # a default build: lens.embed records its identity beside its embeddings
        encoder.build_record = BuildRecord(name, parts, engine, weights_dir)
    return encoder


def create_feature_extractor(
    name: str,
    *,
    weights_dir: str | os.PathLike | None = None,
    pretrained: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> TorchImageEncoder:
    """Encoder ``name`` on ONNX Runtime, for a trained model whose backbone it is.

    ``encoder.onnx_runner()`` maps preprocessed ``(N, 3, S, S)`` float32 pixels (``preprocess_images`` with
    ``encoder.spec.preprocess``) to raw, un-normalised ``(N, dim)`` float32 features, sharing the process's one
    session of that graph; ``encoder.embed_tensor`` gives the L2-normalised vectors.

    Raises:
        LensError: ``name`` is not a torch image encoder, onnxruntime is missing, or the export fails.
    """
    encoder = create_encoder(name, weights_dir=weights_dir, pretrained=pretrained, engine="onnx", cache_dir=cache_dir)
    if not isinstance(encoder, TorchImageEncoder) or encoder.onnx_runner() is None:
        raise LensError(f"Encoder '{name}' has no ONNX Runtime feature extractor.")
    return encoder


def _build(
    entry: RegistryEntry,
    spec: EncoderSpec,
    precision: Precision | None,
    *,
    weights_dir: str | os.PathLike | None,
    pretrained: bool,
) -> Encoder:
    name = spec.name
    if entry.weights is None or not pretrained:
        with random_init():  # the same random weights at every build, and the caller's RNG stream untouched
            return entry.builder(spec, None, precision=precision)
    weights_path = resolve_weights(entry.weights, weights_dir, name=name)
    try:
        return entry.builder(spec, weights_path, precision=precision)
    except LensError:
        raise
    # What a damaged or mismatched checkpoint raises: truncated file (OSError/EOFError), state-dict mismatch
    # (RuntimeError), a pickle that weights_only refuses (UnpicklingError), malformed safetensors or config
    # (ValueError / SafetensorError, which subclasses Exception only).
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, _SafetensorError) as exc:
        first_line = _load_failure(exc)
        raise WeightsUnavailableError(
            f"Weights for '{name}' at {weights_path} could not be loaded ({exc.__class__.__name__}: {first_line}). "
            f"To fix: replace them: {entry.weights.remedy(user_weights_dir(weights_dir))}."
        ) from exc


def _load_failure(exc: BaseException) -> str:
    """The reason a checkpoint did not load, in one line.

    A pickle that ``weights_only=True`` refuses gets lens's own words: torch's advice runs over many lines and, cut
    to its first, reads "re-run with weights_only=False" without "only if you got the file from a trusted source".
    lens never loads a full pickle, whatever its origin.
    """
    if isinstance(exc, pickle.UnpicklingError):
        return (
            "the file holds Python objects besides tensors, and lens loads weights only (torch.load with "
            "weights_only=True), never a full pickle, since unpickling a file can run any code in it; use a "
            "state_dict or safetensors file from a source you trust"
        )
    return (str(exc).strip().splitlines() or [""])[0][:300]


# ------------------------------------------------------------------------------------------ identities without torch

_IDENTITY_FORMAT = 1
_log = logging.getLogger("lens.encoders")
_BUILDING = threading.local()

Parts = dict[str, "Parts"]
"""The encoders built inside a build, each with the ones built inside it: ``{"efficientnet-lite2": {}}``."""


@dataclass(frozen=True)
class BuildRecord:
    """How ``create_encoder`` built an encoder with its default options (``Encoder.build_record``)."""

    name: str
    parts: Parts
    engine: str | None
    weights_dir: str | os.PathLike | None


def _building_stack() -> list[Parts]:
    """Per thread: for every ``create_encoder`` call in progress, the encoders built inside it so far."""
    if not hasattr(_BUILDING, "stack"):
        _BUILDING.stack = []
    stack: list[Parts] = _BUILDING.stack
    return stack


def _identity_path(name: str, cache_dir: str | os.PathLike | None) -> Path:
    return resolve_cache_dir(cache_dir) / "encoders" / f"{name}.json"


def _files_state(path: Path | None, entry: RegistryEntry) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` of every file an encoder's build reads: the checkpoint, a Hugging Face folder's
    files, or a trained model's folder (weights and ``config.json``)."""
    if path is None:
        return []
    folder = path.parent if isinstance(entry.weights, TrainedWeights) else path
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [path]
    state = []
    for file in files:
        st = file.stat()  # follows links: a Hugging Face snapshot's files are links into its blobs
        state.append([str(file.resolve()), st.st_size, st.st_mtime_ns])
    return state


def _fingerprint(
    name: str, parts: Parts, engine: str | None, weights_dir: str | os.PathLike | None, depth: int = 0
) -> str | None:
    """A key over everything that decides ``create_encoder(name)``'s identity, read without building anything: the
    effective spec and engine, the weights files' paths, sizes and mtimes, the torch version (seeded random builds),
    and the same for the encoders built inside it (``parts``); ``None`` when some weights are not on this machine or
    a part is no longer registered."""
    if name not in _REGISTRY or depth > 8:  # depth: a cycle would be a bug elsewhere; never loop on it
        return None
    entry = _REGISTRY[name]
    spec, choice = _effective(entry.spec, engine, None)
    status = encoder_status(name, weights_dir)
    if not status.available:
        return None
    try:
        files = _files_state(status.path, entry)
        torch_version = importlib.metadata.version("torch")
    except (OSError, importlib.metadata.PackageNotFoundError):
        return None
    inner = {part: _fingerprint(part, sub, engine, weights_dir, depth + 1) for part, sub in sorted(parts.items())}
    if any(f is None for f in inner.values()):
        return None
    return cache_key(
        {
            "format": _IDENTITY_FORMAT,
            "pixels": PIXEL_PIPELINE,
            "spec": asdict(spec),
            "engine": [choice.engine, choice.precision, choice.variant]
            + ([choice.device, choice.measure] if choice.device != "cpu" else []),
            "weights": files,
            "torch": torch_version,
            "parts": inner,
        }
    )


def _valid_parts(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _valid_parts(v) for k, v in value.items())


def remember_identity(encoder: Encoder, cache_dir: str | os.PathLike | None = None) -> None:
    """Record ``encoder``'s identity in ``<cache>/encoders/<name>.json`` for :func:`encoder_identity`, when it is a
    default build of the registry (``lens.embed.embed_catalog`` calls this beside the embeddings it caches).
    Never raises: a missing record costs a model build, nothing else."""
    record = encoder.build_record
    if not isinstance(record, BuildRecord):
        return
    try:
        fingerprint = _fingerprint(record.name, record.parts, record.engine, record.weights_dir)
        if fingerprint is None:
            return
        identity = encoder.identity()
        path = _identity_path(record.name, cache_dir)
        old = read_json(path) or {}
        if (
            old.get("fingerprint") == fingerprint
            and isinstance(old.get("identity"), dict)
            and cache_key(old["identity"]) == cache_key(identity)
            and old.get("parts") == record.parts
        ):
            return
        write_json(
            path,
            {
                "name": record.name,
                "fingerprint": fingerprint,
                "parts": record.parts,
                "identity": identity,
                "created": utc_now(),
            },
        )
    except (OSError, LensError, TypeError, ValueError) as exc:
        _log.debug("identity of '%s' not recorded: %s", record.name, exc)


def encoder_identity(
    name: str,
    *,
    engine: str | None = None,
    weights_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, Any] | None:
    """``create_encoder(name).identity()`` without building the encoder (so without importing torch), or ``None``.

    ``lens.embed.embed_catalog`` records the identity of the (default-built) encoder whose embeddings it caches in
    ``<cache>/encoders/<name>.json``, with a fingerprint of what decided it (:func:`_fingerprint`: the spec, the
    engine, the weights files' paths, sizes and mtimes, the same for the encoders built inside it). The record is
    returned while that fingerprint still holds; ``None`` when there is none or anything changed, and the caller
    builds the encoder. The dashboard finds a model's cached embeddings this way: a catalog-product search needs no
    model at all.
    """
    record = read_json(_identity_path(name, cache_dir))
    if record is None:
        return None
    parts, identity = record.get("parts", {}), record.get("identity")
    if not isinstance(identity, dict) or not _valid_parts(parts):
        return None
    try:
        fingerprint = _fingerprint(name, parts, engine, weights_dir)
    except (OSError, LensError, TypeError, ValueError):
        return None
    return identity if fingerprint is not None and fingerprint == record.get("fingerprint") else None
