"""Bad input and faults, as a hostile or careless user would bring them: each kind of input is generated here and its
outcome asserted through the library, the CLI (``lens.cli.main``: exit 2 and one ``error:`` line, never a traceback)
and, where a page reads it, the dashboard (AppTest: ``st.error``, never an exception).

Outcomes are of three kinds: a one-line error that names the cause and the remedy; a silent recovery (a cache entry
lens cannot trust is rebuilt); a refusal (a file outside the catalog folder is never opened). Property-based tests
(hypothesis) cover the catalog CSV parser and the upload reader. The kill -9 and concurrency tests run real
``python -m lens`` processes on the generated catalog with the ``tiny`` encoder.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import draw_item, write_idx
from lens.catalog import load_catalog
from lens.cli import main
from lens.embed import EmbeddingSet, embed_catalog, embedding_paths
from lens.encoders import create_encoder
from lens.errors import CatalogError, IndexMismatchError, LensError
from lens.index import ExactIndex, build_index, index_path, load_annoy
from lens.store import csv_safe, file_digests, resolve_cache_dir, save_array

REPO_ROOT = Path(__file__).resolve().parent.parent
# 60 examples per property in the default run; LENS_PROPERTY_EXAMPLES=2000 for a deeper hunt.
PROPERTY = settings(
    max_examples=int(os.environ.get("LENS_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LENS_OFFLINE", "1")
    monkeypatch.delenv("LENS_WEIGHTS_DIR", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str, *needles: str) -> None:
    """The CLI's contract for bad input: exit 2, one ``error:`` line naming the cause, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def write_csv(folder: Path, rows: list[list[str]], header: tuple[str, ...] = ("id", "image", "articleType")) -> Path:
    with open(folder / "catalog.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return folder


def rows_of(folder: Path) -> list[list[str]]:
    with open(folder / "catalog.csv", newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


def embed_tiny(catalog_dir: Path, cache: Path) -> EmbeddingSet:
    return embed_catalog(load_catalog(catalog_dir, cache_dir=cache), create_encoder("tiny"), cache_dir=cache)


# ---------------------------------------------------------------------------------------------------- tracebacks


def test_nul_byte_in_an_image_path(small_catalog_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = rows_of(small_catalog_copy)
    rows[2][1] = "images/000102\x00.jpg"
    write_csv(small_catalog_copy, [r[:3] for r in rows])
    with pytest.raises(CatalogError, match="control character"):
        load_catalog(small_catalog_copy)
    code, _, err = run(capsys, "validate", "--catalog", str(small_catalog_copy), "--quiet")
    one_line_error(code, err, "control character", "line 4")


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(ids=list(range(len(m["ids"])))),
        lambda m: m.update(ids="000100"),
        lambda m: m.update(failed=[["a"]]),
        lambda m: m.update(failed={"a": 1}),
        lambda m: m.update(identity=["not", "a", "dict"]),
        lambda m: m.update(seconds="fast"),
        lambda m: m.update(catalog=7),
    ],
    ids=["ids-ints", "ids-str", "failed-short", "failed-dict", "identity-list", "seconds-str", "catalog-int"],
)
def test_malformed_embeddings_sidecar_is_rebuilt(small_catalog_dir: Path, tmp_path: Path, edit) -> None:  # noqa: ANN001
    from lens.embed import embedding_state

    cache = tmp_path / "cache"
    first = embed_tiny(small_catalog_dir, cache)
    _, sidecar = embedding_paths(cache, "tiny", first.key)
    meta = json.loads(sidecar.read_text())
    edit(meta)
    sidecar.write_text(json.dumps(meta))
    state = embedding_state(load_catalog(small_catalog_dir, cache_dir=cache), "tiny", cache)  # no traceback either
    assert state.encoder == "tiny"
    again = embed_tiny(small_catalog_dir, cache)
    assert not again.from_cache and again.ids == first.ids
    np.testing.assert_allclose(again.vectors, first.vectors, atol=1e-6)
    assert embed_tiny(small_catalog_dir, cache).from_cache  # the rebuilt entry verifies


def _hand_embeddings(n: int = 24, dim: int = 8, seed: int = 0) -> EmbeddingSet:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return EmbeddingSet(vectors=vectors, ids=[f"item-{i:02d}" for i in range(n)], encoder="hand", key=f"hand-{seed}")


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(n_trees="many"),
        lambda m: m.update(search_k=None),
        lambda m: m.update(dim="8"),
        lambda m: m.update(dim=True),
        lambda m: m.update(ids=[1, 2, 3]),
        lambda m: m.pop("file_sha256"),
        lambda m: m.pop("rows_sha256"),
        lambda m: m.clear(),
    ],
    ids=["n_trees-str", "search_k-none", "dim-str", "dim-bool", "ids-ints", "no-file-sha", "no-rows-sha", "empty"],
)
def test_malformed_index_sidecar_is_rebuilt(tmp_path: Path, edit) -> None:  # noqa: ANN001
    embeddings = _hand_embeddings()
    build_index(embeddings, cache_dir=tmp_path, n_trees=4).unload()
    path = index_path(tmp_path, embeddings, 4)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    edit(meta)
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(IndexMismatchError, match="no valid sidecar"):
        load_annoy(path)
    index = build_index(embeddings, cache_dir=tmp_path, n_trees=4)
    assert index.kind == "annoy" and index.ids == embeddings.ids
    load_annoy(path, expect_rows=embeddings).unload()


@pytest.mark.parametrize(
    "memo",
    [
        "[1, 2, 3]",
        '{"images/000100.jpg": "not a list"}',
        '{"images/000100.jpg": [1, 2, "x"]}',
        '{"images/000100.jpg": [null, null, null, null, null]}',
        "{not json",
    ],
    ids=["list", "str-entry", "short-entry", "null-entry", "not-json"],
)
def test_malformed_digest_memo_is_ignored(small_catalog_dir: Path, tmp_path: Path, memo: str) -> None:
    cache = tmp_path / "cache"
    rels = load_catalog(small_catalog_dir).table["image"].tolist()
    truth = file_digests(small_catalog_dir, rels, cache_dir=tmp_path / "fresh")
    memo_files = list((tmp_path / "fresh" / "catalogs" / "digests").glob("*.json"))
    assert len(memo_files) == 1
    target = cache / "catalogs" / "digests" / memo_files[0].name
    target.parent.mkdir(parents=True)
    target.write_text(memo)
    assert file_digests(small_catalog_dir, rels, cache_dir=cache) == truth
    assert file_digests(small_catalog_dir, rels, cache_dir=cache) == truth  # the memo it rewrote verifies


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(params=[1, 2]),
        lambda m: m.update(n_total="many"),
        lambda m: m.update(seconds="slow"),
        lambda m: m.update(ids="abc"),
    ],
    ids=["params-list", "n_total-str", "seconds-str", "ids-str"],
)
def test_malformed_projection_sidecar_is_recomputed(tmp_path: Path, edit) -> None:  # noqa: ANN001
    from lens.projection import ProjectionParams, project_embeddings

    embeddings = _hand_embeddings()
    params = ProjectionParams(method="pca")
    first = project_embeddings(embeddings, params, cache_dir=tmp_path)
    (sidecar,) = list(tmp_path.rglob("*.json"))
    meta = json.loads(sidecar.read_text())
    edit(meta)
    sidecar.write_text(json.dumps(meta))
    again = project_embeddings(embeddings, params, cache_dir=tmp_path)
    assert not again.from_cache and again.ids == first.ids
    np.testing.assert_allclose(again.coords, first.coords, atol=1e-5)


@pytest.mark.parametrize(
    "status",
    ['{"pid": "123", "state": "running", "steps": []}', '{"steps": [1, 2]}', '{"steps": [{"state": "ready"}]}', "[]"],
    ids=["pid-str", "steps-ints", "step-without-name", "list"],
)
def test_malformed_build_status_is_ignored(
    small_catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], status: str
) -> None:
    cache = tmp_path / "cache"
    (cache / "build").mkdir(parents=True)
    (cache / "build" / "status.json").write_text(status)
    argv = ["status", "--catalog", str(small_catalog_dir), "--cache-dir", str(cache), "--models", "tiny"]
    code, out, err = run(capsys, *argv, "--recipes", "none")
    assert code == 0 and "Traceback" not in err, err
    assert out.startswith("tiny") and "queued" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "not a JSON object"),
        ("{broken", "not a JSON object"),
        ('{"format": "lens-split-v1"}', "train, val, query"),
        (
            '{"format": "lens-split-v1", "train": "abc", "val": [], "query": [], "label_column": "x", "seed": 0}',
            "train",
        ),
        ('{"format": "lens-split-v1", "train": [], "val": [], "query": [1], "label_column": "x", "seed": 0}', "query"),
        ('{"format": "lens-split-v1", "train": [], "val": [], "query": [], "label_column": 3, "seed": "0"}', "seed"),
        ('{"format": "other"}', "not a lens split file"),
    ],
    ids=["list", "not-json", "no-keys", "train-str", "query-ints", "label-seed-types", "format"],
)
def test_malformed_split_file(
    small_catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    from lens.train.split import load_split

    split = tmp_path / "split.json"
    split.write_text(content)
    with pytest.raises(LensError, match=message):
        load_split(split)
    code, _, err = run(
        capsys, "evaluate", "--catalog", str(small_catalog_dir), "--models", "tiny", "--split", str(split), "--quiet"
    )
    one_line_error(code, err, str(split))


def test_resume_checkpoint_that_is_not_a_lens_checkpoint(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from lens.train.loop import _read_checkpoint

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    a_list = tmp_path / "list.pt"
    torch.save([1, 2, 3], a_list)
    partial = tmp_path / "partial.pt"
    torch.save({"recipe": "triplet", "seed": 0, "epoch": "one"}, partial)
    for path in (garbage, a_list, partial):
        with pytest.raises(LensError, match="not a lens training checkpoint") as info:
            _read_checkpoint(path)
        assert "drop --resume" in str(info.value)


# ------------------------------------------------------------------------------------------ silently wrong results


def test_bit_rot_in_an_annoy_file_is_caught_and_rebuilt(tmp_path: Path) -> None:
    embeddings = _hand_embeddings(n=200, dim=16)
    build_index(embeddings, cache_dir=tmp_path, n_trees=8).unload()
    path = index_path(tmp_path, embeddings, 8)
    data = bytearray(path.read_bytes())
    for offset in range(64, len(data), 97):  # flip bits all over the file, size unchanged
        data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(IndexMismatchError, match="damaged"):
        load_annoy(path)
    index = build_index(embeddings, cache_dir=tmp_path, n_trees=8)
    index.search_k = 100_000  # every node visited: exact on 200 items
    exact = ExactIndex.from_embeddings(embeddings)
    for row in (0, 57, 199):
        query = embeddings.vectors[row]
        assert [h.id for h in index.search(query, 5)] == [h.id for h in exact.search(query, 5)]


def test_reordered_sidecar_ids_are_refused(tmp_path: Path) -> None:
    embeddings = _hand_embeddings()
    build_index(embeddings, cache_dir=tmp_path, n_trees=4).unload()
    path = index_path(tmp_path, embeddings, 4)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["ids"] = list(reversed(meta["ids"]))
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(IndexMismatchError, match="other rows"):
        load_annoy(path, expect_rows=embeddings)
    index = build_index(embeddings, cache_dir=tmp_path, n_trees=4)
    hit = index.search(embeddings.vectors[3], 1)[0]
    assert hit.id == "item-03" and hit.score == pytest.approx(1.0, abs=1e-5)


def test_image_edited_in_place_with_the_same_size_and_mtime(small_catalog_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = embed_tiny(small_catalog_copy, cache)
    image = small_catalog_copy / "images" / "000103.jpg"
    before = os.stat(image)
    other = (small_catalog_copy / "images" / "000120.jpg").read_bytes()
    data = bytearray(image.read_bytes())
    data[-200:-2] = other[-200:-2] if len(other) > 200 else bytes(198)  # same size, other pixels
    time.sleep(0.01)  # a later ctime
    image.write_bytes(bytes(data))
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and mtime put back, as rsync --times does
    after = os.stat(image)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    again = embed_tiny(small_catalog_copy, cache)
    assert not again.from_cache and again.key != first.key


# ------------------------------------------------------------------------------------------ security and limits


def test_symlink_out_of_a_csv_catalog_is_refused(small_catalog_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    link = small_catalog_copy / "images" / "000104.jpg"
    link.unlink()
    link.symlink_to("/etc/passwd")
    with pytest.raises(CatalogError, match="symbolic link"):
        load_catalog(small_catalog_copy)
    code, _, err = run(capsys, "validate", "--catalog", str(small_catalog_copy), "--quiet")
    one_line_error(code, err, "symbolic link", "000104")


def test_symlink_inside_the_catalog_folder_is_fine(small_catalog_copy: Path) -> None:
    link = small_catalog_copy / "images" / "000104.jpg"
    link.unlink()
    link.symlink_to(small_catalog_copy / "images" / "000105.jpg")
    assert len(load_catalog(small_catalog_copy)) == 24


def test_symlink_out_of_a_folder_catalog_is_skipped(folder_catalog_dir: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(folder_catalog_dir, tmp_path / "folders"))
    first_class = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    (first_class / "leak.jpg").symlink_to("/etc/passwd")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(next(first_class.glob("*.jpg")), outside / "x.jpg")
    (root / "zz-linked").symlink_to(outside, target_is_directory=True)
    catalog = load_catalog(root)
    assert not any("leak" in i or "zz-linked" in i for i in catalog.ids)
    assert sorted(p.problem.split(":")[0] for p in catalog.problems) == [f"{first_class.name}/leak.jpg", "zz-linked/"]


def test_cache_dir_is_honoured_by_the_digest_memo(
    small_catalog_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    default = tmp_path / "default-cache"
    chosen = tmp_path / "chosen-cache"
    monkeypatch.setenv("LENS_CACHE_DIR", str(default))
    code, _, err = run(
        capsys, "embed", "--catalog", str(small_catalog_dir), "--models", "tiny", "--cache-dir", str(chosen), "--quiet"
    )
    assert code == 0, err
    assert not default.exists(), sorted(str(p) for p in default.rglob("*"))
    assert list((chosen / "catalogs" / "digests").glob("*.json"))


def _image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    image = draw_item(1, np.random.default_rng(0), 32)
    (image.convert("P") if fmt == "GIF" else image).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "fmt"), [("photo.png", "GIF"), ("photo.jpg", "BMP"), ("photo.webp", "TIFF")])
def test_upload_typed_by_content_not_extension(name: str, fmt: str) -> None:
    from dashboard.query import read_upload

    with pytest.raises(LensError, match=f"its content is {fmt}"):
        read_upload(name, _image_bytes(fmt))
    for good, real in (("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.webp", "WEBP"), ("a.jpg", "PNG")):
        assert read_upload(good, _image_bytes(real)).mode == "RGB"  # a PNG named .jpg is still a PNG: accepted


def test_fashion_mnist_header_bomb_is_bounded(tmp_path: Path) -> None:
    folder = tmp_path / "bomb"
    folder.mkdir()
    # A 3-byte-per-image header announcing 10 million 28x28 images: gzip of zeros stays tiny.
    header = (0x00000803).to_bytes(4, "big") + (10_000_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(header + bytes(28 * 28 * 100))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(10_000_000 // 1000, dtype=np.uint8))
    started = time.perf_counter()
    with pytest.raises(CatalogError, match="beyond what lens reads"):
        load_catalog(folder, cache_dir=tmp_path / "cache")
    assert time.perf_counter() - started < 30  # generous: refused on the header, nothing expanded (not a timing test)
    assert not (tmp_path / "cache" / "catalogs").exists() or not any(
        p.name.startswith("fashion-mnist") for p in (tmp_path / "cache" / "catalogs").iterdir()
    )


def test_csv_exports_escape_formulas(small_catalog_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = rows_of(small_catalog_copy)
    rows[0][0] = '=HYPERLINK("http://evil.example","click")'
    rows[1][6] = "+cmd|' /C calc'!A0"  # productDisplayName
    rows[2][4] = "@SUM(1+1)"  # gender
    header = ("id", "image", "articleType", "gender", "subCategory", "baseColour", "productDisplayName")
    write_csv(small_catalog_copy, rows, header)
    code, out, err = run(
        capsys, "search", "--catalog", str(small_catalog_copy), "--model", "tiny", "--id", rows[3][0], "--k", "23",
        "--exact", "--csv", "-", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out), dtype=str, keep_default_na=False)
    cells = [str(v) for v in table.to_numpy().ravel()]
    assert not [c for c in cells if c[:1] in ("=", "+", "@")], cells
    assert "'" + rows[0][0] in cells
    # Plain numbers keep their sign; a text cell gets the quote.
    escaped = csv_safe(pd.DataFrame({"a": ["-0.5", "-1+2", "=1", "x"], "n": [-1.0, 2.0, 3.0, 4.0]}))
    assert escaped["a"].tolist() == ["-0.5", "'-1+2", "'=1", "x"] and escaped["n"].tolist() == [-1.0, 2.0, 3.0, 4.0]


def test_weights_that_need_a_full_pickle_get_lens_own_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    from lens.encoders import _registry
    from lens.errors import WeightsUnavailableError

    user = tmp_path / "weights"
    user.mkdir()
    filename = _registry._REGISTRY["mobilenet-v2"].weights.filename  # type: ignore[union-attr]
    torch.save({"state": Path("/a/python/object")}, user / filename)  # not allowed by weights_only=True
    with pytest.raises(WeightsUnavailableError) as info:
        create_encoder("mobilenet-v2", weights_dir=user, engine="torch")
    message = str(info.value)
    assert "weights_only=False" not in message and "never a full pickle" in message and "trust" in message


def test_a_corrupt_checkpoint_is_listed_as_unavailable(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from lens.encoders import _registry, encoder_status, list_encoders

    user = tmp_path / "weights"
    user.mkdir()
    filename = _registry._REGISTRY["mobilenet-v2"].weights.filename  # type: ignore[union-attr]
    torch.save({"w": torch.arange(4096, dtype=torch.float32)}, user / filename)
    assert encoder_status("mobilenet-v2", user).path == user / filename
    data = bytearray((user / filename).read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte inside the tensor data
    (user / filename).write_bytes(bytes(data))
    status = encoder_status("mobilenet-v2", user)
    assert status.path != user / filename
    if not status.available:  # no other copy on this machine: listed as unavailable, with the reason
        assert "damaged" in status.remedy and "CRC" in status.remedy
        row = next(i for i in list_encoders(weights_dir=user) if i.name == "mobilenet-v2")
        assert not row.available


def test_stale_tmp_files_are_removed_on_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "entry.npy"
    stale = tmp_path / ".entry.npy.abc123.tmp"
    fresh = tmp_path / ".entry.npy.def456.tmp"
    other = tmp_path / ".another.npy.abc123.tmp"
    for path in (stale, fresh, other):
        path.write_bytes(b"half-written")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    save_array(target, np.arange(3, dtype=np.float32), {})
    assert not stale.exists()
    assert fresh.exists(), "a concurrent writer's fresh temporary file is left alone"
    assert other.exists(), "only the temporaries of the file being written"


# ------------------------------------------------------------------------------------------ the smaller ones


def test_na_label_strings_are_unlabelled(small_catalog_copy: Path) -> None:
    rows = rows_of(small_catalog_copy)
    for i, spelling in enumerate(["NaN", "NA", "null", " N/A ", "None"]):
        rows[i][2] = spelling
    rows[5][3] = "nan"  # gender
    header = ("id", "image", "articleType", "gender", "subCategory", "baseColour", "productDisplayName")
    write_csv(small_catalog_copy, rows, header)
    catalog = load_catalog(small_catalog_copy)
    labels = catalog.labels()
    assert labels[:5].tolist() == [""] * 5 and "NaN" not in set(labels)
    assert catalog.labels("gender")[5] == "" and catalog.ids[0] == rows[0][0]


def test_filter_that_matches_nothing(small_catalog_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        capsys, "search", "--catalog", str(small_catalog_dir), "--model", "tiny", "--id", "000100",
        "--filter", "gender=Martians", "--quiet",
    )  # fmt: skip
    one_line_error(code, err, "keeps no catalog item", "'Martians'", "values:")


def test_unknown_default_model_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from dashboard import config

    monkeypatch.setenv("LENS_DEFAULT_MODEL", "mobilenet-v3-typo")
    warning = config.default_model_warning(["tiny", "mobilenet-v2"], ["tiny"])
    assert warning and "mobilenet-v3-typo" in warning and "names no known encoder" in warning
    monkeypatch.setenv("LENS_DEFAULT_MODEL", "mobilenet-v2")
    assert "weights are missing" in (config.default_model_warning(["tiny", "mobilenet-v2"], ["tiny"]) or "")
    monkeypatch.setenv("LENS_DEFAULT_MODEL", "tiny")
    assert config.default_model_warning(["tiny"], ["tiny"]) is None


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["evaluate", "--models", "tiny,tinny"], ["Unknown encoder 'tinny'"]),
        (["embed", "--models", "tiny,resnet-5O"], ["Unknown encoder 'resnet-5O'"]),
        (["search", "--model", "tinny", "--id", "000100"], ["Unknown encoder 'tinny'"]),
        (["evaluate", "--models", "tiny", "--label", "colour"], ["no label column 'colour'"]),
        (["evaluate", "--models", "tiny", "--csv", "{tmp}"], ["is a folder"]),
        (["evaluate", "--models", "tiny", "--per-category", "{file}/x.csv"], ["is a file, not a folder"]),
    ],
    ids=["evaluate-typo", "embed-typo", "search-typo", "label", "csv-folder", "csv-under-file"],
)
def test_every_name_is_checked_before_any_work(
    small_catalog_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], needles: list[str]
) -> None:
    cache = tmp_path / "cache"
    (tmp_path / "a-file").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{file}", str(tmp_path / "a-file")) for a in argv]
    code, _, err = run(capsys, *argv, "--catalog", str(small_catalog_dir), "--cache-dir", str(cache), "--quiet")
    one_line_error(code, err, *needles)
    assert not (cache / "embeddings").exists(), "nothing was embedded before the check"


# ------------------------------------------------------------------------------------------ what lens already handled


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("id,image,articleType\n", "no rows"),
        ("", "is empty"),
        ("id,image,articleType\n1,images/000100.jpg,a\n1,images/000101.jpg,b\n", "duplicate id"),
        ("id,image,articleType\n1,../outside.jpg,a\n", "escapes the catalog folder"),
        ("id,image,articleType\n1,/etc/passwd,a\n", "absolute path"),
        ("id,image,articleType\n1,http://x.example/a.jpg,a\n", "a URL"),
        ("id,picture,articleType\n1,images/000100.jpg,a\n", "no image column"),
        ("id,image,articleType\n1,images/nope.jpg,a\n", "not found"),
        ("id,image,id\n1,images/000100.jpg,a\n", "repeated column names"),
    ],
    ids=["header-only", "empty", "dup-ids", "dotdot", "absolute", "url", "no-image-col", "missing-file", "dup-cols"],
)
def test_bad_catalog_csv_is_one_line(
    small_catalog_copy: Path, capsys: pytest.CaptureFixture[str], content: str, needle: str
) -> None:
    (small_catalog_copy / "catalog.csv").write_text(content, encoding="utf-8")
    code, _, err = run(capsys, "validate", "--catalog", str(small_catalog_copy), "--quiet")
    one_line_error(code, err, needle)


def test_unreadable_images_are_listed_not_fatal(small_catalog_copy: Path, tmp_path: Path) -> None:
    images = small_catalog_copy / "images"
    (images / "000101.jpg").write_bytes(b"")
    (images / "000102.jpg").write_bytes(b"plain text, not a picture")
    (images / "000103.jpg").write_bytes((images / "000103.jpg").read_bytes()[:300])
    result = embed_tiny(small_catalog_copy, tmp_path / "cache")
    assert dict(result.failed).keys() == {"000101", "000102", "000103"} and len(result) == 21


def test_bad_catalog_on_every_page(small_catalog_copy: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from app_pages import APP, app_pages

    rows = rows_of(small_catalog_copy)
    rows[2][1] = "images/000102\x00.jpg"
    write_csv(small_catalog_copy, [r[:3] for r in rows])
    monkeypatch.setenv("LENS_CATALOG", str(small_catalog_copy))
    monkeypatch.setenv("LENS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LENS_DEFAULT_MODEL", "tiny")
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    for page in app_pages():
        if not page.default:
            at.switch_page(page.script).run()
        assert not at.exception, (page.name, [e.value for e in at.exception])
        assert any("control character" in e.value for e in at.error), page.name


# ------------------------------------------------------------------------------------------ property-based


_CELL = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@PROPERTY
@given(
    ids=st.lists(_CELL, min_size=1, max_size=6),
    labels=st.lists(
        st.one_of(_CELL, st.sampled_from(["NaN", "NA", "null", "", " x ", "=1+1"])), min_size=6, max_size=6
    ),
)
def test_property_catalog_csv_parser(
    tmp_path_factory: pytest.TempPathFactory, ids: list[str], labels: list[str]
) -> None:
    """Whatever the ids and labels, loading gives either a ``CatalogError`` or exactly the rows written: ids as
    written without surrounding whitespace, labels as written (NA spellings as unlabelled)."""
    from lens.catalog.loaders import NA_SPELLINGS

    folder = tmp_path_factory.mktemp("prop")
    (folder / "a.png").write_bytes(_image_bytes("PNG"))
    rows = [[item_id, "a.png", labels[i]] for i, item_id in enumerate(ids)]
    write_csv(folder, rows)
    try:
        catalog = load_catalog(folder)
    except CatalogError as exc:
        assert str(exc)  # a message, one of lens's own
        return
    expected_ids = [i.strip() for i in ids]
    assert catalog.ids == expected_ids
    want = ["" if lab.strip() in NA_SPELLINGS else lab for lab in labels[: len(ids)]]
    assert catalog.labels().tolist() == want
    assert len(set(catalog.ids)) == len(catalog.ids) and "" not in catalog.ids


@PROPERTY
@given(
    paths=st.lists(
        st.one_of(_CELL, st.sampled_from(["a.png", "./a.png", "sub/../a.png", "a.png\x00", "..", "/"])),
        min_size=1,
        max_size=5,
    )
)
def test_property_catalog_image_paths(tmp_path_factory: pytest.TempPathFactory, paths: list[str]) -> None:
    """Whatever is written in the image column: a ``CatalogError``, or a catalog whose every image resolves to a
    regular file inside the catalog folder."""
    folder = tmp_path_factory.mktemp("paths")
    (folder / "a.png").write_bytes(_image_bytes("PNG"))
    write_csv(folder, [[f"id-{i}", path, "x"] for i, path in enumerate(paths)])
    try:
        catalog = load_catalog(folder)
    except CatalogError as exc:
        assert str(exc)
        return
    for image in catalog.image_paths():
        assert image.resolve().is_file() and image.resolve().is_relative_to(folder.resolve())


@PROPERTY
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.builds(
            lambda head, body: head + body,
            st.sampled_from(["id,image,articleType\n", "\ufeffid,image,articleType\r\n", "id;image;articleType\n"]),
            st.text(alphabet=st.sampled_from(list('a.png,;"\n\r\t =+-@\x00\\/é')), max_size=200),
        ),
    )
)
def test_property_catalog_csv_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    """Any text as catalog.csv: a ``CatalogError`` with a message, or a catalog with unique, non-empty ids."""
    folder = tmp_path_factory.mktemp("text")
    (folder / "a.png").write_bytes(_image_bytes("PNG"))
    (folder / "catalog.csv").write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        catalog = load_catalog(folder)
    except CatalogError as exc:
        assert str(exc)
        return
    assert len(catalog) >= 1 and len(set(catalog.ids)) == len(catalog) and "" not in catalog.ids


def _valid_upload() -> bytes:
    return _image_bytes("PNG")


@PROPERTY
@given(
    data=st.one_of(
        st.binary(max_size=256),
        st.builds(
            lambda cut, flips: _mutate(_valid_upload(), cut, flips),
            st.integers(0, 400),
            st.lists(st.tuples(st.integers(0, 399), st.integers(1, 255)), max_size=6),
        ),
    ),
    name=st.sampled_from(["q.png", "q.jpg", "q.webp", "q.gif", "q", "../../q.png"]),
)
def test_property_upload_reader(data: bytes, name: str) -> None:
    """Any bytes under any name: an RGB image, or a ``LensError`` that names the file; never another exception."""
    from dashboard.query import read_upload

    try:
        image = read_upload(name, data)
    except LensError as exc:
        assert name in str(exc)
        return
    assert image.mode == "RGB" and min(image.size) >= 1


def _mutate(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[: max(8, len(data) - cut)])
    for offset, value in flips:
        if offset < len(out):
            out[offset] ^= value
    return bytes(out)


# ------------------------------------------------------------------------------------------ kill -9 and concurrency


def _lens(*argv: str, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "LENS_CACHE_DIR": str(cache), "LENS_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lens", *argv, "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _assert_cache_consistent(cache: Path, embeddings: EmbeddingSet | None = None) -> None:
    """Every entry with a sidecar verifies, or is a miss lens rebuilds; none is a misread file."""
    from lens.store import load_array, verify_array

    for npy in cache.rglob("*.npy"):
        if npy.with_suffix(".json").exists():
            assert verify_array(npy) is not None, npy
            assert load_array(npy) is not None
    for ann in cache.rglob("*.ann"):
        if ann.with_suffix(".json").exists():
            load_annoy(ann, expect_rows=embeddings).unload()


@pytest.mark.slow
def test_kill_9_during_embed_and_index_build(small_catalog_dir: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    truth = embed_tiny(small_catalog_dir, reference)
    caught: list[str] = []
    for attempt, delay in enumerate((0.0, 0.05, 0.15, 0.4)):
        cache = tmp_path / f"cache-{attempt}"
        proc = _lens("index", "--catalog", str(small_catalog_dir), "--models", "tiny", "--trees", "3", cache=cache)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:  # until the first file of the cache appears
                if (cache / "embeddings").exists() or (cache / "indexes").exists():
                    break
                time.sleep(0.002)
            time.sleep(delay)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                caught.append(f"killed after {delay}s")
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        _assert_cache_consistent(cache)
        again = _lens("index", "--catalog", str(small_catalog_dir), "--models", "tiny", "--trees", "3", cache=cache)
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
        result = embed_tiny(small_catalog_dir, cache)
        assert result.from_cache and result.ids == truth.ids
        np.testing.assert_allclose(result.vectors, truth.vectors, atol=1e-6)
        _assert_cache_consistent(cache, result)
    assert caught, "no process was killed while it worked"


@pytest.mark.slow
def test_two_builds_at_once_and_searches_during_a_rebuild(small_catalog_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    argv = ("index", "--catalog", str(small_catalog_dir), "--models", "tiny", "--trees", "3")
    procs = [_lens(*argv, cache=cache) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    embeddings = embed_tiny(small_catalog_dir, cache)
    assert embeddings.from_cache
    _assert_cache_consistent(cache, embeddings)
    exact = ExactIndex.from_embeddings(embeddings)
    truth = {row: [h.id for h in exact.search(embeddings.vectors[row], 5)] for row in range(len(embeddings))}

    # Searches in this process while another one rebuilds the same index again and again.
    rebuild = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from lens.cli import main\nfor _ in range(6): main(sys.argv[1:])",
            *argv,
            "--rebuild",
            "--quiet",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "LENS_CACHE_DIR": str(cache), "LENS_OFFLINE": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    errors: list[BaseException] = []
    searches = 0

    def search_loop() -> None:
        nonlocal searches
        try:
            while rebuild.poll() is None or searches < 20:
                index = build_index(embeddings, cache_dir=cache, n_trees=3, search_k=100_000)
                for row in (0, 7, 23):
                    assert [h.id for h in index.search(embeddings.vectors[row], 5)] == truth[row]
                index.unload()
                searches += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=search_loop)
    thread.start()
    _, err = rebuild.communicate(timeout=300)
    thread.join(timeout=120)
    assert rebuild.returncode == 0, err
    assert not errors, errors
    assert searches >= 20
    _assert_cache_consistent(cache, embeddings)
    assert not list(resolve_cache_dir(cache).rglob("*.tmp"))
