"""lens.embed + lens.store: embedding a catalog, the disk cache and its verification, unreadable images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lens.catalog import load_catalog
from lens.embed import EmbeddingSet, embed_catalog, embed_images, embedding_paths
from lens.encoders import create_encoder
from lens.errors import ImageLoadError, LensError


class CountingEncoder:
    """Wraps an encoder and counts forward calls and images, delegating everything else."""

    def __init__(self, inner) -> None:  # noqa: ANN001
        self._inner = inner
        self.calls = 0
        self.images = 0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._inner, name)

    def embed_images(self, images, **kwargs):  # noqa: ANN001, ANN201
        self.calls += 1
        self.images += len(images)
        return self._inner.embed_images(images, **kwargs)


@pytest.fixture()
def tiny() -> CountingEncoder:
    return CountingEncoder(create_encoder("tiny"))


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_embed_catalog_vectors_in_catalog_order(
    small_catalog_dir: Path, lens_cache_dir: Path, tiny: CountingEncoder
) -> None:
    catalog = load_catalog(small_catalog_dir)
    result = embed_catalog(catalog, tiny, batch_size=5)
    assert result.ids == catalog.ids and len(result) == 24
    assert result.vectors.shape == (24, 64) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert result.failed == [] and not result.from_cache
    assert result.encoder == "tiny" and result.dim == 64 and result.catalog == catalog.name
    # Oracle: row i is the encoder's vector of image i, embedded on its own.
    from lens.images import open_image

    for i in (0, 7, 23):
        alone = tiny._inner.embed_images([open_image(catalog.image_path(i))])[0]
        np.testing.assert_allclose(result.vectors[i], alone, atol=1e-5)
    assert result.position(catalog.ids[7]) == 7
    with pytest.raises(LensError, match="not in the embeddings"):
        result.position("no-such-id")


def test_second_call_comes_from_cache_without_forward(
    small_catalog_dir: Path, lens_cache_dir: Path, tiny: CountingEncoder
) -> None:
    catalog = load_catalog(small_catalog_dir)
    first = embed_catalog(catalog, tiny)
    assert tiny.calls > 0 and tiny.images == 24
    calls = tiny.calls
    progress: list[tuple[int, int]] = []
    second = embed_catalog(load_catalog(small_catalog_dir), tiny, progress=lambda d, t: progress.append((d, t)))
    assert second.from_cache
    assert tiny.calls == calls  # no forward pass
    np.testing.assert_array_equal(second.vectors, first.vectors)
    assert second.ids == first.ids and second.key == first.key
    assert progress[-1] == (24, 24)


def test_use_cache_false_writes_nothing(small_catalog_dir: Path, lens_cache_dir: Path, tiny: CountingEncoder) -> None:
    result = embed_catalog(load_catalog(small_catalog_dir), tiny, use_cache=False)
    assert len(result) == 24
    digests = lens_cache_dir / "catalogs" / "digests"  # the catalog's file-digest memo (see Catalog.fingerprint)
    written = [p for p in lens_cache_dir.rglob("*") if p.is_file() and digests not in p.parents]
    assert written == []


def test_progress_ends_at_n_of_n(small_catalog_dir: Path, lens_cache_dir: Path, tiny: CountingEncoder) -> None:
    calls: list[tuple[int, int]] = []
    embed_catalog(load_catalog(small_catalog_dir), tiny, batch_size=10, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(10, 24), (20, 24), (24, 24)]


def test_content_change_changes_key_and_mtime_alone_does_not(
    small_catalog_copy: Path, lens_cache_dir: Path, tiny: CountingEncoder
) -> None:
    first = embed_catalog(load_catalog(small_catalog_copy), tiny)
    images_before = tiny.images
    image = small_catalog_copy / "images" / "000105.jpg"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched (re-synced), same bytes
    touched = embed_catalog(load_catalog(small_catalog_copy), tiny)
    assert touched.key == first.key and touched.from_cache and tiny.images == images_before
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image, "JPEG")  # a new photo under the same name
    second = embed_catalog(load_catalog(small_catalog_copy), tiny)
    assert second.key != first.key and not second.from_cache
    assert tiny.images == images_before + 1  # only the edited photo: the per-item store has the other 23
    row = load_catalog(small_catalog_copy).table["image"].tolist().index("images/000105.jpg")
    others = [i for i in range(len(first.ids)) if i != row]
    np.testing.assert_allclose(second.vectors[others], first.vectors[others], atol=1e-6)  # same pixels, same vectors
    assert not np.allclose(second.vectors[row], first.vectors[row], atol=1e-3)
    # Both entries live side by side in the cache.
    assert len(list((lens_cache_dir / "embeddings" / "tiny").glob("*.npy"))) == 2


def _flip_bytes(path: Path, offset: int, n: int = 8) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "where",
    ["npy-data", "npy-header", "npy-truncated", "sidecar-garbage", "sidecar-ids", "sidecar-shape", "sidecar-failed"],
)
def test_corrupt_cache_entry_is_recomputed(
    small_catalog_dir: Path, lens_cache_dir: Path, tiny: CountingEncoder, where: str
) -> None:
    catalog = load_catalog(small_catalog_dir)
    first = embed_catalog(catalog, tiny)
    npy_path, json_path = embedding_paths(lens_cache_dir, "tiny", first.key)
    if where == "npy-data":
        _flip_bytes(npy_path, npy_path.stat().st_size - 100)
    elif where == "npy-header":
        _flip_bytes(npy_path, 0)
    elif where == "npy-truncated":
        npy_path.write_bytes(npy_path.read_bytes()[:200])
    elif where == "sidecar-garbage":
        json_path.write_text('{"key": "' + first.key + '", "ids": [')
    else:
        meta = json.loads(json_path.read_text())
        if where == "sidecar-ids":  # swap two ids: checksum of the vectors still matches
            meta["ids"][0], meta["ids"][1] = meta["ids"][1], meta["ids"][0]
        elif where == "sidecar-shape":
            meta["shape"] = [24, 32]
        else:
            meta["failed"] = [["only-one-field"]]
        json_path.write_text(json.dumps(meta))
    images_before = tiny.images
    again = embed_catalog(catalog, tiny)
    assert not again.from_cache
    assert tiny.images == images_before  # rebuilt from the per-item store: no image embedded again
    assert again.ids == catalog.ids
    np.testing.assert_allclose(again.vectors, first.vectors, atol=1e-6)
    # The entry was rewritten and now verifies.
    third = embed_catalog(catalog, tiny)
    assert third.from_cache and third.ids == catalog.ids


def test_unreadable_images_are_skipped_and_listed(
    small_catalog_copy: Path, lens_cache_dir: Path, tiny: CountingEncoder
) -> None:
    images = small_catalog_copy / "images"
    (images / "000103.jpg").write_text("not a jpeg at all\n")
    data = (images / "000110.jpg").read_bytes()
    (images / "000110.jpg").write_bytes(data[: len(data) // 2])
    catalog = load_catalog(small_catalog_copy)
    progress: list[tuple[int, int]] = []
    result = embed_catalog(catalog, tiny, batch_size=4, progress=lambda d, t: progress.append((d, t)))

    expected_ids = [i for i in catalog.ids if i not in ("000103", "000110")]
    assert result.ids == expected_ids and result.vectors.shape == (22, 64)
    reasons = dict(result.failed)
    assert list(reasons) == ["000103", "000110"]
    assert "not an image" in reasons["000103"]
    assert "truncated" in reasons["000110"]
    assert progress[-1] == (24, 24)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    with pytest.raises(LensError, match=r"000103.*image failed.*not an image"):
        result.position("000103")

    # The failures survive the cache round trip.
    cached = embed_catalog(load_catalog(small_catalog_copy), tiny)
    assert cached.from_cache and cached.failed == result.failed and cached.ids == expected_ids


def test_cache_format_no_pickle_sidecar_in_row_order(
    small_catalog_dir: Path, lens_cache_dir: Path, tiny: CountingEncoder
) -> None:
    catalog = load_catalog(small_catalog_dir)
    catalog_files = _tree(small_catalog_dir)
    result = embed_catalog(catalog, tiny)
    npy_path, json_path = embedding_paths(lens_cache_dir, "tiny", result.key)
    assert npy_path.is_file() and json_path.is_file()
    vectors = np.load(npy_path, allow_pickle=False)  # plain .npy, no object arrays
    np.testing.assert_array_equal(vectors, result.vectors)
    meta = json.loads(json_path.read_text())
    assert meta["ids"] == catalog.ids
    assert meta["shape"] == [24, 64] and meta["dtype"] == "float32" and meta["encoder"] == "tiny"
    assert meta["identity"]["encoder"] == "tiny" and meta["identity"]["catalog"] == catalog.fingerprint()
    # Nothing but .npy + .json in the cache (no pickles, no leftover temp files): the catalog-level entry, the
    # per-item store's shard, the catalog's file-digest memo and the encoder's identity record ...
    files = sorted(p.suffix for p in lens_cache_dir.rglob("*") if p.is_file())
    assert files == [".json", ".json", ".json", ".json", ".npy", ".npy"]
    assert (lens_cache_dir / "encoders" / "tiny.json").is_file()
    shard = next((lens_cache_dir / "items" / "tiny").rglob("shard-*.npy"))
    np.testing.assert_array_equal(np.load(shard, allow_pickle=False), result.vectors)  # same rows, catalog order
    # ... and nothing written into the catalog folder.
    assert _tree(small_catalog_dir) == catalog_files


def test_explicit_cache_dir_wins_over_env(
    small_catalog_dir: Path, lens_cache_dir: Path, tmp_path: Path, tiny: CountingEncoder
) -> None:
    other = tmp_path / "explicit-cache"
    embed_catalog(load_catalog(small_catalog_dir), tiny, cache_dir=other)
    assert list(other.rglob("*.npy")) and not list(lens_cache_dir.rglob("*.npy"))


def test_embedding_set_rejects_misaligned_rows() -> None:
    with pytest.raises(LensError, match="one vector row per id"):
        EmbeddingSet(np.zeros((3, 4), dtype=np.float32), ["a", "b"], "tiny")


def test_embed_images_accepts_paths_and_raises_on_bad_file(odd_images: dict[str, Path]) -> None:
    encoder = create_encoder("tiny")
    vectors = embed_images(encoder, [odd_images["cmyk_jpeg"], odd_images["palette"].read_bytes()])
    assert vectors.shape == (2, 64)
    with pytest.raises(ImageLoadError, match="not an image"):
        embed_images(encoder, [odd_images["text_as_jpg"]])


# ---------------------------------------------------------------------------------------------------- pixel pipeline


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(224, 224), (300, 20), (20, 300), (640, 480), (33, 47)])
def test_resize_crop_matches_torchvision_resize_then_center_crop(size: tuple[int, int], interpolation: str) -> None:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from lens.encoders.base import Preprocess, resize_crop

    rng = np.random.default_rng(sum(size))
    smooth = rng.integers(0, 256, (size[1] // 4 + 2, size[0] // 4 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(smooth).resize(size, Image.Resampling.BILINEAR)  # photo-like: no pixel-level noise
    for preprocess in (
        Preprocess(input_size=224, crop_pct=0.875, interpolation=interpolation),  # 256 -> 224 (mobilenet-v2)
        Preprocess(input_size=260, crop_pct=0.875, interpolation=interpolation),  # lite2: 297 -> 260
        Preprocess(input_size=32, crop_pct=1.0, interpolation=interpolation),  # tiny: no margin
    ):
        mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
        resized = TF.resize(image, preprocess.resize_size, interpolation=mode)
        reference = np.asarray(TF.center_crop(resized, [preprocess.input_size] * 2)).astype(int)
        ours = resize_crop(image, preprocess)
        assert ours.shape == reference.shape and ours.dtype == np.uint8
        diff = np.abs(ours.astype(int) - reference)
        assert diff.max() <= 3 and diff.mean() < 0.5, (size, preprocess, diff.max(), diff.mean())  # rounding only


def test_resize_crop_pads_like_torchvision_when_the_crop_is_larger() -> None:
    from lens.encoders.base import Preprocess, resize_crop

    out = resize_crop(Image.new("RGB", (50, 40), (200, 10, 10)), Preprocess(input_size=64, crop_pct=1.25))
    assert out.shape == (64, 64, 3)


def test_pixels_to_batch_is_the_normalisation_in_one_pass() -> None:
    import torch

    from lens.encoders.base import Preprocess, pixels_to_batch

    preprocess = Preprocess(input_size=8, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    batch = pixels_to_batch(pixels, preprocess)
    reference = (
        torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0 - torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    ) / torch.tensor(preprocess.std).view(1, 3, 1, 1)
    assert batch.dtype == torch.float32 and batch.shape == (3, 3, 8, 8) and batch.is_contiguous()
    torch.testing.assert_close(batch, reference, rtol=0, atol=1e-5)
    with pytest.raises(LensError, match=r"\(N, S, S, 3\) uint8"):
        pixels_to_batch(pixels.astype(np.float32), preprocess)


def test_pipeline_version_is_part_of_the_identity() -> None:
    from lens.encoders.base import PIXEL_PIPELINE

    assert create_encoder("tiny").identity()["pixels"] == PIXEL_PIPELINE


def test_fast_catalog_pass_equals_embedding_each_decoded_image(small_catalog_copy: Path, lens_cache_dir: Path) -> None:
    """The threaded uint8 pipeline of a real torch encoder (no wrapper) gives, row by row, the vectors of
    ``encoder.embed_images`` on the safe loader's images; failures are listed; order and progress kept."""
    from lens.images import open_image

    images = small_catalog_copy / "images"
    (images / "000105.jpg").write_text("not a jpeg at all\n")
    catalog = load_catalog(small_catalog_copy)
    encoder = create_encoder("tiny")
    progress: list[tuple[int, int]] = []
    result = embed_catalog(
        catalog, encoder, batch_size=5, use_cache=False, progress=lambda d, t: progress.append((d, t))
    )
    assert [item for item, _ in result.failed] == ["000105"]
    assert result.ids == [i for i in catalog.ids if i != "000105"]
    assert progress[-1] == (24, 24) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    paths = [catalog.image_path(catalog.ids.index(i)) for i in result.ids]
    # 64 px JPEGs for a 32 px input: decoded at 1/2 scale by draft
    draft = encoder.spec.preprocess.resize_size
    oracle = encoder.embed_images([open_image(path, draft_size=draft) for path in paths])
    np.testing.assert_allclose(result.vectors, oracle, atol=1e-6)
    full_decode = encoder.embed_images([open_image(path) for path in paths])
    assert (full_decode * result.vectors).sum(axis=1).min() > 0.99  # draft moves the vectors only slightly
    # a catalog photo given as a query file gets its catalog vector
    query = embed_images(encoder, [catalog.image_path(0)])
    np.testing.assert_allclose(query[0], result.vectors[0], atol=1e-6)
    # and so does its upload (the dashboard embeds an uncropped upload from its bytes)
    upload = embed_images(encoder, [catalog.image_path(0).read_bytes()])
    np.testing.assert_allclose(upload[0], result.vectors[0], atol=1e-6)
