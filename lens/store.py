"""The on-disk store under every lens cache: where it lives, content-addressed keys, atomic writes, checked arrays.

One way to persist things, used by the embeddings, the indexes, the projections, the training caches and the
catalog's file-digest memo:

* :func:`atomic_write` writes beside the target and ``os.replace``-s it into place: a crash half-way leaves the old
  file (or none), never a truncated one.
* :func:`save_array` / :func:`load_array` keep a numpy array as ``<key>.npy`` plus a JSON sidecar ``<key>.json``
  (shape, dtype, SHA-256 of the ``.npy`` bytes and whatever the caller adds). Loading verifies all of it; anything
  that does not verify is a cache miss, never a misread array. No pickle anywhere (``allow_pickle=False``).
* :func:`file_digests` memoises SHA-256 digests of files by ``(size, mtime_ns, inode, ctime_ns)``.
* :func:`csv_safe` escapes the cells of a table a spreadsheet would run as a formula, for every CSV export.

Bottom layer: imports only the standard library, numpy and :mod:`lens.errors`.
"""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lens.errors import CacheError

CACHE_DIR_ENV = "LENS_CACHE_DIR"
FORMAT_VERSION = 1
"""Bump when the layout of cached embeddings, projections or indexes changes: every old entry then misses."""


# --------------------------------------------------------------------------------------------------------------
# Where, and under which key


def default_cache_dir() -> Path:
    """``$LENS_CACHE_DIR`` if set, else ``~/.cache/lens``."""
    value = os.environ.get(CACHE_DIR_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "lens"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir`` itself when given, else :func:`default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cache_key(identity: Mapping[str, Any]) -> str:
    """A stable 24-hex-digit key for a JSON-serialisable identity (sorted keys, so dict order does not matter)."""
    payload = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def bytes_sha256(data: bytes | memoryview) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks (raises ``OSError`` when it cannot be read)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def utc_now() -> str:
    """The current UTC time as ISO 8601 to the second (the ``created`` stamp of sidecars)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------------
# Atomic files and JSON


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then ``os.replace`` it into place.

    A crash half-way leaves the old file (or none), never a truncated one; the temporary file never outlives the
    call. ``write`` may replace the empty temporary file (e.g. annoy unlinks before saving).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


STALE_TMP_SECONDS = 15 * 60
"""A temporary file of :func:`atomic_write` older than this was left by a killed writer (writes take seconds)."""


def remove_stale_temporaries(path: Path, *, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write` of ``path`` left beside it (older than
    ``older_than`` seconds, so a concurrent writer's fresh one is left alone); returns what was removed."""
    removed: list[Path] = []
    cutoff = time.time() - older_than
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return removed
    for tmp in candidates:
        try:
            if tmp.is_file() and not tmp.is_symlink() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass  # gone already, or not ours to delete: the next write tries again
    return removed


def write_json(path: Path, data: Mapping[str, Any], *, indent: int | None = 1) -> None:
    """Write ``data`` as JSON (sorted keys; non-JSON values as ``str``) atomically."""
    text = json.dumps(data, indent=indent, sort_keys=True, default=str, separators=None if indent else (",", ":"))
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object at ``path``, or ``None`` when it is missing or unreadable (a cache miss, not an error)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------------------------
# Arrays with a checked sidecar


def sidecar_path(npy_path: Path) -> Path:
    """The JSON sidecar of an array entry: ``<key>.npy`` -> ``<key>.json``."""
    return npy_path.with_suffix(".json")


def save_array(npy_path: Path, array: np.ndarray, meta: Mapping[str, Any]) -> Path:
    """Store ``array`` at ``npy_path`` with its sidecar, each written atomically (array first, sidecar last).

    The sidecar holds ``meta`` plus ``shape``, ``dtype``, ``sha256`` (of the ``.npy`` bytes) and ``created``; since
    the sidecar is written last, a sidecar on disk always has its array.

    Args:
        npy_path: where the ``.npy`` goes; the sidecar is :func:`sidecar_path` of it.
        array: any numeric array (object arrays are refused by ``np.save(allow_pickle=False)``).
        meta: JSON-serialisable fields the caller wants back from :func:`load_array`.

    Returns:
        ``npy_path``.
    """
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    data = buffer.getvalue()
    atomic_write(npy_path, lambda tmp: tmp.write_bytes(data))
    checks = {"shape": list(array.shape), "dtype": str(array.dtype), "sha256": bytes_sha256(data)}
    write_json(sidecar_path(npy_path), {**meta, **checks, "created": utc_now()})
    return npy_path


def verify_array(
    npy_path: Path, *, expect: Mapping[str, Any] | None = None
) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The array at ``npy_path`` and its sidecar, checked; ``None`` when the entry is absent.

    Args:
        npy_path: the ``.npy`` of the entry.
        expect: sidecar fields that must hold exactly these values (e.g. ``{"key": key, "format": 1}``).

    Returns:
        ``(array, sidecar)``; the array's shape and dtype are the sidecar's.

    Raises:
        CacheError: the entry exists but does not verify (sidecar fields, checksum, ``.npy`` format, shape, dtype);
            the message names the file and says that it will be rebuilt.
    """
    json_path = sidecar_path(npy_path)
    meta = read_json(json_path)
    if meta is None or not npy_path.exists():
        return None
    if any(meta.get(name) != value for name, value in (expect or {}).items()):
        raise CacheError(f"{json_path} belongs to another key or format; it will be rebuilt.")
    try:
        data = npy_path.read_bytes()
    except OSError as exc:
        raise CacheError(f"cannot read {npy_path}: {exc}") from exc
    if bytes_sha256(data) != meta.get("sha256"):
        raise CacheError(f"{npy_path} does not match the checksum in its sidecar; it will be rebuilt.")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise CacheError(f"{npy_path} is not a valid .npy file: {exc}") from exc
    # The checksum covers the .npy bytes, not the sidecar: a sidecar that lies about the array is caught here.
    if list(array.shape) != meta.get("shape") or str(array.dtype) != meta.get("dtype", str(array.dtype)):
        raise CacheError(
            f"{npy_path} holds {array.dtype} {array.shape}, its sidecar says {meta.get('dtype')} {meta.get('shape')}; "
            "it will be rebuilt."
        )
    return array, meta


def load_array(npy_path: Path, *, expect: Mapping[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]] | None:
    """:func:`verify_array`, with an entry that does not verify counted as absent: ``None`` means recompute."""
    try:
        return verify_array(npy_path, expect=expect)
    except CacheError:
        return None


# --------------------------------------------------------------------------------------------------------------
# File digests, memoised


def file_digests(root: Path, rels: Sequence[str], *, cache_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """SHA-256 of each file ``root/rel`` (``"missing"`` for one that cannot be read), memoised on disk.

    The memo, ``<cache>/catalogs/digests/<key of root>.json``, maps ``rel -> [size, mtime_ns, inode, ctime_ns,
    sha256]``; a file is read again when any of the four changed. ``ctime_ns`` is the one a program cannot set
    back: an image edited in place and given its old size and mtime again (``touch -d``, ``rsync --times``) still
    gets a new ctime, so it is hashed again. An entry of another shape (an older lens, a hand edit) counts as
    unknown, and a memo that cannot be read or written is ignored: the digests are then computed from the files
    (about 0.3 s for 8,000 product photos, 59 MB).
    """
    memo_path = resolve_cache_dir(cache_dir) / "catalogs" / "digests" / f"{cache_key({'root': str(root)})}.json"
    memo: dict[str, Any] = read_json(memo_path) or {}
    out: dict[str, str] = {}
    changed = False
    for rel in dict.fromkeys(rels):
        path = root / rel
        try:
            st = os.stat(path)
        except (OSError, ValueError):  # ValueError: a NUL byte in the name
            out[rel] = "missing"
            continue
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        known = memo.get(rel)
        if isinstance(known, list) and len(known) == 5 and known[:4] == stamp and _is_sha256(known[4]):
            out[rel] = known[4]
            continue
        try:
            out[rel] = file_sha256(path)
        except OSError:
            out[rel] = "missing"
            continue
        memo[rel] = [*stamp, out[rel]]
        changed = True
    if changed:
        try:
            write_json(memo_path, memo, indent=None)
        except OSError:
            pass  # a read-only cache only costs the re-hashing next time
    return out


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA256_RE.fullmatch(value) is not None


# --------------------------------------------------------------------------------------------------------------
# CSV exports

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def escape_formula(value: object) -> object:
    """``value`` with a leading ``'`` when a spreadsheet would read it as a formula (OWASP "CSV Injection"): a string
    starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return. Plain numbers such as ``-0.5`` are kept."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_safe(table: Any) -> Any:
    """A copy of the pandas DataFrame ``table`` whose text cells and column names are :func:`escape_formula`-ed:
    what every CSV export of lens writes (ids, names and labels come from user files)."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object or str(out[column].dtype) in ("string", "str"):
            out[column] = out[column].map(escape_formula)
    out.columns = [escape_formula(c) if isinstance(c, str) else c for c in out.columns]
    return out
