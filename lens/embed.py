"""Embed a whole catalog with one encoder, cached on disk under a key that says exactly what made the vectors."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lens.catalog import Catalog
from lens.encoders import remember_identity
from lens.encoders.base import (
    Encoder,
    Preprocess,
    ProgressCallback,
    TorchImageEncoder,
    pixels_to_batch,
    preprocess_images,
    resize_crop,
)
from lens.errors import CacheError, LensError
from lens.images import try_open_image
from lens.itemstore import ItemStore
from lens.store import FORMAT_VERSION, cache_key, read_json, resolve_cache_dir, save_array, verify_array

Compute = Callable[
    [Catalog, Encoder, int, "ProgressCallback | None"], "tuple[np.ndarray, list[str], list[tuple[str, str]]]"
]
"""``compute(catalog, encoder, batch_size, progress) -> (vectors, kept ids, failed)``: what embeds a catalog's files."""


@dataclass
class EmbeddingSet:
    """Vectors of a catalog, described well enough to be trusted later.

    Attributes:
        vectors: ``(N, dim)`` float32, rows L2-normalised; row ``i`` belongs to ``ids[i]``.
        ids: item ids in row order (the catalog's order, minus the items that failed).
        encoder: encoder name.
        failed: ``(id, reason)`` for every catalog item whose image could not be read.
        key: cache key (encoder identity + catalog fingerprint + format version).
        identity: what the key was computed from.
        catalog: catalog name.
        seconds: time it took to compute, as recorded when computed (also when loaded from the cache).
        from_cache: whether this came from the disk cache.
    """

    vectors: np.ndarray
    ids: list[str]
    encoder: str
    failed: list[tuple[str, str]] = field(default_factory=list)
    key: str = ""
    identity: dict[str, Any] = field(default_factory=dict)
    catalog: str = ""
    seconds: float = 0.0
    from_cache: bool = False

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.ids):
            raise LensError(
                f"EmbeddingSet needs one vector row per id: got {self.vectors.shape} vectors for {len(self.ids)} ids."
            )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def position(self, item_id: str) -> int:
        """Row of ``item_id``; raises ``LensError`` if it has no vector (not in the catalog, or its image failed)."""
        if not hasattr(self, "_positions"):
            self._positions = {item_id: i for i, item_id in enumerate(self.ids)}
        try:
            return self._positions[item_id]
        except KeyError:
            failed = dict(self.failed)
            if item_id in failed:
                raise LensError(f"Item '{item_id}' has no vector: its image failed ({failed[item_id]}).") from None
            raise LensError(f"Item '{item_id}' is not in the embeddings of catalog '{self.catalog}'.") from None


def embedding_identity(catalog: Catalog, encoder: Encoder | dict[str, Any]) -> dict[str, Any]:
    """What the embeddings' cache key is computed from; ``encoder`` is a built encoder or its ``identity()``
    (:func:`lens.encoders.encoder_identity` reads it without building the encoder)."""
    return {
        "format": FORMAT_VERSION,
        "kind": "embeddings",
        **(encoder if isinstance(encoder, dict) else encoder.identity()),
        "catalog": catalog.fingerprint(),
    }


def embedding_key(catalog: Catalog, encoder: Encoder | dict[str, Any]) -> str:
    """The cache key of ``encoder``'s embeddings of ``catalog`` (what :attr:`EmbeddingSet.key` will be);
    ``encoder``: a built encoder or its ``identity()``."""
    return cache_key(embedding_identity(catalog, encoder))


def cached_embeddings(
    catalog: Catalog, encoder_name: str, key: str, cache_dir: str | os.PathLike | None = None
) -> EmbeddingSet | None:
    """The embeddings of ``catalog`` cached under ``key`` (:func:`embedding_key`), verified; ``None`` on a miss or an
    entry that does not verify. Needs no encoder: what :func:`embed_catalog` returns on a cache hit."""
    try:
        cached = load_embeddings(resolve_cache_dir(cache_dir), encoder_name, key)
        if cached is not None:
            _check_rows_match_catalog(cached, catalog)
    except CacheError:
        return None  # corrupt or stale entry: embed_catalog recomputes and overwrites it
    return cached


def _embeddings_folder(cache_dir: Path, encoder_name: str) -> Path:
    return cache_dir / "embeddings" / encoder_name


def embedding_paths(cache_dir: Path, encoder_name: str, key: str) -> tuple[Path, Path]:
    """``(<cache>/embeddings/<encoder>/<key>.npy, ... .json)``: the vectors and their sidecar."""
    folder = _embeddings_folder(cache_dir, encoder_name)
    return folder / f"{key}.npy", folder / f"{key}.json"


def embed_catalog(
    catalog: Catalog,
    encoder: Encoder,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    compute: Compute | None = None,
) -> EmbeddingSet:
    """Embed every image of ``catalog`` with ``encoder``, reusing the disk cache when its key matches.

    Unreadable images are skipped and listed in ``failed``, never fatal. A cache entry that fails verification (hash,
    shape, ids) is recomputed and overwritten.

    Args:
        catalog: the catalog to embed.
        encoder: any registered encoder.
        cache_dir: cache root (default ``$LENS_CACHE_DIR`` or ``~/.cache/lens``).
        use_cache: read and write the cache; ``False`` computes and writes nothing.
        batch_size: images per forward pass; ``None``: :func:`default_batch_size` (32 on the CPU, 128 on a GPU).
        progress: ``progress(done, total)`` after each batch.
        compute: what embeds the files when the cache misses: ``compute(catalog, encoder, batch_size, progress)
            -> (vectors, kept ids, failed)``; default: this process (decoding in threads). ``lens.distributed``
            passes a Ray Data pipeline; the result is stored under the same key either way.

    Returns:
        The embeddings, ``vectors`` of shape ``(len(ids), encoder.dim)``, float32, rows L2-normalised.
    """
    identity = embedding_identity(catalog, encoder)
    key = cache_key(identity)  # = embedding_key(catalog, encoder), without computing the identity twice
    root = resolve_cache_dir(cache_dir)
    if use_cache:
        cached = cached_embeddings(catalog, encoder.name, key, root)
        if cached is not None:
            remember_identity(encoder, root)
            if progress is not None:
                progress(len(catalog), len(catalog))
            return cached

    started = time.perf_counter()
    if isinstance(encoder, TorchImageEncoder) and encoder.quantization and encoder.calibration is None:
        # an int8 graph not yet made is quantized on photos of the first catalog it embeds
        encoder.calibration = lambda: calibration_pixels(catalog, encoder)
    stacked = encoder.base_and_head()
    if stacked is not None:  # a trained head on a frozen encoder: the base's vectors (usually cached), then the head
        base, head = stacked
        base_set = embed_catalog(
            catalog,
            base,
            cache_dir=cache_dir,
            use_cache=use_cache,
            batch_size=batch_size,
            progress=progress,
            compute=compute,
        )
        vectors, kept, failed = head(base_set.vectors), list(base_set.ids), list(base_set.failed)
    elif (composite := encoder.parts_and_join()) is not None:  # e.g. ``concat``: from each part's (cached) vectors
        parts, join = composite
        part_sets = [
            embed_catalog(
                catalog, part, cache_dir=cache_dir, use_cache=use_cache, batch_size=batch_size, compute=compute
            )
            for part in parts
        ]
        vectors, kept, failed = _join_sets(part_sets, join)
    elif use_cache:  # only the images the per-item store has not seen (a catalog update costs what changed)
        size = batch_size or default_batch_size(encoder)
        vectors, kept, failed = _embed_new_items(catalog, encoder, root, size, progress, compute or embed_files)
    else:
        size = batch_size or default_batch_size(encoder)
        vectors, kept, failed = (compute or embed_files)(catalog, encoder, size, progress)
    result = EmbeddingSet(
        vectors=vectors,
        ids=kept,
        encoder=encoder.name,
        failed=failed,
        key=key,
        identity=identity,
        catalog=catalog.name,
        seconds=time.perf_counter() - started,
    )
    if use_cache:
        save_embeddings(result, root)
        remember_identity(encoder, root)  # the next process finds these vectors without building the encoder
    return result


def default_batch_size(encoder: Encoder) -> int:
    """Images per forward pass when the caller does not say: the encoder's own (``TorchImageEncoder.batch_size``:
    32 on the CPU, 128 on a GPU), else 32."""
    size = getattr(encoder, "batch_size", None)
    return size if isinstance(size, int) and size > 0 else 32


def _embed_new_items(
    catalog: Catalog,
    encoder: Encoder,
    root: Path,
    batch_size: int,
    progress: ProgressCallback | None,
    compute: Compute,
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """The catalog's vectors from the encoder's per-item store (:mod:`lens.itemstore`), embedding only the images
    whose content it has not seen, then adding those to it. Rows come back in catalog order, as ``compute``'s do."""
    digests = catalog.image_digests()
    store = ItemStore(root, encoder.name, encoder.identity())
    known = store.lookup(digests)
    todo = [row for row, digest in enumerate(digests) if digest not in known]
    new: dict[str, np.ndarray] = {}
    failed_by_id: dict[str, str] = {}
    if todo:
        done_before = len(digests) - len(todo)
        part = catalog.subset(todo)

        def shifted(done: int, total: int) -> None:
            if progress is not None:
                progress(done_before + done, done_before + total)

        vectors, kept, failed = compute(part, encoder, batch_size, shifted)
        failed_by_id = dict(failed)
        position = {item_id: i for i, item_id in enumerate(kept)}
        kept_digests = [digests[row] for row in todo if catalog.ids[row] in position]
        for row in todo:
            item_id = catalog.ids[row]
            if item_id in position:
                new[digests[row]] = vectors[position[item_id]]
        store.add(
            kept_digests, np.stack([new[d] for d in kept_digests]) if kept_digests else np.zeros((0, encoder.dim))
        )
    elif progress is not None:
        progress(len(digests), len(digests))
    out = np.empty((len(digests), encoder.dim), dtype=np.float32)
    kept_rows: list[int] = []
    failed_rows: list[tuple[str, str]] = []
    for row, (item_id, digest) in enumerate(zip(catalog.ids, digests)):
        vector = known.get(digest)
        if vector is None:
            vector = new.get(digest)
        if vector is None:
            failed_rows.append((item_id, failed_by_id.get(item_id, "unreadable")))
            continue
        out[row] = vector
        kept_rows.append(row)
    return out[kept_rows], [catalog.ids[row] for row in kept_rows], failed_rows


def _join_sets(
    part_sets: Sequence[EmbeddingSet], join: Callable[[Sequence[np.ndarray]], np.ndarray]
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """The rows every part has (catalog order), joined; an item that failed in any part failed."""
    failed: dict[str, str] = {}
    for part in part_sets:
        for item_id, reason in part.failed:
            failed.setdefault(item_id, reason)
    present = [set(part.ids) for part in part_sets]
    kept = [item_id for item_id in part_sets[0].ids if all(item_id in ids for ids in present)]
    for ids in present:
        for item_id in sorted(ids.difference(kept)):
            failed.setdefault(item_id, "no vector in every part of the composite encoder")
    vectors = join([part.vectors[[part.position(item_id) for item_id in kept]] for part in part_sets])
    return vectors, kept, list(failed.items())


def _check_rows_match_catalog(cached: EmbeddingSet, catalog: Catalog) -> None:
    """The checksum covers the vectors only; the sidecar's ids must still be the catalog's, in catalog order.

    Raises:
        CacheError: the ids (kept + failed) are not exactly the catalog's ids, or the kept ones are out of order.
    """
    failed = {item_id for item_id, _ in cached.failed}
    expected = [item_id for item_id in catalog.ids if item_id not in failed]
    if cached.ids != expected or len(failed) + len(cached.ids) != len(catalog):
        raise CacheError(
            f"cached embeddings {cached.key} list other ids than catalog '{catalog.name}'; they will be rebuilt."
        )


def embed_files(
    catalog: Catalog, encoder: Encoder, batch_size: int = 32, progress: ProgressCallback | None = None
) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode, preprocess and embed every catalog image, decoding ahead in threads while the forward pass runs.

    For torch image encoders (their own preprocessing, ``TorchImageEncoder._embed_batch``) each worker thread turns a
    file into its ``(S, S, 3)`` uint8 crop (draft decode, one resize on uint8); the main thread stacks a batch,
    normalises it in one vectorised pass and runs the forward pass. Pillow's decoder and resize release the GIL, so
    the decoding of the next batches overlaps the forward pass. Other encoders get decoded PIL images.
    """
    ids = catalog.ids
    paths = catalog.image_paths()
    total = len(ids)
    preprocess = pixel_preprocess(encoder)

    def prepare(i: int) -> tuple[Any, str | None]:
        return prepare_image(paths[i], f"{ids[i]} ({paths[i]})", preprocess)

    out = np.empty((total, encoder.dim), dtype=np.float32)
    kept_rows: list[int] = []
    failed: list[tuple[str, str]] = []
    workers = max(1, min(_decode_threads(), total))
    ahead = max(2 * batch_size, 4 * workers)  # images decoded ahead of the forward pass (bounded memory)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lens-decode") as pool:
        pending: deque[tuple[int, Future]] = deque()
        next_row = 0

        def fill() -> None:
            nonlocal next_row
            while next_row < total and len(pending) < ahead + batch_size:
                pending.append((next_row, pool.submit(prepare, next_row)))
                next_row += 1

        fill()
        done = 0
        while pending:
            rows: list[int] = []
            items: list[Any] = []
            while pending and len(rows) < batch_size:
                i, future = pending.popleft()
                item, reason = future.result()
                fill()
                done += 1
                if item is None:
                    failed.append((ids[i], reason or "unreadable"))
                else:
                    rows.append(i)
                    items.append(item)
            if rows:
                if preprocess is not None:
                    vectors = encoder.embed_tensor(pixels_to_batch(np.stack(items), preprocess))  # type: ignore[attr-defined]
                else:
                    vectors = encoder.embed_images(items, batch_size=len(items))
                out[rows] = vectors
                kept_rows.extend(rows)
            if progress is not None:
                progress(done, total)
    kept_rows.sort()
    return out[kept_rows], [ids[i] for i in kept_rows], failed


def prepare_image(path: Any, name: str, preprocess: Preprocess | None) -> tuple[Any, str | None]:
    """One catalog file as the forward pass takes it: ``(S, S, 3)`` uint8 crop when ``preprocess`` is given (draft
    decode, one resize on uint8), else the decoded image; ``(None, reason)`` when it cannot be read."""
    if preprocess is None:
        return try_open_image(path, name=name)
    image, reason = try_open_image(path, name=name, draft_size=preprocess.resize_size)
    return (None, reason) if image is None else (resize_crop(image, preprocess), None)


def pixel_preprocess(encoder: Encoder) -> Preprocess | None:
    """``encoder.spec.preprocess`` when the encoder embeds with lens's own pixel pipeline (a torch image encoder
    that does not override ``_embed_batch``), so that files can go straight to uint8 crops; else ``None``."""
    if isinstance(encoder, TorchImageEncoder) and type(encoder)._embed_batch is TorchImageEncoder._embed_batch:
        return encoder.spec.preprocess
    return None


def _decode_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def save_embeddings(embeddings: EmbeddingSet, cache_dir: str | os.PathLike | None = None) -> Path:
    """Write ``.npy`` + json sidecar atomically (vectors first, sidecar last: a sidecar always has its vectors)."""
    npy_path, _ = embedding_paths(resolve_cache_dir(cache_dir), embeddings.encoder, embeddings.key)
    return save_array(
        npy_path,
        np.asarray(embeddings.vectors, dtype=np.float32),
        {
            "format": FORMAT_VERSION,
            "key": embeddings.key,
            "identity": embeddings.identity,
            "encoder": embeddings.encoder,
            "catalog": embeddings.catalog,
            "ids": embeddings.ids,
            "failed": [list(pair) for pair in embeddings.failed],
            "seconds": round(embeddings.seconds, 3),
        },
    )


def load_embeddings(cache_dir: str | os.PathLike | None, encoder_name: str, key: str) -> EmbeddingSet | None:
    """The cached embeddings for ``key``, ``None`` on a miss.

    Raises:
        CacheError: an entry exists but does not verify (hash, shape, dtype, ids, key); callers recompute.
    """
    npy_path, json_path = embedding_paths(resolve_cache_dir(cache_dir), encoder_name, key)
    loaded = verify_array(npy_path, expect={"key": key, "format": FORMAT_VERSION})
    if loaded is None:
        return None
    vectors, meta = loaded
    ids = meta.get("ids")
    if vectors.dtype != np.float32 or vectors.ndim != 2 or not isinstance(ids, list) or vectors.shape[0] != len(ids):
        count = len(ids) if isinstance(ids, list) else "no list of"
        raise CacheError(f"{npy_path} holds {vectors.dtype} {vectors.shape} for {count} ids; it will be rebuilt.")
    # Every field is checked for its type: a sidecar from an older or interrupted lens, or edited by hand, is a miss.
    failed_raw = meta.get("failed", [])
    identity = meta.get("identity", {})
    seconds = meta.get("seconds", 0.0)
    if (
        not all(isinstance(i, str) for i in ids)
        or not isinstance(failed_raw, list)
        or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair) for pair in failed_raw
        )
        or not isinstance(identity, dict)
        or not isinstance(meta.get("catalog", ""), str)
        or not isinstance(seconds, (int, float))
        or isinstance(seconds, bool)
    ):
        raise CacheError(
            f"{json_path} has a field of the wrong type (ids, failed, identity, catalog or seconds); it will be rebuilt."
        )
    return EmbeddingSet(
        vectors=vectors,
        ids=list(ids),
        encoder=encoder_name,
        failed=[(a, b) for a, b in failed_raw],
        key=key,
        identity=identity,
        catalog=str(meta.get("catalog", "")),
        seconds=float(seconds),
        from_cache=True,
    )


@dataclass(frozen=True)
class EmbeddingState:
    """What the disk cache holds for one encoder and one catalog, found without loading the encoder or the vectors.

    Attributes:
        encoder: encoder name.
        key: cache key of the entry found (``""`` when none).
        embedded: whether the vectors and their sidecar are on disk (not checksummed here: loading does that).
        indexed: whether an Annoy index of these vectors is on disk (filled in by :func:`lens.index.cache_state`).
        n: number of vectors (catalog items whose image was read).
        failed: number of catalog items whose image could not be read.
        created: when the entry was written, ISO 8601 UTC (``""`` when none).
    """

    encoder: str
    key: str = ""
    embedded: bool = False
    indexed: bool = False
    n: int = 0
    failed: int = 0
    created: str = ""


def embedding_state(
    catalog: Catalog,
    encoder_name: str,
    cache_dir: str | os.PathLike | None = None,
    *,
    key: str | None = None,
    precision: str | None = None,
) -> EmbeddingState:
    """The cached embeddings of ``catalog`` by ``encoder_name``, read from the sidecars only.

    Args:
        catalog: the catalog (its fingerprint identifies the entries).
        encoder_name: registered encoder name.
        cache_dir: cache root (default ``$LENS_CACHE_DIR`` or ``~/.cache/lens``).
        key: the exact key (:func:`embedding_key`, which needs the encoder built); without it, the newest entry whose
            identity has the catalog's fingerprint and ``precision`` is reported, so no model is loaded (a change of
            weights files then shows up only once the model is loaded).
        precision: the encoder's precision (``EncoderSpec.precision``) when ``key`` is not given.
    """
    root = resolve_cache_dir(cache_dir)
    folder = _embeddings_folder(root, encoder_name)
    if key is not None:
        sidecars = [embedding_paths(root, encoder_name, key)[1]]
    else:
        sidecars = sorted(folder.glob("*.json")) if folder.is_dir() else []
    fingerprint = catalog.fingerprint()
    best = EmbeddingState(encoder_name)
    for sidecar in sidecars:
        meta = read_json(sidecar)
        if not meta or not sidecar.with_suffix(".npy").is_file():
            continue
        identity = meta.get("identity")
        ids, failed = meta.get("ids"), meta.get("failed", [])
        if not isinstance(identity, dict) or not isinstance(ids, list) or not isinstance(failed, list):
            continue  # malformed: loading would rebuild it, so it is not "embedded"
        if identity.get("catalog") != fingerprint:
            continue
        if precision is not None and identity.get("precision", precision) != precision:
            continue
        found = EmbeddingState(
            encoder_name,
            key=str(meta.get("key", sidecar.stem)),
            embedded=True,
            n=len(ids),
            failed=len(failed),
            created=str(meta.get("created", "")),
        )
        if not best.embedded or found.created > best.created:
            best = found
    return best


def calibration_pixels(catalog: Catalog, encoder: Encoder, n: int = 192) -> np.ndarray:
    """``(M, 3, S, S)`` float32 preprocessed photos to quantize an int8 encoder on: ``n`` catalog photos evenly spread
    over the catalog's rows (so every part of a sorted catalog is seen), decoded as the catalog pass decodes them;
    unreadable ones are skipped.

    Raises:
        LensError: the catalog has no readable photo.
    """
    preprocess = pixel_preprocess(encoder)
    if preprocess is None:
        raise LensError(f"Encoder '{encoder.name}' has no pixel preprocessing to calibrate int8 on.")
    paths = catalog.image_paths()
    rows = np.unique(np.linspace(0, len(paths) - 1, num=min(n, len(paths))).round().astype(int))
    loaded = (try_open_image(paths[i], draft_size=preprocess.resize_size)[0] for i in rows)
    images = [image for image in loaded if image is not None]
    if not images:
        raise LensError(f"Catalog '{catalog.name}' has no readable photo to calibrate int8 on.")
    return preprocess_images(images, preprocess).numpy()


def embed_images(encoder: Encoder, images: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
    """Embed query images (PIL images, paths or bytes) with the safe loader; raises ``ImageLoadError`` on a bad one.

    Paths and bytes are decoded as the catalog's files are (``draft`` for big JPEGs), so that a catalog photo given
    as a query gets its catalog vector; an already decoded PIL image is used as it is.
    """
    from lens.images import open_image

    preprocess = pixel_preprocess(encoder)
    draft_size = preprocess.resize_size if preprocess is not None else None
    loaded = [image if hasattr(image, "mode") else open_image(image, draft_size=draft_size) for image in images]
    return encoder.embed_images(loaded, batch_size=batch_size)
