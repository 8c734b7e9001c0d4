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
        "text-align",
        epochs=40,
        batch_size=16,
        lr=1e-2,
        backbone="colour-histogram",
        embedding_dim=16,
        ensemble=1,  # the ensemble and the final fit have their own tests below; one fit keeps this one short
        final_fit="train",
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


def test_attribute_blocks_add_weighted_probability_products() -> None:
    """The appended coordinates make the inner product of the unnormalised rows equal the projections' cosine plus
    weight x P_text . P_image per attribute (known logits: softmax([0, ln 3]) = [1/4, 3/4]); and on a toy problem
    separated by the attribute alone (both projections blind to it) the blocks bring the matching photo first."""
    import math

    import torch

    from lens.encoders.trained.text_align import build_projections

    arch = {"image_dim": 3, "text_dim": 2, "dim": 2, "hidden": 4, "projection": "linear"}
    attributes = [{"column": "gender", "classes": ["Men", "Women"], "weight": 0.4}]
    proj = build_projections({**arch, "attributes": attributes})
    assert proj.dim == 4
    with torch.no_grad():
        proj.image.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        proj.text.weight.copy_(torch.eye(2))
        for layer in (proj.image, proj.text):
            layer.bias.zero_()
        # image head: class logits [0, ln 3 * x2]; text head: [ln 3 * x1, 0]
        proj.image_heads[0].weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(3)]]))
        proj.text_heads[0].weight.copy_(torch.tensor([[math.log(3), 0.0], [0.0, 0.0]]))
        for head in (proj.image_heads[0], proj.text_heads[0]):
            head.bias.zero_()
        image = proj.image_side(torch.tensor([[3.0, 4.0, 1.0]]))[0]  # unit projection [0.6, 0.8]; P = [1/4, 3/4]
        text = proj.text_side(torch.tensor([[1.0, 0.0]]))[0]  # unit projection [1, 0]; P = [3/4, 1/4]
    p_image, p_text = np.array([0.25, 0.75]), np.array([0.75, 0.25])
    assert float(image @ text) == pytest.approx(0.6 + 0.4 * float(p_text @ p_image), abs=1e-6)  # 0.6 + 0.4 * 0.375
    np.testing.assert_allclose(image[2:].numpy(), 0.4**0.5 * p_image, atol=1e-6)

    # toy: the projections see only x1 (the same for every photo); the attribute is x3 (image) / x2 (text)
    with torch.no_grad():
        proj.image_heads[0].weight.copy_(torch.tensor([[0.0, 0.0, -5.0], [0.0, 0.0, 5.0]]))
        proj.text_heads[0].weight.copy_(torch.tensor([[0.0, -5.0], [0.0, 5.0]]))
    photos = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.0, 1.0]])  # Men, Women
    queries = torch.tensor([[1.0, -1.0], [1.0, 1.0]])  # "men ...", "women ..."
    from lens.encoders.trained.heads import project_rows

    scores = project_rows(proj.text_side, queries) @ project_rows(proj.image_side, photos).T
    assert list(scores.argmax(axis=1)) == [0, 1]
    proj.attribute_weights = [0.0]  # without the blocks both photos tie for both queries
    scores = project_rows(proj.text_side, queries) @ project_rows(proj.image_side, photos).T
    np.testing.assert_allclose(scores[:, 0], scores[:, 1], atol=1e-6)


def test_unit_ensemble_scores_are_the_mean_of_the_members_cosines() -> None:
    """Two members on known weights: the rows are [unit member 1, unit member 2] / sqrt(2), unit length, and the
    inner product of a text row and an image row is the mean of the members' cosines (here (0.6 + 0) / 2)."""
    import torch

    from lens.encoders.trained.heads import project_rows
    from lens.encoders.trained.text_align import build_projections

    arch = {"image_dim": 3, "text_dim": 2, "dim": 2, "hidden": 4, "projection": "linear", "members": 2}
    proj = build_projections(arch)
    assert proj.dim == 4
    assert sorted(proj.state_dict()) == sorted(
        f"{side}.members.{m}.{p}" for side in ("image", "text") for m in (0, 1) for p in ("weight", "bias")
    )
    with torch.no_grad():
        members = zip(proj.image.members, proj.text.members, strict=True)
        for (image, text), (wi, wt) in zip(
            members,
            [
                ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]),  # cosine([3, 4], [1, 0]) = 0.6
                ([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]),  # cosine([1, 0], [0, 1]) = 0
            ],
            strict=True,
        ):
            image.weight.copy_(torch.tensor(wi))
            text.weight.copy_(torch.tensor(wt))
            image.bias.zero_()
            text.bias.zero_()
    image_row = project_rows(proj.image_side, np.array([[3.0, 4.0, 1.0]], dtype=np.float32))[0]
    text_row = project_rows(proj.text_side, np.array([[1.0, 1.0]], dtype=np.float32))[0]
    np.testing.assert_allclose(image_row, [0.6 / 2**0.5, 0.8 / 2**0.5, 1 / 2**0.5, 0.0], atol=1e-6)
    assert float(image_row @ text_row) == pytest.approx((0.6 + 0.0) / 2, abs=1e-6)
    # a model saved before the ensembles (no "members"): one plain projection per side, keys image.* / text.*
    single = build_projections({k: v for k, v in arch.items() if k != "members"})
    assert single.dim == 2 and sorted(single.state_dict()) == ["image.bias", "image.weight", "text.bias", "text.weight"]


def test_text_align_ensemble_member_zero_is_the_single_model(tmp_path: Path, models_env) -> None:
    """``--ensemble 2`` trains member 0 exactly as ``--ensemble 1`` trains its one model (same seed, same batches),
    and member 1 with seed + 1 (a different model); the saved encoder is twice as wide and its history has one stage
    per member."""
    from safetensors.torch import load_file

    from lens.catalog import load_catalog
    from lens.encoders import create_encoder
    from lens.train import RunContext, default_config, make_split, train_recipe

    cache, models = models_env
    train_catalog = load_catalog(make_catalog(tmp_path / "cat", n_classes=5, per_class=10, size=48))
    split = make_split(train_catalog)
    settings = dict(epochs=2, batch_size=16, backbone="tiny", embedding_dim=8, attributes="", final_fit="train")
    for name, members in (("one", 1), ("two", 2)):
        config = default_config("text-align", ensemble=members, **settings)
        result = train_recipe(train_catalog, config, RunContext(tmp_path / name, models, cache, name=name), split)
    assert [row["stage"] for row in result.history] == [1.0, 1.0, 2.0, 2.0]
    one, two = load_file(models / "one" / "model.safetensors"), load_file(models / "two" / "model.safetensors")
    for side in ("image", "text"):
        for p in ("weight", "bias"):
            np.testing.assert_array_equal(two[f"{side}.members.0.{p}"].numpy(), one[f"{side}.{p}"].numpy())
        assert not np.allclose(two[f"{side}.members.1.weight"].numpy(), one[f"{side}.weight"].numpy())
    enc = create_encoder("two")
    assert enc.arch["members"] == 2 and enc.dim == 16
    texts = enc.embed_texts(["red circle"])
    assert texts.shape == (1, 16)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)


def test_text_align_final_fit_on_train_and_validation(tmp_path: Path, models_env) -> None:
    """``--final-fit train+val`` (the default) saves the model that ``--final-fit train`` trains on a split whose
    training part is train + validation, with the attribute weight the first fit chose on validation: the same
    tensors exactly, the same vocabulary (validation titles' words included); the history has the first fit's
    stages, then the second fit's."""
    from dataclasses import replace

    from safetensors.torch import load_file

    from lens.catalog import load_catalog
    from lens.encoders.trained import read_model_config
    from lens.train import RunContext, default_config, make_split, train_recipe

    cache, models = models_env
    catalog = load_catalog(make_catalog(tmp_path / "cat", n_classes=5, per_class=10, size=48))
    split = make_split(catalog)
    assert split.val
    settings = dict(epochs=2, batch_size=16, backbone="tiny", embedding_dim=8, ensemble=2)
    result = train_recipe(
        catalog, default_config("text-align", **settings), RunContext(tmp_path / "a", models, cache, name="a"), split
    )
    assert [row["stage"] for row in result.history] == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
    arch_a = read_model_config(models / "a")["arch"]
    weight = arch_a["attributes"][0]["weight"] if arch_a.get("attributes") else 0.0
    merged = replace(split, train=split.train + split.val, val=[])
    config_b = default_config("text-align", **settings, final_fit="train", attribute_weight=weight)
    train_recipe(catalog, config_b, RunContext(tmp_path / "b", models, cache, name="b"), merged)
    arch_b = read_model_config(models / "b")["arch"]
    assert arch_a["vocabulary"] == arch_b["vocabulary"] and arch_a.get("attributes") == arch_b.get("attributes")
    a, b = load_file(models / "a" / "model.safetensors"), load_file(models / "b" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)
