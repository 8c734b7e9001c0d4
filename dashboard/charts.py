"""Every plotly figure of the dashboard: plain functions from tables to figures (no Streamlit), so that the pages only
place them with ``st.plotly_chart`` and every chart shares the same margins and sizing rules.

plotly is imported inside the functions: it takes about a second to import, and only pages that draw a chart need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
"""Margins of every chart: tight, with room for a title on top."""


def category_counts(counts: pd.DataFrame, label: str, *, total: int, top: int = 25) -> Any:
    """Horizontal bars of the ``top`` largest categories, largest on top (Overview).

    Args:
        counts: one row per value of ``label``, most frequent first: ``label`` and ``items``.
        label: the category column.
        total: how many distinct values there are (said in the title when only ``top`` are drawn).
        top: how many bars to draw.
    """
    import plotly.express as px

    shown = counts.head(top)
    fig = px.bar(
        shown.iloc[::-1],
        x="items",
        y=label,
        orientation="h",
        text="items",
        title=f"Items per {label}" + (f" (top {top} of {total})" if total > top else ""),
    )
    fig.update_layout(height=max(260, 22 * len(shown) + 80), margin=MARGIN, yaxis_title=None)
    return fig


def metrics_by_model(summary: pd.DataFrame, keys: list[str]) -> Any:
    """Grouped bars: one group per metric key, one bar per model, on a 0-1 axis (Metrics).

    Args:
        summary: one row per model: ``model`` and a column per metric key.
        keys: the metric keys to draw, in order.
    """
    import plotly.express as px

    long = summary.melt(id_vars=["model"], value_vars=keys, var_name="metric", value_name="value")
    fig = px.bar(long, x="metric", y="value", color="model", barmode="group", range_y=[0, 1], title="Metrics by model")
    fig.update_layout(height=380, margin=MARGIN, legend_title_text=None)
    return fig


def category_heatmap(matrix: pd.DataFrame, metric: str, label: str, *, top: int = 40) -> Any:
    """Heatmap of ``metric`` per category (rows) and model (columns), red 0 to green 1, values written in (Metrics).

    Args:
        matrix: one row per category (index), one column per model; values in [0, 1], largest categories first.
        metric: the metric key shown (colour bar title).
        label: the category column.
        top: how many categories to draw.
    """
    import plotly.express as px

    shown = matrix.head(top)
    fig = px.imshow(
        shown.to_numpy(),
        x=list(shown.columns),
        y=[str(i) for i in shown.index],
        color_continuous_scale="RdYlGn",
        zmin=0,
        zmax=1,
        text_auto=".2f",
        aspect="auto",
        labels={"color": metric},
        title=f"{metric} per {label}" + (f" ({top} largest of {len(matrix)})" if len(matrix) > top else ""),
    )
    fig.update_layout(height=max(300, 24 * len(shown) + 120), margin=MARGIN)
    return fig


def confused_pairs(pairs: pd.DataFrame, *, top: int = 15) -> Any:
    """Horizontal bars of the ``top`` most confused label pairs, most confused on top (Failures).

    Args:
        pairs: :func:`lens.analysis.confused_pairs` output, most confused first: ``label_a``, ``label_b``,
            ``count``, ``a_to_b``, ``b_to_a``, ``share``.
        top: how many pairs to draw.
    """
    import plotly.express as px

    chart = pairs.head(top).assign(pair=lambda t: t["label_a"] + " ↔ " + t["label_b"])
    fig = px.bar(chart.iloc[::-1], x="count", y="pair", orientation="h", hover_data=["a_to_b", "b_to_a", "share"])
    fig.update_layout(height=max(260, 26 * len(chart) + 80), margin={**MARGIN, "t": 10}, yaxis_title=None)
    return fig


def projection(frame: pd.DataFrame, colour_column: str, *, title: str, highlight: Sequence[str] = ()) -> Any:
    """Scatter of a 2-D projection; hover shows the title, id and colour value; ``customdata`` = ``[id]``, or
    ``[id, thumb]`` when ``frame`` has a ``thumb`` column (the hover map's photo files) (Projections).

    Args:
        frame: ``x, y, id, title, colour`` and ``colour_column`` (see ``components.projection_frame``), and
            optionally ``thumb``; the value ``"other"`` of ``colour`` is drawn grey, after every other value.
        colour_column: the metadata column the points are coloured by (legend title).
        title: the chart title.
        highlight: ids to ring in black, drawn over the map as one more trace named ``selected (n)`` (the points
            selected on either of two linked maps).
    """
    import plotly.express as px
    import plotly.graph_objects as go

    order = [v for v in frame["colour"].value_counts().index if v != "other"]
    if (frame["colour"] == "other").any():
        order.append("other")
    palette = px.colors.qualitative.D3 + px.colors.qualitative.Pastel
    colours = {value: palette[i % len(palette)] for i, value in enumerate(order)}
    colours["other"] = "#c7c7c7"
    custom = ["id", "thumb"] if "thumb" in frame else ["id"]
    fig = px.scatter(
        frame,
        x="x",
        y="y",
        color="colour",
        category_orders={"colour": order},
        color_discrete_map=colours,
        hover_name="title",
        hover_data={"id": True, colour_column: True, "x": False, "y": False, "colour": False},
        custom_data=custom,
        render_mode="svg" if len(frame) <= 5000 else "webgl",
        title=title,
    )
    fig.update_traces(marker={"size": 5, "opacity": 0.8})
    if highlight:
        ringed = frame[frame["id"].isin(set(highlight))]
        fig.add_trace(
            go.Scatter(
                x=ringed["x"],
                y=ringed["y"],
                mode="markers",
                name=f"selected ({len(ringed)})",
                marker={"size": 11, "symbol": "circle-open", "color": "black", "line": {"width": 2}},
                customdata=ringed[custom].to_numpy(),
                hovertext=ringed["title"],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        height=620,
        margin=MARGIN,
        # Legend under the map, so that the map keeps the column's width.
        legend={
            "title": colour_column,
            "itemsizing": "constant",
            "font": {"size": 10},
            "orientation": "h",
            "yanchor": "top",
            "y": -0.02,
        },
        xaxis={"showticklabels": False, "title": None},
        yaxis={"showticklabels": False, "title": None},
        dragmode="select",  # drag = box selection; lasso and zoom are in the toolbar
    )
    return fig


def selected_ids(event: Any) -> list[str]:
    """Catalog ids of the points selected in a ``st.plotly_chart(on_select=...)`` event (customdata[0] = id), in
    selection order without repeats."""
    selection = getattr(event, "selection", None) or (event.get("selection") if isinstance(event, dict) else None)
    points = (selection or {}).get("points", []) if isinstance(selection, dict) else getattr(selection, "points", [])
    ids: list[str] = []
    for point in points or []:
        custom = point.get("customdata") if isinstance(point, dict) else None
        if isinstance(custom, (list, tuple)) and custom:
            custom = custom[0]
        if custom is not None and str(custom) not in ids:
            ids.append(str(custom))
    return ids


def training_curves(history: pd.DataFrame, *, title: str) -> Any:
    """Loss (left axis) and validation P@5 (right axis) per epoch of a training run (Train page).

    Args:
        history: one row per epoch: ``loss``, and ``val_p@5`` when the recipe validates; ``stage`` for recipes of two
            stages (their epochs are numbered on one axis, stage by stage).
        title: the chart's title.
    """
    import plotly.graph_objects as go

    x = list(range(1, len(history) + 1))
    fig = go.Figure()
    if "loss" in history:  # proxy-ensemble's one row has none: nothing trains at its join
        fig.add_trace(go.Scatter(x=x, y=history["loss"], name="training loss", mode="lines+markers"))
    if "val_p@5" in history and history["val_p@5"].notna().any():
        fig.add_trace(go.Scatter(x=x, y=history["val_p@5"], name="validation P@5", mode="lines+markers", yaxis="y2"))
    if "stage" in history and history["stage"].nunique() > 1:
        stages = history["stage"].tolist()
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:  # label each boundary with the stage it starts (text-align has 8)
                fig.add_vline(x=i + 0.5, line_dash="dot", annotation_text=f"stage {int(stages[i])}")
    fig.update_layout(
        title=title,
        height=320,
        margin=MARGIN,
        xaxis={"title": "epoch", "dtick": 1 if len(x) <= 20 else None},
        yaxis={"title": "loss"},
        yaxis2={"title": "P@5", "overlaying": "y", "side": "right", "range": [0, 1]},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig
