"""The text side of issue 12: the colour-histogram encoder, the bag of words, and text-align on them (known answers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import make_catalog


def test_colour_histogram_known_bins() -> None:
    """A red square on white: all the mass in the red hue's bright, saturated bin (the white background is left out);
    a mid-grey photo: all in one grey bin; rows are unit vectors."""
    from lens.encoders import create_encoder
    from lens.encoders.colour import COLOUR_DIM, GREYS, HUES, SATURATIONS, VALUES

    enc = create_encoder("colour-histogram")
    red = Image.new("RGB", (64, 64), (255, 255, 255))
    red.paste((230, 10, 10), (16, 16, 48, 48))
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    vectors = enc.embed_images([red, grey])
    assert vectors.shape == (2, COLOUR_DIM) == (2, HUES * SATURATIONS * VALUES + GREYS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    red_bin = 0 * (SATURATIONS * VALUES) + (SATURATIONS - 1) * VALUES + (VALUES - 1)  # hue 0, saturated, bright
    assert vectors[0, red_bin] == pytest.approx(1.0, abs=1e-3)
    grey_bin = HUES * SATURATIONS * VALUES + int(128 / 255 * GREYS)
    assert vectors[1, grey_bin] == pytest.approx(1.0, abs=1e-3)


def test_vocabulary_and_bag_of_words() -> None:
    from lens.encoders.trained.text_align import bag_of_words, build_vocabulary, text_features

    titles = ["Red Shirt", "red shoe", "Blue shirt!", "Green cap"]
    vocabulary = build_vocabulary(titles, min_count=2)
    assert vocabulary == ["red", "shirt"]  # words in at least 2 titles, lower-cased, punctuation dropped
    bow = bag_of_words(["RED shirt", "shirt", "blue cap"], vocabulary)
    np.testing.assert_allclose(bow, [[2**-0.5, 2**-0.5], [0.0, 1.0], [0.0, 0.0]], atol=1e-6)
    minilm = np.ones((3, 4), dtype=np.float32)
    feats = text_features(minilm, ["RED shirt", "shirt", "blue cap"], {"vocabulary": vocabulary, "bow_weight": 2.0})
    np.testing.assert_allclose(feats[:, 4:], 2.0 * bow, atol=1e-6)
    assert text_features(minilm, ["x"] * 3, {}).shape == (3, 4)  # no vocabulary: MiniLM only (models saved before)


@pytest.fixture()
def models_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # -> (cache dir, models dir)
    from lens.encoders.trained import default_models_dir, refresh_trained_models

    previous = default_models_dir()
    cache, models = tmp_path / "cache", tmp_path / "models"
    monkeypatch.setenv("LENS_CACHE_DIR", str(cache))
    monkeypatch.setenv("LENS_MODELS_DIR", str(models))
    refresh_trained_models(models)
    yield cache, models
    refresh_trained_models(previous)


def test_text_align_on_colour_histograms_finds_the_named_colour(tmp_path: Path, models_env) -> None:
    """A toy problem with a known answer: 5 classes, each one colour; titles '<Colour> <shape> item k'. Trained on
    the colour histograms with the bag of words and linear projections (the defaults), '<Colour> <shape>' must bring
    that class's products to the top 5; the vocabulary holds only words of at least 2 training titles."""
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder
    from lens.encoders.trained.text_align import title_words
    from lens.train import RunContext, default_config, make_split, train_recipe

    cache, models = models_env
    catalog = load_catalog(make_catalog(tmp_path / "cat", n_classes=5, per_class=10, size=48))
    config = default_config(
        "text-align", epochs=40, batch_size=16, lr=1e-2, backbone="colour-histogram", embedding_dim=16
    )
    assert config.projection == "linear" and config.vocab_min_count == 2
    split = make_split(catalog, seed=0)
    train_recipe(catalog, config, RunContext(tmp_path / "run", models, cache, publish=False), split)
    enc = create_encoder("text-align")
    vocabulary = enc.arch["vocabulary"]
    train_titles = [set(title_words(t)) for t in catalog.labels("productDisplayName", ids=split.train)]
    assert vocabulary and all(sum(w in t for t in train_titles) >= 2 for w in vocabulary)
    assert enc.arch["text_dim"] == 384 + len(vocabulary) and enc.arch["projection"] == "linear"
    images = embed_catalog(catalog, enc, cache_dir=cache)
    colours = catalog.labels("baseColour", ids=images.ids)
    for colour, shape in (("Red", "circle"), ("Blue", "square"), ("Green", "triangle"), ("Orange", "cross")):
        top = np.argsort(-(images.vectors @ enc.embed_texts([f"{colour} {shape}"])[0]))[:5]
        assert {str(c) for c in colours[top]} <= {colour, "", "nan"}, (colour, colours[top])
