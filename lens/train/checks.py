"""What a training run needs before it starts, checked once for every way of starting one (``python -m lens train``,
the background build, the dashboard's Train page), and the recipes' settings as plain data for a form.

:func:`check_training` raises a :class:`~lens.errors.LensError` that says what to do when the recipe's backbone (or
text model) has no weights on this machine, when the label column has too few items per class, or when the catalog is
too small to split into training items and held-out queries. It reads the catalog and the weights' locations only:
no image is decoded, no model is built.
"""

from __future__ import annotations

import os
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any

from lens.catalog import Catalog
from lens.errors import CatalogError, LensError, UnknownEncoderError, WeightsUnavailableError
from lens.train.loop import TrainConfig
from lens.train.registry import RECIPES, parse_recipe
from lens.train.split import make_split

MIN_ITEMS = 10  #: a catalog smaller than this cannot give a training part, validation items and held-out queries
MIN_PER_CLASS = 3  #: items a class needs to be split (make_split's ``min_per_label``): one query, one kept to find
MIN_CLASSES = 2  #: classes with MIN_PER_CLASS items or more: a metric (or a classifier) needs two to tell apart
TEXT_MODEL = "all-MiniLM-L6-v2"  #: the text encoder text-align trains against (lens.encoders.minilm)


@dataclass(frozen=True)
class RecipeSetting:
    """One setting of a recipe, as a form shows it.

    Attributes:
        name: the config field (``batch_size``).
        kind: ``"int"``, ``"float"`` or ``"str"``.
        default: the recipe's default (its config dataclass: the one place for defaults).
        help: one line.
        flag: the command-line spelling (``--batch``).
        minimum: smallest allowed value, or ``None``.
        choices: allowed values of a text setting (empty: free text).
        optional: ``None`` is allowed (and is the default of ``steps_per_epoch``).
    """

    name: str
    kind: str
    default: Any
    help: str
    flag: str
    minimum: int | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False


def recipe_settings(recipe: str) -> list[RecipeSetting]:
    """The settings of ``recipe`` (any spelling: ``triplet``, ``triplet-mobilenet-v2``) in the config's field order,
    without ``backbone`` (chosen apart) and the run's ``seed``.

    Raises:
        LensError: unknown recipe (the message lists them).
    """
    from lens.train.loop import flag_of

    entry = RECIPES[parse_recipe(recipe)[0]]
    hints = typing.get_type_hints(entry.config_cls)
    out = []
    for item in fields(entry.config_cls):
        if "help" not in item.metadata or item.name == "backbone":
            continue
        hint = hints[item.name]
        args = typing.get_args(hint)
        kind = next(t for t in (int, float, str) if t in (hint, *args)).__name__
        out.append(
            RecipeSetting(
                name=item.name,
                kind=kind,
                default=None if item.default is MISSING else item.default,
                help=str(item.metadata["help"]),
                flag=flag_of(item),
                minimum=item.metadata.get("min"),
                choices=tuple(item.metadata.get("choices") or ()),
                optional=type(None) in args,
            )
        )
    return out


def takes_backbone(recipe: str) -> bool:
    """Whether ``recipe`` trains on a pretrained image encoder that the user picks (triplet, simclr, text-align)."""
    return any(item.name == "backbone" for item in fields(RECIPES[parse_recipe(recipe)[0]].config_cls))


def check_training(
    catalog: Catalog,
    config: TrainConfig,
    *,
    label_column: str | None = None,
    weights_dir: str | os.PathLike | None = None,
    seed: int | None = None,
) -> None:
    """Raise when a run of ``config`` on ``catalog`` cannot work; return quietly when it can start.

    Args:
        catalog: the catalog to train on.
        config: the run's settings (:func:`lens.train.default_config`; bad values were refused when it was made).
        label_column: the classes (default: the catalog's label column).
        weights_dir: where pretrained weights are looked for (default ``$LENS_WEIGHTS_DIR``, then the usual places).
        seed: the split's seed (default ``config.seed``).

    Raises:
        WeightsUnavailableError: the backbone (or text-align's text model) has no weights here; the remedy is in the
            message.
        CatalogError: the label column does not exist.
        LensError: too few items per class, or a catalog too small to split.
    """
    _check_backbone(config, weights_dir)
    column = label_column or catalog.label_column
    if column not in catalog.columns:
        raise CatalogError(
            f"catalog '{catalog.name}' has no column '{column}' to train on; its columns: {', '.join(catalog.columns)}."
        )
    if len(catalog) < MIN_ITEMS:
        raise LensError(
            f"catalog '{catalog.name}' has {len(catalog)} items: too small to split into training items, validation "
            f"items and held-out queries (training needs at least {MIN_ITEMS}). Add photos, or pick a larger catalog."
        )
    labels = catalog.labels(column).astype(str)
    values, counts = _counts(labels)
    enough = [v for v, c in zip(values, counts) if c >= MIN_PER_CLASS and v != ""]
    if len(enough) < MIN_CLASSES:
        raise LensError(
            f"label column '{column}' has {len(enough)} class(es) with at least {MIN_PER_CLASS} items "
            f"({len(values)} classes, the largest with {max(counts, default=0)} items); training needs at least "
            f"{MIN_CLASSES} such classes, to learn from some items and test on held-out ones. Pick a label column "
            "whose values repeat (such as articleType)."
        )
    split = make_split(catalog, label_column=column, seed=config.seed if seed is None else seed)
    if len(split.train) < MIN_CLASSES or not split.query:
        raise LensError(
            f"catalog '{catalog.name}' split by '{column}' gives {len(split.train)} training items and "
            f"{len(split.query)} held-out queries: too small to train and evaluate. Add photos, or pick a label "
            "column with fewer, larger classes."
        )


def _counts(labels: Any) -> tuple[list[str], list[int]]:
    import numpy as np

    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return [str(v) for v in values], [int(c) for c in counts]


def _check_backbone(config: TrainConfig, weights_dir: str | os.PathLike | None) -> None:
    from lens.encoders import encoder_status

    backbones = [getattr(config, "backbone", None)]
    if hasattr(config, "backbones"):  # proxy-ensemble: every member's backbone
        backbones = list(config.backbones())
    for backbone in (b for b in backbones if b):
        try:
            status = encoder_status(str(backbone), weights_dir)
        except UnknownEncoderError as exc:
            raise LensError(f"recipe '{config.recipe}': unknown backbone. {exc}") from None
        if not status.available:
            raise WeightsUnavailableError(
                f"recipe '{config.recipe}' trains on {backbone}, whose weights are not on this machine: "
                f"{status.remedy or 'see `python -m lens encoders`'}. Pick another backbone, or install its weights."
            )
    if config.recipe == "text-align":
        from lens.encoders.minilm import minilm_folder

        try:
            minilm_folder()
        except WeightsUnavailableError as exc:
            raise WeightsUnavailableError(
                f"recipe 'text-align' aligns photos with titles through the text model {TEXT_MODEL}, which is not on "
                f"this machine: {exc}"
            ) from None
