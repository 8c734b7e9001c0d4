"""On-disk cache helpers: where the cache lives, content-addressed keys, atomic writes. No pickle anywhere."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHE_DIR_ENV = "LENS_CACHE_DIR"
FORMAT_VERSION = 1
"""Bump when the layout of cached embeddings or indexes changes: every old entry then misses and is rebuilt."""


def default_cache_dir() -> Path:
    """``$LENS_CACHE_DIR`` if set, else ``~/.cache/lens``."""
    value = os.environ.get(CACHE_DIR_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "lens"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cache_key(identity: dict[str, Any]) -> str:
    """A stable hex key for a JSON-serialisable identity (sorted keys, so dict order does not matter)."""
    payload = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def bytes_sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then ``os.replace`` it into place.

    A crash half-way leaves the old file (or none), never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str)))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or ``None`` when it is missing or unreadable (a cache miss, not an error)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
