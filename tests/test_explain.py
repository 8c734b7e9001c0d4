"""Similarity maps (lens.explain): exact decomposition of the cosine, a synthetic pair whose matching region is known,
and refusal for models without a pooled feature map."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lens.errors import LensError
from lens.explain import overlay, similarity_maps, supports_maps


def _photo(background: tuple[int, int, int], centre: tuple[int, int], size: int = 96) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    x, y = centre
    draw.ellipse((x - 18, y - 18, x + 18, y + 18), fill=(220, 20, 20))
    return image


@pytest.fixture(scope="module")
def tiny():
    from lens.encoders import create_encoder

    return create_encoder("tiny", engine="torch")


def test_maps_add_up_to_the_models_cosine(tiny) -> None:
    a, b = _photo((30, 60, 200), (28, 48)), _photo((40, 170, 60), (68, 48))
    result = similarity_maps(tiny, a, b)
    vectors = tiny.embed_images([a, b])
    assert result.cosine == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-4)
    assert float(result.query.sum()) == pytest.approx(result.cosine, abs=1e-4)
    assert float(result.result.sum()) == pytest.approx(result.cosine, abs=1e-4)
    assert result.query.shape == result.result.shape and result.query.ndim == 2
    assert result.query_view.shape == (tiny.spec.preprocess.input_size,) * 2 + (3,)


def test_the_shared_object_is_where_the_similarity_comes_from(tiny) -> None:
    """A red disc on a blue background (left) and on a green one (right): the disc is what the photos share, so the
    disc's half of each map holds more of the similarity than the other half."""
    a, b = _photo((30, 60, 200), (28, 48)), _photo((40, 170, 60), (68, 48))
    result = similarity_maps(tiny, a, b)
    half = result.query.shape[1] // 2
    assert result.query[:, :half].sum() > result.query[:, half:].sum()
    assert result.result[:, half:].sum() > result.result[:, :half].sum()
    # The peak of each map lies in the disc's half.
    assert np.unravel_index(result.query.argmax(), result.query.shape)[1] < half
    assert np.unravel_index(result.result.argmax(), result.result.shape)[1] >= half


def test_overlay_keeps_the_photo_where_nothing_contributes() -> None:
    view = np.full((32, 32, 3), 128, dtype=np.uint8)
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[0, 0] = 1.0
    heat[3, 3] = -1.0  # negative contributions are not drawn
    out = np.asarray(overlay(view, heat))
    assert out.shape == view.shape
    assert (out[-4:, -4:] == 128).all()  # the negative corner is the photo itself
    assert out[0, 0, 0] > 128 and out[0, 0, 2] < 128  # the contributing corner turns red-yellow


def test_models_without_a_pooled_map_are_refused() -> None:
    import torch

    from lens.encoders import EncoderSpec, Preprocess, TorchImageEncoder

    spec = EncoderSpec(
        name="flat", family="test", dim=8, preprocess=Preprocess(input_size=16, crop_pct=1.0), precision="fp32",
        channels_last=False, description="test",
    )  # fmt: skip
    flat = TorchImageEncoder(spec, torch.nn.Sequential(torch.nn.Flatten(1), torch.nn.Linear(768, 8)), "w")
    assert "no global average pooling" in supports_maps(flat)
    with pytest.raises(LensError, match="Maps exist for the CNN encoders"):
        similarity_maps(flat, Image.new("RGB", (16, 16)), Image.new("RGB", (16, 16)))
    # A head after the pooling: the map would not explain the vector.
    headed = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1), torch.nn.Linear(8, 8)
    )
    with pytest.raises(LensError, match="not the average of its last feature map"):
        similarity_maps(TorchImageEncoder(spec, headed, "w"), Image.new("RGB", (16, 16)), Image.new("RGB", (16, 16)))
