"""The dashboard's pages as app.py declares them: its ``st.Page(...)`` calls, read with ``ast`` (app.py is not run), so
that the page tests follow app.py instead of a list written again in each test module."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app.py"


@dataclass(frozen=True)
class AppPage:
    """One ``st.Page`` of app.py.

    Attributes:
        script: the page file, relative to app.py (e.g. ``pages/search.py``), as ``AppTest.switch_page`` takes it.
        name: the file's stem (``search``).
        title: the navigation label.
        default: whether it is the page served at ``/``.
        url_path: the URL path that serves it: ``""`` for the default page, else its ``url_path`` argument or, as
            Streamlit infers it, the file's stem.
    """

    script: str
    name: str
    title: str
    default: bool
    url_path: str


def _literal(node: ast.expr, what: str) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise AssertionError(f"app.py: the {what} of an st.Page(...) call must be a literal") from None


def app_pages(app: Path = APP) -> list[AppPage]:
    """The ``st.Page(...)`` calls of ``app`` in source order (file pages only: every lens page is a file)."""
    found = []
    for node in ast.walk(ast.parse(app.read_text(encoding="utf-8"), filename=str(app))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Page"):
            continue
        keywords = {k.arg: _literal(k.value, k.arg or "**") for k in node.keywords}
        script = str(_literal(node.args[0], "page") if node.args else keywords["page"])
        name = Path(script).stem
        default = bool(keywords.get("default", False))
        page = AppPage(
            script=script,
            name=name,
            title=str(keywords.get("title", name)),
            default=default,
            url_path="" if default else str(keywords.get("url_path", name)),
        )
        found.append(((node.lineno, node.col_offset), page))
    return [page for _, page in sorted(found, key=lambda item: item[0])]
