"""Real-browser test: serve the dashboard with ``streamlit run`` on 127.0.0.1 and drive it with Playwright in Debian's
Chromium (``/usr/bin/chromium``; no browser is ever downloaded). Opens every page, uploads an image on Search and
waits for the results, and saves a full-page screenshot of each page to ``test-artifacts/screenshots/``.

Skips, saying why, when the Playwright package or Chromium is missing (``.ci/run`` installs Chromium with apt-get).
``LENS_CHROMIUM`` points at another Chromium binary.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app_pages import app_pages
from fixtures import draw_item

# A real `streamlit run` and Chromium: a minute or two in all, so it runs with the slow tests.
pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
CHROMIUM = Path(os.environ.get("LENS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_S = 90
PAGE_READY_S = 180  # the first UMAP in the server process compiles numba code

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright Python package is not installed (pip install -r requirements.txt)"
)
if not CHROMIUM.is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install chromium`, as .ci/run does) or set "
        "LENS_CHROMIUM=/path/to/chromium",
        allow_module_level=True,
    )

# {page name: (title on the page, text that appears once the page has rendered its content)}; the pages themselves
# and their URLs come from app.py's st.Page calls.
PAGE_TEXT = {
    "overview": ("lens — visual product search", "A sample of products"),
    "search": ("Search", "results for"),
    "compare": ("Compare models", "queries ×"),
    "projections": ("Projections", "UMAP"),
    "metrics": ("Metrics", "Per articleType"),
    "failures": ("Failures", "pairs at cosine"),
    "train": ("Train a model on the catalog", "Past runs"),
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(catalog: Path, folder: Path, **extra_env: str) -> Iterator[str]:
    """``streamlit run app.py`` on a free local port (bounded wait; always terminated); yields its URL."""
    port = _free_port()
    env = {
        **os.environ,
        "LENS_CATALOG": str(catalog),
        "LENS_CACHE_DIR": str(folder / "cache"),
        "LENS_DEFAULT_MODEL": "tiny",
        "LENS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **extra_env,
    }
    env.pop("LENS_LABEL", None)
    log_path = folder / "streamlit.log"
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + SERVER_START_S
            while True:
                if process.poll() is not None:
                    pytest.fail(f"streamlit exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                        if response.read().strip() == b"ok":
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not answer within {SERVER_START_S}s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@pytest.fixture(scope="module")
def server(small_catalog_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(small_catalog_dir, tmp_path_factory.mktemp("browser")) as url:
        yield url


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            yield context.new_page()
        finally:
            browser.close()


IDLE_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    return app !== null && app.getAttribute('data-test-script-state') === 'notRunning'
        && Array.from(document.images).every(image => image.complete);
}"""


def wait_idle(page: object) -> None:
    """Wait until the script run is over (``stApp[data-test-script-state=notRunning]``) and images have loaded."""
    page.wait_for_function(IDLE_JS, timeout=PAGE_READY_S * 1000)
    page.wait_for_timeout(1500)  # plotly and the dataframe canvas draw after the run ends
    page.wait_for_function(IDLE_JS, timeout=PAGE_READY_S * 1000)  # a widget may have asked for a rerun


def wait_until_rendered(page: object, title: str, ready_text: str) -> None:
    """Wait for the page title, the page's ready text, and the end of the script run."""
    page.get_by_role("heading", name=title).first.wait_for(timeout=PAGE_READY_S * 1000)
    page.get_by_text(ready_text).first.wait_for(timeout=PAGE_READY_S * 1000)
    wait_idle(page)


def screenshot(page: object, name: str, *, settle_ms: int = 1000) -> None:
    """Whole-page screenshot: Streamlit scrolls inside its main container, so the viewport is stretched to fit;
    ``settle_ms`` to wait after that (a component's iframe out of the first viewport is painted late: 3 s)."""
    height = page.evaluate(
        """() => {
            const main = document.querySelector('[data-testid="stMain"]');
            return Math.max(main ? main.scrollHeight : 0, document.body.scrollHeight);
        }"""
    )
    page.set_viewport_size({"width": 1440, "height": int(min(max(1000, height + 40), 9000))})
    page.wait_for_timeout(settle_ms)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 1000})


def assert_no_traceback(page: object, where: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{where}: {exceptions.first.inner_text()[:2000]}"


def test_a_page_url_opened_first_runs_inside_the_app(server: str, page: object) -> None:
    """The first request to a fresh server is a page URL: it must still get app.py's navigation and sidebar
    (Streamlit would otherwise run pages/metrics.py alone, as a v1 multipage app)."""
    page.goto(f"{server}/metrics", wait_until="domcontentloaded")
    wait_until_rendered(page, "Metrics", "Per articleType")
    sidebar = page.locator('[data-testid="stSidebar"]')
    assert sidebar.get_by_text("Label column").count() >= 1
    assert sidebar.get_by_text("Overview", exact=True).count() >= 1
    assert sidebar.get_by_text("app", exact=True).count() == 0


def test_every_page_in_a_browser(server: str, page: object) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pages = app_pages()
    assert set(PAGE_TEXT) == {p.name for p in pages}, "PAGE_TEXT: a title and a ready text for every page of app.py"
    for number, app_page in enumerate(pages, start=1):
        path = app_page.url_path
        title, ready_text = PAGE_TEXT[app_page.name]
        page.goto(f"{server}/{path}", wait_until="domcontentloaded")
        wait_until_rendered(page, title, ready_text)
        assert_no_traceback(page, path or "overview")
        # The sidebar (drawn by app.py) is on every page: navigation and the label column.
        assert page.locator('[data-testid="stSidebar"]').get_by_text("Label column").count() >= 1, path
        screenshot(page, f"{number}-{path or 'overview'}.png")


def drag_across(page: object, area: object) -> None:
    """Drag a box over the whole of a plot's drag area (every point of the map gets selected)."""
    box = area.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + 2, box["y"] + 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, steps=5)
    page.mouse.move(box["x"] + box["width"] - 2, box["y"] + box["height"] - 2, steps=5)
    page.mouse.up()


HOVER_FRAME = 'iframe[title="dashboard.hovermap.hover_map"]'
"""The hover maps' iframes (Streamlit titles a component's iframe with its name)."""


def test_hover_photo_and_linked_selection(server: str, page: object) -> None:
    """The hover maps (the default): hovering a point shows its photo (a thumbnail served by this server) in a
    floating panel; a box drawn on the left map selects its 24 products, ringed on both maps and listed below."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{server}/projections", wait_until="domcontentloaded")
    wait_until_rendered(page, "Projections", "UMAP")
    assert page.locator(HOVER_FRAME).count() == 2
    left = page.frame_locator(HOVER_FRAME).nth(0)
    right = page.frame_locator(HOVER_FRAME).nth(1)
    for frame in (left, right):
        frame.locator("#map[data-rendered]").wait_for(timeout=60_000)
    assert page.locator(".js-plotly-plot").count() == 0, "no st.plotly_chart map while the hover maps are on"
    # Hover: move onto a drawn point; the panel's <img> shows the point's thumbnail, loaded from this server.
    point = left.locator(".scatterlayer path.point").first
    box = point.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    panel = left.locator("#photo")
    panel.wait_for(state="visible", timeout=30_000)
    image = panel.locator("img")
    image.evaluate("img => img.complete || new Promise(done => img.addEventListener('load', done))")
    assert image.evaluate("img => img.naturalWidth") == 64, "a 64 px thumbnail"
    assert image.get_attribute("src").startswith("../dashboard.hovermap.thumbs_")
    assert panel.locator("div").inner_text().strip(), "the product's title under the photo"
    screenshot(page, "8-projections-hover.png", settle_ms=3000)
    page.mouse.move(5, 5)
    # Linked selection: a box over the left map; the same products are ringed on the right map and listed once.
    drag_across(page, left.locator(".nsewdrag").first)
    page.get_by_text("24 selected").first.wait_for(timeout=PAGE_READY_S * 1000)
    wait_idle(page)
    assert_no_traceback(page, "hover map selection")
    for frame in (left, right):
        frame.locator(".legendtext", has_text="selected (24)").wait_for(timeout=60_000)
    placements = page.locator('[data-testid="stDataFrame"]')
    assert placements.count() >= 1
    screenshot(page, "9-projections-linked-selection.png", settle_ms=3000)


def test_select_points_on_a_projection_without_photos(server: str, page: object) -> None:
    """The fallback maps (st.plotly_chart, the "Photo on hover" toggle off): a box on the left map is ringed on
    both maps."""
    page.goto(f"{server}/projections", wait_until="domcontentloaded")
    wait_until_rendered(page, "Projections", "UMAP")
    page.get_by_text("Photo on hover", exact=True).first.click()
    wait_idle(page)
    plot = page.locator(".js-plotly-plot .nsewdrag").first  # the plot area that takes drags
    plot.wait_for(timeout=60_000)
    assert page.locator(HOVER_FRAME).count() == 0
    drag_across(page, plot)
    page.get_by_text("24 selected").first.wait_for(timeout=PAGE_READY_S * 1000)
    wait_idle(page)
    assert_no_traceback(page, "projection selection")
    # Linked maps: the selection is ringed on every map, the one it was made on and the other.
    plots = page.locator(".js-plotly-plot")
    assert plots.count() == 2
    assert plots.filter(has_text="selected (24)").count() == 2
    screenshot(page, "10-projections-selection-without-photos.png")


def test_upload_an_image_on_search(server: str, page: object) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{server}/search", wait_until="domcontentloaded")
    wait_until_rendered(page, "Search", "results")
    page.get_by_text("Upload an image", exact=True).first.click()
    file_input = page.locator('input[type="file"]').first
    file_input.wait_for(state="attached", timeout=60_000)
    buffer = io.BytesIO()
    draw_item(1, np.random.default_rng(7), size=128).save(buffer, format="PNG")
    file_input.set_input_files(files=[{"name": "query.png", "mimeType": "image/png", "buffer": buffer.getvalue()}])
    page.get_by_text("results for uploaded image").first.wait_for(timeout=PAGE_READY_S * 1000)
    wait_idle(page)
    assert_no_traceback(page, "search upload")
    assert page.get_by_text("BlueSquare").count() >= 1, "a blue square finds blue squares"
    screenshot(page, "7-search-upload.png")


def test_a_background_build_publishes_a_model_the_open_page_picks_up(
    small_catalog_dir: Path, tmp_path: Path, page: object
) -> None:
    """A large catalog (LENS_AUTO_BUILD_ITEMS below its size) with nothing built: Search says no model is ready and
    embeds nothing; a background build is started (``lens build --detach``, the job the Overview's button starts),
    and the open Search page shows results once the model is published, without a reload."""
    with serve(small_catalog_dir, tmp_path, LENS_AUTO_BUILD_ITEMS="10") as url:
        page.goto(f"{url}/search", wait_until="domcontentloaded")
        page.get_by_text("No model is ready for catalog").first.wait_for(timeout=PAGE_READY_S * 1000)
        assert_no_traceback(page, "search before the build")
        # The same job the Overview button starts (python -m lens build --detach), limited to the tiny encoder.
        env = {**os.environ, "LENS_CACHE_DIR": str(tmp_path / "cache"), "LENS_OFFLINE": "1"}
        started = subprocess.run(
            [
                sys.executable,
                "-m",
                "lens",
                "build",
                "--detach",
                "--catalog",
                str(small_catalog_dir),
                "--models",
                "tiny",
                "--recipes",
                "none",
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode == 0, started.stderr
        page.get_by_text("results for").first.wait_for(timeout=PAGE_READY_S * 1000)  # no reload: the page polls
        wait_idle(page)
        assert_no_traceback(page, "search after the build")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        screenshot(page, "11-search-after-background-build.png")
        page.goto(url, wait_until="domcontentloaded")
        wait_until_rendered(page, "lens — visual product search", "A sample of products")
        page.get_by_text("Build log").first.wait_for(timeout=60_000)
        assert_no_traceback(page, "overview after the build")
        screenshot(page, "12-overview-build.png")


def test_train_a_model_on_the_train_page_and_find_it_in_the_pickers(
    small_catalog_dir: Path, tmp_path: Path, page: object
) -> None:
    """The Train page starts a run (the autoencoder with its defaults: seconds on 24 photos) as a background job; the
    open page follows it to "ready" without a reload, and the model is then in the Search page's model picker."""
    with serve(small_catalog_dir, tmp_path) as url:
        page.goto(f"{url}/train", wait_until="domcontentloaded")
        wait_until_rendered(page, "Train a model on the catalog", "Past runs")
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Recipe").first.click()
        page.get_by_role("option").filter(has_text="autoencoder").first.click()
        wait_idle(page)
        page.get_by_role("button", name="Start training").click()
        page.get_by_text("Training of 'autoencoder' started in the background").first.wait_for(timeout=60_000)
        page.get_by_text("(autoencoder): ready").first.wait_for(timeout=PAGE_READY_S * 1000)  # the page polls
        wait_idle(page)
        assert_no_traceback(page, "train page after the run")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        screenshot(page, "13-train-after-run.png")
        page.goto(f"{url}/search", wait_until="domcontentloaded")
        wait_until_rendered(page, "Search", "results for")
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Model").first.click()
        assert page.get_by_role("option").filter(has_text="autoencoder").count() >= 1, "the new model in the picker"
