"""dashboard.hovermap: the projection map with the photo on hover — its figure, thumbnails and payload (no browser;
the browser test drives the component itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from dashboard import charts, hovermap  # noqa: E402
from lens.catalog import load_catalog  # noqa: E402
from lens.images import thumbnail_file, write_thumbnails  # noqa: E402


def frame_of(ids: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "x": rng.normal(size=len(ids)),
            "y": rng.normal(size=len(ids)),
            "id": ids,
            "title": [f"product {i}" for i in ids],
            "articleType": ["Shirts", "Skirts"] * (len(ids) // 2),
            "colour": ["Shirts", "Skirts"] * (len(ids) // 2),
        }
    )


def test_every_point_and_ring_carries_its_thumbnail_file() -> None:
    ids = [f"{i:06d}" for i in range(10)]
    frame = hovermap.with_thumbnails(frame_of(ids))
    assert frame["thumb"].tolist() == [thumbnail_file(i) for i in ids]
    figure = charts.projection(frame, "articleType", title="t", highlight=["000003", "000004"])
    custom = {tuple(c[:2]) for trace in figure.data for c in trace.customdata}  # px appends the hover columns
    assert {(i, thumbnail_file(i)) for i in ids} <= custom
    ring = next(t for t in figure.data if t.name == "selected (2)")
    assert [tuple(c[:2]) for c in ring.customdata] == [(i, thumbnail_file(i)) for i in ("000003", "000004")]
    # Without the column (the st.plotly_chart maps): customdata is the id alone, as before.
    plain = charts.projection(frame_of(ids), "articleType", title="t")
    assert all(c[1] != thumbnail_file(c[0]) for trace in plain.data for c in trace.customdata)


def test_payload_sizes_known_and_bounded(small_catalog_dir: Path, tmp_path: Path) -> None:
    catalog = load_catalog(small_catalog_dir)
    folder = hovermap.thumbnail_folder(catalog.fingerprint())
    assert folder == f"{catalog.fingerprint()[:16]}-64"
    sources = {i: catalog.image_path(n) for n, i in enumerate(catalog.ids)}
    files, failed = write_thumbnails(sources, hovermap.thumbnail_root(str(tmp_path)) / folder, px=hovermap.THUMB_PX)
    assert not failed and len(files) == 24
    figure = charts.projection(hovermap.with_thumbnails(frame_of(list(catalog.ids))), "articleType", title="t")
    sizes = hovermap.payload_sizes(figure, list(files.values()), str(tmp_path), folder)
    on_disk = [(hovermap.thumbnail_root(str(tmp_path)) / folder / f).stat().st_size for f in files.values()]
    assert sizes["thumbnails"] == sum(on_disk) and max(on_disk) < 4_000  # 64 px JPEGs of 64 px photos
    assert sizes["as_data_uris"] == 4 * ((sum(on_disk) + 2) // 3) + len("data:image/jpeg;base64,") * 24
    assert sizes["figure"] == len(figure.to_json().encode()) and sizes["figure"] < sizes["as_data_uris"]


def test_the_served_folders_exist() -> None:
    assert (hovermap.plotly_js_dir() / "plotly.min.js").stat().st_size > 1_000_000  # the full plotly.js bundle
    page = (hovermap.FRONTEND / "index.html").read_text(encoding="utf-8")
    # plotly.js from the plotly_js component of this module (this server), never from a CDN.
    assert '<script src="../dashboard.hovermap.plotly_js/plotly.min.js"></script>' in page
    assert "http" not in page.lower().replace("http-equiv", "")
    script = (hovermap.FRONTEND / "main.js").read_text(encoding="utf-8")
    assert "http" not in script and "streamlit:setComponentValue" in script


def test_old_thumbnail_folders_are_pruned_newest_kept(tmp_path: Path) -> None:
    import os

    root = hovermap.thumbnail_root(str(tmp_path))
    for n in range(6):  # six catalog versions, the oldest first
        folder = root / f"{n:016d}-64"
        folder.mkdir(parents=True)
        (folder / "x.jpg").write_bytes(b"j")
        os.utime(folder, (1_000_000 + n, 1_000_000 + n))
    current = root / f"{0:016d}-64"  # the oldest comes back into use: it is kept, the oldest others go
    removed = hovermap.prune_thumbnail_folders(current, keep=3)
    assert sorted(f.name for f in removed) == [f"{n:016d}-64" for n in (1, 2, 3)]
    assert sorted(f.name for f in root.iterdir()) == [f"{n:016d}-64" for n in (0, 4, 5)]
    assert (current / "x.jpg").read_bytes() == b"j"
