"""``python -m lens <command>``: a thin command line over the library.

Every command maps onto library functions; bad input ends with a one-line ``error: ...`` on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lens.errors import LensError

if TYPE_CHECKING:  # the CLI imports torch-backed modules lazily, so that `--help` and bad input answer at once
    from lens.catalog import Catalog
    from lens.encoders.base import Precision

EXIT_USAGE = 2


@dataclass
class CatalogOptions:
    """Which catalog to use and how to read it."""

    path: str | None = None
    label: str = "articleType"
    id_column: str = "id"
    image_column: str = "image"
    skip_missing: bool = False
    cache_dir: str | None = None

    def load(self):  # noqa: ANN201 - returns lens.catalog.Catalog (imported lazily for a fast --help)
        from lens.catalog import default_catalog_path, load_catalog

        path = self.path or str(default_catalog_path())
        return load_catalog(
            path,
            label_column=self.label,
            id_column=self.id_column,
            image_column=self.image_column,
            on_missing="skip" if self.skip_missing else "error",
            cache_dir=Path(self.cache_dir).expanduser() if self.cache_dir else None,
        )


@dataclass
class RunOptions:
    """Where caches and weights live and how inference runs."""

    cache_dir: str | None = None
    weights_dir: str | None = None
    batch_size: int | None = None
    precision: Precision | None = None
    engine: str | None = None


def _catalog_options(args: argparse.Namespace) -> CatalogOptions:
    return CatalogOptions(
        args.catalog, args.label, args.id_column, args.image_column, args.skip_missing, getattr(args, "cache_dir", None)
    )


def _run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(args.cache_dir, args.weights_dir, args.batch_size, args.precision, getattr(args, "engine", None))


def _progress(desc: str, quiet: bool) -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    """A tqdm bar driven through lens's plain ``progress(done, total)`` callback."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    # disable=None: a bar on a terminal, silence when stderr is a log file (no thousand-line progress spam)
    bar = tqdm(total=0, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False, disable=None)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _parse_models(value: str | None, run: RunOptions) -> list[str]:
    """``a,b`` -> names; ``all`` or nothing -> every available pretrained encoder."""
    from lens.encoders import list_encoders

    if value and value != "all":
        from lens.encoders import encoder_status
        from lens.errors import WeightsUnavailableError

        names = list(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
        if not names:
            raise LensError(f"--models takes comma-separated encoder names or 'all', got '{value}'.")
        # Every name is checked (known, weights here) before the first one embeds the catalog for minutes.
        for name in names:
            status = encoder_status(name, run.weights_dir)  # UnknownEncoderError lists the known names
            if not status.available:
                raise WeightsUnavailableError(f"Weights for '{name}' are unavailable. To fix: {status.remedy}.")
        return names
    names = [info.name for info in list_encoders(available_only=True, include_test=False, weights_dir=run.weights_dir)]
    if not names:
        raise LensError("No pretrained encoder has its weights on this machine; `python -m lens encoders` says why.")
    return names


def _parse_ks(value: str) -> list[int]:
    try:
        ks = [int(k) for k in value.split(",") if k.strip()]
    except ValueError:
        raise LensError(f"--k takes comma-separated positive integers such as 1,5,10, got '{value}'.") from None
    if not ks or min(ks) < 1:
        raise LensError(f"--k takes comma-separated positive integers such as 1,5,10, got '{value}'.")
    return ks


def _parse_filters(values: Sequence[str] | None) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for value in values or []:
        column, sep, allowed = value.partition("=")
        if not sep or not column or not allowed:
            raise LensError(f"--filter takes COLUMN=VALUE[,VALUE...], e.g. gender=Women, got '{value}'.")
        filters.setdefault(column.strip(), []).extend(v.strip() for v in allowed.split(","))
    return filters


def _no_match(catalog, filters: dict[str, list[str]]) -> str:  # noqa: ANN001
    """Why a --filter keeps no item, with the values each filtered column does hold."""
    hints = []
    for column, values in filters.items():
        counts = catalog.table[column].astype(str).value_counts()
        absent = [v for v in values if v not in counts.index]
        shown = ", ".join(f"{v!r}" for v in counts.index[:8])
        hints.append(
            f"{column}: {'no item has ' + ', '.join(repr(v) for v in absent) if absent else 'values exist'}"
            f" (values: {shown}{', ...' if len(counts) > 8 else ''})"
        )
    return (
        "--filter keeps no catalog item (other than the query): "
        + "; ".join(hints)
        + ". Values are matched exactly, case included; loosen the filter."
    )


def _embed(catalog, model: str, run: RunOptions, quiet: bool):  # noqa: ANN001, ANN202
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder

    encoder = create_encoder(
        model, precision=run.precision, weights_dir=run.weights_dir, engine=run.engine, cache_dir=run.cache_dir
    )
    progress, close = _progress(f"embed {model}", quiet)
    try:
        return encoder, embed_catalog(
            catalog, encoder, cache_dir=run.cache_dir, batch_size=run.batch_size, progress=progress
        )
    finally:
        close()


def _positive(value: int | None, flag: str, default: int) -> int:
    if value is None:
        return default
    if value < 1:
        raise LensError(f"{flag} must be a positive integer, got {value}.")
    return value


def _check_output(csv: str | None, flag: str) -> None:
    """Refuse an output path that cannot be written before any work is done (a folder, a file in place of a folder)."""
    if not csv or csv == "-":
        return
    target = Path(csv)
    if target.is_dir():
        raise LensError(f"{flag} {csv} is a folder; name a file such as {target / 'results.csv'}.")
    parent = next((p for p in (target.parent, *target.parent.parents) if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise LensError(f"{flag} {csv}: {parent} is a file, not a folder; name another path.")


def _write_table(table: pd.DataFrame, csv: str | None) -> None:
    from lens.store import csv_safe

    if csv == "-":
        csv_safe(table).to_csv(sys.stdout, index=False)
    elif csv:
        Path(csv).parent.mkdir(parents=True, exist_ok=True)
        csv_safe(table).to_csv(csv, index=False)
        print(f"wrote {csv} ({len(table)} rows)", file=sys.stderr)
    else:
        with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 48):
            print(table.to_string(index=False))


# ---------------------------------------------------------------------------------------------------- commands


def _gpu_figures(name: str, cache_dir: str | None) -> str:
    """``torch 2400 / onnx 3100 -> onnx``: the recorded GPU decision of encoder ``name``, or when it is made."""
    from lens.encoders.gpu import recorded_decision

    decision = recorded_decision(name, cache_dir)
    if decision is None:
        return "measured on first use"
    figures = " / ".join(f"{engine} {rate:.0f}" for engine, rate in sorted(decision.img_per_s.items()))
    return f"{figures} -> {decision.chosen}"


def cmd_encoders(args: argparse.Namespace) -> int:
    from lens.encoders import list_encoders
    from lens.encoders.engines import visible_gpu

    gpu = visible_gpu()
    rows = []
    for info in list_encoders(weights_dir=args.weights_dir, engine=args.engine):
        spec = info.spec
        on_gpu = info.engine is not None and info.engine.device == "cuda"
        row = {
            "name": spec.name,
            "family": spec.family,
            "dim": spec.dim,
            "input": spec.preprocess.input_size,
            "text": "yes" if spec.supports_text else "no",
            "precision": spec.precision,
            "engine": info.engine.label if info.engine else "torch",
            "device": gpu.name if on_gpu and gpu is not None else "cpu",
            "available": "yes" if info.available else "no",
            "weights": info.status.where if info.available else f"unavailable: {info.status.remedy}",
        }
        if gpu is not None:  # torch and ONNX Runtime as measured on this GPU (recorded at the model's first batch)
            row["gpu img/s"] = _gpu_figures(spec.name, args.cache_dir) if on_gpu else ""
        rows.append(row)
    table = pd.DataFrame(rows)
    if args.csv:
        _write_table(table, args.csv)
        return 0
    # On a terminal the remedies are long: show them below the table, one per unavailable encoder.
    short = table.assign(
        weights=[w if not w.startswith("unavailable") else "unavailable (see below)" for w in table["weights"]]
    )
    _write_table(short, None)
    missing = table[table["available"] == "no"]
    if len(missing):
        print("\nTo make an unavailable encoder usable:")
        for name, weights in zip(missing["name"], missing["weights"]):
            print(f"  {name}: {weights.removeprefix('unavailable: ')}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    catalog = _catalog_options(args).load()
    run = _run_options(args)
    models = _parse_models(args.models, run)
    if not args.ray and (args.address or args.workers is not None):
        raise LensError("--address and --workers go with --ray (embedding on Ray Data); add --ray or drop them.")
    for model in models:
        if args.ray:
            from lens.distributed import embed_catalog_ray

            progress, close = _progress(f"embed {model} on Ray", args.quiet)
            try:
                _, embeddings = embed_catalog_ray(
                    catalog,
                    model,
                    workers=_positive(args.workers, "--workers", 2),
                    address=args.address,
                    batch_size=run.batch_size,
                    cache_dir=run.cache_dir,
                    weights_dir=run.weights_dir,
                    engine=run.engine,
                    progress=progress,
                )
            finally:
                close()
        else:
            _, embeddings = _embed(catalog, model, run, args.quiet)
        how = (
            "from cache"
            if embeddings.from_cache
            else f"in {embeddings.seconds:.1f}s ({len(catalog) / max(embeddings.seconds, 1e-9):.1f} img/s)"
        )
        print(
            f"{model}: {len(embeddings)} vectors of {embeddings.dim}-d for catalog '{catalog.name}' {how}; "
            f"{len(embeddings.failed)} unreadable images"
        )
        for item_id, reason in embeddings.failed[:20]:
            print(f"  skipped {item_id}: {reason}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from lens.index import DEFAULT_N_TREES, DEFAULT_SEARCH_K, build_index

    catalog = _catalog_options(args).load()
    run = _run_options(args)
    trees = _positive(args.trees, "--trees", DEFAULT_N_TREES)
    search_k = args.search_k if args.search_k is not None else DEFAULT_SEARCH_K
    if args.update and args.rebuild:
        raise LensError(
            "--update keeps the index of an older catalog and adds a delta; --rebuild builds it anew: pick one."
        )
    if args.no_rebuild and not args.update:
        raise LensError("--no-rebuild goes with --update (it keeps the delta past the threshold); add --update.")
    if _sharding(args, catalog):
        return _index_sharded(args, catalog, run, trees, search_k)
    for model in _parse_models(args.models, run):
        _, embeddings = _embed(catalog, model, run, args.quiet)
        started = time.perf_counter()
        if args.update:
            from lens.delta import update_index

            update = update_index(
                embeddings,
                cache_dir=run.cache_dir,
                n_trees=trees,
                search_k=search_k,
                rebuild="never" if args.no_rebuild else "now",
            )
            print(f"{model}: {update.describe()}")
            continue
        index = build_index(
            embeddings,
            cache_dir=run.cache_dir,
            n_trees=trees,
            search_k=search_k,
            rebuild=args.rebuild,
        )
        path = getattr(index, "path", None)  # an Annoy index has a file; the exact one (tiny catalogs) has none
        size = Path(path).stat().st_size / 2**20 if path else 0.0
        print(
            f"{model}: annoy index of {len(index)} items, {trees} trees, {size:.1f} MiB, "
            f"ready in {time.perf_counter() - started:.1f}s at {getattr(index, 'path', '')}"
        )
    return 0


def _sharding(args: argparse.Namespace, catalog: Catalog) -> bool:
    """Whether ``--shards`` asks for a sharded index; checks ``--shards`` / ``--by`` before anything is embedded."""
    if args.shards is None:
        if args.by is not None:
            raise LensError("--by chooses how --shards splits the catalog: give --shards N too.")
        return False
    _positive(args.shards, "--shards", 1)
    by = args.by or "hash"
    if by != "hash" and by not in catalog.table.columns:
        columns = ", ".join(c for c in catalog.table.columns if c not in ("id", "image"))
        raise LensError(f"Cannot shard by '{by}': the catalog has no such column. Use --by hash or one of: {columns}.")
    return True


def _index_sharded(args: argparse.Namespace, catalog: Catalog, run: RunOptions, trees: int, search_k: int) -> int:
    from lens.sharded import build_sharded_index, update_sharded_index

    layout: dict[str, Any] = {
        "by": args.by or "hash",
        "cache_dir": run.cache_dir,
        "n_trees": trees,
        "search_k": search_k,
    }
    for model in _parse_models(args.models, run):
        _, embeddings = _embed(catalog, model, run, args.quiet)
        started = time.perf_counter()
        if args.update:  # each shard of the older catalog's sharded index + its own delta and tombstones
            update = update_sharded_index(
                catalog, embeddings, args.shards, **layout, rebuild="never" if args.no_rebuild else "now"
            )
            print(f"{model}: {update.describe()}")
            continue
        index, built = build_sharded_index(catalog, embeddings, args.shards, **layout, rebuild=args.rebuild)
        size = sum(p.stat().st_size for p in index.directory.glob("*.ann")) / 2**20
        how = "loaded" if not built else f"built {len(built)} of {index.n_shards} shards"
        print(
            f"{model}: {index.n_shards} annoy shards by {index.by} of {len(index)} items, {trees} trees, "
            f"{size:.1f} MiB, {how} in {time.perf_counter() - started:.1f}s at {index.directory}"
        )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from lens.embed import embed_images
    from lens.encoders.base import check_texts
    from lens.images import open_image
    from lens.index import DEFAULT_N_TREES, VectorIndex, build_index
    from lens.remote import fetch_image_bytes
    from lens.rerank import check_expansion
    from lens.search import expand_query, filter_mask, results_table, search_vector
    from lens.vectors import mix_query_vectors

    # Check everything cheap before embedding the catalog, so a typo costs no minutes.
    images = [flag for flag, value in (("--image", args.image), ("--id", args.id), ("--url", args.url)) if value]
    if len(images) > 1 or not (images or args.text is not None):
        raise LensError(
            "search needs one query: --image PATH, --id ITEM_ID or --url URL, or --text 'a description' "
            "(alone, or with one of the image queries for an image + text query)."
        )
    text = check_texts([args.text])[0].strip() if args.text is not None else None
    weight = 0.5 if args.text_weight is None else args.text_weight
    if not 0.0 <= weight <= 1.0:
        raise LensError(f"--text-weight must lie in [0, 1], got {weight}.")
    if args.text_weight is not None and not (text and images):
        raise LensError("--text-weight mixes an image query with --text; give both, or drop --text-weight.")
    k = _positive(args.k, "--k", 10)
    trees = _positive(args.trees, "--trees", DEFAULT_N_TREES)
    filters = _parse_filters(args.filter)
    _check_output(args.csv, "--csv")
    check_expansion(args.expand, args.alpha)
    run = _run_options(args)
    _parse_models(args.model, run)  # a known encoder with its weights here
    query_image = open_image(args.image) if args.image else None
    if args.url:
        fetched = fetch_image_bytes(args.url)
        query_image = open_image(fetched.data, name=fetched.url)
    catalog = _catalog_options(args).load()
    sharded = _sharding(args, catalog)
    if sharded and args.exact:
        raise LensError("--exact searches one exact index: drop --shards (or --exact).")
    allowed = filter_mask(catalog, filters)
    if allowed is not None and not allowed - {args.id}:
        raise LensError(_no_match(catalog, filters))
    if args.id:
        catalog.index_of(args.id)
    if text is not None:
        from lens.encoders import get_spec

        if not get_spec(args.model).supports_text:
            raise LensError(
                f"model {args.model!r} embeds images only, so it cannot search by text; use a text-capable model "
                "(`python -m lens encoders` lists them in its 'text' column, e.g. text-align)."
            )
    encoder, embeddings = _embed(catalog, args.model, run, args.quiet)
    index: VectorIndex
    if sharded:
        from lens.sharded import build_sharded_index

        by = args.by or "hash"
        # A catalog changed since its sharded index was built is served by the older shards + a delta per shard
        # (shards past the threshold rebuilt), as `lens index --update --shards N` does.
        index, _ = build_sharded_index(
            catalog, embeddings, args.shards, by=by, cache_dir=run.cache_dir, n_trees=trees, update=True
        )
        if by in filters:  # a filter on the shard column: only the shards that hold its values are searched
            index = index.restrict(filters[by])
    elif args.exact:
        index = build_index(embeddings, kind="exact", cache_dir=run.cache_dir, n_trees=trees)
    else:
        # The catalog's own index, or a delta written before (by the build, the dashboard, `index --update`); a
        # catalog changed since its index was built gets a delta over the older index now instead of a full build
        # (past the threshold, it is rebuilt in full at once, as `lens index --update` does).
        from lens.delta import update_index

        index = update_index(embeddings, cache_dir=run.cache_dir, n_trees=trees).index
    exclude: list[str] = []
    vector = None
    if args.image:
        # From the file, not the decoded image: decoded as the catalog's files are (draft for big JPEGs), a catalog
        # photo used as the query gets exactly its catalog vector.
        vector = embed_images(encoder, [args.image])[0]
    elif query_image is not None:
        vector = embed_images(encoder, [query_image])[0]
    elif args.id:
        vector = embeddings.vectors[embeddings.position(args.id)]
        exclude = [args.id]
    if text is not None:
        text_vector = encoder.embed_texts([text])[0]
        vector = text_vector if vector is None else mix_query_vectors(vector, text_vector, weight)
    assert vector is not None  # one query source was checked above
    if args.expand:
        vector = expand_query(
            index,
            vector,
            lambda ids: embeddings.vectors[[embeddings.position(i) for i in ids]],
            k=args.expand,
            alpha=args.alpha,
            exclude=exclude,
        )
    hits = search_vector(index, vector, k, exclude=exclude, allowed=allowed)
    columns = [c for c in catalog.table.columns if c != "image"] if not args.csv else None
    table = results_table(hits, catalog, columns=columns)
    if not args.no_predict:
        from lens.probe import category_probe

        probe = category_probe(catalog, embeddings, catalog.label_column, cache_dir=run.cache_dir)
        guess = probe.predict(vector)
        table[f"query_predicted_{catalog.label_column}"] = guess.label
        table["query_predicted_confidence"] = round(guess.confidence, 4)
        accuracy = (
            "" if math.isnan(probe.accuracy) else f"; the probe is right on {probe.accuracy:.0%} of held-out products"
        )
        print(
            f"predicted {catalog.label_column} of the query: {guess.label} ({guess.confidence:.0%}; "
            + ", ".join(f"{label} {p:.0%}" for label, p in guess.top[1:])
            + f"{accuracy})",
            file=sys.stderr,
        )
    _write_table(table, args.csv)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lens.evaluate import evaluate_embeddings, summary_table
    from lens.rerank import check_expansion

    ks = _parse_ks(args.k)
    _check_output(args.csv, "--csv")
    _check_output(args.per_category, "--per-category")
    check_expansion(args.expand, args.alpha)
    catalog = _catalog_options(args).load()
    catalog.labels(args.label)  # the label column exists (CatalogError lists the columns)
    run = _run_options(args)
    query_ids = None
    if args.queries is not None and getattr(args, "split", None):
        raise LensError("evaluate takes --queries N or --split PATH, not both.")
    if args.queries is not None:
        _positive(args.queries, "--queries", 1)
        query_ids = catalog.sample(min(args.queries, len(catalog)), seed=args.seed).ids
    if getattr(args, "split", None):
        from lens.train.split import load_split

        query_ids = load_split(args.split, catalog).query  # the held-out queries no trained model has seen
    reports = {}
    models = _parse_models(args.models, run)  # every name checked before the first embeds the catalog
    if args.text is not None:
        return _evaluate_text(catalog, models, run, args, ks, query_ids)
    for model in models:
        _, embeddings = _embed(catalog, model, run, args.quiet)
        usable = None if query_ids is None else [i for i in query_ids if i not in dict(embeddings.failed)]
        reports[model] = evaluate_embeddings(
            embeddings,
            catalog,
            label_column=args.label,
            ks=ks,
            query_ids=usable,
            expand=args.expand,
            alpha=args.alpha,
            kreciprocal=getattr(args, "k_reciprocal", False),
        )
    table = summary_table(reports, macro=args.macro)
    _write_table(table, args.csv)
    if args.per_category:
        frames = [report.per_category.assign(model=model) for model, report in reports.items()]
        _write_table(pd.concat(frames, ignore_index=True), args.per_category)
    return 0


def _shard_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards", type=int, default=None, metavar="N", help="N Annoy shards searched by fan-out (lens.sharded)"
    )
    parser.add_argument(
        "--by",
        default=None,
        metavar="hash|COLUMN",
        help="with --shards: split by id hash (default) or by a metadata column (a filter on it searches its shards)",
    )


def _evaluate_text(catalog, models: list[str], run: RunOptions, args, ks, query_ids) -> int:  # noqa: ANN001
    """``evaluate --text``: known-item text -> image figures, one row per model and gallery."""
    from lens.encoders import get_spec
    from lens.evaluate import evaluate_text_to_image

    if args.expand or args.macro or args.per_category or getattr(args, "k_reciprocal", False):
        raise LensError(
            "--text reports text -> image recall; it takes no --expand, --k-reciprocal, --macro or --per-category."
        )
    for model in models:  # refuse an image-only model before any catalog is embedded
        if not get_spec(model).supports_text:
            raise LensError(
                f"model {model!r} embeds images only, so --text cannot evaluate it; name text-capable models "
                "(`python -m lens encoders` lists them in its 'text' column, e.g. text-align)."
            )
    rows = []
    for model in models:
        encoder, embeddings = _embed(catalog, model, run, args.quiet)
        for row in evaluate_text_to_image(
            encoder, embeddings, catalog, query_ids=query_ids, text_column=args.text, ks=ks
        ):
            rows.append({"model": model, "text": args.text, **row})
    _write_table(pd.DataFrame(rows), args.csv)
    return 0


def _expansion_flags(parser: argparse.ArgumentParser) -> None:
    from lens.rerank import DEFAULT_ALPHA, DEFAULT_EXPAND

    parser.add_argument(
        "--expand",
        type=int,
        default=0,
        metavar="K",
        help=f"alpha query expansion with the top K neighbours (0 = off; {DEFAULT_EXPAND} was best on validation)",
    )
    parser.add_argument(
        "--alpha", type=float, default=DEFAULT_ALPHA, help=f"query expansion weight exponent (default {DEFAULT_ALPHA})"
    )


def _train_run_options() -> argparse.ArgumentParser:
    """Flags of every training run (where it reads and writes); the recipe adds its own settings."""
    run = argparse.ArgumentParser(add_help=False)
    group = run.add_argument_group("run")
    group.add_argument(
        "--catalog", default=None, help="catalog folder (or $LENS_CATALOG; default as for other commands)"
    )
    group.add_argument("--label", default="articleType", help="label column (classes for triplet / classifier)")
    group.add_argument("--id-column", default="id", help="id column of catalog.csv")
    group.add_argument("--image-column", default="image", help="image path column of catalog.csv")
    group.add_argument("--skip-missing", action="store_true", help="drop rows whose image file is missing")
    group.add_argument("--out", default=None, help="run folder: history.csv, checkpoints (default <cache>/runs/<name>)")
    group.add_argument("--name", default=None, help="encoder name to save the model as (default: the recipe name)")
    group.add_argument(
        "--models-dir", default=None, help="where models are saved ($LENS_MODELS_DIR; default <cache>/models)"
    )
    group.add_argument(
        "--split",
        default=None,
        help="split JSON: used if it exists, else created there "
        "(default <cache>/splits/<catalog>-<fingerprint>-seed<seed>.json)",
    )
    group.add_argument("--seed", type=int, default=0, help="one seed for the split, the data order and the weights")
    group.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    group.add_argument("--no-publish", action="store_true", help="do not store the catalog's embeddings in the cache")
    return run


def _recipe_parser(recipe: str) -> tuple[argparse.ArgumentParser, list[str]]:
    """``python -m lens train <recipe>``'s flags: the run's, then the recipe's settings, made from its config dataclass
    (each field's flag, type, choices and default); also the names of those settings."""
    import typing
    from dataclasses import fields

    from lens.train import RECIPES, parse_recipe
    from lens.train.loop import flag_of

    entry = RECIPES[parse_recipe(recipe)[0]]
    parser = argparse.ArgumentParser(
        prog=f"python -m lens train {recipe}",
        description=f"{entry.spelling()}: {entry.summary}.",
        parents=[shared_parsers()[0], _train_run_options()],
    )
    group = parser.add_argument_group(f"{entry.name} settings")
    hints = typing.get_type_hints(entry.config_cls)
    settings = [item for item in fields(entry.config_cls) if "help" in item.metadata]  # not recipe, seed: the run's
    for item in settings:
        kind = next(t for t in (int, float, str) if t in (hints[item.name], *typing.get_args(hints[item.name])))
        # default None: only the flags given override the recipe's defaults (shown in the help)
        group.add_argument(
            flag_of(item),
            dest=item.name,
            type=kind,
            default=None,
            choices=item.metadata["choices"] or None,
            help=f"{item.metadata['help']} (default: {item.default})",
        )
    return parser, [item.name for item in settings]


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from lens.store import resolve_cache_dir
    from lens.train import RECIPES, RunContext, default_config, default_name, get_split, train_recipe
    from lens.train.checks import check_training

    if not args.recipe:
        spellings = ", ".join(RECIPES[n].spelling() for n in sorted(RECIPES))
        raise LensError(
            f"name a recipe: `python -m lens train <recipe>` ({spellings}); `<recipe> --help` lists its flags."
        )
    parser, settings = _recipe_parser(args.recipe)
    args = parser.parse_args(args.settings, namespace=args)
    config = default_config(args.recipe, seed=args.seed, **{name: getattr(args, name) for name in settings})
    catalog = CatalogOptions(
        args.catalog, args.label, args.id_column, args.image_column, args.skip_missing, args.cache_dir
    ).load()
    check_training(catalog, config, label_column=args.label, weights_dir=args.weights_dir, seed=args.seed)
    split, split_path = get_split(
        catalog, args.split, seed=args.seed, label_column=args.label, cache_dir=args.cache_dir
    )
    name = args.name or default_name(config)
    out = Path(args.out) if args.out else resolve_cache_dir(args.cache_dir) / "runs" / name

    def bar(desc: str):  # noqa: ANN202
        return _progress(desc, args.quiet)

    ctx = RunContext(
        out_dir=out,
        models_dir=Path(args.models_dir) if args.models_dir else None,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        name=name,
        resume=args.resume,
        split_path=split_path,
        progress=bar,
        log=lambda msg: print(msg, file=sys.stderr),
        publish=not args.no_publish,
    )
    print(
        f"train {name}: recipe {config.recipe}, backbone {getattr(config, 'backbone', None)}, catalog "
        f"'{catalog.name}' ({len(split.train)} train / {len(split.val)} val / {len(split.query)} held-out queries, "
        f"split {split_path})",
        file=sys.stderr,
    )
    result = train_recipe(catalog, config, ctx, split)
    for row in result.history:
        extras = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "loss", "seconds", "stage"))
        loss = f"loss {row['loss']:.4f}, " if "loss" in row else ""  # proxy-ensemble trains nothing at its join
        print(f"epoch {int(row['epoch'])}: {loss}{row.get('seconds', 0.0):.1f}s{', ' + extras if extras else ''}")
    shown = {
        k: v
        for k, v in result.metrics.items()
        if k.split("@")[0] in ("precision", "hit", "map", "text_r", "classifier_accuracy")
        or k in ("classifier_accuracy", "map@r")
    }
    print(f"held-out queries ({len(split.query)}): " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    print(f"saved encoder '{result.name}' in {result.model_dir} ({result.seconds:.0f}s); history {out / 'history.csv'}")
    (out / "metrics.json").write_text(
        json.dumps({"name": result.name, "seconds": result.seconds, **result.metrics}, indent=1, default=float)
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from lens.catalog import validate_images

    catalog = _catalog_options(args).load()
    progress, close = _progress("decode", args.quiet)
    try:
        problems = validate_images(catalog, progress=progress)
    finally:
        close()
    print(f"catalog '{catalog.name}': {len(catalog)} items, {len(problems)} unreadable images")
    for problem in problems:
        print(f"  {problem.item_id}: {problem.problem}")
    return 1 if problems else 0


def _build_options(args: argparse.Namespace):  # noqa: ANN202 - lens.build.BuildOptions (imported lazily)
    from lens.build import BuildOptions

    ray = getattr(args, "ray", False)
    if not ray and (getattr(args, "address", None) or getattr(args, "workers", None) is not None):
        raise LensError("--address and --workers go with --ray (embedding on Ray Data); add --ray or drop them.")
    workers = _positive(getattr(args, "workers", None), "--workers", 2) if ray else 0
    if ray:
        from lens.distributed import check_ray

        check_ray(workers, getattr(args, "address", None))  # before anything starts, in the foreground
    return BuildOptions(
        args.cache_dir,
        args.weights_dir,
        args.models_dir,
        args.batch_size,
        args.seed,
        ray_workers=workers,
        ray_address=getattr(args, "address", None) if ray else None,
    )


def _build_steps(args: argparse.Namespace):  # noqa: ANN202 - list[lens.build.BuildStep]
    from lens.build import load_plan, make_plan

    return make_plan(load_plan(args.plan), models=args.models, recipes=args.recipes)


def cmd_build(args: argparse.Namespace) -> int:
    from lens.build import log_path, run_build, start_build, status_path
    from lens.jobs import JobLog, format_duration

    options = _build_options(args)
    if args.detach:
        catalog = _catalog_options(args).load()  # a bad catalog fails here, not in the background
        same = [
            "--id-column",
            args.id_column,
            "--image-column",
            args.image_column,
            *(["--batch-size", str(args.batch_size)] if args.batch_size is not None else []),
            "--seed",
            str(args.seed),
            *(["--skip-missing"] if args.skip_missing else []),
        ]
        pid = start_build(
            catalog.root,
            label=args.label,
            options=options,
            models=args.models,
            recipes=args.recipes,
            plan=args.plan,
            extra_args=same,
        )
        print(
            f"build started in the background (pid {pid}); `python -m lens status` shows its progress; "
            f"log {log_path(options.cache_dir)}"
        )
        return 0
    catalog = _catalog_options(args).load()
    steps = _build_steps(args)
    file_log = JobLog(log_path(options.cache_dir), echo=args.log_to_stderr)

    def log(message: str) -> None:  # the log file, and the terminal when in the foreground
        file_log(message)
        if not args.log_to_stderr and not args.quiet:
            print(message, file=sys.stderr)

    status = run_build(
        catalog, steps, options, progress=None if args.quiet else (lambda d: _progress(d, False)), log=log
    )
    for entry in status["steps"]:
        took = f" ({format_duration(entry['seconds'])})" if entry.get("seconds") is not None else ""
        why = f": {entry['reason'].splitlines()[0]}" if entry.get("reason") else ""
        print(f"{entry['name']:<28} {entry['state']}{took}{why}")
    print(
        f"build {status['state']}{': ' + status['message'] if status.get('message') else ''}; status "
        f"{status_path(options.cache_dir)}",
        file=sys.stderr,
    )
    return 0 if status["state"] == "finished" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from lens.build import format_state, plan_status

    catalog = _catalog_options(args).load()
    views, status = plan_status(catalog, _build_steps(args), _build_options(args))
    width = max([len(v.name) for v in views] + [12])
    for view in views:
        print(f"{view.name:<{width}}  {format_state(view)}")
    if status:
        print(
            f"build {status.get('state')} (pid {status.get('pid')}, started {status.get('started')})"
            f"{': ' + status['message'] if status.get('message') else ''}; log {status.get('log')}",
            file=sys.stderr,
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    # The benchmark lives beside the library (benchmarks/), and lens never imports it: point there instead.
    print(
        "error: the benchmark moved out of lens: run `python -m benchmarks --out DIR [--quick] [--models ...]` from "
        "the repository root (same options as before).",
        file=sys.stderr,
    )
    return EXIT_USAGE


# ---------------------------------------------------------------------------------------------------- parser


def shared_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parent parsers of the catalog commands: (weights / cache / quiet, catalog / batch size / precision).

    ``python -m benchmarks`` takes them too, so that its options read as lens's.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--weights-dir", default=None, help="folder with encoder checkpoints (or $LENS_WEIGHTS_DIR)")
    common.add_argument("--cache-dir", default=None, help="cache folder (or $LENS_CACHE_DIR; default ~/.cache/lens)")
    common.add_argument("--quiet", action="store_true", help="no progress bars")

    cat = argparse.ArgumentParser(add_help=False)
    cat.add_argument(
        "--catalog",
        default=None,
        help="catalog folder, catalog.csv, class folders or Fashion-MNIST IDX folder "
        "(or $LENS_CATALOG; default ../shared/data/fashion-products, else Debian's Fashion-MNIST)",
    )
    cat.add_argument(
        "--label", default="articleType", help="label column: relevance = same label (default articleType)"
    )
    cat.add_argument("--id-column", default="id", help="id column of catalog.csv")
    cat.add_argument("--image-column", default="image", help="image path column of catalog.csv")
    cat.add_argument(
        "--skip-missing", action="store_true", help="drop rows whose image file is missing instead of failing"
    )
    cat.add_argument(
        "--batch-size", type=int, default=None, help="images per forward pass (default: 32 on the CPU, 128 on a GPU)"
    )
    cat.add_argument(
        "--precision", choices=["fp32", "bf16"], default=None, help="override the encoder's default precision"
    )
    return common, cat


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lens", description="lens: visual product search workbench.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common, cat = shared_parsers()

    eng = argparse.ArgumentParser(add_help=False)
    eng.add_argument(
        "--engine",
        choices=["auto", "torch", "onnx", "onnx-int8"],
        default=None,
        help="inference engine: auto (ONNX Runtime where measured faster, default), torch, onnx, or onnx-int8 (opt-in "
        "int8 for the encoders whose held-out P@5 it kept within 0.005; fp32 ONNX for the rest) (or $LENS_ENGINE)",
    )

    p = sub.add_parser("encoders", parents=[common, eng], help="list encoders and whether their weights are available")
    p.add_argument("--csv", default=None, help="write CSV to this file ('-' for stdout)")
    p.set_defaults(func=cmd_encoders)

    p = sub.add_parser("embed", parents=[common, cat, eng], help="embed the catalog (cached)")
    p.add_argument("--models", default=None, help="comma-separated encoder names, or 'all' available (default)")
    p.add_argument(
        "--ray", action="store_true", help="embed on Ray Data: decoding tasks + a pool of encoder actors (same cache)"
    )
    p.add_argument("--address", default=None, help="with --ray: a running cluster (auto, ray://host:10001)")
    p.add_argument("--workers", type=int, default=None, help="with --ray: encoder actors (default 2)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("index", parents=[common, cat, eng], help="embed and build Annoy indexes (cached)")
    p.add_argument("--models", default=None, help="comma-separated encoder names, or 'all' available (default)")
    p.add_argument("--trees", type=int, default=None, help="Annoy n_trees (default: lens.index.DEFAULT_N_TREES)")
    p.add_argument("--search-k", type=int, default=None, help="Annoy search_k (default: lens.index.DEFAULT_SEARCH_K)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if a matching index is cached")
    p.add_argument(
        "--update",
        action="store_true",
        help="the catalog changed: keep the index of its older version and add a delta (added and edited items, "
        "searched exactly) and tombstones (removed and edited ones); rebuilt in full past lens.delta.DELTA_MAX_FRACTION. "
        "With --shards: each shard gets its own delta, and a shard past the threshold is rebuilt alone",
    )
    p.add_argument("--no-rebuild", action="store_true", help="with --update: keep the delta even past the threshold")
    _shard_flags(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", parents=[common, cat, eng], help="most similar catalog items to an image or item")
    p.add_argument("--image", default=None, help="query image file")
    p.add_argument("--id", default=None, help="query by a catalog item id (the item itself is excluded)")
    p.add_argument("--url", default=None, help="query image address (http/https; public addresses only)")
    p.add_argument("--text", default=None, help="text query, alone or with an image query (text-capable models)")
    p.add_argument(
        "--text-weight", type=float, default=None, help="weight of --text in an image + text query, 0..1 (0.5)"
    )
    p.add_argument("--model", default="efficientnet-lite0", help="encoder name (default efficientnet-lite0)")
    p.add_argument("--k", type=int, default=10, help="number of results")
    p.add_argument("--filter", action="append", help="COLUMN=VALUE[,VALUE] metadata filter; repeatable")
    p.add_argument("--exact", action="store_true", help="exact search instead of Annoy")
    p.add_argument(
        "--trees", type=int, default=None, help="use the Annoy index with this many trees (built if missing)"
    )
    p.add_argument("--csv", default=None, help="write CSV to this file ('-' for stdout)")
    p.add_argument(
        "--no-predict", action="store_true", help="skip the predicted category of the query (a linear probe)"
    )
    _expansion_flags(p)
    _shard_flags(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("evaluate", parents=[common, cat], help="retrieval metrics per model (exact search)")
    p.add_argument("--models", default=None, help="comma-separated encoder names, or 'all' available (default)")
    p.add_argument("--k", default="1,5,10", help="cut-offs, e.g. 1,5,10")
    p.add_argument("--queries", type=int, default=None, help="evaluate a seeded random sample of N queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--macro", action="store_true", help="per-category macro averages instead of micro")
    p.add_argument("--csv", default=None, help="write the summary CSV to this file ('-' for stdout)")
    p.add_argument("--per-category", default=None, help="write per-category metrics CSV to this file")
    p.add_argument("--split", default=None, help="split JSON from `train`: queries = its held-out query ids")
    p.add_argument(
        "--text",
        nargs="?",
        const="productDisplayName",
        default=None,
        metavar="COLUMN",
        help="text -> image instead (text-capable models): each query's COLUMN text (default productDisplayName) "
        "searches for its own photo, among the query photos and against the whole catalog (text_r@k)",
    )
    _expansion_flags(p)
    p.add_argument(
        "--k-reciprocal",
        action="store_true",
        help="re-rank each query's top 100 by k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3; evaluation only)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a model on the catalog (saved as an encoder by name)",
        description="Train a model on the catalog's training split; it is saved as an encoder by name. "
        "`python -m lens train <recipe> --help` lists the recipe's settings with their defaults.",
    )
    p.add_argument(
        "recipe",
        nargs="?",
        help="autoencoder, triplet-<backbone>, simclr-<backbone>, proxy-<backbone>, proxy-ensemble, mobilenet-small, "
        "text-align (backbones: mobilenet-v2, efficientnet-lite0, efficientnet-lite2)",
    )
    p.add_argument(
        "settings",
        nargs=argparse.REMAINDER,
        help="the run's flags (--catalog, --epochs, --out, ...) and the recipe's; see `<recipe> --help`",
    )
    p.set_defaults(func=cmd_train)

    # prefix "+": the old options (--out, --quick, -h...) are taken as plain words, so any of them gets the pointer
    p = sub.add_parser("bench", prefix_chars="+", add_help=False, help="moved: `python -m benchmarks` (says where)")
    p.add_argument("old_options", nargs="*", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("validate", parents=[common, cat], help="decode every image and list unreadable ones")
    p.set_defaults(func=cmd_validate)

    for name, func, text in (
        ("build", cmd_build, "build every model in the background (resumable); --detach"),
        ("status", cmd_status, "one line per model: ready / building n %% / queued / failed"),
    ):
        p = sub.add_parser(name, parents=[common, cat], help=text)
        p.add_argument("--models", default=None, help="pretrained encoders to build (default: the plan's; 'none')")
        p.add_argument(
            "--recipes", default=None, help="models to train, e.g. text-align,vae (default: the plan's; 'none')"
        )
        p.add_argument("--plan", default=None, help="a build plan JSON (default: lens.build.DEFAULT_PLAN)")
        p.add_argument(
            "--models-dir", default=None, help="where trained models go ($LENS_MODELS_DIR; default <cache>/models)"
        )
        p.add_argument("--seed", type=int, default=0, help="seed of the training runs (as `train --seed`)")
        if name == "build":
            p.add_argument("--detach", action="store_true", help="start in the background and return at once")
            p.add_argument("--log-to-stderr", action="store_true", help=argparse.SUPPRESS)  # the detached runner's
            p.add_argument(
                "--ray", action="store_true", help="embed on Ray Data (as `embed --ray`); the status says which path"
            )
            p.add_argument("--address", default=None, help="with --ray: a running cluster (auto, ray://host:10001)")
            p.add_argument("--workers", type=int, default=None, help="with --ray: encoder actors (default 2)")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (getattr(args, "batch_size", None) or 1) < 1 or getattr(args, "batch_size", None) == 0:
        parser.error("--batch-size must be a positive integer")
    try:
        return int(args.func(args) or 0)
    except LensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `python -m lens search ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # e.g. --csv pointing at a folder or an unwritable place
        print(f"error: {exc.strerror or exc} ({exc.filename or ''})", file=sys.stderr)
        return EXIT_USAGE
