"""A timm-style encoder registry: ``@register_encoder(spec, weights=...)`` on a builder, then ``create_encoder(name)``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lens.encoders.base import Encoder, EncoderSpec, Precision
from lens.encoders.weights import WeightsFile, WeightsStatus, find_weights, resolve_weights
from lens.errors import UnknownEncoderError

Builder = Callable[..., Encoder]
"""``builder(spec, weights_path, precision=...) -> Encoder``; ``weights_path`` is ``None`` for weight-free encoders."""


@dataclass(frozen=True)
class RegistryEntry:
    spec: EncoderSpec
    builder: Builder
    weights: WeightsFile | None


@dataclass(frozen=True)
class EncoderInfo:
    """A row of ``list_encoders()``: the spec plus whether the weights are on this machine now."""

    spec: EncoderSpec
    status: WeightsStatus

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def available(self) -> bool:
        return self.status.available


_REGISTRY: dict[str, RegistryEntry] = {}


def register_encoder(spec: EncoderSpec, *, weights: WeightsFile | None = None) -> Callable[[Builder], Builder]:
    """Register ``builder`` under ``spec.name``; re-registering a name is a programming error."""

    def decorator(builder: Builder) -> Builder:
        if spec.name in _REGISTRY:
            raise ValueError(f"encoder '{spec.name}' is already registered")
        _REGISTRY[spec.name] = RegistryEntry(spec, builder, weights)
        return builder

    return decorator


def _entry(name: str) -> RegistryEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownEncoderError(f"Unknown encoder '{name}'. Known encoders: {known}.") from None


def get_spec(name: str) -> EncoderSpec:
    return _entry(name).spec


def encoder_status(name: str, weights_dir: str | os.PathLike | None = None) -> WeightsStatus:
    """Whether ``name``'s weights are on this machine (never downloads)."""
    entry = _entry(name)
    if entry.weights is None:
        return WeightsStatus(True, None, "built in (no pretrained weights)", "")
    return find_weights(entry.weights, weights_dir)


def list_encoders(
    *, available_only: bool = False, include_test: bool = True, weights_dir: str | os.PathLike | None = None
) -> list[EncoderInfo]:
    """Every registered encoder with its availability, sorted by name."""
    rows = []
    for name in sorted(_REGISTRY):
        entry = _REGISTRY[name]
        if not include_test and entry.spec.family == "test":
            continue
        info = EncoderInfo(entry.spec, encoder_status(name, weights_dir))
        if available_only and not info.available:
            continue
        rows.append(info)
    return rows


def create_encoder(
    name: str, *, precision: Precision | None = None, weights_dir: str | os.PathLike | None = None
) -> Encoder:
    """Build encoder ``name`` in eval mode with its weights loaded.

    Raises:
        UnknownEncoderError: the name is not registered (the message lists the known ones).
        WeightsUnavailableError: the weights are neither local nor downloadable (the message says how to fix it).
    """
    entry = _entry(name)
    weights_path: Path | None = None
    if entry.weights is not None:
        weights_path = resolve_weights(entry.weights, weights_dir, name=name)
    return entry.builder(entry.spec, weights_path, precision=precision)
