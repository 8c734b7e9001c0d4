"""The projection map with the product photo on hover: a Streamlit custom component (v1) in plain JS, no npm.

Plotly's hover label cannot show an image and ``st.plotly_chart`` reports selections, not hovers, so the
Projections page draws its maps in ``hover_frontend/`` (an ``index.html`` and a ``main.js`` speaking Streamlit's
component protocol) with the plotly.js that the plotly Python package ships. Three folders are served by this
Streamlit server through ``declare_component(path=...)``, so nothing is ever fetched from the internet:

- ``hover_frontend/``: the component itself;
- plotly's ``package_data/``: ``plotly.min.js`` (the same build ``st.plotly_chart``'s figures come from);
- ``<cache>/thumbnails/``: 64 px JPEG thumbnails of the catalog (about 1.3 KB each), written once per catalog
  (:func:`lens.images.write_thumbnails`) and fetched by the browser one by one, when a point is hovered. The page's
  payload is the figure alone (ids and thumbnail file names included), however many points the map draws: sending
  every thumbnail inline as a data URI would add about 1.7 KB per point to every rerun (14 MB for 8,010 points).

The component sends a box, lasso or click selection back as ``{"selection": {"points": [{"customdata": [id]}]},
"seq": ...}``, the shape of ``st.plotly_chart``'s selection event, so ``components.linked_selection`` reads both.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import streamlit as st
import streamlit.components.v1 as st_components

from lens.catalog import Catalog
from lens.errors import LensError
from lens.images import thumbnail_file, write_thumbnails

FRONTEND = Path(__file__).resolve().parent / "hover_frontend"
"""The component's files: ``index.html`` and ``main.js``."""

THUMB_PX = 64
THUMB_FOLDERS_KEPT = 4
"""Thumbnail folders (catalog versions x sizes) kept under ``<cache>/thumbnails``: older ones are removed."""
"""Longer side of the hover thumbnails (shown at 96 px in the panel: a product photo stays recognisable)."""

HOVER_KEY = "proj_hover"
"""Session key of the Projections page's "Photo on hover" toggle (off: ``st.plotly_chart`` maps)."""


def plotly_js_dir() -> Path:
    """The folder of ``plotly.min.js`` in the installed plotly package (found without importing plotly)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise LensError("The plotly package is not installed: pip install -r requirements.txt.")
    folder = Path(next(iter(spec.submodule_search_locations))) / "package_data"
    if not (folder / "plotly.min.js").is_file():
        raise LensError(f"plotly.min.js is missing from {folder}: reinstall plotly (pip install -r requirements.txt).")
    return folder


def thumbnail_root(cache_dir: str) -> Path:
    """``<cache>/thumbnails``: one sub-folder per catalog fingerprint and size (:func:`thumbnail_folder`)."""
    return Path(cache_dir) / "thumbnails"


def thumbnail_folder(fingerprint: str, px: int = THUMB_PX) -> str:
    """The sub-folder (relative to :func:`thumbnail_root`) of one catalog's thumbnails at ``px``: its name says what
    they were made from, so a changed catalog (a new fingerprint) gets new ones."""
    return f"{fingerprint[:16]}-{int(px)}"


@st.cache_data(max_entries=16, show_spinner="Making the hover thumbnails (once per catalog)…")
def ensure_thumbnails(
    path: str, load_label: str, fingerprint: str, cache_dir: str, ids: tuple[str, ...], px: int = THUMB_PX
) -> dict[str, str]:
    """``{id: thumbnail file relative to its thumbnail_folder}`` of ``ids`` (the points the maps draw), writing the
    missing ones: 1-4 ms each (the 8,010 photos of the fashion catalog: 5-30 s on two busy cores, once; then nothing).
    An unreadable photo has none. The page calls it after drawing the maps, so that it never delays them.

    Not in ``resources.py`` with the other loaders: it exists for the hover map alone."""
    from dashboard import resources

    catalog: Catalog = resources.get_catalog(path, load_label)
    sources = {i: catalog.image_path(catalog.index_of(i)) for i in ids}
    folder = thumbnail_root(cache_dir) / thumbnail_folder(fingerprint, px)
    files, _failed = write_thumbnails(sources, folder, px=px)
    prune_thumbnail_folders(folder)
    return files


def prune_thumbnail_folders(current: Path, keep: int = THUMB_FOLDERS_KEPT) -> list[Path]:
    """Mark ``current`` as just used and remove all but the ``keep`` most recently used thumbnail folders beside it.

    A catalog whose files change gets a new fingerprint, hence a new folder (about 1.3 KB per product): without this,
    every version of the catalog would leave its thumbnails behind. A removed folder is made again (in seconds) if
    its catalog comes back. Returns the folders removed.
    """
    import shutil

    current.touch(exist_ok=True)  # a folder's mtime = its last use
    folders = [f for f in current.parent.iterdir() if f.is_dir()]
    folders.sort(key=lambda f: (f == current, f.stat().st_mtime), reverse=True)
    removed = folders[max(1, keep) :]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def _declare(cache_dir: str, folder: str) -> tuple[Any, str]:
    """Register the three served folders (once per script run: registering is a dict update) and return the map
    component and the URL prefix of the thumbnails, relative to the component's own page."""
    plotly_js = plotly_js_dir()
    root = thumbnail_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    # Named by the cache folder: two servers' sessions with different caches must not share a name.
    thumbs_name = "thumbs_" + hashlib.sha1(str(root.resolve()).encode(), usedforsecurity=False).hexdigest()[:10]
    st_components.declare_component("plotly_js", path=str(plotly_js))
    thumbs = st_components.declare_component(thumbs_name, path=str(root))
    hover_map = st_components.declare_component("hover_map", path=str(FRONTEND))
    return hover_map, f"../{thumbs.name}/{folder}/"


def hover_map(figure: Any, *, cache_dir: str, folder: str, key: str, height: int) -> Any:
    """Draw ``figure`` (a plotly scatter whose ``customdata`` is ``[id, thumbnail file]``, the files relative to
    ``folder``, a :func:`thumbnail_folder`) in the component.

    The figure travels as JSON *inside* the arguments' JSON (a dict, not a string: a string would escape its every
    quote), with a digest of it, so that the component redraws only when the figure changed.

    Returns:
        The last selection made on this map (``{"selection": {"points": [...]}, "seq": ...}``), or ``None``.

    Raises:
        LensError: the component cannot be served here (plotly.js or the component's files missing); the page
            falls back to ``st.plotly_chart``.
    """
    if not (FRONTEND / "index.html").is_file():
        raise LensError(f"The hover map's files are missing from {FRONTEND}: restore them from the repository.")
    component, thumbs_url = _declare(cache_dir, folder)
    spec = figure.to_json()  # plotly's encoder: numpy arrays as base64 typed arrays
    digest = hashlib.sha1(spec.encode("utf-8"), usedforsecurity=False).hexdigest()
    return component(
        spec=json.loads(spec), spec_id=digest, thumbs=thumbs_url, height=int(height), key=key, default=None
    )


def with_thumbnails(frame: Any) -> Any:
    """``frame`` (``components.projection_frame``) with a ``thumb`` column: each point's thumbnail file
    (:func:`lens.images.thumbnail_file`, a function of the id alone, so the map is drawn before the files are
    written; a photo that cannot be read has no file, and the panel shows its title alone)."""
    return frame.assign(thumb=[thumbnail_file(i) for i in frame["id"]])


def payload_sizes(figure: Any, files: Sequence[str], cache_dir: str, folder: str) -> dict[str, int]:
    """Bytes of what a hover map costs: ``figure`` (the render arguments, sent on every rerun), and the thumbnail
    ``files`` on disk (fetched one by one on hover), with what they would weigh inline as base64 data URIs."""
    root = thumbnail_root(cache_dir) / folder
    on_disk = sum((root / f).stat().st_size for f in files if f and (root / f).is_file())
    return {
        "figure": len(figure.to_json().encode("utf-8")),
        "thumbnails": on_disk,
        "as_data_uris": 4 * ((on_disk + 2) // 3) + len("data:image/jpeg;base64,") * len(files),
    }
