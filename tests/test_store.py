"""lens.store: atomic writes, arrays with a checked sidecar (tampering is a miss, never a misread), digests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lens.errors import CacheError
from lens.store import (
    atomic_write,
    cache_key,
    file_digests,
    load_array,
    read_json,
    save_array,
    sidecar_path,
    verify_array,
    write_json,
)


def test_cache_key_ignores_dict_order_and_follows_values() -> None:
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})
    assert len(cache_key({})) == 24


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.txt"
    atomic_write(target, lambda tmp: tmp.write_text("old"))

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.txt"], "no temporary file left behind"


def test_json_round_trip_and_unreadable_is_none(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_json(path, {"b": 1, "a": Path("/x")})
    assert read_json(path) == {"a": "/x", "b": 1}
    path.write_text("[1, 2]")
    assert read_json(path) is None  # not an object
    path.write_text("{")
    assert read_json(path) is None
    assert read_json(tmp_path / "missing.json") is None


def test_array_round_trip_keeps_meta_and_records_checks(tmp_path: Path) -> None:
    npy = tmp_path / "arrays" / "k.npy"
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert save_array(npy, array, {"key": "k", "ids": ["a", "b", "c"]}) == npy
    meta = json.loads(sidecar_path(npy).read_text())
    assert meta["shape"] == [3, 4] and meta["dtype"] == "float32" and len(meta["sha256"]) == 64 and meta["created"]
    loaded, back = load_array(npy, expect={"key": "k"})
    np.testing.assert_array_equal(loaded, array)
    assert back["ids"] == ["a", "b", "c"]
    assert load_array(tmp_path / "arrays" / "other.npy") is None  # absent: a miss
    assert verify_array(tmp_path / "arrays" / "other.npy") is None


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda npy, meta: meta.update(key="other"), "another key"),
        (lambda npy, meta: meta.update(shape=[4, 3]), "sidecar says"),
        (lambda npy, meta: meta.update(dtype="float64"), "sidecar says"),
        (lambda npy, meta: npy.write_bytes(npy.read_bytes()[:-4] + b"\0\0\0\1"), "checksum"),
        (lambda npy, meta: npy.write_bytes(b"\x93NUMPY garbage"), "checksum"),
    ],
    ids=["key", "shape", "dtype", "data", "header"],
)
def test_an_entry_that_does_not_verify_is_a_miss(tmp_path: Path, tamper, message: str) -> None:  # noqa: ANN001
    npy = tmp_path / "k.npy"
    save_array(npy, np.ones((3, 4), dtype=np.float32), {"key": "k"})
    meta = json.loads(sidecar_path(npy).read_text())
    tamper(npy, meta)
    sidecar_path(npy).write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=message):
        verify_array(npy, expect={"key": "k"})
    assert load_array(npy, expect={"key": "k"}) is None


def test_a_valid_npy_under_a_forged_checksum_still_needs_the_shape(tmp_path: Path) -> None:
    """The sidecar is checked against the array it describes, not only against its own checksum."""
    npy = tmp_path / "k.npy"
    save_array(npy, np.ones((2, 2), dtype=np.float32), {})
    save_array(tmp_path / "other.npy", np.ones((4,), dtype=np.float32), {})
    meta = json.loads(sidecar_path(npy).read_text())
    meta["sha256"] = json.loads(sidecar_path(tmp_path / "other.npy").read_text())["sha256"]
    npy.write_bytes((tmp_path / "other.npy").read_bytes())
    sidecar_path(npy).write_text(json.dumps(meta))
    with pytest.raises(CacheError, match=r"holds float32 \(4,\)"):
        verify_array(npy)


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_array(tmp_path / "o.npy", np.array(["a", None], dtype=object), {})
    assert not list(tmp_path.iterdir())


def test_file_digests_memoised_by_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lens.store as store_module

    root, cache = tmp_path / "files", tmp_path / "cache"
    root.mkdir()
    (root / "a.bin").write_bytes(b"a")
    first = file_digests(root, ["a.bin", "gone.bin", "a.bin"], cache_dir=cache)
    assert set(first) == {"a.bin", "gone.bin"} and first["gone.bin"] == "missing" and len(first["a.bin"]) == 64
    calls: list[Path] = []
    real = store_module.file_sha256
    monkeypatch.setattr(store_module, "file_sha256", lambda p: calls.append(p) or real(p))
    assert file_digests(root, ["a.bin"], cache_dir=cache) == {"a.bin": first["a.bin"]}
    assert calls == []
    (root / "a.bin").write_bytes(b"bb")  # size changed: read again
    assert file_digests(root, ["a.bin"], cache_dir=cache)["a.bin"] != first["a.bin"] and len(calls) == 1
