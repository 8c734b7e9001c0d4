"""The benchmark's PNG charts, drawn with Pillow.

Pillow rather than plotly: plotly (7.1, pinned) exports images only through kaleido >= 1.0, which drives a Chrome
that lens does not ship or pin, and plotly 7 refuses the self-contained kaleido 0.2.1 wheel; so PNGs from plotly would
depend on a browser being installed. These two chart kinds are all the report needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        hi = lo + 1.0
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    size: tuple[int, int] = (900, 560),
) -> Path:
    """A PNG line chart (markers + lines, one colour per series, legend) drawn with Pillow."""
    w, h = size
    left, right, top, bottom = 80, 220, 40, 60
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    xs_all = [x for xs, _ in series.values() for x in xs if np.isfinite(x) and (x > 0 or not logx)]
    ys_all = [y for _, ys in series.values() for y in ys if np.isfinite(y)]
    tx = (lambda v: np.log10(v)) if logx else (lambda v: v)  # noqa: E731
    x_lo, x_hi = (min(map(tx, xs_all)), max(map(tx, xs_all))) if xs_all else (0.0, 1.0)
    y_lo, y_hi = (min(ys_all), max(ys_all)) if ys_all else (0.0, 1.0)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    if y_hi <= y_lo:
        y_lo, y_hi = y_lo - 0.05, y_hi + 0.05
    pad = (y_hi - y_lo) * 0.05
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (tx(x) - x_lo) / (x_hi - x_lo) * (w - left - right),
            h - bottom - (y - y_lo) / (y_hi - y_lo) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in _nice_ticks(x_lo, x_hi):
        x = left + (v - x_lo) / (x_hi - x_lo) * (w - left - right)
        draw.line([x, h - bottom, x, h - bottom + 5], fill="black")
        draw.text((x - 15, h - bottom + 8), f"{10**v if logx else v:.3g}", fill="black")
    for v in _nice_ticks(y_lo, y_hi):
        y = h - bottom - (v - y_lo) / (y_hi - y_lo) * (h - top - bottom)
        draw.line([left - 5, y, left, y], fill="black")
        draw.line([left, y, w - right, y], fill=(230, 230, 230))
        draw.text((left - 50, y - 6), f"{v:.3g}", fill="black")
    draw.text((left, 12), title, fill="black")
    draw.text(((w - right + left) / 2 - 60, h - 25), xlabel + (" (log scale)" if logx else ""), fill="black")
    draw.text((8, top - 20), ylabel, fill="black")
    for i, (name, (xs, ys)) in enumerate(series.items()):
        colour = _PALETTE[i % len(_PALETTE)]
        points = [px(x, y) for x, y in sorted(zip(xs, ys)) if np.isfinite(x) and np.isfinite(y) and (x > 0 or not logx)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ly = top + 10 + 18 * i
        draw.rectangle([w - right + 10, ly, w - right + 22, ly + 12], fill=colour)
        draw.text((w - right + 28, ly), name[:28], fill="black")
    img.save(path)
    return path


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    path: Path,
    *,
    title: str,
    ylabel: str,
    colours: Sequence[int] | None = None,
    legend: dict[str, int] | None = None,
) -> Path:
    """A PNG vertical bar chart with value labels, drawn with Pillow."""
    n = max(len(labels), 1)
    bottom = min(max(170, 6 * max((len(label) for label in labels), default=0) + 20), 360)  # room for the labels
    w, h = max(600, 40 + 38 * n + 200), 390 + bottom
    left, right, top = 70, 200, 40
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    finite = [v for v in values if np.isfinite(v)]
    hi = max(finite) * 1.1 if finite and max(finite) > 0 else 1.0
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for v in _nice_ticks(0.0, hi):
        y = h - bottom - v / hi * (h - top - bottom)
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((left - 55, y - 6), f"{v:.3g}", fill="black")
    slot = (w - left - right) / n
    for i, (label, value) in enumerate(zip(labels, values)):
        colour = _PALETTE[(colours[i] if colours else 0) % len(_PALETTE)]
        x0 = left + i * slot + slot * 0.15
        x1 = left + (i + 1) * slot - slot * 0.15
        if np.isfinite(value):
            y = h - bottom - value / hi * (h - top - bottom)
            draw.rectangle([x0, y, x1, h - bottom], fill=colour)
            draw.text((x0, y - 12), f"{value:.0f}", fill="black")
        # vertical label, one character per line is unreadable; draw it rotated via a small image
        text_img = Image.new("RGB", (bottom - 10, 12), "white")
        ImageDraw.Draw(text_img).text((0, 0), label[: (bottom - 10) // 6], fill="black")
        rotated = text_img.rotate(90, expand=True)
        img.paste(rotated, (int((x0 + x1) / 2 - 6), h - bottom + 5))
    draw.text((left, 12), title, fill="black")
    draw.text((8, top - 20), ylabel, fill="black")
    for i, (name, c) in enumerate((legend or {}).items()):
        ly = top + 10 + 18 * i
        draw.rectangle([w - right + 10, ly, w - right + 22, ly + 12], fill=_PALETTE[c % len(_PALETTE)])
        draw.text((w - right + 28, ly), name[:28], fill="black")
    img.save(path)
    return path


def write_charts(index_table: pd.DataFrame, throughput: pd.DataFrame, scale: pd.DataFrame, out: Path) -> list[Path]:
    """recall-vs-latency per model (annoy sweep, exact as a point), throughput per model x mode, scale sweep."""
    paths = []
    if len(index_table):
        series = {}
        for model, group in index_table.groupby("model", sort=False):
            annoy = group[group["index"] == "annoy"]
            for n_trees, g in annoy.groupby("n_trees"):
                series[f"{model} t{n_trees}"] = (g["p50_ms"].tolist(), g["recall@10"].tolist())
            exact = group[group["index"] != "annoy"]
            series[f"{model} exact"] = (exact["p50_ms"].tolist(), exact["recall@10"].tolist())
        paths.append(
            line_chart(
                series,
                out / "recall_vs_latency.png",
                title="Index: recall@10 vs p50 query latency",
                xlabel="p50 latency, ms",
                ylabel="recall@10",
                logx=True,
            )
        )
    if len(throughput):
        modes = list(dict.fromkeys(throughput["mode"]))
        labels = [
            f"{m}{'' if w == 'pretrained' else ' (random w.)'} {mode}{' *' if default else ''}"
            for m, w, mode, default in zip(
                throughput["model"], throughput["weights"], throughput["mode"], throughput["default"]
            )
        ]
        paths.append(
            bar_chart(
                labels,
                throughput["img_per_s"].tolist(),
                out / "throughput.png",
                title="Encoder throughput (forward pass, batch 32; * = lens's default mode)",
                ylabel="img/s",
                colours=[modes.index(m) for m in throughput["mode"]],
                legend={m: i for i, m in enumerate(modes)},
            )
        )
    if len(scale):
        series = {f"{n:,} items": (g["p50_ms"].tolist(), g["recall@10"].tolist()) for n, g in scale.groupby("items")}
        paths.append(
            line_chart(
                series,
                out / "scale_recall_vs_latency.png",
                title="Scale (synthetic 512-d): recall@10 vs p50 latency",
                xlabel="p50 latency, ms",
                ylabel="recall@10",
                logx=True,
            )
        )
    return paths
