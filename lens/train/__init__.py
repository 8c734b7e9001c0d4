"""Training on the catalog: registered recipes, one loop, one split. Trained models load back as encoders by name.

``train_recipe(catalog, default_config("triplet-mobilenet-v2"), ctx, split)`` trains, saves ``<models dir>/<name>/``
(safetensors + config.json), evaluates on the split's held-out queries and returns a :class:`TrainResult`.

Recipes (:data:`RECIPES`, each with its own config dataclass): ``autoencoder`` (``variant="vae"`` for the VAE),
``triplet-<backbone>``, ``simclr-<backbone>``, ``proxy-<backbone>``, ``proxy-ensemble``, ``mobilenet-small``,
``text-align``; backbones: mobilenet-v2,
efficientnet-lite0, efficientnet-lite2 (text-align: any image encoder). The models' architectures live in
:mod:`lens.encoders.trained`; this package imports them, never the reverse.
"""

from __future__ import annotations

from dataclasses import replace

from lens.catalog import Catalog
from lens.encoders.trained import check_model_name
from lens.errors import LensError

# The recipe modules register themselves on import.
from lens.train import autoencoder, ensemble, mobilenet_small, proxy, simclr, text_align, triplet  # noqa: F401
from lens.train.common import RunContext, TrainResult
from lens.train.loop import TrainConfig, fit
from lens.train.registry import RECIPES, Recipe, default_config, parse_recipe, register_recipe
from lens.train.split import Split, get_split, load_split, make_split, save_split

__all__ = [
    "RECIPES",
    "Recipe",
    "RunContext",
    "Split",
    "TrainConfig",
    "TrainResult",
    "default_config",
    "default_name",
    "fit",
    "get_split",
    "load_split",
    "make_split",
    "parse_recipe",
    "register_recipe",
    "save_split",
    "train_recipe",
]


def default_name(config: TrainConfig) -> str:
    """The encoder name a run of ``config`` saves its model as when no name is given."""
    return config.model_name()


def train_recipe(catalog: Catalog, config: TrainConfig, ctx: RunContext, split: Split) -> TrainResult:
    """Run ``config.recipe`` on ``catalog`` (training split only), save the model as ``ctx.name``, evaluate it."""
    if config.recipe not in RECIPES:
        raise LensError(f"Unknown recipe {config.recipe!r}; make the config with default_config(recipe).")
    if not ctx.name:
        ctx = replace(ctx, name=default_name(config))
    check_model_name(ctx.name)
    if split.catalog_fingerprint and split.catalog_fingerprint != catalog.fingerprint():
        known = set(catalog.ids)
        if any(i not in known for i in split.train + split.val + split.query):
            raise LensError("the split was made for another catalog; pass the matching --split or --catalog.")
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return RECIPES[config.recipe].run(catalog, split, config, ctx)
