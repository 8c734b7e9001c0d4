"""``python -m lens search`` by text, image + text and URL: a text-align model trained on the generated catalog (tiny
backbone, seconds), a local image server, and the bad inputs of these paths."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from fixtures import make_catalog
from lens.cli import main


@pytest.fixture(scope="module")
def text_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A generated catalog and a text-align model trained on it (tiny backbone); ``(catalog dir, cache dir)``."""
    from lens.encoders.trained import default_models_dir, refresh_trained_models

    root = tmp_path_factory.mktemp("text_env")
    catalog = make_catalog(root / "catalog", n_classes=4, per_class=10, size=48)
    cache = root / "cache"
    mp = pytest.MonkeyPatch()
    previous = default_models_dir()
    mp.setenv("LENS_CACHE_DIR", str(cache))
    mp.setenv("LENS_MODELS_DIR", str(cache / "models"))
    mp.setenv("LENS_OFFLINE", "1")
    refresh_trained_models(cache / "models")
    code = main(
        ["train", "text-align", "--catalog", str(catalog), "--backbone", "tiny", "--epochs", "6", "--batch", "16",
         "--quiet"]
    )  # fmt: skip
    assert code == 0
    yield catalog, cache
    mp.undo()
    refresh_trained_models(previous)


def _search(capsys: pytest.CaptureFixture[str], catalog: Path, *args: str) -> tuple[int, pd.DataFrame | None, str]:
    code = main(["search", "--catalog", str(catalog), "--model", "text-align", "--csv", "-", "--quiet", *args])
    out, err = capsys.readouterr()
    table = pd.read_csv(io.StringIO(out), dtype={"id": str}) if code == 0 else None
    return code, table, err


def test_text_search_finds_the_described_class(capsys: pytest.CaptureFixture[str], text_env) -> None:
    catalog, _ = text_env
    titles = pd.read_csv(catalog / "catalog.csv", dtype=str)
    for label in titles["articleType"].unique():
        title = titles.loc[titles["articleType"] == label, "productDisplayName"].iloc[0]
        code, table, err = _search(capsys, catalog, "--text", title, "--k", "5")
        assert code == 0, err
        assert list(table.columns[:3]) == ["rank", "id", "similarity"] and len(table) == 5
        # A known answer: the product's own title brings its class to the top.
        assert (table["articleType"] == label).mean() >= 0.6, (title, table["articleType"].tolist())


def test_image_and_text_mix_and_weight(capsys: pytest.CaptureFixture[str], text_env) -> None:
    catalog, _ = text_env
    rows = pd.read_csv(catalog / "catalog.csv", dtype=str)
    query_id = rows["id"].iloc[0]
    other = rows.loc[rows["articleType"] != rows["articleType"].iloc[0], "productDisplayName"].iloc[0]
    image = str(catalog / rows["image"].iloc[0])
    code, image_only, _ = _search(capsys, catalog, "--image", image, "--k", "10")
    assert code == 0
    code, text_heavy, err = _search(capsys, catalog, "--image", image, "--text", other, "--text-weight", "0.9")
    assert code == 0, err
    code, image_heavy, _ = _search(capsys, catalog, "--image", image, "--text", other, "--text-weight", "0.0")
    assert code == 0
    # Weight 0 is the image query itself; a heavy text weight pulls the results towards the other class.
    assert image_heavy["id"].tolist() == image_only["id"].tolist()
    own = rows["articleType"].iloc[0]
    assert (text_heavy["articleType"] != own).sum() > (image_only["articleType"] != own).sum()
    code, by_id, err = _search(capsys, catalog, "--id", query_id, "--text", other)
    assert code == 0, err and query_id not in by_id["id"].tolist()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--text", "   "], "is empty"),
        (["--text", "x" * 10_000], "10,000 characters long"),
        (["--text", "red", "--text-weight", "1.5"], "must lie in"),
        (["--text", "red", "--text-weight", "0.3"], "mixes an image query"),
        (["--id", "000100", "--url", "http://example.com/a.jpg"], "needs one query"),
        ([], "needs one query"),
        (["--url", "ftp://example.com/a.jpg"], "Only http"),
        (["--url", "http://127.0.0.1:9/a.jpg"], "loopback"),
    ],
)
def test_bad_queries_fail_before_any_work(capsys: pytest.CaptureFixture[str], text_env, args, message: str) -> None:
    catalog, _ = text_env
    code, _, err = _search(capsys, catalog, *args)
    assert code != 0 and message in err and "Traceback" not in err


def test_text_with_an_image_only_model_is_refused(capsys: pytest.CaptureFixture[str], text_env) -> None:
    catalog, _ = text_env
    code = main(["search", "--catalog", str(catalog), "--model", "tiny", "--text", "red", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "embeds images only" in err and "text-align" in err


def test_a_filter_that_matches_nothing_says_so(capsys: pytest.CaptureFixture[str], text_env) -> None:
    catalog, _ = text_env
    code, _, err = _search(capsys, catalog, "--text", "red", "--filter", "gender=Nobody")
    assert code != 0 and "--filter keeps no catalog item" in err


def test_url_query_from_a_local_server(capsys, text_env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL path gives the same results as the same photo from disk (loopback allowed only for this test)."""
    from lens import remote

    catalog, _ = text_env
    rows = pd.read_csv(catalog / "catalog.csv", dtype=str)
    photo = (catalog / rows["image"].iloc[3]).read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(photo)))
            self.end_headers()
            self.wfile.write(photo)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    real = remote.fetch_image_bytes
    monkeypatch.setattr(remote, "fetch_image_bytes", lambda url, **kw: real(url, allow_loopback=True, **kw))
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/photo.jpg"
        code, by_url, err = _search(capsys, catalog, "--url", url, "--k", "5", "--exact")
        assert code == 0, err
        code, by_file, _ = _search(capsys, catalog, "--image", str(catalog / rows["image"].iloc[3]), "--k", "5",
                                   "--exact")  # fmt: skip
        assert by_url["id"].tolist() == by_file["id"].tolist()
        assert by_url["id"].iloc[0] == rows["id"].iloc[3]  # the photo finds itself first
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_evaluate_text_reports_known_item_recall(capsys: pytest.CaptureFixture[str], text_env, tmp_path: Path) -> None:
    """``evaluate --text``: each query's title searches for its own photo; one row per gallery, R@k rising with k,
    R@k = 1 at k >= the gallery size (a known answer), and an image-only model is refused with the remedy."""
    catalog, _ = text_env
    ids = pd.read_csv(catalog / "catalog.csv", dtype=str)["id"].tolist()
    code = main(["evaluate", "--catalog", str(catalog), "--models", "text-align", "--text", "--queries", "8",
                 "--k", "1,8,40", "--csv", "-", "--quiet"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out)).set_index("gallery")
    assert table.loc["queries", "gallery_size"] == 8 and table.loc["catalog", "gallery_size"] == len(ids)
    assert (table["queries"] == 8).all() and (table["text"] == "productDisplayName").all()
    for gallery in ("queries", "catalog"):
        r = table.loc[gallery, ["text_r@1", "text_r@8", "text_r@40"]].to_numpy()
        assert 0 <= r[0] <= r[1] <= r[2] == 1.0
    assert table.loc["queries", "text_r@8"] == 1.0  # 8 photos: the own photo is always in the top 8
    code = main(["evaluate", "--catalog", str(catalog), "--models", "tiny", "--text", "--quiet"])
    assert code != 0 and "embeds images only" in capsys.readouterr().err
