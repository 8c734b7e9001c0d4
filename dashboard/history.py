"""The Search page's query history for the session: every query with its model, k and filters, re-openable and
exportable (one CSV with the results of every query of the session).

Kept free of Streamlit widgets: the state is a mutable mapping (``st.session_state`` in the app, a dict in tests).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

HISTORY_KEY = "search_history"
MAX_ENTRIES = 50
"""Oldest queries are dropped past this many (each keeps its results table, a few kB)."""


@dataclass(frozen=True)
class Entry:
    """One query of the session.

    Attributes:
        number: 1, 2, ... in the order the queries were made.
        at: wall-clock time of the query (``time.time()``).
        model, k, label: the model, the number of results, the query's label (``product 15970 + text: red``).
        filters: ``{column: [values]}`` of the active filters.
        widgets: the Search page's widget values that re-open the query (``{session key: value}``); empty when
            the query cannot be re-made from widgets alone (an uploaded photo).
        results: the results table as shown.
    """

    number: int
    at: float
    model: str
    k: int
    label: str
    filters: dict[str, list[str]]
    widgets: dict[str, Any]
    results: pd.DataFrame = field(repr=False, compare=False)

    @property
    def reopenable(self) -> bool:
        return bool(self.widgets)

    def signature(self) -> tuple[Any, ...]:
        return (self.model, self.k, self.label, tuple(sorted((c, tuple(v)) for c, v in self.filters.items())))


def entries(state: Mapping[str, Any]) -> list[Entry]:
    return list(state.get(HISTORY_KEY, []))


def record(
    state: MutableMapping[str, Any],
    *,
    model: str,
    k: int,
    label: str,
    filters: Mapping[str, list[str]],
    widgets: Mapping[str, Any],
    results: pd.DataFrame,
    now: float | None = None,
) -> Entry | None:
    """Append a query to the history, unless it repeats the last one (a rerun of the same query). Returns the entry
    added, or ``None`` for a repeat."""
    history = entries(state)
    entry = Entry(
        number=(history[-1].number + 1) if history else 1,
        at=time.time() if now is None else now,
        model=model,
        k=int(k),
        label=label,
        filters={c: list(v) for c, v in filters.items() if v},
        widgets=dict(widgets),
        results=results.reset_index(drop=True),
    )
    if history and history[-1].signature() == entry.signature():
        return None
    history.append(entry)
    state[HISTORY_KEY] = history[-MAX_ENTRIES:]
    return entry


def table(state: Mapping[str, Any]) -> pd.DataFrame:
    """One row per query, newest first: ``#, time, model, query, k, filters, results, top result``."""
    rows = []
    for entry in reversed(entries(state)):
        top = entry.results.iloc[0] if len(entry.results) else None
        rows.append(
            {
                "#": entry.number,
                "time": time.strftime("%H:%M:%S", time.localtime(entry.at)),
                "model": entry.model,
                "query": entry.label,
                "k": entry.k,
                "filters": "; ".join(f"{c}={','.join(v)}" for c, v in entry.filters.items()),
                "results": len(entry.results),
                "top result": "" if top is None else f"{top['id']} ({float(top['similarity']):.3f})",
            }
        )
    return pd.DataFrame(rows, columns=["#", "time", "model", "query", "k", "filters", "results", "top result"])


def all_results(state: Mapping[str, Any]) -> pd.DataFrame:
    """Every query's results in one table, oldest query first, each row prefixed with its query's ``query_no``."""
    frames = [entry.results.assign(query_no=entry.number) for entry in entries(state)]
    if not frames:
        return pd.DataFrame(columns=["query_no"])
    out = pd.concat(frames, ignore_index=True)
    return out[["query_no", *[c for c in out.columns if c != "query_no"]]]


def reopen(state: MutableMapping[str, Any], number: int) -> Entry:
    """Set the widget values of query ``number`` so the next run of the Search page makes it again.

    Raises:
        KeyError: no such query in the history.
        ValueError: the query cannot be re-made from widgets (an uploaded photo).
    """
    entry = next((e for e in entries(state) if e.number == number), None)
    if entry is None:
        raise KeyError(number)
    if not entry.reopenable:
        raise ValueError("an uploaded photo cannot be re-opened; upload it again")
    for key, value in entry.widgets.items():
        state[key] = value
    return entry
