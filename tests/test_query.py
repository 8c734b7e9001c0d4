"""The dashboard's Streamlit-free helpers: the Search page's query (upload checks, crops, the query vector from an
image, a text or both, its label, the results table) and the charts. Nothing here imports Streamlit."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dashboard import charts, query
from fixtures import draw_item
from lens.errors import LensError
from lens.vectors import l2_normalize, mix_query_vectors

REPO_ROOT = Path(__file__).resolve().parents[1]


def png_bytes(class_index: int, seed: int = 1) -> bytes:
    buffer = io.BytesIO()
    draw_item(class_index, np.random.default_rng(seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_no_streamlit_needed() -> None:
    """query and charts are the parts of the dashboard that a test or a script can use without Streamlit."""
    code = "import sys, dashboard.query, dashboard.charts; assert 'streamlit' not in sys.modules, 'streamlit imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_query_helpers() -> None:
    assert query.crop_box((200, 100), (0, 50), (50, 100)) == (0, 50, 100, 100)
    assert query.crop_box((10, 10), (100, 100), (0, 0)) == (9, 0, 10, 1), "never an empty box"
    image = Image.new("RGB", (200, 100))
    assert query.crop_image(image, (0, 100), (0, 100)) is image
    assert query.crop_image(image, (25, 75), (0, 100)).size == (100, 100)

    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    assert np.allclose(mix_query_vectors(a, b, 0.0), [1, 0]) and np.allclose(mix_query_vectors(a, b, 1.0), [0, 1])
    mixed = mix_query_vectors(a, b, 0.5)
    assert np.isclose(np.linalg.norm(mixed), 1.0) and np.allclose(mixed, [2**-0.5, 2**-0.5])
    with pytest.raises(LensError, match="weight"):
        mix_query_vectors(a, b, 1.5)

    table = pd.DataFrame({"id": ["100", "2100", "300"], "title": ["Red shirt", "Blue 100 jeans", "shirt"]})
    assert query.find_products(table, "100", title_column="title") == ["100", "2100"], "id prefix first"
    assert query.find_products(table, "SHIRT", title_column="title") == ["100", "300"]
    assert query.find_products(table, " ", title_column=None, limit=2) == ["100", "2100"]

    with pytest.raises(LensError, match="not a JPEG, PNG or WebP"):
        query.read_upload("photo.gif", png_bytes(0))
    assert query.read_upload("photo.PNG", png_bytes(0)).mode == "RGB"


class FakeEncoders:
    """Query encoders with known answers, recording what was embedded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.stored = {"p1": np.array([1.0, 0.0, 0.0], dtype=np.float32)}

    def product_vector(self, item_id: str) -> np.ndarray:
        self.calls.append(("product_vector", item_id))
        return self.stored[item_id]

    def product_image(self, item_id: str) -> Image.Image:
        self.calls.append(("product_image", item_id))
        return Image.new("RGB", (200, 100), (255, 0, 0))

    def image_vector(self, key: str, image: Image.Image | bytes) -> np.ndarray:
        self.calls.append(("image_vector", (key, image if isinstance(image, bytes) else image.size)))
        return np.array([0.0, 1.0, 0.0], dtype=np.float32)

    def text_vector(self, text: str) -> np.ndarray:
        self.calls.append(("text_vector", text))
        if text == "fail":
            raise LensError("cannot embed text")
        return np.array([0.0, 0.0, 1.0], dtype=np.float32)

    def as_encoders(self) -> query.QueryEncoders:
        return query.QueryEncoders(self.product_vector, self.product_image, self.image_vector, self.text_vector)


def test_build_query_from_each_mode() -> None:
    fake = FakeEncoders()
    encoders = fake.as_encoders()

    # A catalog product, uncropped: its stored vector, nothing embedded.
    found = query.build_query(query.QueryParts(mode=query.PRODUCT, product_id="p1"), encoders)
    assert np.allclose(found.vector, [1, 0, 0]) and found.label == "product p1" and found.image is None
    assert fake.calls == [("product_vector", "p1")]

    # A cropped product: its image is read, cropped and embedded under the crop's key.
    fake.calls.clear()
    parts = query.QueryParts(mode=query.PRODUCT, product_id="p1", image_key="k", crop_x=(0, 50), crop_y=(0, 100))
    found = query.build_query(parts, encoders)
    assert np.allclose(found.vector, [0, 1, 0]) and found.label == "product p1"
    assert found.image is not None and found.image.size == (100, 100)
    assert fake.calls == [("product_image", "p1"), ("image_vector", ("k", (100, 100)))]

    # An upload.
    fake.calls.clear()
    upload = Image.new("RGB", (40, 20))
    found = query.build_query(query.QueryParts(mode=query.UPLOAD, upload=upload, image_key="u"), encoders)
    assert found.label == "uploaded image" and found.image is upload and np.allclose(found.vector, [0, 1, 0])

    # An upload with its file's bytes: uncropped, the bytes are embedded (decoded as catalog files are); cropped, the
    # crop of the decoded image.
    fake.calls.clear()
    parts = query.QueryParts(mode=query.UPLOAD, upload=upload, upload_data=b"jpeg", image_key="u")
    assert np.allclose(query.build_query(parts, encoders).vector, [0, 1, 0])
    assert fake.calls == [("image_vector", ("u", b"jpeg"))]
    fake.calls.clear()
    parts = query.QueryParts(mode=query.UPLOAD, upload=upload, upload_data=b"jpeg", image_key="c", crop_x=(0, 50))
    found = query.build_query(parts, encoders)
    assert (
        fake.calls == [("image_vector", ("c", (20, 20)))] and found.image is not None and found.image.size == (20, 20)
    )

    # Text only, and no text yet.
    found = query.build_query(query.QueryParts(mode=query.TEXT, text="red circle"), encoders)
    assert found.label == "text: red circle" and np.allclose(found.vector, [0, 0, 1]) and found.image is None
    assert query.build_query(query.QueryParts(mode=query.TEXT), encoders).vector is None

    # Image + text: lens's mix, with the text's weight.
    fake.calls.clear()
    parts = query.QueryParts(mode=query.IMAGE_TEXT, product_id="p1", text="red circle", weight=0.25)
    found = query.build_query(parts, encoders)
    assert found.label == "product p1 + text: red circle"
    assert np.allclose(found.vector, mix_query_vectors(np.array([1.0, 0, 0]), np.array([0, 0, 1.0]), 0.25))
    assert np.isclose(np.linalg.norm(found.vector), 1.0)
    expected = l2_normalize(np.array([[0.75, 0.0, 0.25]], dtype=np.float32))[0]
    assert np.allclose(found.vector, expected, atol=1e-6)

    # Image + text without an image yet: no search, and the text is not embedded for nothing.
    fake.calls.clear()
    found = query.build_query(query.QueryParts(mode=query.IMAGE_TEXT, text="red circle"), encoders)
    assert found.vector is None and fake.calls == []

    # Encoder errors reach the page as LensError.
    with pytest.raises(LensError, match="cannot embed text"):
        query.build_query(query.QueryParts(mode=query.TEXT, text="fail"), encoders)


def test_text_unsupported_names_the_remedy() -> None:
    message = query.text_unsupported("tiny", ["tiny-text", "clip"])
    assert message.startswith("'tiny' embeds images only") and "pick a text-capable model: tiny-text, clip." in message
    assert "python -m lens encoders" in query.text_unsupported("tiny", [])


def test_annotate_results_columns() -> None:
    results = pd.DataFrame({"rank": [1, 2], "id": ["a", "b"], "similarity": [0.91234, 0.5], "image": ["x", "y"]})
    table = query.annotate_results(results, model="tiny", label="text: red")
    assert list(table.columns) == ["rank", "id", "similarity", "similarity_pct", "model", "query", "image"]
    assert table["similarity_pct"].tolist() == [91.2, 50.0] and set(table["query"]) == {"text: red"}
    assert list(results.columns) == ["rank", "id", "similarity", "image"], "the input is left as it was"


def test_filters() -> None:
    # The preferred columns first, in config.FILTER_PREFERENCE's order, then the others by name.
    assert query.filter_columns(["brand", "season", "baseColour", "articleType", "gender", "fit"]) == [
        "articleType",
        "gender",
        "baseColour",
        "season",
        "brand",
        "fit",
    ]
    assert query.active_filters({"gender": ["Women", "Men"], "baseColour": []}) == (("gender", ("Men", "Women")),)


def test_charts_are_figures() -> None:
    counts = pd.DataFrame({"articleType": [f"t{i}" for i in range(30)], "items": range(30, 0, -1)})
    fig = charts.category_counts(counts, "articleType", total=30)
    assert len(fig.data[0].y) == 25 and fig.data[0].y[-1] == "t0" and "top 25 of 30" in fig.layout.title.text

    summary = pd.DataFrame({"model": ["a", "b"], "precision@1": [0.5, 0.7], "map@r": [0.2, 0.3]})
    fig = charts.metrics_by_model(summary, ["precision@1", "map@r"])
    assert [trace.name for trace in fig.data] == ["a", "b"] and tuple(fig.layout.yaxis.range) == (0, 1)

    matrix = pd.DataFrame({"a": np.linspace(0, 1, 45), "b": np.linspace(1, 0, 45)}, index=[f"c{i}" for i in range(45)])
    fig = charts.category_heatmap(matrix, "precision@5", "articleType")
    assert fig.data[0].z.shape == (40, 2) and "40 largest of 45" in fig.layout.title.text

    pairs = pd.DataFrame(
        {
            "label_a": ["A", "B"],
            "label_b": ["C", "D"],
            "count": [5, 3],
            "a_to_b": [3, 2],
            "b_to_a": [2, 1],
            "share": [0.1, 0.05],
        }
    )
    fig = charts.confused_pairs(pairs)
    assert list(fig.data[0].y) == ["B ↔ D", "A ↔ C"], "most confused on top"

    frame = pd.DataFrame(
        {
            "x": [0.0, 1.0, 2.0],
            "y": [0.0, 1.0, 0.5],
            "id": ["1", "2", "3"],
            "title": ["t1", "t2", "t3"],
            "gender": ["Men", "Women", "Boys"],
            "colour": ["Men", "Women", "other"],
        }
    )
    fig = charts.projection(frame, "gender", title="UMAP of tiny")
    assert [trace.name for trace in fig.data][-1] == "other" and fig.data[-1].marker.color == "#c7c7c7"
    assert fig.layout.dragmode == "select"


def test_selected_ids_from_a_selection_event() -> None:
    event = {"selection": {"points": [{"customdata": ["7"]}, {"customdata": ["3"]}, {"customdata": ["7"]}, {}]}}
    assert charts.selected_ids(event) == ["7", "3"]
    assert charts.selected_ids({"selection": {"points": []}}) == []
    assert charts.selected_ids(None) == []


def test_training_curves_mark_each_stage_boundary_with_its_stage() -> None:
    # text-align's shape: members trained one after another, each a stage of two epochs here.
    history = pd.DataFrame({"loss": [4.0, 3.0, 4.1, 3.1, 4.2, 3.2], "stage": [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]})
    figure = charts.training_curves(history, title="t")
    lines = [(shape.x0, note.text) for shape, note in zip(figure.layout.shapes, figure.layout.annotations)]
    assert lines == [(2.5, "stage 2"), (4.5, "stage 3")]
    one_stage = charts.training_curves(history.assign(stage=1.0), title="t")
    assert not one_stage.layout.shapes
