"""Quality sections: retrieval metrics per model (exact search, every item a query), the same on the saved held-out
split beside the published P@5 figures, and text -> image recall for text-capable models."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import BenchConfig, markdown_table
from lens.catalog import Catalog
from lens.embed import EmbeddingSet
from lens.encoders import create_encoder
from lens.errors import LensError
from lens.evaluate import PUBLISHED_P5, evaluate_embeddings
from lens.metrics import RetrievalReport
from lens.train.split import Split, default_split_path, load_split


def _label_columns(catalog: Catalog, config: BenchConfig) -> list[str]:
    """The catalog's label column, then each of ``config.extra_labels`` the catalog has."""
    return [
        catalog.label_column,
        *[c for c in config.extra_labels if c in catalog.columns and c != catalog.label_column],
    ]


def _report_rows(model: str, label: str, report: RetrievalReport) -> list[dict]:
    """A micro and a macro row: the metrics, then the query and category counts."""
    counts = {
        "n_queries": report.summary["n_queries"],
        "n_skipped": report.summary["n_skipped"],
        "n_categories": report.macro["n_categories"],
    }
    rows = []
    for average, values in (("micro", report.summary), ("macro", report.macro)):
        metrics = {k: v for k, v in values.items() if not k.startswith("n_")}
        rows.append({"model": model, "label": label, "average": average, **metrics, **counts})
    return rows


def metric_columns(quality: pd.DataFrame, ks: tuple[int, ...]) -> list[str]:
    """The metric columns the report shows, in order, of those ``quality`` has."""
    wanted = [f"precision@{k}" for k in ks] + [f"recall@{ks[-1]}", "hit@5", f"map@{ks[-1]}", "map@r", "r_precision"]
    return [c for c in wanted if c in quality.columns]


def published_rows() -> list[dict[str, object]]:
    """``lens.evaluate.PUBLISHED_P5`` as table rows named ``<model> (published)``."""
    return [{"model": f"{name} (published)", "precision@5": p5} for name, p5 in PUBLISHED_P5.items()]


def bench_quality(
    catalog: Catalog, embeddings: dict[str, EmbeddingSet], config: BenchConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Micro and macro retrieval metrics per model and label column (exact search, every item a query)."""
    rows: list[dict] = []
    per_category = []
    labels = _label_columns(catalog, config)
    for model, emb in embeddings.items():
        for label in labels:
            report = evaluate_embeddings(emb, catalog, label_column=label, ks=config.ks)
            rows += _report_rows(model, label, report)
            if label == catalog.label_column:
                per_category.append(report.per_category.assign(model=model))
            config.log(f"quality {model} by {label}: P@5 {report.summary['precision@5']:.3f}")
    return pd.DataFrame(rows), pd.concat(per_category, ignore_index=True) if per_category else pd.DataFrame()


def quality_lines(quality: pd.DataFrame, metric_cols: list[str]) -> list[str]:
    """The report's quality section: one table per label column and average, then the published P@5 for reference."""
    lines = [
        "## Retrieval quality (exact search; every item is a query, the rest of the catalog is the gallery)",
        "",
        "Relevant = same label. recall@k = share of all relevant items found in the top k; hit@k = at least one.",
        "",
        "Trained models were trained on about 70 % of these items (their split's train part), so their rows in this "
        "section are optimistic: compare models on the held-out section below.",
        "",
    ]
    for (label, average), group in quality.groupby(["label", "average"], sort=False):
        table = markdown_table(group[["model", *metric_cols, "n_queries", "n_skipped"]])
        lines += [f"### by {label}, {average} average", "", table, ""]
    return lines + [
        "Published P@5 on this data family, for reference (fine-tuned models, other splits): "
        + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED_P5.items())
        + ".",
        "",
    ]


def find_split(catalog: Catalog, config: BenchConfig) -> tuple[Split | None, Path]:
    """The saved held-out split of this catalog (``config.split_path`` or the default path), or None; and its path."""
    path = config.split_path or default_split_path(catalog, 0, config.cache_dir)
    if not Path(path).is_file():
        return None, Path(path)
    try:
        return load_split(path, catalog), Path(path)
    except LensError as exc:
        config.log(f"held-out split {path} unusable: {exc}")
        return None, Path(path)


def bench_heldout(
    catalog: Catalog, embeddings: dict[str, EmbeddingSet], split: Split, config: BenchConfig
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quality with queries = the split's held-out ids, gallery = the whole catalog minus the query (exact search);
    and text->image R@1/5/10 for text-capable models (query = the product's name, hit = its own photo)."""
    rows: list[dict] = []
    text_rows: list[dict] = []
    labels = _label_columns(catalog, config)
    title = "productDisplayName" if "productDisplayName" in catalog.columns else None
    for model, emb in embeddings.items():
        present = set(emb.ids)
        query_ids = [i for i in split.query if i in present]
        if not query_ids:
            continue
        for label in labels:
            report = evaluate_embeddings(emb, catalog, label_column=label, ks=config.ks, query_ids=query_ids)
            rows += _report_rows(model, label, report)
            config.log(f"held-out {model} by {label}: P@5 {report.summary['precision@5']:.3f}")
        encoder = create_encoder(model)
        if title is None or not encoder.spec.supports_text:
            continue
        texts = [t or i for t, i in zip(catalog.labels(title, ids=query_ids), query_ids)]
        started = time.perf_counter()
        text_vectors = encoder.embed_texts(texts)
        text_s = time.perf_counter() - started
        own = np.array([emb.position(i) for i in query_ids])
        sims = text_vectors @ emb.vectors.T
        own_sim = sims[np.arange(len(own)), own]
        rank = (sims > own_sim[:, None]).sum(axis=1)  # 0 = own photo first
        text_rows.append(
            {
                "model": model,
                "n_queries": len(own),
                **{f"recall@{k}": float((rank < k).mean()) for k in (1, 5, 10)},
                "median_rank": float(np.median(rank) + 1),
                "text_ms_per_query": text_s / len(own) * 1000,
            }
        )
        config.log(f"text->image {model}: R@10 {text_rows[-1]['recall@10']:.3f}")
    return pd.DataFrame(rows), pd.DataFrame(text_rows)


def heldout_lines(
    heldout: pd.DataFrame, text_table: pd.DataFrame, split: Split | None, split_path: Path, metric_cols: list[str]
) -> list[str]:
    """The report's held-out section: metrics per label and average, P@5 beside the published figures, text->image."""
    lines = ["## Retrieval quality on the held-out split", ""]
    if split is None or not len(heldout):
        return lines + [
            f"No saved held-out split for this catalog ({split_path}); `python -m lens train` makes one.",
            "",
        ]
    lines += [
        f"Queries = the {len(split.query)} held-out ids of `{split_path.name}` (seed {split.seed}, never seen by the"
        " trained models); gallery = the whole catalog minus the query; exact search.",
        "",
    ]
    cols = [c for c in metric_cols if c in heldout.columns]
    for (label, average), group in heldout.groupby(["label", "average"], sort=False):
        lines += [
            f"### held-out, by {label}, {average} average",
            "",
            markdown_table(group[["model", *cols, "n_queries"]]),
            "",
        ]
    first = heldout[(heldout["label"] == heldout["label"].iat[0]) & (heldout["average"] == "micro")]
    ours = [{"model": m, "precision@5": p} for m, p in zip(first["model"], first["precision@5"])]
    table = pd.DataFrame(sorted(ours + published_rows(), key=lambda r: -r["precision@5"]))
    lines += [
        f"### P@5 next to the published numbers (ours: held-out, by {heldout['label'].iat[0]}, micro)",
        "",
        "The published figures come from other papers' splits and label sets on this data family; they are a"
        " reference point, not a like-for-like comparison.",
        "",
        markdown_table(table),
        "",
        "### Text -> image (query = the held-out product's productDisplayName, hit = its own photo among the whole"
        " catalog)",
        "",
        markdown_table(text_table) if len(text_table) else "No text-capable model available.",
        "",
    ]
    return lines
