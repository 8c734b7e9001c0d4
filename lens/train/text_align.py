"""``text-align``: text -> image search without CLIP weights.

A frozen image encoder (default ``concat-colour``: the three pretrained CNNs' pooled vectors and a colour histogram,
taken from the lens embedding cache when present) and a frozen text side (all-MiniLM-L6-v2's 384-d sentence vector
beside a bag of the title's words over the training titles' vocabulary) are each followed by a trainable linear
projection (:mod:`lens.encoders.trained.text_align`) into a shared ``embedding_dim`` space, trained with CLIP's
symmetric InfoNCE and a learnable temperature on (photo, ``productDisplayName``) pairs of the training split; four
such pairs with seeds ``seed..seed+3`` (``--ensemble``), served as one row per side (their unit vectors concatenated
/ 2: the score is the mean cosine), then the attribute blocks (weight chosen on validation), then (``--final-fit
train+val``) everything trained again on train + validation. Why these choices (each measured on validation):
docs/training.md, "4. Text side" and "4b".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lens.catalog import Catalog
from lens.encoders.minilm import MINILM_DIM, MINILM_NAME, load_minilm
from lens.encoders.trained.heads import project_rows
from lens.encoders.trained.text_align import (
    PROJECTIONS,
    Projections,
    build_projections,
    build_vocabulary,
    text_features,
)
from lens.errors import LensError
from lens.metrics import text_to_image_recall
from lens.train.common import (
    RunContext,
    TrainResult,
    base_config,
    embed_with_base,
    fit_with_bar,
    heldout_metrics,
    inference_vectors,
    save_run,
    shuffled_epoch,
    split_positions,
    timer,
)
from lens.train.loop import TrainConfig, setting
from lens.train.losses import SymmetricInfoNCE
from lens.train.registry import register_recipe
from lens.train.split import Split

TEXT_COLUMN = "productDisplayName"
#: Hidden width of both projections (``--projection mlp``).
HIDDEN = 512
#: The attribute weights tried on validation when ``--attribute-weight`` is -1 (0 = no attribute blocks).
ATTRIBUTE_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
#: What the saved model is trained on (``--final-fit``).
FINAL_FITS = ("train+val", "train")
#: Epochs, learning rate and weight decay of the attribute classifiers (full-batch AdamW on the training rows).
ATTRIBUTE_EPOCHS, ATTRIBUTE_LR, ATTRIBUTE_DECAY = 100, 1e-2, 1e-3


@dataclass
class TextAlignConfig(TrainConfig):
    """``text-align`` settings; chosen on validation text R@k (docs/training.md, "4. Text side")."""

    backbone: str = setting(
        "concat-colour", "frozen image encoder (any image encoder; concat-colour = 3 CNNs + a colour histogram)"
    )
    epochs: int = setting(20, "passes over the training pairs", minimum=1)
    batch_size: int = setting(256, "(photo, title) pairs per step", flag="--batch", minimum=1)
    weight_decay: float = setting(1e-1, "AdamW weight decay of the projections")
    temperature: float = setting(0.07, "initial InfoNCE temperature (learnable)")
    embedding_dim: int = setting(256, "shared-space dimension", minimum=1)
    projection: str = setting(
        "linear", "projection of each side: linear, or mlp (Linear-GELU-Linear)", choices=PROJECTIONS
    )
    vocab_min_count: int = setting(
        2, "bag of words beside MiniLM: words in at least this many training titles (0 = MiniLM only)", minimum=0
    )
    bow_weight: float = setting(1.0, "weight of the bag of words against MiniLM's unit vector")
    attributes: str = setting(
        "gender,articleType,baseColour",
        "catalog columns whose class probabilities both sides append (two-stage score; empty = none)",
    )
    ensemble: int = setting(
        4,
        "projection pairs trained with seeds seed, seed+1, ...; each unit length, concatenated / sqrt(M) (the score "
        "is the mean of their cosines)",
        minimum=1,
    )
    final_fit: str = setting(
        "train+val",
        "rows of the saved model: train+val (the settings fixed, the attribute weight chosen on validation, the "
        "projections and classifiers are trained again on train + validation; the validation figures are the first "
        "fit's) or train (the first fit is saved)",
        choices=FINAL_FITS,
    )
    attribute_weight: float = setting(
        -1.0, "weight of each attribute block (-1 = chosen on validation text R@10; 0 = no attribute blocks)"
    )


class _Trainable(nn.Module):
    def __init__(self, projections: Projections, loss: SymmetricInfoNCE) -> None:
        super().__init__()
        self.projections, self.loss = projections, loss


@register_recipe(
    "text-align",
    TextAlignConfig,
    summary="projections of a frozen image encoder and MiniLM into one space (text, image+text queries)",
)
def train_text_align(
    catalog: Catalog, split: Split, config: TextAlignConfig, ctx: RunContext, text_column: str = TEXT_COLUMN
) -> TrainResult:
    """Train the two projections; save as ``ctx.name``; report image retrieval and text->image R@k on held-out items."""
    if text_column not in catalog.columns:
        raise LensError(
            f"text-align needs a text column {text_column!r}; catalog {catalog.name!r} has "
            f"{', '.join(catalog.columns)}."
        )
    elapsed = timer()
    base, image_set = embed_with_base(catalog, config.backbone, ctx)
    ids = image_set.ids
    titles = [str(t) for t in catalog.labels(text_column, ids=ids)]
    ctx.log(f"text-align: embedding {len(titles)} titles with {MINILM_NAME}")
    minilm = load_minilm().embed(titles)
    parts = split_positions(ids, split)
    image_feats = image_set.vectors

    def fit_all(fit_parts: dict[str, np.ndarray], fit_config: TextAlignConfig, first_stage: int) -> _Fitted:
        return _fit_projections(
            catalog, ids, titles, minilm, image_feats, base, fit_parts, fit_config, ctx, first_stage
        )

    fitted = fit_all(parts, config, 1)
    if config.final_fit == "train+val" and len(parts["val"]):
        # the settings are fixed now (the attribute weight chosen on validation): train once more on train +
        # validation, 14 % more pairs on the sample catalog (docs/training.md, "4b")
        weight = fitted.attributes[0]["weight"] if fitted.attributes else 0.0
        ctx.log(f"text-align: training again on train + validation ({len(parts['train']) + len(parts['val'])} pairs)")
        refit_parts = {**parts, "train": np.concatenate([parts["train"], parts["val"]]), "val": parts["val"][:0]}
        refit = fit_all(refit_parts, replace(config, attribute_weight=weight), config.ensemble + 1)
        refit.history = fitted.history + refit.history
        fitted = refit
    arch, projections, history, text_feats = fitted.arch, fitted.projections, fitted.history, fitted.text_feats
    vocabulary, attributes, temperatures = arch.get("vocabulary") or [], fitted.attributes, fitted.temperatures
    train_seconds = elapsed()

    # the saved encoder's own projections (TextAlignEncoder.project_*_features run these same modules)
    image_vecs = project_rows(projections.image_side, image_feats)
    text_vecs = project_rows(projections.text_side, text_feats)
    metrics = heldout_metrics(image_vecs, ids, catalog, split)
    query = parts["query"]
    metrics.update(text_to_image_recall(text_vecs[query], image_vecs, query))
    heldout_only = text_to_image_recall(text_vecs[query], image_vecs[query], np.arange(len(query)))
    metrics.update({f"{k}_heldout_gallery": v for k, v in heldout_only.items()})
    config_json = {
        "kind": "text-align",
        "recipe": config.recipe,
        "arch": arch,
        "dim": projections.dim,
        "preprocess": base.spec.preprocess.key(),
        "precision": base.precision,
        "pooling": "trained projection",
        "description": f"{config.backbone} + {MINILM_NAME}{' + bag of words' if vocabulary else ''}, {config.projection} "
        f"projections trained with InfoNCE on {catalog.name} titles"
        + (f", + {', '.join(a['column'] for a in attributes)} probabilities" if attributes else ""),
        "license": "as the base weights (Apache-2.0)",
        "temperature": temperatures[0] if len(temperatures) == 1 else temperatures,
        **base_config(config, catalog, split, ctx),
        "history": history,
        "train_seconds": train_seconds,
    }
    return save_run(
        ctx, catalog, projections.state_dict(), config_json, history, train_seconds, metrics, ids, image_vecs
    )


@dataclass
class _Fitted:
    """The outcome of one fit: architecture, projections (with the attribute blocks when chosen), history, the text
    projection's input rows and the members' temperatures."""

    arch: dict
    projections: Projections
    history: list[dict[str, float]]
    text_feats: np.ndarray
    attributes: list[dict] | None
    temperatures: list[float]


def _fit_projections(
    catalog: Catalog,
    ids: list[str],
    titles: list[str],
    minilm: np.ndarray,
    image_feats: np.ndarray,
    base: Any,
    parts: dict[str, np.ndarray],
    config: TextAlignConfig,
    ctx: RunContext,
    first_stage: int,
) -> _Fitted:
    """The ensemble's members trained on the ``parts["train"]`` rows (validated on ``parts["val"]``), then the
    attribute blocks (their weight chosen on ``parts["val"]`` unless ``config.attribute_weight`` fixes it). History rows
    of member ``m`` get ``stage`` ``first_stage + m`` when there is more than one stage."""
    train_idx, val_idx = parts["train"], parts["val"]
    # the vocabulary comes from the fitted titles only (no held-out or validation word leaks into the first fit)
    vocabulary = (
        build_vocabulary([titles[i] for i in train_idx], config.vocab_min_count) if config.vocab_min_count else []
    )
    text_arch = {"vocabulary": vocabulary, "bow_weight": config.bow_weight} if vocabulary else {}
    text_feats = text_features(minilm, titles, text_arch)
    arch = {
        "type": "text-align",
        "image_encoder": config.backbone,
        "image_weights_id": base.weights_id,
        "image_precision": base.precision,
        "image_dim": base.dim,
        "text_model": MINILM_NAME,
        "text_dim": MINILM_DIM + len(vocabulary),
        "dim": config.embedding_dim,
        "hidden": HIDDEN,
        "projection": config.projection,
        **text_arch,
    }
    img_t, txt_t = torch.from_numpy(image_feats), torch.from_numpy(text_feats)
    staged = config.ensemble > 1 or first_stage > 1 or config.final_fit == "train+val"
    history: list[dict[str, float]] = []
    members: list[Projections] = []
    temperatures: list[float] = []
    for m in range(config.ensemble):
        stage = first_stage + m
        member, member_history, temperature = _train_member(
            arch, img_t, txt_t, train_idx, val_idx, config, m, stage, ctx
        )
        members.append(member)
        temperatures.append(temperature)
        history += [{**row, "stage": float(stage)} for row in member_history] if staged else member_history
    if config.ensemble > 1:
        arch["members"] = config.ensemble
        projections = build_projections(arch)
        for side in ("image", "text"):
            for m, member in enumerate(members):
                getattr(projections, side).members[m].load_state_dict(getattr(member, side).state_dict())
        ctx.log(f"text-align: {config.ensemble} projections (seeds {config.seed}..{config.seed + config.ensemble - 1})")
    else:
        projections = members[0]
    attributes, weight_rows = _attribute_blocks(
        catalog, ids, parts, projections, arch, image_feats, text_feats, config, ctx
    )
    if attributes is not None:
        arch["attributes"] = attributes
        projections = build_projections(arch)
        projections.load_state_dict(weight_rows, strict=True)
    return _Fitted(arch, projections, history, text_feats, attributes, temperatures)


def _train_member(
    arch: dict,
    img_t: torch.Tensor,
    txt_t: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TextAlignConfig,
    m: int,
    stage: int,
    ctx: RunContext,
) -> tuple[Projections, list[dict[str, float]], float]:
    """Member ``m`` of the ensemble: one pair of projections trained with seed ``config.seed + m`` (its own
    initialisation and batch order; member 0 is the single model of ``--ensemble 1``), as the run's ``stage``-th
    training (stage 1 checkpoints to ``checkpoint.pt``, stage k > 1 to ``checkpoint-stage<k>.pt``). Returns the
    projections, the history and the learned temperature."""
    member_config = replace(config, seed=config.seed + m)
    torch.manual_seed(member_config.seed)
    projections = build_projections(arch)
    model = _Trainable(projections, SymmetricInfoNCE(config.temperature))

    def loss_step(batch: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(batch)
        return model.loss(projections.image(img_t[index]), projections.text(txt_t[index]))

    def on_epoch(epoch: int, row: dict[str, float]) -> dict[str, float]:
        extra = {"temperature": model.loss.temperature}
        if len(val_idx):
            iv = inference_vectors(projections.image, img_t[torch.from_numpy(val_idx)])
            tv = inference_vectors(projections.text, txt_t[torch.from_numpy(val_idx)])
            extra["val_text_r@5"] = text_to_image_recall(tv, iv, np.arange(len(val_idx)), (5,))["text_r@5"]
        return extra

    history = fit_with_bar(
        model,
        loss_step,
        lambda epoch: shuffled_epoch(train_idx, member_config, epoch),
        member_config,
        ctx,
        label=f"stage {stage}" if stage > 1 or config.ensemble > 1 else "",
        checkpoint=ctx.out_dir / f"checkpoint-stage{stage}.pt" if stage > 1 else None,
        on_epoch=on_epoch,
    )
    return projections, history, model.loss.temperature


def _codes(values: np.ndarray, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(str(v), -1) for v in values], dtype=np.int64)


def _fit_classifier(head: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    """Full-batch AdamW cross-entropy on the rows with a known class (``y >= 0``)."""
    torch.manual_seed(seed)
    keep = y >= 0
    x, y = x[keep], y[keep]
    optimizer = torch.optim.AdamW(head.parameters(), lr=ATTRIBUTE_LR, weight_decay=ATTRIBUTE_DECAY)
    for _ in range(ATTRIBUTE_EPOCHS):
        optimizer.zero_grad()
        F.cross_entropy(head(x), y).backward()
        optimizer.step()


def _attribute_blocks(
    catalog: Catalog,
    ids: list[str],
    parts: dict[str, np.ndarray],
    projections: Projections,
    arch: dict,
    image_feats: np.ndarray,
    text_feats: np.ndarray,
    config: TextAlignConfig,
    ctx: RunContext,
) -> tuple[list[dict] | None, dict[str, torch.Tensor]]:
    """Train one classifier per attribute on each side (training rows), pick the blocks' weight on validation text
    R@10 (among the validation photos + against train + validation); ``(None, {})`` when no weight > 0 pays."""
    columns = [c.strip() for c in config.attributes.split(",") if c.strip()]
    if not columns or config.attribute_weight == 0:
        return None, {}
    missing = [c for c in columns if c not in catalog.columns]
    if missing:
        raise LensError(
            f"text-align --attributes names {', '.join(missing)}, not columns of catalog {catalog.name!r} "
            f"({', '.join(catalog.columns)}); pass --attributes '' to train without attribute blocks."
        )
    train_idx, val_idx = parts["train"], parts["val"]
    attributes = []
    for column in columns:
        values = catalog.labels(column, ids=ids)
        classes = sorted({str(v) for v in values[train_idx]})
        attributes.append({"column": column, "classes": classes, "weight": 1.0, "codes": _codes(values, classes)})
    full = build_projections({**arch, "attributes": attributes})
    full.load_state_dict(projections.state_dict(), strict=False)
    img_t, txt_t = torch.from_numpy(image_feats), torch.from_numpy(text_feats)
    tr = torch.from_numpy(train_idx)
    for j, attr in enumerate(attributes):
        y = torch.from_numpy(attr.pop("codes"))[tr]
        _fit_classifier(full.image_heads[j], img_t[tr], y, config.seed + j)
        _fit_classifier(full.text_heads[j], txt_t[tr], y, config.seed + j)
    if config.attribute_weight > 0:
        weight = float(config.attribute_weight)
    elif len(val_idx) == 0:
        ctx.log("text-align: no validation rows to choose the attribute weight on; attribute blocks left out")
        return None, {}
    else:
        gallery = np.concatenate([train_idx, val_idx])
        best = (-1.0, 0.0)
        for w in ATTRIBUTE_WEIGHTS:
            full.attribute_weights = [w] * len(attributes)
            iv = project_rows(full.image_side, img_t[torch.from_numpy(gallery)])
            tv = project_rows(full.text_side, txt_t[torch.from_numpy(val_idx)])
            among = text_to_image_recall(tv, iv[len(train_idx) :], np.arange(len(val_idx)), (1, 10))
            against = text_to_image_recall(tv, iv, np.arange(len(train_idx), len(gallery)), (1, 10))
            score = among["text_r@10"] + against["text_r@10"]
            ctx.log(
                f"text-align: attribute weight {w}: validation text R@1 / R@10 among {len(val_idx)} "
                f"{among['text_r@1']:.3f} / {among['text_r@10']:.3f}, vs {len(gallery)} "
                f"{against['text_r@1']:.3f} / {against['text_r@10']:.3f}"
            )
            if score > best[0] + 1e-9:
                best = (score, w)
        weight = best[1]
    if weight == 0:
        return None, {}
    for attr in attributes:
        attr["weight"] = weight
    ctx.log(f"text-align: attribute blocks {', '.join(columns)} at weight {weight}")
    return attributes, full.state_dict()
