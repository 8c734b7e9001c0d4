"""The per-item embedding store (lens.itemstore): a catalog update embeds only the images it has not seen, and the
result equals a full recompute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures import draw_item, make_catalog


@pytest.fixture()
def counted():
    """A ``compute`` that embeds like the local path and records how many images each call embedded."""
    from lens.embed import embed_files

    calls: list[int] = []

    def compute(catalog, encoder, batch_size=32, progress=None):  # noqa: ANN001, ANN202
        calls.append(len(catalog))
        return embed_files(catalog, encoder, batch_size, progress)

    compute.calls = calls  # type: ignore[attr-defined]
    return compute


def _full(catalog, encoder):  # noqa: ANN001, ANN202
    from lens.embed import embed_catalog

    return embed_catalog(catalog, encoder, use_cache=False)


def test_adding_products_embeds_only_the_new_ones(tmp_path: Path, counted) -> None:
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder

    encoder = create_encoder("tiny")
    full = load_catalog(make_catalog(tmp_path / "cat", n_classes=4, per_class=8, size=48))
    before = full.subset(list(range(24)))  # the catalog before 8 products were added
    cache = tmp_path / "cache"
    first = embed_catalog(before, encoder, cache_dir=cache, compute=counted)
    assert counted.calls == [24]
    after = embed_catalog(full, encoder, cache_dir=cache, compute=counted)
    assert counted.calls == [24, 8]  # the update cost 8 embeddings, not 32
    reference = _full(full, encoder)
    assert after.ids == reference.ids and not after.from_cache
    np.testing.assert_allclose(after.vectors, reference.vectors, atol=1e-6)
    np.testing.assert_array_equal(after.vectors[:24], first.vectors)
    # Removing products costs nothing; the same catalog again is a catalog-level cache hit.
    embed_catalog(full.subset(list(range(4, 32))), encoder, cache_dir=cache, compute=counted)
    assert counted.calls == [24, 8]
    assert embed_catalog(full, encoder, cache_dir=cache, compute=counted).from_cache


def test_an_edited_photo_is_embedded_again(small_catalog_copy: Path, tmp_path: Path, counted) -> None:
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder

    encoder = create_encoder("tiny")
    cache = tmp_path / "cache"
    catalog = load_catalog(small_catalog_copy, cache_dir=cache)
    embed_catalog(catalog, encoder, cache_dir=cache, compute=counted)
    draw_item(3, np.random.default_rng(99)).save(small_catalog_copy / "images" / "000100.jpg")  # another picture
    edited = load_catalog(small_catalog_copy, cache_dir=cache)
    result = embed_catalog(edited, encoder, cache_dir=cache, compute=counted)
    assert counted.calls == [24, 1]
    np.testing.assert_allclose(result.vectors, _full(edited, encoder).vectors, atol=1e-6)


def test_unreadable_images_are_listed_and_tried_again(small_catalog_copy: Path, tmp_path: Path, counted) -> None:
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder

    (small_catalog_copy / "images" / "000103.jpg").write_bytes(b"not a jpeg")
    encoder = create_encoder("tiny")
    cache = tmp_path / "cache"
    catalog = load_catalog(small_catalog_copy, cache_dir=cache)
    result = embed_catalog(catalog, encoder, cache_dir=cache, compute=counted)
    assert [item for item, _ in result.failed] == ["000103"] and "000103" not in result.ids
    assert result.failed == _full(catalog, encoder).failed
    # A later pass (another catalog over the same files) tries the broken file again, and only it.
    embed_catalog(catalog.subset(list(range(1, 24))), encoder, cache_dir=cache, compute=counted)
    assert counted.calls == [24, 1]


def test_a_corrupt_shard_is_ignored_and_shards_are_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lens.itemstore as itemstore
    from lens.itemstore import ItemStore

    rng = np.random.default_rng(0)
    store = ItemStore(tmp_path, "m", {"encoder": "m", "dim": 4})
    digests = [f"{i:064x}" for i in range(6)]
    vectors = rng.normal(size=(6, 4)).astype(np.float32)
    store.add(digests[:3], vectors[:3])
    store.add(digests[3:], vectors[3:])
    found = store.lookup(digests)
    assert set(found) == set(digests) and len(store) == 6
    np.testing.assert_array_equal(found[digests[4]], vectors[4])
    shard = next(p for p in store.folder.glob("shard-*.npy") if digests[0] in p.with_suffix(".json").read_text())
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # bit-rot in the vectors
    shard.write_bytes(bytes(data))
    assert set(store.lookup(digests)) == set(digests[3:])  # the damaged shard counts as absent
    store.add(digests[:3], vectors[:3])  # embedded again: the same shard, rewritten whole
    assert set(store.lookup(digests)) == set(digests)
    monkeypatch.setattr(itemstore, "MAX_SHARDS", 2)
    extra = [f"{i:064x}" for i in range(6, 8)]
    store.add(extra, vectors[:2] * 2)  # a third shard: past MAX_SHARDS, all merged into one
    assert len(list(store.folder.glob("shard-*.npy"))) == 1 and len(store) == 8
    merged = store.lookup(digests + extra)
    np.testing.assert_array_equal(np.stack([merged[d] for d in digests]), vectors)
    np.testing.assert_array_equal(merged[extra[1]], vectors[1] * 2)
    # Another encoder identity never sees these vectors.
    assert ItemStore(tmp_path, "m", {"encoder": "m", "dim": 4, "weights": "other"}).lookup(digests) == {}
