"""AppTest tests of the dashboard pages on the small generated catalog (4 classes x 6 items) with the ``tiny`` encoder.

Every page renders without an exception; interactions (upload, model switch, filters, text, crop, CSV exports, bad
input) behave as the issue asks. Two extra weight-free test encoders are registered for some tests: ``tiny-text``
(text-capable: a bag-of-words hash for texts) and ``tiny-missing`` (its weights file does not exist).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from app_pages import APP as APP_PATH  # noqa: E402
from app_pages import app_pages  # noqa: E402
from fixtures import draw_item  # noqa: E402

APP = str(APP_PATH)
SCRIPTS = {page.name: page.script for page in app_pages()}
"""``{page name: script}`` of every page app.py declares (``pages/search.py`` is ``search``)."""
PAGES = tuple(SCRIPTS)
HOME = next(page.name for page in app_pages() if page.default)
TIMEOUT = 180  # seconds per script run; the first UMAP in a process compiles numba code (10-30 s on 2 cores)


def start(page: str = HOME, **state: object) -> AppTest:
    """Run the app, then switch to ``page``; ``state`` pre-sets session keys (widget values) before the first run."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["proj_right"] = "tiny"  # keep Projections on the weight-free encoder
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page != HOME:
        at.switch_page(SCRIPTS[page]).run()
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def png_bytes(class_index: int, seed: int = 1) -> bytes:
    buffer = io.BytesIO()
    draw_item(class_index, np.random.default_rng(seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def models_table(at: AppTest) -> pd.DataFrame:
    """The Overview's models table (the dataframe with an ``encoder`` column)."""
    return next(d.value for d in at.dataframe if "encoder" in d.value.columns)


def results(at: AppTest) -> pd.DataFrame:
    return at.session_state["search_results"]


@pytest.fixture()
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """``{file_name: bytes}`` of every ``st.download_button`` rendered during the test."""
    captured: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):  # noqa: ANN001, ANN202
        if filename and isinstance(path_or_data, (bytes, bytearray)):
            captured[filename] = bytes(path_or_data)
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    return captured


@pytest.fixture()
def test_encoders() -> Iterator[None]:
    """Register ``tiny-text`` (image + text) and ``tiny-missing`` (no weights) for one test."""
    from dashboard import resources
    from lens.encoders import EncoderSpec, Preprocess, TorchImageEncoder, WeightsFile, l2_normalize, register_encoder
    from lens.encoders._registry import _REGISTRY
    from lens.encoders.base import state_dict_hash
    from lens.encoders.tiny import build_tiny_model

    class TextTiny(TorchImageEncoder):
        def embed_texts(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
            out = np.zeros((len(texts), self.dim), dtype=np.float32)
            for row, text in enumerate(texts):
                for word in text.lower().split():
                    out[row, int(hashlib.sha256(word.encode()).hexdigest(), 16) % self.dim] += 1.0
            return l2_normalize(out)

    preprocess = Preprocess(input_size=32, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    common = {"family": "test", "dim": 64, "preprocess": preprocess, "precision": "fp32", "channels_last": False}
    text_spec = EncoderSpec(name="tiny-text", modalities=("image", "text"), description="test: image + text", **common)
    missing_spec = EncoderSpec(name="tiny-missing", description="test: weights missing", **common)

    def build_text(spec, weights_path, *, precision=None):  # noqa: ANN001, ANN202
        model = build_tiny_model(spec.dim, seed=1)
        return TextTiny(spec, model, state_dict_hash(model.state_dict()), precision=precision)

    def build_missing(spec, weights_path, *, precision=None):  # noqa: ANN001, ANN202
        raise AssertionError("never built: its weights are missing")

    for name in ("tiny-text", "tiny-missing"):
        _REGISTRY.pop(name, None)
    register_encoder(text_spec)(build_text)
    register_encoder(
        missing_spec, weights=WeightsFile(filename="lens-test-missing.pth", pip_name="lens-test-weights-not-on-pypi")
    )(build_missing)
    resources.encoder_rows.clear()
    resources.model_states.clear()
    try:
        yield
    finally:
        for name in ("tiny-text", "tiny-missing"):
            _REGISTRY.pop(name, None)
        resources.encoder_rows.clear()
        resources.model_states.clear()


# ---------------------------------------------------------------------------------------------------- smoke tests


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(page: str, dashboard_env: dict[str, Path]) -> None:
    at = start(page)
    assert_clean(at)
    assert at.title, "every page has a title"
    if page == "overview":
        assert {m.label: m.value for m in at.metric}["Items"] == "24"
        assert "tiny" in set(models_table(at)["encoder"])
    elif page == "search":
        assert len(results(at)) == 10
        assert sum("-badge[" in m.value for m in at.markdown) == 10  # one similarity badge per result card
    elif page == "compare":
        assert any("queries × 1 models" in s.value for s in at.subheader)
        assert at.image, "query and result thumbnails"
    elif page == "projections":
        # two maps side by side: the hover maps (a custom component), Streamlit's charts being the fallback
        assert len(at.get("component_instance")) == 2 and not at.get("plotly_chart")
        assert any("UMAP" in c.value for c in at.caption)
    elif page == "metrics":
        summary = at.dataframe[0].value
        assert list(summary["model"]) == ["tiny"]
        assert {"precision@1", "precision@5", "precision@10", "recall@10", "hit@10", "map@10", "map@r"} <= set(summary)
    elif page == "failures":
        assert [s.value for s in at.subheader][:1] == ["Worst queries (lowest P@10)"]


def build_table(at: AppTest) -> pd.DataFrame:
    """The Overview's build table (model, kind, state, progress, ETA)."""
    return next(d.value for d in at.dataframe if "state" in d.value.columns).set_index("model")


def test_overview_builds_missing_models_in_the_background(dashboard_env: dict[str, Path]) -> None:
    from dashboard import resources
    from lens.build import runner

    at = start("overview")
    states = models_table(at).set_index("encoder")
    assert states.loc["tiny", "embeddings"] == "not built"
    assert build_table(at).loc["tiny", "state"] == "queued"
    at.multiselect(key="overview_build_models").set_value(["tiny"])
    at.button(key="overview_build").click().run()
    assert_clean(at)
    assert any("Build started in the background (pid" in s.value for s in at.success)
    status = dashboard_env["cache"] / "build" / "status.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not status.exists() or runner(dashboard_env["cache"]) is not None):
        time.sleep(0.2)
    resources.build_views.clear()
    at.run()
    assert_clean(at)
    assert build_table(at).loc["tiny", "state"] == "ready"
    states = models_table(at).set_index("encoder")
    assert states.loc["tiny", "embeddings"] == "cached"
    assert states.loc["tiny", "index"] == "built"
    assert int(states.loc["tiny", "vectors"]) == 24
    assert list((dashboard_env["cache"] / "indexes" / "tiny").glob("*.ann")), "annoy index written to the cache"


def test_overview_shows_a_running_build_and_refuses_a_second(dashboard_env: dict[str, Path]) -> None:
    """A build in progress (this process holds its lock): percent and ETA, the log, a second start is refused."""
    import os

    from dashboard import resources
    from lens.build import _lock, log_path
    from lens.catalog import load_catalog
    from lens.jobs import write_status

    cache = dashboard_env["cache"]
    lock = _lock(cache)
    lock.acquire("build")
    try:
        write_status(
            cache / "build" / "status.json",
            {
                "fingerprint": load_catalog(dashboard_env["catalog"]).fingerprint(),
                "pid": os.getpid(),
                "state": "running",
                "started": "2026-01-01T00:00:00+00:00",
                "steps": [{"name": "tiny", "state": "running", "percent": 40.0, "eta_s": 80, "phase": "embed"}],
            },
        )
        log_path(cache).write_text("12:00:00 tiny: started\n")
        resources.build_views.clear()
        at = start("overview")
        assert_clean(at)
        row = build_table(at).loc["tiny"]
        assert row["state"] == "building 40 % (ETA 1m20s)" and row["progress"] == pytest.approx(0.4)
        assert any("tiny: started" in c.value for c in at.code), "the log tail in its expander"
        assert any("Building models" in c.value and "tiny 40 %" in c.value for c in at.sidebar.caption)
        at.multiselect(key="overview_build_models").set_value(["tiny"])
        at.button(key="overview_build").click().run()
        assert not at.exception
        assert any(f"already running (pid {os.getpid()}" in w.value for w in at.warning)
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------------------- search


def test_upload_an_image_shows_results(dashboard_env: dict[str, Path]) -> None:
    at = start("search")
    at.radio(key="search_mode").set_value("Upload an image").run()
    assert not at.exception
    assert "search_results" not in at.session_state, "no query yet, no results"
    at.file_uploader(key="search_upload").set_value(("query.png", png_bytes(1), "image/png")).run()
    assert_clean(at)
    table = results(at)
    assert len(table) == 10
    assert table["query"].iat[0] == "uploaded image"
    # A blue square (class 1) finds blue squares first with the tiny encoder.
    assert table["articleType"].iat[0] == "BlueSquare"
    assert table["similarity"].is_monotonic_decreasing
    assert any("results" in m.value and "uploaded image" in m.value for m in at.markdown)


def test_bad_uploads_get_an_error_not_a_traceback(dashboard_env: dict[str, Path]) -> None:
    at = start("search")
    at.radio(key="search_mode").set_value("Upload an image").run()
    uploader = at.file_uploader(key="search_upload")
    cases = [
        (("notes.jpg", b"this is not an image", "image/jpeg"), "not an image"),
        (("broken.jpg", png_bytes(0)[:60], "image/jpeg"), "cannot be used as a query image"),
        (("huge.jpg", b"\xff" * (11 * 2**20), "image/jpeg"), "upload limit"),
        (("anim.gif", png_bytes(0), "image/gif"), "is not a JPEG, PNG or WebP file"),
    ]
    for upload, message in cases:
        uploader.set_value(upload).run()
        assert not at.exception, (upload[0], [e.value for e in at.exception])
        assert any(message in e.value for e in at.error), (upload[0], [e.value for e in at.error])
        assert "search_results" not in at.session_state
        uploader = at.file_uploader(key="search_upload")


def test_switch_model(dashboard_env: dict[str, Path], test_encoders: None) -> None:
    at = start("search")
    assert set(results(at)["model"]) == {"tiny"}
    at.selectbox(key="search_model").set_value("tiny-text").run()
    assert_clean(at)
    assert set(results(at)["model"]) == {"tiny-text"}
    at.selectbox(key="search_model").set_value("tiny-missing").run()
    assert not at.exception
    assert at.error and "weights are missing" in at.error[0].value
    assert "lens-test-missing.pth" in at.error[0].value  # the remedy says which file to provide
    assert "search_results" not in at.session_state


def test_filters_narrow_results(dashboard_env: dict[str, Path]) -> None:
    at = start("search")
    assert len(results(at)) == 10
    at.multiselect(key="search_filter_gender").set_value(["Women"]).run()
    assert_clean(at)
    women = results(at)
    assert 0 < len(women) < 10 and set(women["gender"]) == {"Women"}  # 8 women in 24 items
    at.multiselect(key="search_filter_baseColour").set_value(["Blue"]).run()
    both = results(at)
    assert 0 < len(both) < len(women)
    assert set(both["gender"]) == {"Women"} and set(both["baseColour"]) == {"Blue"}
    at.multiselect(key="search_filter_articleType").set_value(["RedCircle"]).run()
    assert not at.exception
    assert any("No product passes these filters" in w.value for w in at.warning)


def test_csv_export_has_the_promised_columns(dashboard_env: dict[str, Path], downloads: dict[str, bytes]) -> None:
    at = start("search")
    at.slider(key="search_k").set_value(7).run()
    assert_clean(at)
    table = pd.read_csv(io.BytesIO(downloads["lens-search-tiny.csv"]), dtype={"id": str})
    assert list(table.columns[:6]) == ["rank", "id", "similarity", "similarity_pct", "model", "query"]
    assert {"image", "articleType", "gender", "baseColour", "productDisplayName"} <= set(table.columns)
    assert len(table) == 7 and list(table["rank"]) == list(range(1, 8))
    assert table["id"].str.len().eq(6).all()  # zero-padded ids stay strings
    assert (table["similarity_pct"] - 100 * table["similarity"]).abs().max() < 0.06
    assert table["id"].tolist() == results(at)["id"].tolist()


def test_text_queries(dashboard_env: dict[str, Path], test_encoders: None) -> None:
    at = start("search")
    assert at.selectbox(key="search_model").value == "tiny"
    at.radio(key="search_mode").set_value("Text").run()
    assert not at.exception
    assert at.selectbox(key="search_model").value == "tiny-text"  # a text query switches to the text model
    assert any("Type a description" in w.value for w in at.warning), "empty text query"
    at.selectbox(key="search_model").set_value("tiny").run()  # the user picks an image-only model again
    at.text_input(key="search_text").set_value("red circle").run()
    assert not at.exception
    assert any("embeds images only" in e.value and "tiny-text" in e.value for e in at.error), "image-only model"
    at.selectbox(key="search_model").set_value("tiny-text").run()
    assert_clean(at)
    assert results(at)["query"].iat[0] == "text: red circle"
    at.radio(key="search_mode").set_value("Image + text").run()
    assert_clean(at)
    table = results(at)
    assert table["query"].iat[0].startswith("product ") and table["query"].iat[0].endswith("+ text: red circle")


def test_crop_of_a_catalog_product(dashboard_env: dict[str, Path]) -> None:
    at = start("search")
    assert not any("(cropped)" in c for image in at.image for c in image.captions)
    at.slider(key="search_crop_x").set_value((0, 50)).run()
    at.slider(key="search_crop_y").set_value((50, 100)).run()
    assert_clean(at)
    assert any(c == "Query (cropped)" for image in at.image for c in image.captions)
    table = results(at)
    assert len(table) == 10 and table["query"].iat[0].startswith("product ")


def test_search_product_by_name(dashboard_env: dict[str, Path]) -> None:
    at = start("search")
    at.text_input(key="search_product_query").set_value("triangle").run()
    assert_clean(at)
    options = at.selectbox(key="search_product").options
    assert len(options) == 6 and all("triangle" in o.lower() for o in options)
    assert results(at)["query"].iat[0] == f"product {at.selectbox(key='search_product').value}"
    assert at.selectbox(key="search_product").value not in set(results(at)["id"]), "the query product is left out"


# ------------------------------------------------------------------------------------------ compare, metrics, failures


def test_compare_grid_and_csv(dashboard_env: dict[str, Path], downloads: dict[str, bytes]) -> None:
    at = start("compare")
    at.slider(key="compare_k").set_value(3).run()
    assert_clean(at)
    table = pd.read_csv(io.BytesIO(downloads["lens-compare.csv"]), dtype={"query_id": str, "result_id": str})
    assert list(table.columns) == [
        "query_id",
        "query_label",
        "model",
        "k",
        "rank",
        "result_id",
        "result_label",
        "similarity",
        "correct",
        "precision_at_k",
    ]
    assert len(table) == 4 * 1 * 3  # 4 categories (one query each) x 1 model x k = 3
    assert set(table["model"]) == {"tiny"} and set(table["rank"]) == {1, 2, 3}
    assert (table["correct"] == (table["query_label"] == table["result_label"])).all()
    assert sum("P@3" in m.value for m in at.markdown) == 4


def test_metrics_label_column_and_csv(dashboard_env: dict[str, Path], downloads: dict[str, bytes]) -> None:
    at = start("metrics")
    at.selectbox(key="label_column").set_value("gender").run()  # the sidebar, drawn by app.py on every page
    assert_clean(at)
    summary = pd.read_csv(io.BytesIO(downloads["lens-metrics-gender.csv"]))
    assert summary["label"].tolist() == ["gender"] and summary["model"].tolist() == ["tiny"]
    per_category = pd.read_csv(io.BytesIO(downloads["lens-metrics-per-gender.csv"]))
    assert set(per_category["label"]) == {"Men", "Women", "Unisex"}
    assert len(at.get("plotly_chart")) == 2  # bar chart + heatmap


def test_failures_exports(dashboard_env: dict[str, Path], downloads: dict[str, bytes]) -> None:
    at = start("failures")
    at.slider(key="failures_threshold").set_value(0.9).run()
    assert_clean(at)
    worst = pd.read_csv(io.BytesIO(downloads["lens-worst-tiny.csv"]), dtype={"query_id": str})
    assert {"query_id", "rank", "result_id", "correct", "precision_at_k"} <= set(worst.columns)
    assert worst.groupby("query_id")["precision_at_k"].first().max() <= 1.0
    assert "lens-confused-tiny.csv" in downloads
    dups = pd.read_csv(io.BytesIO(downloads["lens-duplicates-tiny.csv"]), dtype={"id_a": str, "id_b": str})
    assert (dups["similarity"] >= 0.9 - 1e-6).all()


# ------------------------------------------------------------------------------------------------------ bad catalogs


def test_catalog_without_the_label_column(dashboard_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENS_LABEL", "category")
    at = start("overview")
    assert not at.exception
    assert any("has no 'category' column" in w.value and "sidebar" in w.value for w in at.warning)
    # The sidebar offers the real columns, and the pages work with the first of them.
    assert "articleType" in at.selectbox(key="label_column").options
    for page in ("search", "metrics"):
        at.switch_page(SCRIPTS[page]).run()
        assert not at.exception and not at.error, page
        assert any("has no 'category' column" in w.value for w in at.warning), page


def test_missing_catalog_is_an_error_on_every_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENS_CATALOG", str(tmp_path / "nowhere"))
    for page in PAGES:
        at = start(page)
        assert not at.exception, page
        assert at.error and "LENS_CATALOG" in at.error[0].value, page


# ------------------------------------------------------------------------------------------- helpers without Streamlit


def test_similarity_colour_bands() -> None:
    from dashboard.components import similarity_badge
    from dashboard.config import similarity_color

    assert [similarity_color(p) for p in (100, 70, 69.9, 40, 39.9, -5)] == [
        "green",
        "green",
        "orange",
        "orange",
        "red",
        "red",
    ]
    assert similarity_badge(0.696) == ":green-badge[70 %]", "the colour follows the percentage shown"
    assert similarity_badge(0.394) == ":red-badge[39 %]"


def test_app_declares_every_page_file() -> None:
    """The page list the tests use comes from app.py; it must name every file in pages/, once, with one home page."""
    pages = app_pages()
    root = APP_PATH.parent
    assert sorted(page.script for page in pages) == sorted(
        p.relative_to(root).as_posix() for p in root.glob("pages/*.py")
    )
    assert len({page.url_path for page in pages}) == len(pages), "one URL per page"
    assert [page.url_path for page in pages if page.default] == [""], "exactly one default page, served at /"


def test_result_captions_mark_correct_results() -> None:
    from dashboard.components import result_captions

    cell = pd.DataFrame(
        {"correct": [True, False], "result_label": ["BlueSquareWithALongName", "RedCircle"], "similarity": [0.914, 0.4]}
    )
    assert result_captions(cell) == ["✓ BlueSquareWith 91%", "✗ RedCircle 40%"]


def test_metrics_summary_is_lens_summary_table() -> None:
    from dashboard.resources import metrics_summary
    from lens.evaluate import summary_table
    from lens.metrics import evaluate_retrieval

    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0], [0, 0, 1]], dtype=np.float32)
    labels = ["a", "a", "b", "b", "c"]  # "c" has no other item: skipped
    ids = [f"{i:06d}" for i in range(5)]
    reports = {m: evaluate_retrieval(vectors, labels, ids, ks=(1, 5), label_column="articleType") for m in ("x", "y")}
    keys = reports["x"].metric_keys
    for macro in (False, True):
        table = metrics_summary(reports, macro=macro)
        assert list(table.columns) == ["model", "average", "label", "queries", "skipped", *keys]
        assert table["model"].tolist() == ["x", "y"] and set(table["label"]) == {"articleType"}
        assert table["queries"].tolist() == [4, 4] and table["skipped"].tolist() == [1, 1]
        shared = ["model", "average", "label", *keys]
        pd.testing.assert_frame_equal(table[shared], summary_table(reports, macro=macro)[shared])
    assert metrics_summary(reports, macro=True)["average"].tolist() == ["macro", "macro"]


def test_large_catalogs_list_only_ready_models_and_never_embed_in_a_page(
    dashboard_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above LENS_AUTO_BUILD_ITEMS the pages wait for the background build instead of embedding the catalog."""
    from dashboard import resources
    from lens.build import BuildOptions, make_plan, run_build
    from lens.catalog import load_catalog

    monkeypatch.setenv("LENS_AUTO_BUILD_ITEMS", "10")  # the 24-item catalog counts as large
    resources.model_states.clear()
    at = start("search")
    assert not at.exception
    assert any("No model is ready for catalog" in i.value for i in at.info)
    assert "search_results" not in at.session_state
    assert not (dashboard_env["cache"] / "embeddings").exists(), "nothing embedded by the page"
    # The build publishes tiny (in another process in real life); the page lists it on its next run.
    run_build(load_catalog(dashboard_env["catalog"]), make_plan(models="tiny", recipes="none"), BuildOptions())
    at.run()  # no cache cleared by hand: the models stamp (status file, models folder) changed
    assert_clean(at)
    assert at.selectbox(key="search_model").options == ["tiny"]
    assert len(results(at)) == 10
