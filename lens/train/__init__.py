"""Training on the catalog: five recipes, one loop, one split. Trained models load back as encoders by name.

``train_recipe("triplet-mobilenet-v2", catalog, config, ctx, split)`` trains, saves ``<models dir>/<name>/``
(safetensors + config.json), evaluates on the split's held-out queries and returns a :class:`TrainResult`.

Recipes: ``autoencoder`` (``variant="vae"`` for the VAE), ``triplet-<backbone>``, ``simclr-<backbone>``,
``mobilenet-small``, ``text-align``; backbones: mobilenet-v2, efficientnet-lite0, efficientnet-lite2 (text-align: any
image encoder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from lens.catalog import Catalog
from lens.errors import LensError
from lens.train.common import RunContext, TrainResult
from lens.train.loop import TrainConfig, fit
from lens.train.split import Split, get_split, load_split, make_split, save_split

__all__ = [
    "RECIPES",
    "RunContext",
    "Split",
    "TrainConfig",
    "TrainResult",
    "default_config",
    "fit",
    "get_split",
    "load_split",
    "make_split",
    "parse_recipe",
    "save_split",
    "train_recipe",
]

#: Recipe -> default settings (the CLI's flags override them). Why these: see docs/training.md.
RECIPES: dict[str, dict] = {
    "triplet": dict(epochs=20, batch_size=64, lr=1e-4, backbone_lr_scale=1.0, m_per_class=4, margin=0.2,
                    trainable_blocks=0, embedding_dim=0, backbone="mobilenet-v2", extra={"hidden": 1024}),
    "simclr": dict(epochs=10, batch_size=64, lr=1e-4, backbone_lr_scale=1.0, temperature=0.1, trainable_blocks=0,
                   backbone="mobilenet-v2", extra={"max_images": 1000, "views": 2, "hidden": 1024}),
    "mobilenet-small": dict(epochs=8, batch_size=64, lr=3e-3, weight_decay=1e-4, input_size=96, embedding_dim=128,
                            head_epochs=5, m_per_class=4, margin=0.2),
    "autoencoder": dict(epochs=10, batch_size=64, lr=1e-4, weight_decay=0.0, input_size=64, embedding_dim=128,
                        variant="ae"),
    "text-align": dict(epochs=20, batch_size=256, lr=1e-3, weight_decay=1e-2, temperature=0.07, embedding_dim=256,
                       backbone="efficientnet-lite0"),
}


def parse_recipe(recipe: str, backbone: str | None = None) -> tuple[str, str | None]:
    """``"triplet-efficientnet-lite0"`` -> ``("triplet", "efficientnet-lite0")``; ``backbone`` fills a bare name.

    Raises:
        LensError: unknown recipe (the message lists them).
    """
    for base in ("triplet", "simclr"):
        if recipe == base or recipe.startswith(base + "-"):
            named = recipe[len(base) + 1 :] or None
            if named and backbone and named != backbone:
                raise LensError(f"recipe {recipe!r} names backbone {named!r} but --backbone says {backbone!r}.")
            return base, named or backbone or RECIPES[base]["backbone"]
    if recipe in RECIPES:
        return recipe, backbone or RECIPES[recipe].get("backbone")
    raise LensError(
        f"Unknown recipe {recipe!r}. Recipes: autoencoder, triplet-<backbone>, simclr-<backbone>, mobilenet-small, "
        "text-align (backbones: mobilenet-v2, efficientnet-lite0, efficientnet-lite2)."
    )


def default_config(recipe: str, backbone: str | None = None, **overrides: object) -> TrainConfig:
    """The recipe's defaults with ``overrides`` (``None`` values are ignored)."""
    base, bb = parse_recipe(recipe, backbone)
    settings = {**RECIPES[base], "recipe": base, "backbone": bb}
    extra = dict(settings.pop("extra", {}))
    extra.update(overrides.pop("extra", None) or {})  # type: ignore[arg-type]
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**settings, extra=extra)


def default_name(config: TrainConfig) -> str:
    if config.recipe in ("triplet", "simclr"):
        return f"{config.recipe}-{config.backbone}"
    if config.recipe == "autoencoder" and config.variant == "vae":
        return "vae"
    return config.recipe


def _runner(recipe: str) -> Callable[[Catalog, Split, TrainConfig, RunContext], TrainResult]:
    if recipe == "triplet":
        from lens.train.triplet import train_triplet

        return train_triplet
    if recipe == "simclr":
        from lens.train.simclr import train_simclr

        return train_simclr
    if recipe == "mobilenet-small":
        from lens.train.mobilenet_small import train_mobilenet_small

        return train_mobilenet_small
    if recipe == "autoencoder":
        from lens.train.autoencoder import train_autoencoder

        return train_autoencoder
    if recipe == "text-align":
        from lens.train.text_align import train_text_align

        return train_text_align
    raise LensError(f"Unknown recipe {recipe!r}.")


def train_recipe(catalog: Catalog, config: TrainConfig, ctx: RunContext, split: Split) -> TrainResult:
    """Run ``config.recipe`` on ``catalog`` (training split only), save the model as ``ctx.name``, evaluate it."""
    from lens.encoders.trained import check_model_name

    if not ctx.name:
        ctx = replace(ctx, name=default_name(config))
    check_model_name(ctx.name)
    if split.catalog_fingerprint and split.catalog_fingerprint != catalog.fingerprint():
        known = set(catalog.ids)
        if any(i not in known for i in split.train + split.val + split.query):
            raise LensError("the split was made for another catalog; pass the matching --split or --catalog.")
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return _runner(config.recipe)(catalog, split, config, ctx)
