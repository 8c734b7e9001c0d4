"""lens.catalog: the three layouts, validation messages, fingerprints, slices, Fashion-MNIST."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fixtures import class_names, make_fashion_mnist_idx, write_idx
from lens.catalog import (
    DEFAULT_LABEL_COLUMN,
    FASHION_MNIST_CLASSES,
    Catalog,
    CatalogProblem,
    default_catalog_path,
    load_catalog,
    validate_images,
)
from lens.errors import CatalogError
from lens.images import open_image

# --------------------------------------------------------------------------------------------------------
# helpers


def read_rows(folder: Path) -> tuple[list[str], list[list[str]]]:
    with open(folder / "catalog.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


def write_rows(folder: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(folder / "catalog.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime (folders included)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for n in dirnames + filenames:
            st = os.stat(os.path.join(dirpath, n))
            out[os.path.join(dirpath, n)] = (st.st_size, st.st_mtime_ns)
    st = os.stat(folder)
    out[str(folder)] = (st.st_size, st.st_mtime_ns)
    return out


# --------------------------------------------------------------------------------------------------------
# (a) CSV layout


def test_csv_catalog_loads(small_catalog_dir):
    before = snapshot(small_catalog_dir)
    cat = load_catalog(small_catalog_dir)
    assert isinstance(cat, Catalog)
    assert len(cat) == 24 and cat.source == "csv" and cat.name == small_catalog_dir.name
    assert cat.root == small_catalog_dir.resolve() and cat.root.is_absolute()
    assert cat.label_column == DEFAULT_LABEL_COLUMN
    assert cat.ids[:2] == ["000100", "000101"]  # read as strings: zeros kept, CSV order kept
    assert list(cat.table.columns[:3]) == ["id", "image", "articleType"]
    assert {"gender", "subCategory", "baseColour", "productDisplayName"} <= set(cat.table.columns)
    assert cat.table.index.equals(pd.RangeIndex(24))
    assert cat.row("000101")["baseColour"] == ""  # empty cell -> "", not NaN
    assert cat.problems == []
    labels = cat.labels()
    assert labels.dtype == object and labels.shape == (24,) and isinstance(labels[0], str)
    assert sorted(set(labels)) == sorted(class_names(4))
    assert cat.labels("gender")[:3].tolist() == ["Men", "Women", "Unisex"]
    assert cat.image_path(0) == small_catalog_dir.resolve() / "images" / "000100.jpg"
    assert all(p.is_file() for p in cat.image_paths())
    assert cat.index_of("000105") == 5
    assert snapshot(small_catalog_dir) == before  # loading writes nothing


def test_csv_file_path_and_renamed_columns(tmp_path, small_catalog_dir):
    folder = Path(shutil.copytree(small_catalog_dir, tmp_path / "c"))
    header, rows = read_rows(folder)
    header = ["sku", "photo", "kind"] + header[3:]
    (folder / "catalog.csv").unlink()
    with open(folder / "products.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header] + rows)
    cat = load_catalog(folder / "products.csv", id_column="sku", image_column="photo", label_column="kind")
    assert len(cat) == 24 and cat.name == "products"
    assert cat.column_names == {"id": "sku", "image": "photo"}
    assert cat.labels()[0] == class_names(4)[0]


def test_unknown_column_lists_available_and_remedy(small_catalog_dir):
    with pytest.raises(
        CatalogError, match=r"no label column 'style'.*Available columns: id, image, articleType.*--label"
    ):
        load_catalog(small_catalog_dir, label_column="style")
    with pytest.raises(CatalogError, match=r"no id column 'sku'.*--id-column"):
        load_catalog(small_catalog_dir, id_column="sku")
    with pytest.raises(CatalogError, match=r"no image column 'photo'.*--image-column"):
        load_catalog(small_catalog_dir, image_column="photo")
    cat = load_catalog(small_catalog_dir)
    with pytest.raises(CatalogError, match=r"no column 'colour'.*Available columns.*baseColour.*--label"):
        cat.labels("colour")


def test_duplicate_ids_named(small_catalog_copy):
    header, rows = read_rows(small_catalog_copy)
    rows[5][0] = rows[2][0]
    write_rows(small_catalog_copy, header, rows)
    with pytest.raises(CatalogError, match=r"1 duplicate id.*'000102' \(line 4 and line 7\).*unique"):
        load_catalog(small_catalog_copy)


def test_empty_ids_named(small_catalog_copy):
    header, rows = read_rows(small_catalog_copy)
    for i in (3, 9):
        rows[i][0] = "  "
    write_rows(small_catalog_copy, header, rows)
    with pytest.raises(CatalogError, match=r"2 row\(s\) have an empty id \(lines 5, 11\).*unique id"):
        load_catalog(small_catalog_copy)


@pytest.mark.parametrize(
    "bad,why",
    [
        ("../outside.jpg", "escapes the catalog folder"),
        ("/etc/passwd", "absolute path"),
        ("images/../../x.jpg", "escapes"),
        ("C:\\photos\\a.jpg", "absolute path"),
        ("https://example.com/a.jpg", "URL"),
    ],
)
def test_image_paths_must_stay_inside(small_catalog_copy, bad, why):
    header, rows = read_rows(small_catalog_copy)
    rows[4][1] = bad
    write_rows(small_catalog_copy, header, rows)
    with pytest.raises(CatalogError, match=rf"line 6 id '000104'.*{why}.*must be relative"):
        load_catalog(small_catalog_copy)
    with pytest.raises(CatalogError, match="not inside the catalog folder"):
        load_catalog(small_catalog_copy, on_missing="skip")  # not a missing file: never skipped


def test_paths_are_normalised(small_catalog_copy):
    header, rows = read_rows(small_catalog_copy)
    rows[0][1] = "./images/../images/000100.jpg"
    rows[1][1] = "images\\000101.jpg"
    write_rows(small_catalog_copy, header, rows)
    cat = load_catalog(small_catalog_copy)
    assert cat.table["image"].tolist()[:2] == ["images/000100.jpg", "images/000101.jpg"]


def test_missing_images_error_names_rows_and_skip_records_problems(small_catalog_copy):
    for i in range(100, 107):  # 7 missing: message shows 5 and the count
        (small_catalog_copy / "images" / f"{i:06d}.jpg").unlink()
    with pytest.raises(
        CatalogError,
        match=r"7 of 24 image file\(s\) not found.*line 2 id '000100': images/000100.jpg.*and 2 more.*on_missing='skip'",
    ):
        load_catalog(small_catalog_copy)
    cat = load_catalog(small_catalog_copy, on_missing="skip")
    assert len(cat) == 17 and cat.ids[0] == "000107"
    assert cat.table.index.equals(pd.RangeIndex(17))
    assert len(cat.problems) == 7
    assert cat.problems[0] == CatalogProblem(row=0, item_id="000100", problem="image file not found: images/000100.jpg")


def test_all_missing_with_skip_is_an_error(small_catalog_copy):
    shutil.rmtree(small_catalog_copy / "images")
    with pytest.raises(CatalogError, match="all 24 image files are missing"):
        load_catalog(small_catalog_copy, on_missing="skip")


def test_empty_catalog_and_bad_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "catalog.csv").write_text("id,image,articleType\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="no rows"):
        load_catalog(tmp_path / "empty")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "catalog.csv").write_text("", encoding="utf-8")
    with pytest.raises(CatalogError, match="empty; it needs a header row"):
        load_catalog(tmp_path / "blank")
    with pytest.raises(CatalogError, match="not found.*LENS_CATALOG"):
        load_catalog(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(CatalogError, match="not a .csv"):
        load_catalog(tmp_path / "notes.txt")
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "a.jpg").write_bytes(b"")
    with pytest.raises(CatalogError, match=r"not a catalog folder.*1 image\(s\) directly.*class subfolders"):
        load_catalog(tmp_path / "nothing")
    with pytest.raises(CatalogError, match="on_missing"):
        load_catalog(tmp_path / "empty", on_missing="ignore")


def test_limit_keeps_first_rows(small_catalog_dir):
    cat = load_catalog(small_catalog_dir, limit=5)
    assert cat.ids == [f"{i:06d}" for i in range(100, 105)]


# --------------------------------------------------------------------------------------------------------
# (b) class subfolders


def test_folder_catalog_loads(folder_catalog_dir):
    before = snapshot(folder_catalog_dir)
    cat = load_catalog(folder_catalog_dir)
    names = sorted(class_names(3))  # sorted listing: BlueSquare, GreenTriangle, RedCircle
    assert cat.source == "folders" and len(cat) == 12
    assert cat.ids[:2] == [f"{names[0]}/item00", f"{names[0]}/item01"]
    assert cat.table["image"].tolist()[:2] == [f"{names[0]}/item00.jpg", f"{names[0]}/item01.png"]
    assert cat.labels().tolist() == [n for n in names for _ in range(4)]
    assert list(cat.table.columns) == ["id", "image", "articleType"]
    assert all(p.is_file() for p in cat.image_paths())
    assert load_catalog(folder_catalog_dir, label_column="category").labels().tolist()[0] == names[0]
    assert snapshot(folder_catalog_dir) == before


def test_folder_catalog_duplicate_stems(tmp_path, folder_catalog_dir):
    root = Path(shutil.copytree(folder_catalog_dir, tmp_path / "f"))
    cls = class_names(3)[1]
    shutil.copy(root / cls / "item00.jpg", root / cls / "item00.webp")
    with pytest.raises(CatalogError, match=rf"share an id.*{cls}/item00.jpg and {cls}/item00.webp.*Rename"):
        load_catalog(root)


# --------------------------------------------------------------------------------------------------------
# fingerprint, subset, sample


def test_fingerprint_stable_and_sensitive(small_catalog_copy):
    a = load_catalog(small_catalog_copy)
    b = load_catalog(small_catalog_copy)
    fp = a.fingerprint()
    assert len(fp) == 64 and fp == b.fingerprint() == a.fingerprint()
    target = small_catalog_copy / "images" / "000103.jpg"
    st = target.stat()
    # a new timestamp with the same bytes (a re-sync, a copy) keeps the identity, so caches survive
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert load_catalog(small_catalog_copy).fingerprint() == fp
    # different bytes of the same size: the mtime moved, so the file is hashed again and the identity changes
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))
    assert a.fingerprint() == fp  # memoised on the object
    changed = load_catalog(small_catalog_copy).fingerprint()
    assert changed != fp
    assert a.fingerprint(refresh=True) == changed
    with open(target, "ab") as fh:  # size change
        fh.write(b"\0")
    assert load_catalog(small_catalog_copy).fingerprint() not in (fp, changed)
    # the order of rows is part of the identity
    assert a.subset(list(reversed(range(len(a))))).fingerprint() != a.fingerprint(refresh=True)


def test_fingerprint_same_for_a_copied_catalog_and_reads_each_file_once(small_catalog_copy, tmp_path, monkeypatch):
    import hashlib

    import lens.store as store_module  # the file-digest memo lives in the store

    fp = load_catalog(small_catalog_copy).fingerprint()
    copy = tmp_path / "copy"
    shutil.copytree(small_catalog_copy, copy)  # new paths, new timestamps, same bytes
    assert load_catalog(copy).fingerprint() == fp
    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(store_module.hashlib, "file_digest", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert load_catalog(copy).fingerprint() == fp
    assert calls == [], "digests come from the on-disk memo when size and mtime are unchanged"
    (copy / "images" / "000103.jpg").unlink()
    assert load_catalog(copy, on_missing="skip").fingerprint() != fp


def test_fingerprint_ignores_labels(small_catalog_copy):
    fp = load_catalog(small_catalog_copy).fingerprint()
    header, rows = read_rows(small_catalog_copy)
    for r in rows:
        r[2] = "Other"
    write_rows(small_catalog_copy, header, rows)
    assert load_catalog(small_catalog_copy).fingerprint() == fp


def test_subset_keeps_order_and_root(small_catalog_dir):
    cat = load_catalog(small_catalog_dir)
    sub = cat.subset(["000110", "000101", "000120"])
    assert sub.ids == ["000110", "000101", "000120"] and sub.root == cat.root
    assert sub.table.index.equals(pd.RangeIndex(3))
    assert sub.image_path(1) == cat.image_path(1)
    assert cat.subset([3, 1]).ids == ["000103", "000101"]
    assert cat.subset(np.array([2, 0])).ids == ["000102", "000100"]
    with pytest.raises(CatalogError, match="unknown id.*'nope'"):
        cat.subset(["000100", "nope"])
    with pytest.raises(CatalogError, match="out of range"):
        cat.subset([0, 99])
    with pytest.raises(CatalogError, match="more than once"):
        cat.subset([1, 1])
    with pytest.raises(CatalogError, match="Unknown item id 'zzz'"):
        cat.index_of("zzz")


def test_labels_of_given_ids_follow_their_order(small_catalog_dir):
    cat = load_catalog(small_catalog_dir)
    ids = ["000110", "000100", "000121"]
    labels = cat.labels(ids=ids)
    assert labels.dtype == object and labels.tolist() == [cat.labels()[cat.index_of(i)] for i in ids]
    assert cat.labels("baseColour", ids=["000101", "000100"]).tolist() == ["", "Red"]  # empty cells are ""
    assert cat.labels(ids=[]).tolist() == []
    np.testing.assert_array_equal(cat.positions(ids), [10, 0, 21])
    with pytest.raises(CatalogError, match="Unknown item id 'zzz'"):
        cat.labels(ids=["000100", "zzz"])
    with pytest.raises(CatalogError, match="no column 'nope'"):
        cat.labels("nope", ids=ids)


def test_sample_is_deterministic(small_catalog_dir):
    cat = load_catalog(small_catalog_dir)
    s1, s2 = cat.sample(7, seed=3), cat.sample(7, seed=3)
    assert s1.ids == s2.ids and len(s1) == 7
    assert s1.ids == sorted(s1.ids)  # catalog order
    assert cat.sample(7, seed=4).ids != s1.ids
    assert len(cat.sample(100)) == 24
    per = cat.sample(10, per_label=4, seed=1)
    counts = dict(zip(*np.unique(per.labels(), return_counts=True)))
    assert sorted(counts.values()) == [2, 4, 4]  # three labels, the last one cut to reach n
    assert per.ids == cat.sample(10, per_label=4, seed=1).ids
    assert len(cat.sample(100, per_label=7)) == 0  # no label has 7 items


# --------------------------------------------------------------------------------------------------------
# (c) Fashion-MNIST


def test_fashion_mnist_idx_materialises_once(fashion_mnist_idx_dir, tmp_path):
    cache = tmp_path / "cache"
    before = snapshot(fashion_mnist_idx_dir)
    cat = load_catalog(fashion_mnist_idx_dir, cache_dir=cache)
    assert cat.source == "fashion-mnist" and cat.name == "fashion-mnist-t10k" and len(cat) == 20
    assert cat.ids[:2] == ["t10k-00000", "t10k-00001"]
    assert cat.labels().tolist() == [FASHION_MNIST_CLASSES[i % 10] for i in range(20)]
    assert cat.labels("split").tolist() == ["t10k"] * 20
    folders = list((cache / "catalogs").glob("fashion-mnist-*"))
    assert len(folders) == 1 and folders[0].name.startswith("fashion-mnist-t10k-20-")
    assert cat.root == folders[0].resolve()
    im = open_image(cat.image_path(3))
    assert im.size == (28, 28) and im.mode == "RGB"
    assert snapshot(fashion_mnist_idx_dir) == before  # nothing written beside the IDX files

    written = snapshot(cache)
    again = load_catalog(fashion_mnist_idx_dir, cache_dir=cache)
    assert snapshot(cache) == written  # second load rewrites nothing
    assert again.ids == cat.ids and again.fingerprint() == cat.fingerprint()

    limited = load_catalog(fashion_mnist_idx_dir, cache_dir=cache, limit=5)
    assert len(limited) == 5 and len(list((cache / "catalogs").glob("fashion-mnist-*"))) == 2


def test_fashion_mnist_unfinished_cache_is_rebuilt(fashion_mnist_idx_dir, tmp_path):
    cache = tmp_path / "cache"
    cat = load_catalog(fashion_mnist_idx_dir, cache_dir=cache)
    (cat.root / "lens-catalog.json").unlink()  # as if interrupted before the end
    (cat.root / "images" / "t10k-00000.png").unlink()
    again = load_catalog(fashion_mnist_idx_dir, cache_dir=cache)
    assert len(again) == 20 and (again.root / "images" / "t10k-00000.png").is_file()
    assert not [p for p in (cache / "catalogs").iterdir() if p.name.endswith(".tmp")]


def test_fashion_mnist_split_choice(tmp_path, monkeypatch):
    folder, _ = make_fashion_mnist_idx(tmp_path / "idx", n=12, split="train", gz=False)
    make_fashion_mnist_idx(folder, n=6, split="t10k", seed=1)
    cache = tmp_path / "cache"
    assert len(load_catalog(folder, cache_dir=cache)) == 6  # default t10k
    assert load_catalog(folder, cache_dir=cache, split="train").ids[0] == "train-00000"
    monkeypatch.setenv("LENS_FMNIST_SPLIT", "all")
    both = load_catalog(folder, cache_dir=cache)
    assert len(both) == 18 and both.name == "fashion-mnist-all"
    assert both.ids[11:13] == ["train-00011", "t10k-00000"]
    assert len(load_catalog(folder, cache_dir=cache, limit=14)) == 14
    monkeypatch.setenv("LENS_FMNIST_SPLIT", "val")
    with pytest.raises(CatalogError, match="Unknown Fashion-MNIST split 'val'"):
        load_catalog(folder, cache_dir=cache)


def test_fashion_mnist_bad_files(tmp_path):
    folder, labels = make_fashion_mnist_idx(tmp_path / "idx", n=10)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8), magic=0x0000_0801)
    with pytest.raises(CatalogError, match=r"bad magic number 0x00000801, expected 0x00000803"):
        load_catalog(folder, cache_dir=tmp_path / "cache")

    folder, _ = make_fashion_mnist_idx(tmp_path / "idx2", n=10)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(9, np.uint8))
    with pytest.raises(CatalogError, match="10 images but 9 labels"):
        load_catalog(folder, cache_dir=tmp_path / "cache")

    folder, _ = make_fashion_mnist_idx(tmp_path / "idx3", n=10)
    raw = folder / "t10k-images-idx3-ubyte.gz"
    raw.write_bytes(raw.read_bytes()[:40])
    with pytest.raises(CatalogError, match="damaged|truncated"):
        load_catalog(folder, cache_dir=tmp_path / "cache")

    folder, _ = make_fashion_mnist_idx(tmp_path / "idx4", n=10)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(CatalogError, match="no complete split"):
        load_catalog(folder, cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="dataset-fashion-mnist not installed"
)
def test_debian_fashion_mnist_loads_with_limit(tmp_path):
    cat = load_catalog("/usr/share/datasets/fashion-mnist", limit=50, cache_dir=tmp_path)
    assert len(cat) == 50 and cat.source == "fashion-mnist"
    assert set(cat.labels()) <= set(FASHION_MNIST_CLASSES) and len(set(cat.labels())) > 3
    assert open_image(cat.image_path(0)).size == (28, 28)


# --------------------------------------------------------------------------------------------------------
# validate_images, default_catalog_path


def test_validate_images_lists_unreadable(small_catalog_copy):
    (small_catalog_copy / "images" / "000104.jpg").write_text("oops", encoding="utf-8")
    data = (small_catalog_copy / "images" / "000110.jpg").read_bytes()
    (small_catalog_copy / "images" / "000110.jpg").write_bytes(data[: len(data) // 2])
    cat = load_catalog(small_catalog_copy)  # loading does not decode: no error yet
    calls = []
    problems = validate_images(cat, progress=lambda done, total: calls.append((done, total)))
    assert [(p.row, p.item_id) for p in problems] == [(4, "000104"), (10, "000110")]
    assert "not an image" in problems[0].problem and "truncated" in problems[1].problem
    assert calls[0] == (1, 24) and calls[-1] == (24, 24)


def test_default_catalog_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LENS_CATALOG", str(tmp_path))
    assert default_catalog_path() == tmp_path.resolve()
    monkeypatch.setenv("LENS_CATALOG", str(tmp_path / "missing"))
    with pytest.raises(CatalogError, match="LENS_CATALOG=.*does not exist"):
        default_catalog_path()
    monkeypatch.delenv("LENS_CATALOG")
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-products"
    if shared.is_dir():
        assert default_catalog_path() == shared.resolve()


# --------------------------------------------------------------------------------------------------------
# the real catalog


def test_real_catalog(sample_catalog_dir, sample_catalog):
    before = {p.name: p.stat().st_mtime_ns for p in sample_catalog_dir.iterdir()}
    folder_mtime = sample_catalog_dir.stat().st_mtime_ns
    cat = load_catalog(sample_catalog_dir)
    assert len(cat) == 8010 and cat.source == "csv" and cat.name == "fashion-products"
    # README says 75 articleTypes; the shipped catalog.csv has 74 distinct values.
    assert len(set(cat.labels())) == 74
    assert len(set(cat.labels("masterCategory"))) == 6
    assert cat.fingerprint() == sample_catalog.fingerprint()
    assert {p.name: p.stat().st_mtime_ns for p in sample_catalog_dir.iterdir()} == before
    assert sample_catalog_dir.stat().st_mtime_ns == folder_mtime


def test_sample_slice(sample_slice, sample_catalog):
    assert len(sample_slice) == 80
    labels, counts = np.unique(sample_slice.labels(), return_counts=True)
    assert len(labels) == 8 and set(counts) == {10}
    assert sample_slice.ids == sample_catalog.sample(80, per_label=10, seed=0).ids
    assert sample_slice.root == sample_catalog.root
    assert validate_images(sample_slice) == []
