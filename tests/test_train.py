"""Training: split, losses, sampler, the fit loop (seed, resume), and every recipe end to end on tiny data.

Everything runs on generated catalogs with the ``tiny`` backbone or small inputs: a few seconds per recipe.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fixtures import make_catalog


@pytest.fixture(scope="module")
def train_catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 classes x 10 synthetic 48-px product photos with titles."""
    return make_catalog(tmp_path_factory.mktemp("train_catalog"), n_classes=5, per_class=10, size=48)


@pytest.fixture()
def train_catalog(train_catalog_dir: Path):  # -> Catalog
    from lens.catalog import load_catalog

    return load_catalog(train_catalog_dir)


def _clustered(n_classes: int = 4, per_class: int = 16, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g) * 2
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = centers[labels] + 0.8 * torch.randn(len(labels), dim, generator=g)
    return x, labels


# ------------------------------------------------------------------------------------------------ split


def test_split_is_disjoint_stratified_and_round_trips(train_catalog, tmp_path: Path) -> None:
    from lens.errors import LensError
    from lens.train.split import load_split, make_split, save_split

    split = make_split(train_catalog, seed=3)
    parts = [set(split.train), set(split.val), set(split.query)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(train_catalog.ids)
    labels = dict(zip(train_catalog.ids, train_catalog.labels()))
    for label in set(labels.values()):
        assert sum(labels[i] == label for i in split.query) == 2  # round(0.2 * 10)
        assert any(labels[i] == label for i in split.train)
    path = save_split(split, tmp_path / "split.json")
    assert load_split(path, train_catalog) == split
    assert make_split(train_catalog, seed=3) == split and make_split(train_catalog, seed=4) != split
    other = train_catalog.subset(train_catalog.ids[:10])
    with pytest.raises(LensError, match="another catalog"):
        load_split(path, other)


def test_split_keeps_rare_labels_in_train(train_catalog) -> None:
    from lens.train.split import make_split

    small = train_catalog.subset(train_catalog.ids[:12])  # 10 of class 0, 2 of class 1
    split = make_split(small, seed=0)
    rare = set(small.ids[10:])
    assert rare <= set(split.train)


# ------------------------------------------------------------------------------------------------ losses, sampler


def test_triplet_loss_without_valid_triplets_is_zero_not_nan() -> None:
    from lens.train.losses import BatchHardTripletLoss

    loss_fn = BatchHardTripletLoss(margin=0.2)
    emb = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1).requires_grad_(True)
    for labels in (torch.arange(6), torch.zeros(6, dtype=torch.long)):  # no positives / no negatives
        loss = loss_fn(emb, labels)
        assert torch.isfinite(loss) and float(loss.detach()) == 0.0
        loss.backward()
        assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_equals_pytorch_metric_learning(temperature: float) -> None:
    from pytorch_metric_learning import losses

    from lens.train.losses import NTXentPairLoss

    torch.manual_seed(1)
    a, b = torch.randn(12, 7, dtype=torch.float64), torch.randn(12, 7, dtype=torch.float64)
    labels = torch.arange(12)
    oracle = losses.NTXentLoss(temperature=temperature)(torch.cat([a, b]), torch.cat([labels, labels]))
    ours = NTXentPairLoss(temperature)(a, b)
    torch.testing.assert_close(ours, oracle.to(ours.dtype), rtol=1e-6, atol=1e-8)
    # two views of the same points score lower than unrelated views
    assert float(NTXentPairLoss(temperature)(a, a + 0.01 * b)) < float(ours)


def test_losses_reach_every_trainable_parameter() -> None:
    from lens.encoders.trained.embedder import Embedder, build_split_backbone
    from lens.train.loop import freeze
    from lens.train.losses import BatchHardTripletLoss, NTXentPairLoss, SymmetricInfoNCE

    torch.manual_seed(0)
    backbone = build_split_backbone("tiny", pretrained=False)
    model = Embedder(freeze(backbone.stem), backbone.top, nn.Linear(backbone.dim, 16))
    x = torch.rand(8, 3, 32, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    emb = torch.nn.functional.normalize(model(x), dim=-1)
    BatchHardTripletLoss()(emb, labels).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("top.", "head.")) for n, _ in trainable)
    for name, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.stem.parameters())

    a, b = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True)
    NTXentPairLoss(0.1)(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    info = SymmetricInfoNCE(0.07)
    loss = info(a, b)
    loss.backward()
    assert torch.isfinite(loss) and info.logit_scale.grad is not None and info.logit_scale.grad != 0


def test_class_balanced_batches_are_seeded_and_balanced() -> None:
    from lens.train.samplers import class_balanced_batches

    labels = np.repeat(np.arange(6), [10, 10, 10, 3, 1, 10])
    a = class_balanced_batches(labels, m=4, batch_size=16, n_batches=5, seed=1)
    b = class_balanced_batches(labels, m=4, batch_size=16, n_batches=5, seed=1)
    c = class_balanced_batches(labels, m=4, batch_size=16, n_batches=5, seed=2)
    assert len(a) == 5 and all(len(x) == 16 for x in a)
    assert all((x == y).all() for x, y in zip(a, b)) and any((x != y).any() for x, y in zip(a, c))
    for batch in a:
        _, counts = np.unique(labels[batch], return_counts=True)
        assert (counts % 4 == 0).all()


# ------------------------------------------------------------------------------------------------ fit loop


def _fit_head(epochs: int, seed: int, checkpoint: Path | None = None, resume: bool = False):
    from lens.train.loop import TrainConfig, epoch_seed, fit
    from lens.train.losses import BatchHardTripletLoss
    from lens.train.samplers import class_balanced_batches

    x, labels = _clustered()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 4))
    loss_fn = BatchHardTripletLoss(0.2)
    config = TrainConfig(recipe="unit", epochs=epochs, lr=1e-2, seed=seed)

    def batches(epoch: int):
        return class_balanced_batches(labels.numpy(), m=4, batch_size=16, n_batches=6, seed=epoch_seed(seed, epoch))

    def step(batch: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(batch)
        return loss_fn(torch.nn.functional.normalize(model(x[idx]), dim=-1), labels[idx])

    history = fit(
        model,
        step,
        batches,
        config,
        checkpoint=checkpoint,
        resume=resume,
        on_epoch=lambda e, row: {"double": 2 * row["loss"]},
    )
    return model, history


def test_fit_loss_is_finite_and_decreases() -> None:
    _, history = _fit_head(epochs=6, seed=0)
    losses = [row["loss"] for row in history]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.6 * losses[0]
    assert history[0]["double"] == pytest.approx(2 * losses[0])


def test_same_seed_same_weights_and_resume_continues(tmp_path: Path) -> None:
    a, hist_a = _fit_head(epochs=3, seed=7)
    b, _ = _fit_head(epochs=3, seed=7)
    c, _ = _fit_head(epochs=3, seed=8)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values()))

    ckpt = tmp_path / "run" / "checkpoint.pt"
    _, first = _fit_head(epochs=1, seed=7, checkpoint=ckpt)
    assert len(first) == 1 and ckpt.is_file()
    resumed, hist_r = _fit_head(epochs=3, seed=7, checkpoint=ckpt, resume=True)
    assert [r["epoch"] for r in hist_r] == [1.0, 2.0, 3.0]
    assert [r["loss"] for r in hist_r] == pytest.approx([r["loss"] for r in hist_a])
    for (name, pa), pr in zip(a.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(pa, pr), name


def test_resume_refuses_another_seed(tmp_path: Path) -> None:
    from lens.errors import LensError

    ckpt = tmp_path / "checkpoint.pt"
    _fit_head(epochs=1, seed=1, checkpoint=ckpt)
    with pytest.raises(LensError, match="seed"):
        _fit_head(epochs=2, seed=2, checkpoint=ckpt, resume=True)


# ------------------------------------------------------------------------------------------------ recipes


RECIPE_SETTINGS = {
    "triplet-head": ("triplet-tiny", dict(epochs=2, batch_size=20)),  # frozen backbone + head (the default)
    "triplet-blocks": ("triplet-tiny", dict(epochs=2, batch_size=20, trainable_blocks=2)),  # top blocks train too
    # the head also sees 2 augmented views of each training photo through the frozen backbone
    "triplet-augmented": ("triplet-tiny", dict(epochs=2, batch_size=20, hidden=64, augment_views=2)),
    "simclr-head": ("simclr-tiny", dict(epochs=2, batch_size=8)),
    # a head trained with a proxy loss (normalized softmax: proxies in their own optimizer group)
    "proxy-head": ("proxy-tiny", dict(epochs=2, batch_size=20, hidden=64)),
    # the proxy head, then the last blocks with it on cached stem maps, 2 augmented views per training photo
    "proxy-blocks": (
        "proxy-tiny",
        dict(epochs=2, batch_size=20, hidden=64, trainable_blocks=2, augment_views=2, ft_epochs=2),
    ),
    "simclr-blocks": ("simclr-tiny", dict(epochs=2, batch_size=8, trainable_blocks=2)),
    "mobilenet-small": ("mobilenet-small", dict(epochs=2, head_epochs=2, batch_size=20, input_size=32)),
    "autoencoder": ("autoencoder", dict(epochs=2, batch_size=8, input_size=32, lr=1e-3)),
    "vae": ("autoencoder", dict(epochs=2, batch_size=8, input_size=32, lr=1e-3, variant="vae")),
    "text-align": ("text-align", dict(epochs=2, batch_size=16, backbone="tiny", embedding_dim=32)),
}


@pytest.mark.parametrize("case", sorted(RECIPE_SETTINGS))
def test_recipe_trains_saves_and_loads_back_by_name(case: str, train_catalog, models_env, tmp_path: Path) -> None:
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder, list_encoders
    from lens.images import open_image
    from lens.train import RunContext, default_config, make_split, train_recipe

    cache, models = models_env
    split = make_split(train_catalog, seed=0)
    recipe, settings = RECIPE_SETTINGS[case]
    config = default_config(recipe, **settings)
    ctx = RunContext(out_dir=tmp_path / "run", models_dir=models, cache_dir=cache)
    result = train_recipe(train_catalog, config, ctx, split)

    assert result.history and all(np.isfinite(r["loss"]) for r in result.history)
    assert (result.model_dir / "model.safetensors").is_file()
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["recipe"] == config.recipe and saved["train"]["seed"] == 0
    if getattr(config, "augment_views", 0):
        assert saved["augment_views"] == config.augment_views
    with open(tmp_path / "run" / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(result.history) and "loss" in rows[0]
    assert 0.0 <= result.metrics["precision@5"] <= 1.0

    info = {i.name: i for i in list_encoders()}[result.name]
    assert info.available and info.spec.family == "trained"
    enc1, enc2 = create_encoder(result.name), create_encoder(result.name)
    images = [open_image(p) for p in train_catalog.image_paths()[:4]]
    v1, v2 = enc1.embed_images(images), enc2.embed_images(images)
    assert v1.shape == (4, saved["dim"]) and v1.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v1, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v1, v2)  # save -> load -> identical embeddings, every time
    # the vectors published to the embedding cache are the encoder's own (the `evaluate` path hits them)
    cached = embed_catalog(train_catalog, enc1, cache_dir=cache)
    assert cached.from_cache
    np.testing.assert_allclose(cached.vectors[:4], v1, atol=2e-3)


@pytest.mark.parametrize(
    "recipe, settings",
    [
        ("triplet-tiny", dict(epochs=1, batch_size=20)),
        ("text-align", dict(epochs=1, batch_size=16, backbone="tiny", embedding_dim=32)),
    ],
)
def test_head_models_embed_a_catalog_from_the_base_vectors(
    recipe, settings, train_catalog, models_env, tmp_path, monkeypatch
) -> None:
    import lens.embed as embed_module
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder
    from lens.images import open_image
    from lens.train import RunContext, default_config, make_split, train_recipe

    cache, models = models_env
    config = default_config(recipe, **settings)
    ctx = RunContext(out_dir=tmp_path / "run", models_dir=models, cache_dir=cache, name="stacked", publish=False)
    train_recipe(train_catalog, config, ctx, make_split(train_catalog, seed=0))
    encoder = create_encoder("stacked")
    base, _head = encoder.base_and_head()
    assert base.name == "tiny"
    assert embed_catalog(train_catalog, base, cache_dir=cache).from_cache  # training embedded the base

    def no_images(catalog, enc, *args):  # noqa: ANN001, ANN002, ANN202
        raise AssertionError(f"{enc.name} decoded images although the base's vectors are cached")

    monkeypatch.setattr(embed_module, "embed_files", no_images)
    stacked = embed_catalog(train_catalog, encoder, cache_dir=cache)
    assert not stacked.from_cache and stacked.ids == train_catalog.ids and stacked.vectors.shape[1] == encoder.dim
    monkeypatch.undo()
    images = [open_image(p) for p in train_catalog.image_paths()[:5]]
    np.testing.assert_allclose(stacked.vectors[:5], encoder.embed_images(images), atol=2e-3)  # the image path
    assert embed_catalog(train_catalog, encoder, cache_dir=cache).from_cache


def test_proxy_ensemble_is_the_mean_cosine_of_its_members(
    train_catalog, models_env, tmp_path: Path, monkeypatch
) -> None:
    """Known answer: the joined vector is [a, b] / sqrt(2) of the members' unit vectors, so the inner product of two
    photos is the mean of the members' cosines; a missing member is trained first; the catalog's vectors come from
    the base's cached vectors (no image decoded); the model loads from its own safetensors."""
    import shutil

    import lens.embed as embed_module
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder
    from lens.encoders.trained import refresh_trained_models
    from lens.errors import LensError
    from lens.images import open_image
    from lens.train import RunContext, default_config, make_split, save_split, train_recipe

    cache, models = models_env
    split = make_split(train_catalog, seed=0)
    member = default_config("proxy-tiny", epochs=2, batch_size=20, hidden=64, seed=3)
    train_recipe(train_catalog, member, RunContext(tmp_path / "b", models, cache, name="ens-b"), split)
    # "proxy-tiny" is not saved: the ensemble trains it with its recipe's defaults first
    config = default_config("proxy-ensemble", members="proxy-tiny,ens-b")
    assert config.member_epochs(models) == 40 + 1  # the build's progress: the missing member's epochs + the join
    from lens.train.checks import recipe_settings

    assert [s.name for s in recipe_settings("proxy-ensemble")] == ["members"]  # no epochs / lr it would ignore
    result = train_recipe(train_catalog, config, RunContext(tmp_path / "run", models, cache, name="ens"), split)
    assert (models / "proxy-tiny" / "model.safetensors").is_file()
    assert 0 <= result.history[0]["val_p@5"] <= 1 and 0 <= result.metrics["precision@5"] <= 1

    images = [open_image(p) for p in train_catalog.image_paths()[:6]]
    a = create_encoder("proxy-tiny").embed_images(images)
    b = create_encoder("ens-b").embed_images(images)
    ens = create_encoder("ens")
    v = ens.embed_images(images)
    assert ens.dim == a.shape[1] + b.shape[1]
    np.testing.assert_allclose(v, np.concatenate([a, b], axis=1) / np.sqrt(2), atol=1e-5)
    np.testing.assert_allclose(v @ v.T, (a @ a.T + b @ b.T) / 2, atol=1e-5)

    # the members can go: the ensemble carries their heads
    shutil.rmtree(models / "proxy-tiny")
    shutil.rmtree(models / "ens-b")
    refresh_trained_models(models)
    np.testing.assert_allclose(create_encoder("ens").embed_images(images), v, atol=1e-6)

    def no_images(catalog, enc, *args):  # noqa: ANN001, ANN002, ANN202
        raise AssertionError(f"{enc.name} decoded images although the base's vectors are cached")

    shutil.rmtree(cache / "embeddings" / "ens")  # the vectors training published: rebuilt from the base's
    monkeypatch.setattr(embed_module, "embed_files", no_images)
    catalog_set = embed_catalog(train_catalog, create_encoder("ens"), cache_dir=cache)
    assert not catalog_set.from_cache and catalog_set.ids == train_catalog.ids
    np.testing.assert_allclose(catalog_set.vectors[:6], v, atol=2e-3)
    with pytest.raises(LensError, match="two or more"):
        default_config("proxy-ensemble", members="ens").member_names()
    # a member trained with another split (it may have trained on this split's held-out queries) is refused
    other = make_split(train_catalog, seed=1)
    other_path = save_split(other, tmp_path / "other-split.json")
    train_recipe(
        train_catalog, member, RunContext(tmp_path / "c", models, cache, name="ens-c", split_path=other_path), other
    )
    train_recipe(
        train_catalog, member, RunContext(tmp_path / "d", models, cache, name="ens-d", split_path=other_path), other
    )
    with pytest.raises(LensError, match="another catalog or split"):
        train_recipe(
            train_catalog,
            default_config("proxy-ensemble", members="ens-c,ens-d"),
            RunContext(tmp_path / "run2", models, cache, name="ens2"),
            split,
        )


def test_text_align_serves_text_and_image_text_queries(train_catalog, models_env, tmp_path: Path) -> None:
    from lens.encoders import create_encoder
    from lens.errors import LensError
    from lens.images import open_image
    from lens.train import RunContext, default_config, make_split, train_recipe
    from lens.vectors import mix_query_vectors

    cache, models = models_env
    config = default_config("text-align", epochs=2, batch_size=16, backbone="tiny", embedding_dim=32)
    result = train_recipe(train_catalog, config, RunContext(tmp_path / "run", models, cache), make_split(train_catalog))
    assert {"text_r@1", "text_r@5", "text_r@10"} <= set(result.metrics)
    enc = create_encoder("text-align")
    assert enc.spec.supports_text
    texts = enc.embed_texts(["red circle", "blue square item"])
    # 32 projection coordinates per ensemble member (4 by default), then the attribute blocks when validation chose
    # a weight > 0 (one per class)
    blocks = sum(len(a["classes"]) for a in enc.arch.get("attributes") or [])
    assert enc.arch["members"] == config.ensemble == 4
    assert enc.dim == 32 * 4 + blocks and texts.shape == (2, enc.dim) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    image = open_image(train_catalog.image_paths()[0])
    both = enc.embed_query(image, "blue", text_weight=0.5)
    expected = mix_query_vectors(enc.embed_images([image])[0], enc.embed_texts(["blue"])[0], 0.5)
    np.testing.assert_allclose(both, expected, atol=1e-6)
    np.testing.assert_allclose(enc.embed_query(text="blue"), enc.embed_texts(["blue"])[0], atol=1e-6)
    with pytest.raises(LensError, match="list of texts"):
        enc.embed_texts("red circle")


def test_same_seed_gives_the_same_trained_model(train_catalog, models_env, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from lens.train import RunContext, default_config, make_split, train_recipe

    cache, models = models_env
    split = make_split(train_catalog)
    files = []
    for run in ("a", "b"):
        config = default_config("triplet-tiny", epochs=2, batch_size=20)
        ctx = RunContext(tmp_path / run, models, cache, name=f"seeded-{run}", publish=False)
        files.append(load_file(str(train_recipe(train_catalog, config, ctx, split).model_dir / "model.safetensors")))
    assert files[0].keys() == files[1].keys()
    assert all(torch.equal(files[0][k], files[1][k]) for k in files[0])


def test_trained_model_names_are_checked(models_env) -> None:
    from lens.encoders.trained import check_model_name, trained_model_folder
    from lens.errors import LensError, UnknownEncoderError
    from lens.train import parse_recipe

    with pytest.raises(LensError, match="built-in encoder"):
        check_model_name("mobilenet-v2")
    with pytest.raises(LensError, match="not allowed"):
        check_model_name("../escape")
    with pytest.raises(UnknownEncoderError, match="Train one"):
        trained_model_folder("nothing-here")
    with pytest.raises(LensError, match="Recipes: autoencoder"):
        parse_recipe("resnet-magic")
    assert parse_recipe("triplet-efficientnet-lite2") == ("triplet", "efficientnet-lite2")


# ------------------------------------------------------------------------------------------------ recipes, models


def test_recipe_defaults_are_the_documented_ones() -> None:
    """docs/training.md's figures were made with these defaults; a recipe config that drifts from them would not
    reproduce them."""
    from dataclasses import asdict

    from lens.train import RECIPES, default_config

    assert sorted(RECIPES) == [
        "autoencoder",
        "mobilenet-small",
        "proxy",
        "proxy-ensemble",
        "simclr",
        "text-align",
        "triplet",
    ]
    expected = {
        "triplet": dict(
            epochs=20,
            batch_size=64,
            lr=1e-4,
            backbone_lr_scale=1.0,
            m_per_class=4,
            margin=0.2,
            trainable_blocks=0,
            embedding_dim=0,
            backbone="mobilenet-v2",
            hidden=1024,
            augment_views=0,
            weight_decay=1e-4,
        ),
        "proxy": dict(
            epochs=40,
            batch_size=64,
            lr=1e-3,
            loss_lr=1e-2,
            loss="proxy-anchor",
            m_per_class=4,
            trainable_blocks=0,
            embedding_dim=0,
            backbone="efficientnet-lite2",
            hidden=1024,
            weight_decay=1e-4,
        ),
        "simclr": dict(
            epochs=10,
            batch_size=64,
            lr=1e-4,
            backbone_lr_scale=1.0,
            temperature=0.1,
            trainable_blocks=0,
            backbone="mobilenet-v2",
            max_images=1000,
            views=2,
            hidden=1024,
            weight_decay=1e-4,
        ),
        "mobilenet-small": dict(
            epochs=8,
            batch_size=64,
            lr=3e-3,
            weight_decay=1e-4,
            input_size=96,
            embedding_dim=128,
            head_epochs=5,
            m_per_class=4,
            margin=0.2,
        ),
        "autoencoder": dict(
            epochs=10,
            batch_size=64,
            lr=1e-4,
            weight_decay=0.0,
            input_size=64,
            embedding_dim=128,
            variant="ae",
            beta=1e-3,
        ),
        "proxy-ensemble": dict(members="proxy-mobilenet-v2,proxy-efficientnet-lite0,proxy-efficientnet-lite2"),
        "text-align": dict(
            epochs=20,
            batch_size=256,
            lr=1e-3,
            weight_decay=1e-1,
            temperature=0.07,
            embedding_dim=256,
            backbone="concat-colour",
            projection="linear",
            vocab_min_count=2,
            bow_weight=1.0,
            attributes="gender,articleType,baseColour",
            ensemble=4,
            final_fit="train+val",
            attribute_weight=-1.0,
        ),
    }
    for recipe, settings in expected.items():
        config = asdict(default_config(recipe))
        assert {k: config[k] for k in settings} == settings, recipe
        assert config["seed"] == 0 and config["steps_per_epoch"] is None
    assert default_config("autoencoder", variant="vae").model_name() == "vae"
    assert default_config("simclr-efficientnet-lite2").model_name() == "simclr-efficientnet-lite2"


def test_recipe_configs_refuse_bad_and_unknown_settings() -> None:
    from lens.errors import LensError
    from lens.train import default_config

    with pytest.raises(LensError, match="--views must be 2 or more"):
        default_config("simclr-tiny", views=1)
    with pytest.raises(LensError, match="--epochs must be a positive integer"):
        default_config("triplet", epochs=0)
    with pytest.raises(LensError, match="--variant must be one of ae, vae"):
        default_config("autoencoder", variant="gan")
    with pytest.raises(LensError, match="has no setting input_size; its settings: .*margin"):
        default_config("triplet", input_size=64)
    with pytest.raises(LensError, match="takes no backbone"):
        default_config("autoencoder", backbone="mobilenet-v2")


def test_small_mobilenet_is_torchvisions_and_loads_old_checkpoints(models_env) -> None:
    """The trunk is torchvision's MobileNetV2 (same layers and parameter count as the hand-written network it
    replaced, a deterministic init per seed); a model saved with the old key names loads and embeds identically."""
    from torchvision.models.mobilenetv2 import InvertedResidual

    from lens.encoders.trained import load_trained_encoder, save_trained_model
    from lens.encoders.trained.mobilenet_small import SmallMobileNet, build_model

    torch.manual_seed(0)
    trunk = SmallMobileNet()
    assert sum(p.numel() for p in trunk.parameters()) == 388_576
    assert sum(isinstance(m, InvertedResidual) for m in trunk.modules()) == 11
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(trunk.state_dict().values(), SmallMobileNet().state_dict().values()))

    _, models = models_env
    arch = {"type": "mobilenet-small", "embedding_dim": 16, "feature_dim": 384, "n_classes": 3}
    torch.manual_seed(1)
    model = build_model(arch)
    for m in model.modules():  # non-trivial BatchNorm statistics, so that loading (and folding) them matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    state = model.state_dict()
    old_keys = {k.replace(".conv.", ".block."): v for k, v in state.items()}
    assert any(".block." in k for k in old_keys) and len(old_keys) == len(state)
    config = {
        "kind": "image",
        "arch": arch,
        "dim": 16,
        "recipe": "mobilenet-small",
        "preprocess": {
            "input_size": 32,
            "crop_pct": 1.0,
            "mean": [0.5] * 3,
            "std": [0.25] * 3,
            "interpolation": "bilinear",
        },
    }
    new = load_trained_encoder(save_trained_model("msmall-new", state, config, models_dir=models))
    old = load_trained_encoder(save_trained_model("msmall-old", old_keys, config, models_dir=models))
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(new.embed_tensor(x), old.embed_tensor(x))
    with torch.inference_mode():
        unfolded = torch.nn.functional.normalize(model.eval()(x), dim=-1).numpy()
    np.testing.assert_allclose(new.embed_tensor(x), unfolded, atol=1e-4)  # BatchNorm folded: same vectors
    assert not any(isinstance(m, nn.BatchNorm2d) for m in new.model.modules())


def test_fold_batchnorm_follows_the_graph_not_the_attribute_order() -> None:
    """A BatchNorm registered right after a conv but applied to something else is not folded into it."""
    from lens.encoders.base import fold_batchnorm

    class Misleading(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)
            self.conv2 = nn.Conv2d(3, 4, 1)
            self.bn2 = nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn2(self.conv2(self.conv(self.bn(x))))  # bn before conv; conv2 -> bn2 is a real pair

    torch.manual_seed(0)
    model = Misleading().eval()
    for bn in (model.bn, model.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        expected = model(x)
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.Identity)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def test_cli_train_recipe_help_lists_its_own_settings(capsys: pytest.CaptureFixture[str]) -> None:
    from lens.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "simclr-mobilenet-v2", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--views VIEWS" in text and "(default: 2)" in text and "--max-images" in text and "(default: 1000)" in text
    assert "--input-size" not in text and "--catalog" in text
    with pytest.raises(SystemExit):
        main(["train", "autoencoder", "--views", "2"])  # not an autoencoder setting
    assert "unrecognized arguments: --views 2" in capsys.readouterr().err
    assert main(["train", "simclr-tiny", "--views", "1", "--quiet"]) == 2
    assert "--views must be 2 or more" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_train_then_evaluate_on_the_held_out_split(
    train_catalog_dir: Path, models_env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lens.cli import main

    cache, models = models_env
    split_path, out = tmp_path / "split.json", tmp_path / "run"
    argv = [
        "train",
        "triplet-tiny",
        "--catalog",
        str(train_catalog_dir),
        "--epochs",
        "2",
        "--batch",
        "20",
        "--out",
        str(out),
        "--split",
        str(split_path),
        "--seed",
        "0",
        "--quiet",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "epoch 2: loss" in text and "val_p@5" in text and "saved encoder 'triplet-tiny'" in text
    assert split_path.is_file() and (out / "history.csv").is_file() and (out / "checkpoint.pt").is_file()
    assert (models / "triplet-tiny" / "model.safetensors").is_file()

    # --resume with every epoch done trains nothing more and gives the same model
    before = (models / "triplet-tiny" / "model.safetensors").read_bytes()
    assert main(argv + ["--resume"]) == 0
    capsys.readouterr()
    assert (models / "triplet-tiny" / "model.safetensors").read_bytes() == before

    assert (
        main(
            [
                "evaluate",
                "--catalog",
                str(train_catalog_dir),
                "--models",
                "triplet-tiny,tiny",
                "--split",
                str(split_path),
                "--csv",
                "-",
                "--quiet",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    rows = list(csv.DictReader(table.splitlines()))
    split = json.loads(split_path.read_text())
    assert [r["model"] for r in rows] == ["triplet-tiny", "tiny"]
    assert all(int(float(r["n_queries"])) == len(split["query"]) for r in rows)

    assert main(["train", "no-such-recipe", "--catalog", str(train_catalog_dir), "--quiet"]) == 2
    assert "Unknown recipe" in capsys.readouterr().err
