"""``proxy-<backbone> --trainable-blocks k --views v``: the proxy head, then the backbone's last blocks fine-tuned with it
on cached stem maps of augmented views (issue 12). Tiny backbone, generated catalog: seconds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from fixtures import make_catalog


@pytest.fixture(scope="module")
def toy_catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 classes x 12 synthetic 48-px photos (a hue and a shape per class), plus a label ``pair`` that puts two
    classes under one label: the frozen features keep the four classes apart, so only training can merge them."""
    folder = make_catalog(tmp_path_factory.mktemp("ft_catalog"), n_classes=4, per_class=12, size=48)
    with open(folder / "catalog.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    classes = list(dict.fromkeys(row[2] for row in rows[1:]))
    rows[0].append("pair")
    for row in rows[1:]:
        row.append(f"pair{classes.index(row[2]) // 2}")
    with open(folder / "catalog.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return folder


def test_views_of_the_plain_transform_are_the_plain_stem_maps(toy_catalog_dir: Path, models_env) -> None:
    """The cached-view path (stem_views) through a transform that is the plain preprocessing gives the plain stem
    maps (stem_features) to float16 rounding, for every view, and is seeded: a second call is a cache hit."""
    from lens.catalog import load_catalog
    from lens.encoders.base import preprocess_images
    from lens.encoders.trained.embedder import build_split_backbone
    from lens.train.data import stem_features, stem_views

    cache, _ = models_env
    catalog = load_catalog(toy_catalog_dir)
    backbone = build_split_backbone("tiny", 2, pretrained=True)
    ids = catalog.ids[:10]
    plain, kept = stem_features(backbone.stem, catalog, ids, backbone.preprocess, {"b": "tiny"}, cache_dir=cache)
    views, kept_v = stem_views(
        backbone.stem,
        catalog,
        ids,
        lambda image: preprocess_images([image], backbone.preprocess)[0],
        {"b": "tiny", "augment": "none"},
        views=2,
        seed=0,
        cache_dir=cache,
    )
    assert kept_v == kept == list(ids)
    assert views.dtype == np.float16 and views.shape == (10, 2, *plain.shape[1:])
    for v in range(2):
        np.testing.assert_allclose(views[:, v].astype(np.float32), plain, atol=2e-3 * float(np.abs(plain).max()))
    again, _ = stem_views(
        backbone.stem,
        catalog,
        ids,
        lambda image: 1 / 0,
        {"b": "tiny", "augment": "none"},
        views=2,
        seed=0,
        cache_dir=cache,
    )  # the transform is never called: the cache answers
    np.testing.assert_array_equal(again, views)


def test_fine_tuned_proxy_model_merges_paired_classes_and_embeds_end_to_end(toy_catalog_dir: Path, models_env) -> None:
    """Known answer: labels that pair up four visually distinct classes. The frozen tiny backbone ranks the other
    class of a pair anywhere (held-out MAP@R 0.52); the trained model puts both first (MAP@R >= 0.8). The run has
    both stages, keeps its best validation epoch, and the saved encoder (stem + blocks + head on images) gives the
    vectors computed from the cached stem maps."""
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder
    from lens.images import open_image
    from lens.train import RunContext, default_config, make_split, train_recipe
    from lens.train.common import heldout_metrics

    cache, models = models_env
    catalog = load_catalog(toy_catalog_dir, label_column="pair")
    split = make_split(catalog, seed=0, label_column="pair")
    frozen = embed_catalog(catalog, create_encoder("tiny"), cache_dir=cache)
    before = heldout_metrics(frozen.vectors, frozen.ids, catalog, split)["map@r"]
    config = default_config(
        "proxy-tiny", epochs=15, batch_size=16, hidden=32, lr=1e-2, trainable_blocks=2, augment_views=2, ft_epochs=2
    )
    result = train_recipe(catalog, config, RunContext(out_dir=cache / "run", models_dir=models, cache_dir=cache), split)

    assert before < 0.6 and result.metrics["map@r"] >= 0.8
    assert result.metrics["precision@1"] == 1.0
    stages = [int(row["stage"]) for row in result.history]
    assert stages == [1] * 15 + [2] * (len(stages) - 15) and 1 <= stages.count(2) <= 2
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["kind"] == "image" and saved["arch"]["type"] == "embedder" and saved["arch"]["hidden"] == 32
    assert saved["augment_views"] == 2 and saved["train"]["trainable_blocks"] == 2
    assert saved["best_val_p5"] == max(row["val_p@5"] for row in result.history)

    encoder = create_encoder(result.name)
    images = [open_image(catalog.image_path(i)) for i in range(0, len(catalog.ids), 5)]
    direct = encoder.embed_images(images)
    np.testing.assert_allclose(np.linalg.norm(direct, axis=1), 1.0, atol=1e-5)
    published = embed_catalog(catalog, encoder, cache_dir=cache)  # computed from the cached stem maps
    assert published.from_cache
    np.testing.assert_allclose(published.vectors[::5][: len(direct)], direct, atol=2e-3)


def test_proxy_ensemble_takes_a_fine_tuned_member(toy_catalog_dir: Path, models_env, monkeypatch) -> None:
    """Known answer: an ensemble of a fine-tuned model (``--trainable-blocks``, served end to end) and a head on a
    frozen encoder gives [a, b] / sqrt(2) of the members' unit vectors; its catalog vectors are rebuilt from the
    members' cached vectors (the fine-tuned one's as its training published them: no image decoded), and it loads
    from its own safetensors after both members are deleted."""
    import shutil

    import lens.embed as embed_module
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder
    from lens.encoders.trained import refresh_trained_models
    from lens.images import open_image
    from lens.train import RunContext, default_config, make_split, train_recipe

    cache, models = models_env
    catalog = load_catalog(toy_catalog_dir, label_column="pair")
    split = make_split(catalog, seed=0, label_column="pair")

    def run(name: str, **settings: object) -> None:
        config = default_config("proxy-tiny", batch_size=16, hidden=32, lr=1e-2, **settings)
        train_recipe(catalog, config, RunContext(cache / name, models_dir=models, cache_dir=cache, name=name), split)

    run("ft", epochs=3, trainable_blocks=2, ft_epochs=1)
    run("head", epochs=3, seed=1)
    config = default_config("proxy-ensemble", members="ft,head")
    assert config.backbones() == ("tiny",)
    result = train_recipe(
        catalog, config, RunContext(cache / "ens", models_dir=models, cache_dir=cache, name="ens"), split
    )
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert [p["type"] for p in saved["arch"]["parts"]] == ["embedder", "head"]
    assert saved["arch"]["parts"][0]["weights_id"] == saved["members"]["ft"]

    images = [open_image(catalog.image_path(i)) for i in range(0, len(catalog.ids), 6)]
    a = create_encoder("ft").embed_images(images)
    b = create_encoder("head").embed_images(images)
    v = create_encoder("ens").embed_images(images)
    np.testing.assert_allclose(v, np.concatenate([a, b], axis=1) / np.sqrt(2), atol=1e-5)
    np.testing.assert_allclose(v @ v.T, (a @ a.T + b @ b.T) / 2, atol=1e-5)

    def no_images(catalog, enc, *args):  # noqa: ANN001, ANN002, ANN202
        raise AssertionError(f"{enc.name} decoded images although its vectors are cached")

    shutil.rmtree(models / "ft")
    shutil.rmtree(models / "head")
    shutil.rmtree(cache / "embeddings" / "ens")  # the vectors training published: rebuilt from the members' caches
    refresh_trained_models(models)
    ens = create_encoder("ens")
    with monkeypatch.context() as patch:
        patch.setattr(embed_module, "embed_files", no_images)
        catalog_set = embed_catalog(catalog, ens, cache_dir=cache)
    assert not catalog_set.from_cache and catalog_set.ids == catalog.ids
    np.testing.assert_allclose(catalog_set.vectors[::6], v, atol=2e-3)
    np.testing.assert_allclose(ens.embed_images(images), v, atol=1e-5)
