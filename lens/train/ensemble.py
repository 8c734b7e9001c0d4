"""``proxy-ensemble``: trained heads on different backbones, joined into one model served by one vector.

The members are trained head models (``kind: "head"``; by default the Proxy-Anchor heads on mobilenet-v2,
efficientnet-lite0 and efficientnet-lite2) or fine-tuned backbones (``proxy-<backbone> --trainable-blocks k``, an
``embedder``: served end to end, its catalog vectors the ones its training published). A member that is not saved
yet is first trained by its own recipe with that recipe's defaults, on the same split and seed (so in the default
build, where ``proxy-efficientnet-lite2`` is already trained, this step trains the two others). The joined model
copies every member's weights into its own safetensors (:mod:`lens.encoders.trained.ensemble`): its vector is the
members' unit vectors side by side over ``sqrt(n)``, so the inner product is the mean of the members' cosines.
Nothing is trained at the join.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from lens.catalog import Catalog
from lens.embed import embed_catalog
from lens.encoders import create_encoder
from lens.encoders.trained import WEIGHTS_NAME, find_trained_models, read_model_config
from lens.encoders.trained.ensemble import MODEL_PART, build_ensemble, join_parts, model_part_encoder
from lens.encoders.trained.heads import project_rows
from lens.errors import LensError
from lens.train.common import (
    RunContext,
    TrainResult,
    base_config,
    heldout_metrics,
    precision_at,
    save_run,
    split_positions,
    timer,
)
from lens.train.loop import TrainConfig, setting
from lens.train.registry import RECIPES, default_config, parse_recipe, register_recipe
from lens.train.split import Split, load_split

#: The default members: the Proxy-Anchor heads on the three pretrained CNNs lens builds (docs/training.md, issue 12
#: section 6).
DEFAULT_MEMBERS = "proxy-mobilenet-v2,proxy-efficientnet-lite0,proxy-efficientnet-lite2"


@dataclass
class EnsembleConfig(TrainConfig):
    """``proxy-ensemble`` settings: its members. Nothing trains at the join, so the generic training settings are
    plain fields here, not settings: neither ``python -m lens train proxy-ensemble`` nor the Train page offers
    them (each member trains with its own recipe's defaults)."""

    epochs: int = 1
    batch_size: int = 64
    lr: float = 0.0
    weight_decay: float = 0.0
    steps_per_epoch: int | None = None
    members: str = setting(
        DEFAULT_MEMBERS,
        "comma-separated trained models to join (heads on a frozen CNN, or fine-tuned ones: --trainable-blocks); a "
        "missing one is trained first by the recipe of the same name with its defaults",
    )

    def backbones(self) -> tuple[str, ...]:
        """The pretrained encoders the members run on: a saved member's base encoder, else the backbone its recipe
        spelling names (``proxy-mobilenet-v2`` -> ``mobilenet-v2``); what the build must have embedded first."""
        from lens.encoders._registry import registered_names

        saved = find_trained_models()
        known = set(registered_names())
        found: list[str] = []
        for name in self.member_names():
            backbone = None
            if name in saved:
                try:
                    member = read_model_config(saved[name])
                    # a head names its base in arch; a fine-tuned model (embedder) in its config
                    backbone = member.get("arch", {}).get("base_encoder") or member.get("base_encoder")
                except LensError:
                    backbone = None
            if backbone is None:
                try:
                    backbone = parse_recipe(name)[1]
                except LensError:  # neither saved nor a recipe: training it will say so
                    continue
            if backbone and backbone in known and backbone not in found:
                found.append(str(backbone))
        return tuple(found)

    def member_epochs(self, models_dir: str | os.PathLike | None = None) -> int:
        """Training epochs this run will go through: those of every member not saved in ``models_dir`` yet (by its
        recipe's defaults), plus one for the join (the build's progress counts them)."""
        saved = find_trained_models(models_dir)
        total = 1
        for name in self.member_names():
            if name not in saved:
                try:
                    total += int(default_config(name, seed=self.seed).epochs)
                except LensError:
                    continue
        return total

    def member_names(self) -> list[str]:
        names = [n.strip() for n in self.members.split(",") if n.strip()]
        if len(names) < 2 or len(set(names)) != len(names):
            raise LensError(f"--members needs two or more different trained models, got {self.members!r}.")
        return names


def _train_member(name: str, catalog: Catalog, split: Split, config: EnsembleConfig, ctx: RunContext) -> None:
    """Train member ``name`` (a recipe spelling such as ``proxy-mobilenet-v2``) with its recipe's defaults."""
    try:
        member_config = default_config(name, seed=config.seed)
    except LensError as exc:
        raise LensError(
            f"proxy-ensemble member {name!r} is not a trained model in {ctx.models_dir or 'the models folder'} and not "
            f"a recipe to train it with ({exc}); train it first or pass other --members."
        ) from None
    ctx.log(f"proxy-ensemble: training member {name} ({member_config.recipe} with its defaults)")
    member_ctx = replace(ctx, name=name, out_dir=ctx.out_dir.parent / name)
    member_ctx.out_dir.mkdir(parents=True, exist_ok=True)
    RECIPES[member_config.recipe].run(catalog, split, member_config, member_ctx)


def _same_split(member: dict, catalog: Catalog, split: Split) -> bool:
    """Whether a member model was trained on ``catalog`` with ``split``'s held-out queries (its saved split file when
    it is still there, else its catalog fingerprint and part sizes)."""
    if member.get("catalog_fingerprint") != catalog.fingerprint():
        return False
    path = Path(str(member.get("split") or ""))
    if member.get("split") and path.is_file():
        try:
            return set(load_split(path).query) == set(split.query)
        except LensError:
            return False
    counts = {"train": len(split.train), "val": len(split.val), "query": len(split.query)}
    return member.get("split_counts") == counts


@register_recipe(
    "proxy-ensemble",
    EnsembleConfig,
    summary="trained heads on different backbones (proxy-<backbone>) joined into one vector: mean cosine",
)
def train_ensemble(catalog: Catalog, split: Split, config: EnsembleConfig, ctx: RunContext) -> TrainResult:
    """Join ``config.members`` (training the missing ones first); save as ``ctx.name``; evaluate."""
    from safetensors.torch import load_file

    elapsed = timer()
    names = config.member_names()
    for name in names:
        if name not in find_trained_models(ctx.models_dir):
            _train_member(name, catalog, split, config, ctx)
    folders = find_trained_models(ctx.models_dir)
    member_configs, state, parts = [], {}, []
    for i, name in enumerate(names):
        member = read_model_config(folders[name])
        fine_tuned = member.get("kind") == "image" and member.get("arch", {}).get("type") == MODEL_PART
        if member.get("kind") != "head" and not fine_tuned:
            raise LensError(
                f"proxy-ensemble member {name!r} is a {member.get('kind')!r} model; members must be heads on a frozen "
                "encoder (proxy-<backbone>, triplet-<backbone>) or fine-tuned backbones (proxy-<backbone> "
                "--trainable-blocks k)."
            )
        if not _same_split(member, catalog, split):
            # a member trained on another split may have trained on this split's held-out queries
            raise LensError(
                f"proxy-ensemble member {name!r} was trained on another catalog or split than this run's "
                f"({catalog.name}); retrain it on this split or leave it out of --members."
            )
        member_configs.append(member)
        part = dict(member["arch"])
        if fine_tuned:  # served as the member was: its name + weights hash keep its cached catalog vectors usable
            part.update(
                model=name,
                weights_id=str(member["weights_sha256"]),
                preprocess=member["preprocess"],
                dim=int(member["dim"]),
                base_encoder=str(member.get("base_encoder", part["backbone"])),
            )
        parts.append(part)
        state.update({f"parts.{i}.{k}": v for k, v in load_file(str(folders[name] / WEIGHTS_NAME)).items()})
    arch = {"type": "ensemble", "parts": parts, "members": names}
    heads = build_ensemble(arch)
    heads.load_state_dict({k.removeprefix("parts."): v for k, v in state.items()}, strict=True)

    # the catalog's vectors: every member's base vectors (cached), through its head, joined; a fine-tuned member's
    # own (cached when its training published them), as they are
    base_sets = [
        embed_catalog(
            catalog,
            model_part_encoder(part, head) if part.get("type") == MODEL_PART else create_encoder(part["base_encoder"]),
            cache_dir=ctx.cache_dir,
        )
        for part, head in zip(parts, heads, strict=True)
    ]
    projections = [torch.nn.Identity() if p.get("type") == MODEL_PART else h for p, h in zip(parts, heads, strict=True)]
    rows = [{item_id: r for r, item_id in enumerate(s.ids)} for s in base_sets]
    ids = [i for i in base_sets[0].ids if all(i in row for row in rows[1:])]  # photos every base could read
    vectors = join_parts(
        [
            project_rows(head, torch.from_numpy(s.vectors[[row[i] for i in ids]]))
            for head, s, row in zip(projections, base_sets, rows, strict=True)
        ]
    )
    positions = split_positions(ids, split)
    gallery = np.concatenate([positions["train"], positions["val"]])
    labels = catalog.labels(split.label_column, ids=ids)
    history: list[dict[str, float]] = []
    if len(positions["val"]):
        queries = np.arange(len(positions["train"]), len(gallery))
        val = precision_at(vectors[gallery], labels[gallery], queries, 5)
        history.append({"epoch": 1.0, "seconds": elapsed(), "val_p@5": val})
        ctx.log(f"proxy-ensemble: {', '.join(names)}: validation P@5 {val:.4f}")
    metrics = heldout_metrics(vectors, ids, catalog, split)
    train_seconds = elapsed()
    largest = max(member_configs, key=lambda m: int(m["preprocess"]["input_size"]))
    config_json = {
        "kind": "ensemble",
        "recipe": config.recipe,
        "arch": arch,
        "dim": int(vectors.shape[1]),
        # each base preprocesses for itself; the largest input is recorded (informational, as for ``concat``)
        "preprocess": largest["preprocess"],
        "precision": "fp32",
        "pooling": "mean cosine of trained "
        + ", ".join(
            ("fine-tuned " if p.get("type") == MODEL_PART else "head on ") + str(p["base_encoder"]) for p in parts
        ),
        "description": f"{' + '.join(names)}: unit vectors side by side (inner product = mean cosine), "
        f"trained on {catalog.name}",
        "license": "as the base weights",
        "members": {name: str(m.get("weights_sha256", "")) for name, m in zip(names, member_configs, strict=True)},
        **base_config(config, catalog, split, ctx),
        "history": history,
        "train_seconds": train_seconds,
        "heldout": metrics,
    }
    return save_run(ctx, catalog, state, config_json, history, train_seconds, metrics, ids, vectors)
