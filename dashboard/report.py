"""A shareable comparison report: one self-contained HTML file (tables, interactive charts, the comparison grid with
its thumbnails) that opens in any browser, offline, without lens.

Everything is inline: thumbnails as ``data:`` URIs, charts as plotly figures with plotly.js embedded once (about
3.5 MB; the price of a report that needs no network). Every catalog string is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;color:#1f2328}
h1{margin-bottom:0}.meta{color:#59636e;margin-top:4px}h2{margin-top:32px;border-bottom:1px solid #d1d9e0}
table.data{border-collapse:collapse;font-size:13px}table.data th,table.data td{border:1px solid #d1d9e0;padding:4px 8px}
table.data th{background:#f6f8fa;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{border-collapse:collapse}.grid td,.grid th{vertical-align:top;padding:6px;border-bottom:1px solid #d1d9e0}
.tile{display:inline-block;margin:2px;text-align:center;font-size:11px;width:84px}
.tile img{width:80px;height:80px;object-fit:contain;border:3px solid #ccc;border-radius:4px;background:#fff}
.ok img{border-color:#2da44e}.bad img{border-color:#cf222e}.q img{border-color:#0969da}
.badge{font-size:12px;font-weight:600}.note{color:#59636e;font-size:13px}
"""


@dataclass(frozen=True)
class Section:
    """One part of the report: a heading, HTML that is already safe, and an optional note under it."""

    heading: str
    body: str
    note: str = ""


def table_html(table: pd.DataFrame, *, digits: int = 3) -> str:
    """``table`` as an HTML table, numbers right-aligned and rounded to ``digits``, every cell escaped."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for record in table.itertuples(index=False):
        cells = []
        for value in record:
            if isinstance(value, float):
                text = "" if pd.isna(value) else f"{value:.{digits}f}"
                cells.append(f'<td class="num">{text}</td>')
            elif isinstance(value, (int,)) and not isinstance(value, bool):
                cells.append(f'<td class="num">{value}</td>')
            else:
                cells.append(f"<td>{html.escape(str(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def figure_html(figure: Any, *, first: bool) -> str:
    """A plotly figure as an HTML fragment; ``first`` embeds plotly.js (once per report)."""
    return figure.to_html(full_html=False, include_plotlyjs=bool(first), config={"displaylogo": False})


def _img(data: bytes, alt: str) -> str:
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(data).decode()}" alt="{html.escape(alt)}">'


def grid_html(
    grid: pd.DataFrame,
    models: Sequence[str],
    *,
    thumbnail: Callable[[str], bytes],
    title: Callable[[str], str],
) -> str:
    """The Compare page's grid: a row per query, a column per model, the top-k results as thumbnails with a green
    (same label as the query) or red border, and P@k per cell (``grid``: ``lens.analysis.compare_grid``'s table)."""
    head = "<tr><th>Query</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in models) + "</tr>"
    rows = []
    for query_id, per_query in grid.groupby("query_id", sort=False):
        query_id = str(query_id)
        label = str(per_query["query_label"].iat[0])
        tile = (
            f'<div class="tile q">{_img(thumbnail(query_id), title(query_id))}<br>{html.escape(query_id)}'
            f"<br>{html.escape(label)}</div>"
        )
        cells = [f"<td>{tile}</td>"]
        for model in models:
            cell = per_query[per_query["model"] == model].sort_values("rank")
            if cell.empty:
                cells.append('<td class="note">no vector for this query</td>')
                continue
            precision = float(cell["precision_at_k"].iat[0])
            tiles = "".join(
                f'<div class="tile {"ok" if row.correct else "bad"}" title="{html.escape(title(str(row.result_id)))}">'
                f"{_img(thumbnail(str(row.result_id)), str(row.result_id))}<br>#{row.rank} · {row.similarity:.2f}"
                f"<br>{html.escape(str(row.result_label))}</div>"
                for row in cell.itertuples(index=False)
            )
            cells.append(f'<td><div class="badge">P@{int(cell["k"].iat[0])} = {precision:.2f}</div>{tiles}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="grid"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def render(title: str, sections: Sequence[Section], *, subtitle: str = "", generated: float | None = None) -> str:
    """The whole report as one HTML document."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() if generated is None else generated))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{html.escape(subtitle)}{" · " if subtitle else ""}generated by lens on {when}</p>',
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.note:
            parts.append(f'<p class="note">{html.escape(section.note)}</p>')
        parts.append(section.body)
    parts.append("</body></html>")
    return "\n".join(parts)
