"""Pretrained encoders on the real product photos: they must beat a raw-pixel baseline, and bf16 must track fp32.

Skipped (with the reason) when the weights or the real catalog are not on this machine. Marked ``slow``
(about 30 s on 2 CPU cores): deselect with ``-m "not slow"``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from lens.embed import EmbeddingSet, embed_catalog
from lens.encoders import create_encoder, encoder_status
from lens.evaluate import evaluate_embeddings
from lens.images import open_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _offline() -> None:
    """Never download here: a missing checkpoint is a skip, not a 20 s network timeout."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LENS_OFFLINE", "1")
        yield


def _require(name: str) -> None:
    status = encoder_status(name)
    if not status.available:
        pytest.skip(f"weights of {name} not on this machine: {status.remedy}")


@pytest.fixture(scope="module")
def eval_sample(sample_catalog):  # noqa: ANN001, ANN201
    """240 real photos: 12 articleTypes x 20 items, deterministic (seed 0)."""
    sample = sample_catalog.sample(240, per_label=20, seed=0)
    assert len(sample) == 240 and len(set(sample.labels())) == 12
    return sample


def _pixel_baseline(catalog) -> EmbeddingSet:  # noqa: ANN001
    """Images resized to 32x32 RGB, flattened, mean-centred, L2-normalised: what "no model at all" scores."""
    pixels = np.stack(
        [np.asarray(open_image(path).resize((32, 32)), dtype=np.float32).ravel() for path in catalog.image_paths()]
    )
    pixels -= pixels.mean(axis=0)
    pixels /= np.linalg.norm(pixels, axis=1, keepdims=True)
    return EmbeddingSet(pixels, catalog.ids, "pixels-32")


def test_efficientnet_lite0_beats_pixel_baseline(eval_sample) -> None:  # noqa: ANN001
    _require("efficientnet-lite0")
    encoder = create_encoder("efficientnet-lite0")
    embeddings = embed_catalog(eval_sample, encoder, use_cache=False)
    assert embeddings.failed == [] and embeddings.vectors.shape == (240, 1280)
    np.testing.assert_allclose(np.linalg.norm(embeddings.vectors, axis=1), 1.0, atol=1e-4)

    pretrained = evaluate_embeddings(embeddings, eval_sample, label_column="articleType", ks=(1, 5))
    baseline = evaluate_embeddings(_pixel_baseline(eval_sample), eval_sample, label_column="articleType", ks=(1, 5))
    p5, b5 = pretrained.summary["precision@5"], baseline.summary["precision@5"]
    print(f"\nprecision@5 by articleType on 240 real photos: efficientnet-lite0 {p5:.3f}, 32x32 pixels {b5:.3f}")
    # Measured on this sample: 0.907 vs 0.726.
    assert p5 >= b5 + 0.1, f"pretrained P@5 {p5:.3f} does not clearly beat the pixel baseline {b5:.3f}"
    assert pretrained.summary["map@r"] > baseline.summary["map@r"]


def test_mobilenet_v2_unit_norm_and_bf16_tracks_fp32(sample_slice) -> None:  # noqa: ANN001
    _require("mobilenet-v2")
    images = [open_image(path) for path in sample_slice.image_paths()[::10]]  # 8 photos, one per articleType
    fp32 = create_encoder("mobilenet-v2", precision="fp32").embed_images(images)
    bf16 = create_encoder("mobilenet-v2", precision="bf16").embed_images(images)
    for vectors in (fp32, bf16):
        assert vectors.shape == (8, 1280) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    cosines = (fp32 * bf16).sum(axis=1)
    print(f"\nmobilenet-v2 bf16 vs fp32 cosine on 8 real photos: min {cosines.min():.4f}, mean {cosines.mean():.4f}")
    assert cosines.min() >= 0.98
    # The control: different photos are much further apart than the bf16 rounding moves one photo.
    off_diagonal = (fp32 @ fp32.T)[~np.eye(8, dtype=bool)]
    assert off_diagonal.max() < cosines.min()
    assert os.environ.get("LENS_OFFLINE") == "1"
