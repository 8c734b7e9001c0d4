"""AppTest tests of the analyst features: query by image URL (a local image server), the session's query history,
the predicted category, why-similar maps, linked projections and the HTML reports. Small generated catalog, ``tiny``."""

# ruff: noqa: F811  (pytest fixtures imported from test_pages are redefined as arguments)
from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_pages import assert_clean, downloads, png_bytes, results, start, test_encoders  # noqa: F401  (fixtures)

from dashboard import history  # noqa: E402


@pytest.fixture()
def image_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local server of one PNG (class 1, a blue square) and one HTML page; the dashboard may fetch from loopback
    for this test only (its real fetcher refuses loopback, which another test checks)."""
    import dashboard.resources as resources
    from lens import remote

    routes = {"/blue.png": ("image/png", png_bytes(1)), "/page.html": ("text/html", b"<html></html>")}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            content_type, body = routes.get(self.path, ("text/plain", b""))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    real = remote.fetch_image_bytes
    monkeypatch.setattr(resources, "fetch_image_bytes", lambda url, **kw: real(url, allow_loopback=True, **kw))
    resources.fetch_url.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    resources.fetch_url.clear()


def test_query_by_url(dashboard_env: dict[str, Path], image_server: str) -> None:
    at = start("search")
    at.radio(key="search_mode").set_value("Image URL").run()
    assert not at.exception and "search_results" not in at.session_state
    assert any("Paste the address" in i.value for i in at.info)
    at.text_input(key="search_url").set_value(f"{image_server}/blue.png").run()
    assert_clean(at)
    table = results(at)
    assert table["query"].iat[0] == "image from 127.0.0.1"
    assert table["articleType"].iat[0] == "BlueSquare"  # the same answer as the uploaded photo gets
    at.text_input(key="search_url").set_value(f"{image_server}/page.html").run()
    assert not at.exception and "search_results" not in at.session_state
    assert any("not a JPEG, PNG or WebP image" in e.value for e in at.error)


def test_url_to_this_machine_is_refused_by_the_real_fetcher(dashboard_env: dict[str, Path]) -> None:
    at = start("search")
    at.radio(key="search_mode").set_value("Image URL").run()
    for url, message in [
        ("http://127.0.0.1:8501/x.jpg", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("file:///etc/passwd", "Only http"),
    ]:
        at.text_input(key="search_url").set_value(url).run()
        assert not at.exception, url
        assert any(message in e.value for e in at.error), (url, [e.value for e in at.error])
        assert "search_results" not in at.session_state


def test_history_records_reopens_and_exports(
    dashboard_env: dict[str, Path],
    downloads: dict[str, bytes],
) -> None:
    at = start("search")  # the default query: a catalog product
    first = results(at)
    first_product = at.selectbox(key="search_product").value
    at.slider(key="search_k").set_value(3).run()
    at.radio(key="search_mode").set_value("Upload an image").run()
    at.file_uploader(key="search_upload").set_value(("q.png", png_bytes(2), "image/png")).run()
    assert_clean(at)
    at.run()  # a rerun of the same query is not a new entry
    entries = history.entries(at.session_state)
    assert [e.label for e in entries] == [f"product {first_product}", f"product {first_product}", "uploaded image"]
    assert [e.k for e in entries] == [10, 3, 3]
    shown = next(d.value for d in at.dataframe if "top result" in d.value.columns)
    assert shown["#"].tolist() == [3, 2, 1]  # newest first
    # Uploads cannot be re-opened; the product queries can.
    assert at.selectbox(key="search_history_pick").options == ["#2", "#1"]
    at.selectbox(key="search_history_pick").set_value(1).run()
    at.button(key="search_history_reopen").click().run()
    assert_clean(at)
    assert at.radio(key="search_mode").value == "Catalog product" and at.slider(key="search_k").value == 10
    assert results(at)["id"].tolist() == first["id"].tolist()
    exported = pd.read_csv(io.BytesIO(downloads["lens-search-history.csv"]), dtype={"id": str})
    # The re-opened query is made again, so it is the session's 4th query.
    assert history.entries(at.session_state)[-1].label == entries[0].label
    assert exported.columns[0] == "query_no" and set(exported["query_no"]) == {1, 2, 3, 4}
    assert (exported["query_no"] == 3).sum() == 3 and (exported["query_no"] == 1).sum() == 10


def test_history_without_streamlit() -> None:
    state: dict = {}
    table = pd.DataFrame({"rank": [1], "id": ["a"], "similarity": [0.9]})
    assert history.record(state, model="m", k=1, label="q", filters={}, widgets={"w": 1}, results=table, now=0)
    assert history.record(state, model="m", k=1, label="q", filters={}, widgets={"w": 1}, results=table) is None
    assert history.record(state, model="m", k=1, label="q", filters={"c": ["x"]}, widgets={}, results=table)
    assert history.table(state)["filters"].tolist() == ["c=x", ""]
    with pytest.raises(ValueError, match="upload"):
        history.reopen(state, 2)
    with pytest.raises(KeyError):
        history.reopen(state, 9)
    history.reopen(state, 1)
    assert state["w"] == 1
    for i in range(history.MAX_ENTRIES + 5):
        history.record(state, model="m", k=i, label="q", filters={}, widgets={}, results=table)
    assert len(history.entries(state)) == history.MAX_ENTRIES


# ------------------------------------------------------------------------------------------------ linked projections


def _maps(at) -> list[list[dict]]:  # noqa: ANN001 - an AppTest
    """The traces of each map on the page: the hover maps' figures (the component's arguments) or, when they are
    off, the ``st.plotly_chart`` figures."""
    import json

    hover = [json.loads(c.proto.json_args)["spec"] for c in at.get("component_instance")]
    return [m["data"] for m in hover] or [json.loads(c.proto.spec)["data"] for c in at.get("plotly_chart")]


def _ringed(traces: list[dict]) -> list[dict]:
    return [t for t in traces if str(t.get("name", "")).startswith("selected")]


@pytest.mark.parametrize("photos", [True, False], ids=["hover-map", "plotly-chart"])
def test_linked_selection_rings_the_same_products_on_both_maps(
    dashboard_env: dict[str, Path],
    test_encoders: None,
    photos: bool,
) -> None:
    from dashboard.components import LINKED_KEY

    at = start("projections", proj_left="tiny", proj_right="tiny-text", proj_method="PCA", proj_hover=photos)
    assert_clean(at)
    assert len(at.get("component_instance")) == (2 if photos else 0)
    assert len(at.get("plotly_chart")) == (0 if photos else 2)
    assert any("No point selected" in c.value for c in at.caption)
    picked = ["000100", "000107", "000115"]
    # What a selection on the left map leaves in the session (the chart's own event state cannot be set by a test).
    at.session_state[LINKED_KEY] = {"ids": picked, "seen": {}}
    at.run()
    assert_clean(at)
    maps = _maps(at)
    assert len(maps) == 2
    for traces in maps:
        ringed = _ringed(traces)
        assert len(ringed) == 1 and ringed[0]["name"] == "selected (3)"
        assert sorted(c[0] for c in ringed[0]["customdata"]) == picked
    assert any("3 selected" in m.value for m in at.markdown)
    placements = next(d.value for d in at.dataframe if "id" in d.value.columns and "title" in d.value.columns)
    assert placements["id"].tolist() == picked
    assert {"tiny x", "tiny y", "tiny-text x", "tiny-text y"} <= set(placements.columns)
    assert placements[["tiny x", "tiny-text x"]].notna().all().all()
    # The two models put the same products in different places (different random CNNs).
    assert not np.allclose(placements["tiny x"], placements["tiny-text x"])
    at.button(key="proj_clear").click().run()
    assert_clean(at)
    assert at.session_state[LINKED_KEY]["ids"] == []
    assert all(not _ringed(traces) for traces in _maps(at))


def test_hover_map_selection_round_trip(dashboard_env: dict[str, Path], test_encoders: None) -> None:
    """The hover map's value (what main.js sends on a lasso) becomes the linked list; every point carries its
    thumbnail file, and the file is a small JPEG in the cache's thumbnail folder."""
    import json

    from PIL import Image

    from dashboard import hovermap
    from dashboard.components import LINKED_KEY

    at = start("projections", proj_left="tiny", proj_right="tiny-text", proj_method="PCA")
    assert_clean(at)
    left, right = at.get("component_instance")
    args = json.loads(left.proto.json_args)
    assert args["height"] == 620 and args["thumbs"].startswith("../dashboard.hovermap.thumbs_")
    assert left.proto.component_name == "dashboard.hovermap.hover_map"
    points = [(c[0], c[1]) for t in args["spec"]["data"] for c in t["customdata"]]
    assert len(points) == 24 and all(thumb.endswith(".jpg") for _, thumb in points)
    folder = args["thumbs"].split("/")[2]  # ../<thumbs component>/<catalog fingerprint>-64/
    assert folder.endswith("-64") and args["thumbs"] == f"../{args['thumbs'].split('/')[1]}/{folder}/"
    root = hovermap.thumbnail_root(str(dashboard_env["cache"])) / folder
    for _, thumb in points:
        with Image.open(root / thumb) as image:
            assert image.format == "JPEG" and max(image.size) == hovermap.THUMB_PX
    # A lasso on the right map (the value main.js sends), then the same points again after "Clear selection".
    lasso = ["000102", "000104"]
    value = {"selection": {"points": [{"customdata": [i]} for i in lasso]}, "seq": "1"}
    at.session_state["proj_right_PCA_hover"] = value
    at.run()
    assert_clean(at)
    assert at.session_state[LINKED_KEY]["ids"] == lasso
    assert all(sorted(c[0] for c in _ringed(traces)[0]["customdata"]) == lasso for traces in _maps(at))
    placements = next(d.value for d in at.dataframe if "id" in d.value.columns and "title" in d.value.columns)
    assert placements["id"].tolist() == lasso
    at.button(key="proj_clear").click().run()
    assert at.session_state[LINKED_KEY]["ids"] == []
    at.session_state["proj_right_PCA_hover"] = {**value, "seq": "2"}
    at.run()
    assert at.session_state[LINKED_KEY]["ids"] == lasso


def test_hover_map_falls_back_to_the_plotly_chart(
    dashboard_env: dict[str, Path], test_encoders: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard import hovermap
    from lens.errors import LensError

    def missing() -> Path:
        raise LensError("plotly.min.js is missing: reinstall plotly.")

    monkeypatch.setattr(hovermap, "plotly_js_dir", missing)
    at = start("projections", proj_left="tiny", proj_right="tiny-text", proj_method="PCA")
    assert not at.exception and not at.error
    assert not at.get("component_instance") and len(at.get("plotly_chart")) == 2
    assert [w.value for w in at.warning] == [
        "plotly.min.js is missing: reinstall plotly. The maps are drawn without photos."
    ]


def test_linked_selection_logic() -> None:
    from dashboard.components import LINKED_KEY, clear_linked, linked_selection

    def event(*ids: str) -> dict:
        return {"selection": {"points": [{"customdata": [i]} for i in ids]}}

    keys = {"left": "L", "right": "R"}
    state: dict = {}
    assert linked_selection(state, keys) == []
    state["L"] = event("a", "b")
    assert linked_selection(state, keys) == ["a", "b"]
    # Both charts are redrawn with the highlights and come back empty: the linked selection stays.
    state["L"], state["R"] = event(), event()
    assert linked_selection(state, keys) == ["a", "b"]
    state["R"] = event("c")
    assert linked_selection(state, keys) == ["c"]
    # A chart whose selection did not change does not take the selection back.
    state["L"] = event("a", "b")
    assert linked_selection(state, keys) == ["a", "b"]
    assert linked_selection(state, keys) == ["a", "b"]
    clear_linked(state)
    assert state[LINKED_KEY]["ids"] == [] and linked_selection(state, keys) == []
    # The hover map keeps its value across reruns; its seq tells a new selection of the same points from the old.
    state["L"] = {**event("a", "b"), "seq": "1"}
    assert linked_selection(state, keys) == ["a", "b"]
    clear_linked(state)
    assert linked_selection(state, keys) == []
    state["L"] = {**event("a", "b"), "seq": "2"}
    assert linked_selection(state, keys) == ["a", "b"]


def test_why_similar_map_for_a_result(dashboard_env: dict[str, Path]) -> None:
    at = start("search")
    assert_clean(at)
    table = results(at)
    assert any("How to read it" in c.value for c in at.caption)  # explained before it is asked for
    n_images = len(at.image)
    second = table["id"].iat[1]
    at.selectbox(key="search_why_pick").set_value(second).run()
    at.toggle(key="search_why_show").set_value(True).run()
    assert_clean(at)
    captions = [c for image in at.image for c in image.captions]
    assert "Query: the regions that match the result" in captions
    assert "Result #2: the regions that match the query" in captions
    assert len(at.image) == n_images + 2
    # The map's cosine is the search's similarity of that result (the map decomposes exactly that number).
    line = next(c.value for c in at.caption if c.value.startswith("Cosine similarity"))
    assert float(line.split()[2]) == pytest.approx(float(table["similarity"].iat[1]), abs=2e-3)


def test_no_why_similar_for_text_queries(dashboard_env: dict[str, Path], test_encoders: None) -> None:
    at = start("search")
    at.selectbox(key="search_model").set_value("tiny-text").run()
    at.radio(key="search_mode").set_value("Text").run()
    at.text_input(key="search_text").set_value("blue square").run()
    assert_clean(at)
    assert len(results(at)) == 10
    assert not [s for s in at.selectbox if s.key == "search_why_pick"]  # no map for a text query


# ----------------------------------------------------------------------------------------------------- HTML reports


@pytest.fixture()
def deferred(monkeypatch: pytest.MonkeyPatch) -> dict:
    """``{file name: the download's builder}`` of every deferred (built-on-click) download button."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    captured: dict = {}
    original = MediaFileManager.add_deferred

    def spy(self, data, mimetype, coordinates, file_name=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        captured[file_name] = data
        return original(self, data, mimetype, coordinates, file_name, *args, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", spy)
    return captured


def test_compare_report_is_one_self_contained_html(dashboard_env: dict[str, Path], deferred: dict) -> None:
    import base64
    import re

    at = start("compare")
    at.slider(key="compare_k").set_value(3).run()
    assert_clean(at)
    page = deferred["lens-compare-report.html"]().decode()
    assert page.startswith("<!DOCTYPE html>") and "Mean P@3" in page
    images = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    n_queries = page.count('class="tile q"')
    assert n_queries >= 1 and len(images) == n_queries * (1 + 3)  # each query, then its top 3 under the one model
    assert base64.b64decode(images[0])[:2] == b"\xff\xd8"  # real JPEG thumbnails
    assert "http://" not in page and "https://" not in page  # nothing to fetch: it opens offline
    assert "Not re-ranked" in page
    at.toggle(key="compare_rerank").set_value(True).run()
    assert_clean(at)
    page = deferred["lens-compare-report.html"]().decode()
    assert ", re-ranked" in page and "Re-ranked: alpha query expansion over the top 3 neighbours" in page


def test_metrics_report_has_the_table_and_the_chart(dashboard_env: dict[str, Path], deferred: dict) -> None:
    at = start("metrics")
    assert_clean(at)
    page = deferred["lens-metrics-articleType.html"]().decode()
    summary = at.dataframe[0].value
    assert "precision@5" in page and "tiny" in page
    assert f"{summary['precision@5'].iat[0]:.3f}" in page  # the page's figure, in the report
    assert "Plotly.newPlot" in page  # the chart, with plotly.js inline


def test_report_escapes_catalog_strings() -> None:
    from dashboard import report

    table = pd.DataFrame({"name": ["<script>alert(1)</script>"], "score": [0.5]})
    page = report.render("t<b>", [report.Section("s", report.table_html(table), note="n&")])
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "t&lt;b&gt;" in page
    assert '<td class="num">0.500</td>' in page


def test_a_10000_character_text_query_is_cut_with_a_message(
    dashboard_env: dict[str, Path], test_encoders: None
) -> None:
    at = start("search")
    at.selectbox(key="search_model").set_value("tiny-text").run()
    at.radio(key="search_mode").set_value("Text").run()
    at.text_input(key="search_text").set_value("reddress" * 1250).run()
    assert not at.exception and not at.error
    assert len(at.text_input(key="search_text").value) == 1000  # the widget keeps 1,000 characters
    assert any("limited to 1,000 characters" in w.value for w in at.warning)
    assert len(results(at)) == 10


def test_text_checks_apply_whatever_the_model() -> None:
    from dashboard import query
    from lens.errors import LensError

    def never(*args: object) -> None:
        raise AssertionError("no vector is computed for a bad text")

    encoders = query.QueryEncoders(never, never, never, never)
    for text, message in (("x" * 10_000, "10,000 characters long"), ("   ", "is empty")):
        with pytest.raises(LensError, match=message):
            query.build_query(query.QueryParts(mode=query.TEXT, text=text), encoders)


def test_pages_start_with_the_best_ready_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard import config

    monkeypatch.delenv("LENS_DEFAULT_MODEL", raising=False)
    ready = ["efficientnet-lite0", "mobilenet-v2", "proxy-efficientnet-lite2", "text-align"]
    assert config.pick_default_model(ready, ready) == "proxy-efficientnet-lite2"
    assert config.pick_default_model([*ready, "proxy-ensemble"], [*ready, "proxy-ensemble"]) == "proxy-ensemble"
    assert config.pick_default_model(ready, ["mobilenet-v2", "efficientnet-lite0"]) == "efficientnet-lite0"
    assert config.pick_default_model(ready, ["text-align"]) == "text-align"  # nothing better is ready
    monkeypatch.setenv("LENS_DEFAULT_MODEL", "mobilenet-v2")
    assert config.pick_default_model(ready, ready) == "mobilenet-v2"  # the user's choice wins


def test_rerank_toggle_on_search_and_metrics(dashboard_env: dict[str, Path]) -> None:
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder
    from lens.evaluate import evaluate_embeddings
    from lens.index import ExactIndex
    from lens.search import expand_query

    at = start("search")
    plain = results(at)
    product = at.selectbox(key="search_product").value
    at.toggle(key="search_rerank").set_value(True).run()
    assert_clean(at)
    expanded = results(at)
    # The oracle: the same expansion by hand on the exact index of the same vectors.
    catalog = load_catalog(dashboard_env["catalog"])
    embeddings = embed_catalog(catalog, create_encoder("tiny"), cache_dir=dashboard_env["cache"])
    index = ExactIndex.from_embeddings(embeddings)
    vector = embeddings.vectors[embeddings.position(product)]
    expected = expand_query(
        index, vector, lambda ids: embeddings.vectors[[embeddings.position(i) for i in ids]], k=3, exclude=[product]
    )
    ranked = [h.id for h in index.search(expected, 10, exclude=[product])]
    assert expanded["id"].tolist() == ranked
    assert len(plain) == len(expanded) == 10
    at = start("metrics")
    before = at.dataframe[0].value.set_index("model")
    at.toggle(key="metrics_rerank").set_value(True).run()
    assert_clean(at)
    after = at.dataframe[0].value.set_index("model")
    oracle = evaluate_embeddings(embeddings, catalog, label_column="articleType", ks=(1, 5, 10), expand=3).summary
    assert after.loc["tiny", "map@r"] == pytest.approx(oracle["map@r"], abs=1e-6)
    assert list(before.columns) == list(after.columns)


def test_rerank_toggle_on_compare(dashboard_env: dict[str, Path], downloads: dict[str, bytes]) -> None:
    """The Compare page's toggle re-ranks every cell by alpha query expansion, as lens.analysis.compare_grid does
    with ``expand`` on the same vectors (the oracle; the library is checked against the Search expansion)."""
    from lens.analysis import compare_grid
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder

    def grid_csv() -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(downloads["lens-compare.csv"]), dtype={"query_id": str, "result_id": str})

    at = start("compare")
    plain = grid_csv()
    at.toggle(key="compare_rerank").set_value(True).run()
    assert_clean(at)
    assert any("re-ranked" in s.value for s in at.subheader)
    reranked = grid_csv()
    catalog = load_catalog(dashboard_env["catalog"])
    embeddings = embed_catalog(catalog, create_encoder("tiny"), cache_dir=dashboard_env["cache"])
    labels = dict(zip(catalog.ids, catalog.labels("articleType").tolist()))
    queries = list(dict.fromkeys(plain["query_id"]))
    expected = compare_grid(queries, {"tiny": (embeddings.vectors, embeddings.ids)}, labels, 5, expand=3)
    assert reranked["result_id"].tolist() == expected["result_id"].tolist()
    assert np.allclose(reranked["similarity"], expected["similarity"], atol=1e-5)
    unexpanded = compare_grid(queries, {"tiny": (embeddings.vectors, embeddings.ids)}, labels, 5)
    assert plain["result_id"].tolist() == unexpanded["result_id"].tolist()


def test_the_first_map_is_drawn_before_the_second_is_computed(
    dashboard_env: dict[str, Path], test_encoders: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two UMAPs not computed yet: both sides show a PCA preview first, then the left UMAP is computed and drawn
    (Streamlit sends each element as it is made) before the right UMAP is computed."""
    from dashboard import hovermap, resources

    events: list[tuple[str, ...]] = []
    real_projection, real_map = resources.get_projection, hovermap.hover_map

    def projection(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        events.append(("compute", args[2], args[5]))
        return real_projection(*args, **kwargs)

    def draw(figure, *, key, **kwargs):  # noqa: ANN001, ANN003, ANN202
        events.append(("draw", key))
        return real_map(figure, key=key, **kwargs)

    monkeypatch.setattr(resources, "get_projection", projection)
    monkeypatch.setattr(hovermap, "hover_map", draw)
    at = start("projections", proj_left="tiny", proj_right="tiny-text", proj_method="UMAP")
    assert_clean(at)
    assert events == [
        ("compute", "tiny", "pca"),  # the previews
        ("compute", "tiny-text", "pca"),
        ("compute", "tiny", "umap"),
        ("draw", "proj_left_UMAP_hover"),
        ("compute", "tiny-text", "umap"),
        ("draw", "proj_right_UMAP_hover"),
    ]


def test_pick_text_model_switches_image_only_models_to_the_best_text_model() -> None:
    from dashboard import config

    assert config.pick_text_model("proxy-efficientnet-lite2", ["clip-x", "text-align"]) == "text-align"
    assert config.pick_text_model("proxy-efficientnet-lite2", ["clip-x"]) == "clip-x"  # the only text model
    assert config.pick_text_model("clip-x", ["clip-x", "text-align"]) == "clip-x"  # a text model is kept
    assert config.pick_text_model("efficientnet-lite0", []) == "efficientnet-lite0"  # none: the page explains
