"""A timm-style encoder registry: ``@register_encoder(spec, weights=...)`` on a builder, then ``create_encoder(name)``."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace

from lens.encoders.base import Encoder, EncoderSpec, Precision, TorchImageEncoder, random_init
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
    build_precision: Precision | None = choice.precision if choice.engine == "onnx" else precision
    encoder = _build(entry, spec, build_precision, weights_dir=weights_dir, pretrained=pretrained)
    attach_engine(encoder, choice, cache_dir=cache_dir)
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
