"""The recipe registry: each recipe module registers its run function with its own typed config.

``@register_recipe("triplet", TripletConfig, summary=...)`` on ``run(catalog, split, config, ctx) -> TrainResult``.
The config dataclass holds the recipe's defaults (one place) and, through its fields, its command-line flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from lens.errors import LensError
from lens.train.loop import TrainConfig

#: Pretrained backbones of the ``<recipe>-<backbone>`` spellings (``tiny`` too: the random test CNN, for tests).
BACKBONE_NAMES = ("mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2", "concat")


@dataclass(frozen=True)
class Recipe:
    """A registered recipe.

    Attributes:
        name: what ``python -m lens train <name>`` takes.
        config_cls: its settings, a :class:`TrainConfig` subclass with the recipe's defaults.
        run: ``run(catalog, split, config, ctx) -> TrainResult``.
        summary: one line for ``--help``.
        backbone_suffix: the recipe is also spelt ``<name>-<backbone>`` (``triplet-efficientnet-lite0``).
    """

    name: str
    config_cls: type[TrainConfig]
    run: Callable[..., Any]
    summary: str
    backbone_suffix: bool = False

    def spelling(self) -> str:
        return f"{self.name}-<backbone>" if self.backbone_suffix else self.name


RECIPES: dict[str, Recipe] = {}


def register_recipe(
    name: str, config_cls: type[TrainConfig], *, summary: str, backbone_suffix: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``run`` as recipe ``name`` with settings ``config_cls``."""

    def decorate(run: Callable[..., Any]) -> Callable[..., Any]:
        RECIPES[name] = Recipe(name, config_cls, run, summary, backbone_suffix)
        return run

    return decorate


def parse_recipe(recipe: str, backbone: str | None = None) -> tuple[str, str | None]:
    """``"triplet-efficientnet-lite0"`` -> ``("triplet", "efficientnet-lite0")``; ``backbone`` fills a bare name, else
    the recipe's default backbone (``None`` for recipes without one).

    Raises:
        LensError: unknown recipe (the message lists them).
    """
    if recipe in RECIPES and not RECIPES[recipe].backbone_suffix:  # an exact name first: ``proxy-ensemble``
        return recipe, backbone or _default_backbone(RECIPES[recipe])
    for entry in RECIPES.values():
        if entry.backbone_suffix and (recipe == entry.name or recipe.startswith(entry.name + "-")):
            named = recipe[len(entry.name) + 1 :] or None
            if named and backbone and named != backbone:
                raise LensError(f"recipe {recipe!r} names backbone {named!r} but --backbone says {backbone!r}.")
            return entry.name, named or backbone or _default_backbone(entry)
    if recipe in RECIPES:
        return recipe, backbone or _default_backbone(RECIPES[recipe])
    raise LensError(
        f"Unknown recipe {recipe!r}. Recipes: {', '.join(RECIPES[n].spelling() for n in sorted(RECIPES))} "
        f"(backbones: {', '.join(BACKBONE_NAMES)})."
    )


def _default_backbone(entry: Recipe) -> str | None:
    return getattr(entry.config_cls, "backbone", None)


def default_config(recipe: str, backbone: str | None = None, **overrides: Any) -> TrainConfig:
    """Recipe ``recipe``'s config: its defaults with ``overrides`` (``None`` values are ignored).

    Raises:
        LensError: unknown recipe, or a setting the recipe does not have (the message lists its settings).
    """
    name, chosen = parse_recipe(recipe, backbone)
    config_cls = RECIPES[name].config_cls
    known = {item.name for item in fields(config_cls)} - {"recipe"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise LensError(
            f"recipe {name!r} has no setting {', '.join(unknown)}; its settings: {', '.join(sorted(known))}."
        )
    values = {key: value for key, value in overrides.items() if value is not None}
    if chosen is not None:
        if "backbone" not in known:
            raise LensError(f"recipe {name!r} takes no backbone.")
        values["backbone"] = chosen
    return config_cls(recipe=name, **values)
