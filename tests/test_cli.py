"""``python -m lens``: every command on the small generated catalog with the tiny encoder, and bad input.

Commands run in-process through ``lens.cli.main``; one subprocess call proves the module entry point works.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lens.cli import main
from lens.encoders import _registry
from lens.encoders.weights import WeightsFile

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated(lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every CLI test: cache in a temp folder, never a download."""
    monkeypatch.setenv("LENS_OFFLINE", "1")
    monkeypatch.delenv("LENS_WEIGHTS_DIR", raising=False)
    return lens_cache_dir


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def csv_out(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype={"id": str})


# ---------------------------------------------------------------------------------------------------- commands


def test_encoders_lists_availability(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # One encoder made unavailable on purpose: its row must say so and carry the remedy.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    entry = _registry._REGISTRY["mobilenet-v2"]
    missing = WeightsFile(filename="mobilenet_v2-b0353104.pth", package="lens_test_absent_pkg", package_subpath="w.pth")
    monkeypatch.setitem(
        _registry._REGISTRY, "mobilenet-v2", _registry.RegistryEntry(entry.spec, entry.builder, missing)
    )

    code, out, err = run(capsys, "encoders", "--csv", "-")
    assert code == 0 and "Traceback" not in err
    table = pd.read_csv(io.StringIO(out)).set_index("name")
    assert {"tiny", "mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2"} <= set(table.index)
    assert list(table.columns[:4]) == ["family", "dim", "input", "text"]
    assert table.loc["tiny", "available"] == "yes" and table.loc["tiny", "dim"] == 64
    assert table.loc["mobilenet-v2", "available"] == "no"
    assert table.loc["mobilenet-v2", "weights"].startswith(
        "unavailable: put mobilenet_v2-b0353104.pth in $LENS_WEIGHTS_DIR"
    )
    assert table.loc["efficientnet-lite2", "input"] == 260

    code, out, _ = run(capsys, "encoders")  # the human table
    assert code == 0 and "tiny" in out and "unavailable" in out


def test_embed_then_cached(capsys: pytest.CaptureFixture[str], small_catalog_dir: Path, lens_cache_dir: Path) -> None:
    code, out, err = run(capsys, "embed", "--catalog", str(small_catalog_dir), "--models", "tiny", "--batch-size", "5")
    assert code == 0, err
    assert "tiny: 24 vectors of 64-d" in out and "0 unreadable images" in out and "from cache" not in out
    assert len(list((lens_cache_dir / "embeddings" / "tiny").glob("*.npy"))) == 1
    code, out, _ = run(capsys, "embed", "--catalog", str(small_catalog_dir), "--models", "tiny", "--quiet")
    assert code == 0 and "from cache" in out


def test_embed_reports_unreadable_images(capsys: pytest.CaptureFixture[str], small_catalog_copy: Path) -> None:
    (small_catalog_copy / "images" / "000107.jpg").write_text("not an image")
    code, out, err = run(capsys, "embed", "--catalog", str(small_catalog_copy), "--models", "tiny", "--quiet")
    assert code == 0, err
    assert "tiny: 23 vectors" in out and "1 unreadable images" in out
    assert "skipped 000107: not an image" in out


def test_index_builds_annoy(capsys: pytest.CaptureFixture[str], small_catalog_dir: Path, lens_cache_dir: Path) -> None:
    code, out, err = run(
        capsys, "index", "--catalog", str(small_catalog_dir), "--models", "tiny", "--trees", "4", "--quiet"
    )
    assert code == 0, err
    assert "tiny: annoy index of 24 items, 4 trees" in out
    files = list((lens_cache_dir / "indexes" / "tiny").glob("*-t4.ann"))
    assert len(files) == 1 and files[0].with_suffix(".json").is_file()


@pytest.mark.parametrize("exact", [False, True])
def test_search_by_id_csv(capsys: pytest.CaptureFixture[str], small_catalog_dir: Path, exact: bool) -> None:
    argv = [
        "search",
        "--catalog",
        str(small_catalog_dir),
        "--model",
        "tiny",
        "--id",
        "000100",
        "--k",
        "5",
        "--csv",
        "-",
        "--quiet",
    ]
    code, out, err = run(capsys, *argv, *(["--exact"] if exact else []))
    assert code == 0, err
    table = csv_out(out)
    assert list(table.columns[:3]) == ["rank", "id", "similarity"]
    assert {"image", "articleType", "gender", "productDisplayName"} <= set(table.columns)
    assert table["rank"].tolist() == [1, 2, 3, 4, 5]
    assert "000100" not in table["id"].tolist()  # the query item itself is excluded
    assert table["id"].str.len().eq(6).all()  # zero-padded ids survive
    assert table["similarity"].is_monotonic_decreasing and table["similarity"].between(-1, 1).all()
    # The tiny CNN tells the generated classes apart: the nearest item is another red circle.
    assert table.loc[0, "articleType"] == "RedCircle"


def test_search_by_image_with_filter(capsys: pytest.CaptureFixture[str], small_catalog_dir: Path) -> None:
    query = small_catalog_dir / "images" / "000113.jpg"
    argv = ["search", "--catalog", str(small_catalog_dir), "--model", "tiny", "--image", str(query), "--k", "3",
            "--filter", "gender=Women", "--exact", "--csv", "-", "--quiet"]  # fmt: skip
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    table = csv_out(out)
    assert len(table) == 3 and set(table["gender"]) == {"Women"}
    # Known answer: the query image is in the catalog (and is a Women item), so it finds itself first, cosine 1.
    assert table.loc[0, "id"] == "000113" and table.loc[0, "similarity"] == pytest.approx(1.0, abs=1e-5)


def test_search_human_table_hides_image_column(capsys: pytest.CaptureFixture[str], small_catalog_dir: Path) -> None:
    code, out, err = run(
        capsys,
        "search",
        "--catalog",
        str(small_catalog_dir),
        "--model",
        "tiny",
        "--id",
        "000100",
        "--k",
        "2",
        "--quiet",
    )
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header[:3] == ["rank", "id", "similarity"] and "image" not in header


def test_evaluate_csv_file(capsys: pytest.CaptureFixture[str], small_catalog_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "eval.csv"
    per_cat = tmp_path / "out" / "per_category.csv"
    code, out, err = run(capsys, "evaluate", "--catalog", str(small_catalog_dir), "--models", "tiny", "--k", "1,5",
                         "--csv", str(target), "--per-category", str(per_cat), "--quiet")  # fmt: skip
    assert code == 0, err
    table = pd.read_csv(target)
    assert list(table.columns[:3]) == ["model", "average", "label"]
    assert [
        c
        for c in table.columns
        if c in ("precision@1", "precision@5", "recall@1", "recall@5", "hit@1", "hit@5", "map@1", "map@5", "map@r")
    ] == ["precision@1", "precision@5", "recall@1", "recall@5", "hit@1", "hit@5", "map@1", "map@5", "map@r"]
    assert table.loc[0, "model"] == "tiny" and table.loc[0, "n_queries"] == 24
    assert 0.5 < table.loc[0, "precision@1"] <= 1.0
    categories = pd.read_csv(per_cat)
    assert sorted(categories["label"]) == ["BlueSquare", "GreenTriangle", "OrangeCross", "RedCircle"]
    assert set(categories["model"]) == {"tiny"}


def test_evaluate_query_sample_and_macro(capsys: pytest.CaptureFixture[str], small_catalog_dir: Path) -> None:
    code, out, err = run(capsys, "evaluate", "--catalog", str(small_catalog_dir), "--models", "tiny", "--queries", "8",
                         "--macro", "--csv", "-", "--quiet")  # fmt: skip
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out))
    assert table.loc[0, "average"] == "macro" and "n_categories" in table.columns
    code, out, err = run(capsys, "evaluate", "--catalog", str(small_catalog_dir), "--models", "tiny", "--queries", "8",
                         "--csv", "-", "--quiet")  # fmt: skip
    assert code == 0, err
    assert pd.read_csv(io.StringIO(out)).loc[0, "n_queries"] == 8


def test_module_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "LENS_CACHE_DIR": str(tmp_path / "cache"), "LENS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lens", "encoders", "--csv", "-"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(io.StringIO(proc.stdout))
    assert "tiny" in table["name"].tolist() and "available" in table.columns

    bad = subprocess.run(
        [sys.executable, "-m", "lens", "embed", "--catalog", str(tmp_path / "nowhere"), "--models", "tiny"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: Catalog path not found")
    assert "Traceback" not in bad.stderr


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "query.jpg"
    path.write_text("I am text, not a JPEG\n")
    return path


BAD_INPUTS = {
    "missing catalog": (["embed", "--catalog", "{missing}", "--models", "tiny"], "Catalog path not found"),
    "unknown model": (
        ["embed", "--catalog", "{catalog}", "--models", "resnet-9000"],
        "Unknown encoder 'resnet-9000'. Known encoders: ",
    ),
    "unknown search model": (
        ["search", "--catalog", "{catalog}", "--model", "nope", "--id", "000100"],
        "Unknown encoder 'nope'",
    ),
    "bad --k zero": (
        ["evaluate", "--catalog", "{catalog}", "--models", "tiny", "--k", "0"],
        "--k takes comma-separated positive integers",
    ),
    "bad --k text": (
        ["evaluate", "--catalog", "{catalog}", "--models", "tiny", "--k", "1,five"],
        "--k takes comma-separated positive integers",
    ),
    "bad search --k": (
        ["search", "--catalog", "{catalog}", "--model", "tiny", "--id", "000100", "--k", "0"],
        "k must be a positive integer",
    ),
    "missing label column": (
        ["evaluate", "--catalog", "{catalog}", "--models", "tiny", "--label", "colour"],
        "has no label column 'colour'",
    ),
    "query image is text": (
        ["search", "--catalog", "{catalog}", "--model", "tiny", "--image", "{text}"],
        "not an image",
    ),
    "query image missing": (
        ["search", "--catalog", "{catalog}", "--model", "tiny", "--image", "{missing}"],
        "file not found",
    ),
    "filter without =": (
        ["search", "--catalog", "{catalog}", "--model", "tiny", "--id", "000100", "--filter", "gender"],
        "--filter takes COLUMN=VALUE",
    ),
    "filter unknown column": (
        ["search", "--catalog", "{catalog}", "--model", "tiny", "--id", "000100", "--filter", "size=M"],
        "Cannot filter on 'size'",
    ),
    "unknown query id": (
        ["search", "--catalog", "{catalog}", "--model", "tiny", "--id", "999999"],
        "Unknown item id '999999'",
    ),
    "no query": (["search", "--catalog", "{catalog}", "--model", "tiny"], "search needs one query"),
    "weights unavailable": (
        ["embed", "--catalog", "{catalog}", "--models", "mobilenet-v2"],
        "Weights for 'mobilenet-v2' are unavailable",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(
    case: str,
    capsys: pytest.CaptureFixture[str],
    small_catalog_dir: Path,
    text_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case == "weights unavailable":
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
        entry = _registry._REGISTRY["mobilenet-v2"]
        missing = WeightsFile(
            filename="mobilenet_v2-b0353104.pth", package="lens_test_absent_pkg", package_subpath="w.pth"
        )
        monkeypatch.setitem(
            _registry._REGISTRY, "mobilenet-v2", _registry.RegistryEntry(entry.spec, entry.builder, missing)
        )
    template, expected = BAD_INPUTS[case]
    argv = [a.format(catalog=small_catalog_dir, missing=tmp_path / "missing", text=text_file) for a in template]
    code, out, err = run(capsys, *argv, "--quiet")
    assert code == 2
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0]


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str], small_catalog_dir: Path) -> None:
    """Malformed options are argparse's job: exit status 2 and an ``error:`` line, no traceback."""
    for argv in (
        ["search", "--k", "many"],
        ["embed", "--catalog", str(small_catalog_dir), "--batch-size", "0"],
        ["frobnicate"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "error: " in err.strip().splitlines()[-1] and "Traceback" not in err
