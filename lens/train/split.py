"""Train / validation / query split of a catalog, by product id and stratified by label, saved as JSON.

Training reads only ``train`` (and ``val`` for its per-epoch check); the ``query`` ids are the evaluation queries,
so no trained model has seen them. The split is a pure function of (catalog ids, labels, fractions, seed).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lens.catalog import Catalog
from lens.errors import LensError
from lens.store import read_json, resolve_cache_dir, utc_now, write_json

SPLIT_FORMAT = "lens-split-v1"


@dataclass(frozen=True)
class Split:
    """Disjoint id lists. ``query`` = held-out evaluation queries; ``val`` = per-epoch validation queries."""

    train: list[str]
    val: list[str]
    query: list[str]
    label_column: str
    seed: int
    catalog: str = ""
    catalog_fingerprint: str = ""
    fractions: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ``LensError`` if any id is in two parts or repeated."""
        parts = {"train": self.train, "val": self.val, "query": self.query}
        seen: dict[str, str] = {}
        for part, ids in parts.items():
            for item_id in ids:
                if item_id in seen:
                    raise LensError(f"split is invalid: id {item_id!r} is in both {seen[item_id]!r} and {part!r}.")
                seen[item_id] = part

    def to_json(self) -> dict:
        return {
            "format": SPLIT_FORMAT,
            **asdict(self),
            "counts": {"train": len(self.train), "val": len(self.val), "query": len(self.query)},
        }


def make_split(
    catalog: Catalog,
    *,
    label_column: str | None = None,
    query_fraction: float = 0.2,
    val_fraction: float = 0.1,
    min_per_label: int = 3,
    seed: int = 0,
) -> Split:
    """Split ``catalog`` by item id, stratified by label.

    For each label with at least ``min_per_label`` items, ``max(1, round(query_fraction * n))`` items become
    queries and ``round(val_fraction * n)`` validation items; at least one item of the label stays in ``train`` so
    that a query always has a relevant item in the gallery. Labels with fewer items go wholly to ``train`` (they
    cannot be evaluated: a query needs another item of its label). Within each part ids keep catalog order.
    """
    if not (0 < query_fraction < 1 and 0 <= val_fraction < 1 and query_fraction + val_fraction < 1):
        raise LensError(f"split fractions must be in (0, 1) and sum below 1, got {query_fraction} + {val_fraction}.")
    column = label_column or catalog.label_column
    labels = catalog.labels(column).astype(str)
    ids = catalog.ids
    rng = np.random.default_rng(seed)
    part = np.zeros(len(ids), dtype=np.int8)  # 0 train, 1 val, 2 query
    for label in np.unique(labels):  # sorted: deterministic
        members = np.flatnonzero(labels == label)
        n = len(members)
        if n < min_per_label or label == "":
            continue
        order = rng.permutation(members)
        n_query = max(1, int(round(query_fraction * n)))
        n_val = int(round(val_fraction * n))
        n_val = max(0, min(n_val, n - n_query - 1))
        part[order[:n_query]] = 2
        part[order[n_query : n_query + n_val]] = 1
    split = Split(
        train=[ids[i] for i in np.flatnonzero(part == 0)],
        val=[ids[i] for i in np.flatnonzero(part == 1)],
        query=[ids[i] for i in np.flatnonzero(part == 2)],
        label_column=column,
        seed=seed,
        catalog=catalog.name,
        catalog_fingerprint=catalog.fingerprint(),
        fractions={"query": query_fraction, "val": val_fraction},
    )
    split.check()
    return split


def save_split(split: Split, path: str | os.PathLike) -> Path:
    """Write the split as JSON (atomically)."""
    target = Path(path)
    data = split.to_json()
    data["created"] = utc_now()
    write_json(target, data)
    return target


def load_split(path: str | os.PathLike, catalog: Catalog | None = None) -> Split:
    """Read a split JSON; with ``catalog``, check that every id exists in it.

    Raises:
        LensError: the file is missing or malformed, parts overlap, or ids are unknown to ``catalog``.
    """
    p = Path(path)
    data = read_json(p)
    if data is None:
        if not p.is_file():
            raise LensError(f"split file not found: {p}. Create one with `python -m lens train ... --split {p}`.")
        raise LensError(f"cannot read split file {p}: not a JSON object. Delete it or pass another --split.")
    if data.get("format") != SPLIT_FORMAT:
        raise LensError(f"{p} is not a lens split file (format {data.get('format')!r}, expected {SPLIT_FORMAT!r}).")
    parts = {name: data.get(name) for name in ("train", "val", "query")}
    wrong = [
        name for name, ids in parts.items() if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
    ]
    if not isinstance(data.get("label_column"), str):
        wrong.append("label_column")
    if not isinstance(data.get("seed"), int) or isinstance(data.get("seed"), bool):
        wrong.append("seed")
    fractions = data.get("fractions", {})
    if not isinstance(fractions, dict) or not all(isinstance(v, (int, float)) for v in fractions.values()):
        wrong.append("fractions")
    if wrong:
        raise LensError(
            f"{p} is not a valid lens split file: {', '.join(wrong)} missing or of the wrong type (train, val and "
            "query are lists of ids, label_column a string, seed an integer). Delete it to have `python -m lens "
            "train` make a new one, or pass another --split."
        )
    split = Split(
        train=list(parts["train"]),  # type: ignore[arg-type]
        val=list(parts["val"]),  # type: ignore[arg-type]
        query=list(parts["query"]),  # type: ignore[arg-type]
        label_column=data["label_column"],
        seed=data["seed"],
        catalog=str(data.get("catalog", "")),
        catalog_fingerprint=str(data.get("catalog_fingerprint", "")),
        fractions={str(k): float(v) for k, v in fractions.items()},
    )
    split.check()
    if catalog is not None:
        known = set(catalog.ids)
        unknown = [i for i in split.train + split.val + split.query if i not in known]
        if unknown:
            raise LensError(
                f"split {p} names {len(unknown)} id(s) that catalog {catalog.name!r} lacks (e.g. {unknown[:3]}); "
                "it was made for another catalog: pass the matching --catalog or make a new split."
            )
    return split


def default_split_path(catalog: Catalog, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/splits/<catalog name>-<fingerprint[:12]>-seed<seed>.json``: one shared split per catalog and seed."""
    return resolve_cache_dir(cache_dir) / "splits" / f"{catalog.name}-{catalog.fingerprint()[:12]}-seed{seed}.json"


def get_split(
    catalog: Catalog,
    path: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    label_column: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[Split, Path]:
    """Load the split at ``path`` (default :func:`default_split_path`), or make and save it there if missing."""
    target = Path(path) if path is not None else default_split_path(catalog, seed, cache_dir)
    if target.is_file():
        return load_split(target, catalog), target
    split = make_split(catalog, label_column=label_column, seed=seed)
    save_split(split, target)
    return split, target
