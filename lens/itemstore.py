"""Per-item embedding store: one encoder's vectors keyed by the content digest of each image, so that a catalog
update (products added, edited or removed) embeds only the images it has not seen.

Layout: ``<cache>/items/<encoder>/<identity key>/shard-<key>.npy`` (+ the ``.json`` sidecar of
:func:`lens.store.save_array`: checksum, shape, and the digest of each row). A shard is written once, atomically,
and never changed; each catalog pass that embeds something adds one shard. Past :data:`MAX_SHARDS` shards they are
merged into one. Two writers never collide: a shard's name is the key of its digests. A shard that does not verify
(a torn or edited file) is ignored and its images are embedded again.

The identity key covers everything that changes a vector (``encoder.identity()``: weights, preprocessing, pixel
pipeline, precision, dimension) and nothing about the catalog, so every catalog an encoder embeds shares the store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lens.errors import CacheError
from lens.store import FORMAT_VERSION, cache_key, load_array, read_json, resolve_cache_dir, save_array, sidecar_path

MAX_SHARDS = 16
"""Shards kept before they are merged into one (each catalog update adds one)."""


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class ItemStore:
    """The vectors one encoder (``identity``) has computed, by image content digest."""

    def __init__(self, cache_dir: str | os.PathLike | None, encoder: str, identity: dict[str, Any]) -> None:
        self.identity = {"format": FORMAT_VERSION, "kind": "item-vectors", **identity}
        self.key = cache_key(self.identity)
        self.folder = resolve_cache_dir(cache_dir) / "items" / encoder / self.key
        self.dim = int(identity.get("dim", 0)) or None

    def _shards(self) -> list[Path]:
        return sorted(self.folder.glob("shard-*.npy")) if self.folder.is_dir() else []

    def _read(self, path: Path) -> tuple[np.ndarray, list[str]] | None:
        try:
            loaded = load_array(path, expect={"key": self.key})
        except CacheError:
            loaded = None
        if loaded is None:
            return None
        vectors, meta = loaded
        digests = meta.get("digests")
        if (
            not isinstance(digests, list)
            or len(digests) != len(vectors)
            or vectors.ndim != 2
            or (self.dim is not None and vectors.shape[1] != self.dim)
            or not all(_is_digest(d) for d in digests)
        ):
            return None  # a sidecar lens cannot trust counts as absent
        return vectors, digests

    def lookup(self, digests: list[str]) -> dict[str, np.ndarray]:
        """``{digest: vector}`` for the wanted ``digests`` this store holds (each shard read and verified once)."""
        wanted = {d for d in digests if _is_digest(d)}
        found: dict[str, np.ndarray] = {}
        for path in self._shards():
            if not wanted - found.keys():
                break
            meta = read_json(sidecar_path(path)) or {}
            names = meta.get("digests")
            if not isinstance(names, list) or not (wanted - found.keys()) & set(map(str, names)):
                continue  # nothing wanted in this shard: not even read
            shard = self._read(path)
            if shard is None:
                continue
            vectors, names = shard
            for row, digest in enumerate(names):
                if digest in wanted and digest not in found:
                    found[digest] = vectors[row]
        return found

    def add(self, digests: list[str], vectors: np.ndarray) -> None:
        """Store ``vectors`` (``(N, dim)``) under ``digests`` (one shard); merges the shards past :data:`MAX_SHARDS`."""
        keep = [i for i, d in enumerate(digests) if _is_digest(d)]
        if not keep:
            return
        names = [digests[i] for i in keep]
        rows = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[keep])
        self._write(names, rows)
        shards = self._shards()
        if len(shards) > MAX_SHARDS:
            self._merge(shards)

    def _write(self, names: list[str], rows: np.ndarray) -> Path:
        path = self.folder / f"shard-{cache_key({'digests': names})}.npy"
        save_array(path, rows, {"key": self.key, "identity": self.identity, "digests": names})
        return path

    def _merge(self, shards: list[Path]) -> None:
        names: list[str] = []
        parts: list[np.ndarray] = []
        seen: set[str] = set()
        for path in shards:
            shard = self._read(path)
            if shard is None:
                continue
            vectors, digests = shard
            keep = [i for i, d in enumerate(digests) if d not in seen]
            seen.update(digests[i] for i in keep)
            names.extend(digests[i] for i in keep)
            parts.append(vectors[keep])
        if not parts:
            return
        merged = self._write(names, np.concatenate(parts))
        for path in shards:
            if path != merged:
                for file in (path, sidecar_path(path)):
                    file.unlink(missing_ok=True)

    def __len__(self) -> int:
        total = 0
        for path in self._shards():
            names = (read_json(sidecar_path(path)) or {}).get("digests")
            total += len(names) if isinstance(names, list) else 0
        return total
