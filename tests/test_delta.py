"""The Annoy index that takes catalog updates (lens.delta): main index + exact delta + tombstones give a full
rebuild's results up to Annoy's recall, are written atomically and verified, and are rebuilt past the threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures import make_catalog

DIM = 16


class Killed(BaseException):
    """What a kill -9 looks like to the code under it: nothing after this point runs."""


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _set(ids: list[str], vectors: np.ndarray, key: str):  # -> lens.embed.EmbeddingSet
    from lens.embed import EmbeddingSet

    return EmbeddingSet(vectors=_unit(vectors), ids=list(ids), encoder="synthetic", key=key)


@pytest.fixture()
def versions():  # noqa: ANN201
    """A 400-item catalog, and its next version: 10 removed (b0-b9), 5 edited (b10-b14: new vectors), 12 added
    (n0 is the exact duplicate of ``query``); plus the query and the edited items' old vectors."""
    rng = np.random.default_rng(0)
    base = _set([f"b{i}" for i in range(400)], rng.normal(size=(400, DIM)), "v1")
    query = _unit(rng.normal(size=(1, DIM)))[0]
    vectors = dict(zip(base.ids, base.vectors))
    old = {f"b{i}": vectors[f"b{i}"] for i in range(10, 15)}
    for item_id in old:
        vectors[item_id] = _unit(rng.normal(size=(1, DIM)))[0]
    for i in range(10):
        del vectors[f"b{i}"]
    added = _unit(rng.normal(size=(12, DIM)))
    added[0] = query
    for i, v in enumerate(added):
        vectors[f"n{i}"] = v
    new = _set(list(vectors), np.stack(list(vectors.values())), "v2")
    return base, new, query, old


def _all_hits(index, vector: np.ndarray) -> dict[str, float]:  # noqa: ANN001
    hits = index.search(vector, len(index))
    assert len({h.id for h in hits}) == len(hits)  # no id twice (an edited item is not in the main index any more)
    return {h.id: h.score for h in hits}


def test_updates_give_a_full_rebuilds_results(tmp_path: Path, versions) -> None:
    from lens.delta import DeltaIndex, update_index
    from lens.index import ExactIndex, recall_at_k_vs_exact

    base, new, query, old = versions
    assert update_index(base, cache_dir=tmp_path).action == "built"
    update = update_index(new, cache_dir=tmp_path, max_fraction=0.1)
    index = update.index
    assert update.action == "updated" and isinstance(index, DeltaIndex)
    assert (len(update.diff.added), len(update.diff.edited), len(update.diff.removed)) == (12, 5, 10)
    assert update.main_items == 400 and len(index) == 402 and update.delta_path and update.delta_path.is_file()
    assert "+12 added, 5 edited, -10 removed" in update.describe()

    # An added item that duplicates the query comes first, with cosine 1.
    hits = index.search(query, 3)
    assert hits[0].id == "n0" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    # Every result of a full listing: the new catalog's ids exactly (no removed one), each scored by its new vector.
    exact = ExactIndex.from_embeddings(new)
    index.search_k = 100_000  # Annoy returns all of its items only when it inspects enough nodes
    for q in (query, new.vectors[0], old["b10"]):
        listed = _all_hits(index, q)
        assert set(listed) == set(new.ids)
        truth = {h.id: h.score for h in exact.search(q, len(exact))}
        assert max(abs(listed[i] - truth[i]) for i in listed) < 1e-5
    # An edited item is found under its new vector only.
    edited = new.vectors[new.position("b10")]
    assert index.search(edited, 1)[0].id == "b10"
    assert _all_hits(index, old["b10"])["b10"] == pytest.approx(float(old["b10"] @ edited), abs=1e-5)
    index.search_k = 1_000
    # Against the exact index of the new catalog: the same top-1, recall@10 at Annoy's level (self excluded).
    queries = np.concatenate([new.vectors[:60], new.vectors[-17:]])
    rows = [*range(60), *range(len(new) - 17, len(new))]
    assert recall_at_k_vs_exact(index, exact, queries, 10, exclude_rows=rows) >= 0.98
    np.testing.assert_array_equal(index.search_rows(queries, 1), exact.search_rows(queries, 1))


def test_the_delta_is_reused_verified_and_chained_against_the_main_index(tmp_path: Path, versions) -> None:
    from lens.delta import DeltaIndex, update_index
    from lens.embed import save_embeddings
    from lens.index import build_index

    base, new, query, _ = versions
    save_embeddings(base, tmp_path)  # the diff reads the main index's vectors from here (else from Annoy)
    update_index(base, cache_dir=tmp_path)
    first = update_index(new, cache_dir=tmp_path, max_fraction=0.1)
    # Loaded again (by the update path and by build_index, which every search goes through), not recomputed.
    again = update_index(new, cache_dir=tmp_path, max_fraction=0.1)
    assert again.action == "delta" and again.diff == first.diff
    loaded = build_index(new, cache_dir=tmp_path)
    assert isinstance(loaded, DeltaIndex) and loaded.search(query, 1)[0].id == "n0"
    # A third version is diffed against the main index, not against the second version's delta.
    third = _set([*new.ids[:-1], "m0"], np.concatenate([new.vectors[:-1], query[None, :]]), "v3")
    chained = update_index(third, cache_dir=tmp_path, max_fraction=0.1)
    assert chained.action == "updated" and chained.main_items == 400
    assert chained.diff.added == [f"n{i}" for i in range(11)] + ["m0"]
    # Embeddings that are not the rows the delta was computed for (same key, one vector changed) do not get it.
    changed = new.vectors.copy()
    changed[0] = -changed[0]
    other = _set(new.ids, changed, "v2")
    assert not isinstance(build_index(other, cache_dir=tmp_path, n_trees=50), DeltaIndex)
    # A damaged delta is a miss: the update computes it again.
    assert first.delta_path is not None
    data = bytearray(first.delta_path.read_bytes())
    data[-1] ^= 0xFF
    first.delta_path.write_bytes(bytes(data))
    assert update_index(new, cache_dir=tmp_path, max_fraction=0.1).action == "updated"


def test_past_the_threshold_the_index_is_rebuilt_and_the_delta_emptied(tmp_path: Path, versions) -> None:
    from lens.delta import DeltaIndex, update_index
    from lens.index import AnnoyIndex, delta_path, index_path

    base, new, query, _ = versions
    update_index(base, cache_dir=tmp_path)
    own = index_path(tmp_path, new, 50)
    # 27 changes of 400 is past the default 5 %: kept as a delta when asked, and said so...
    kept = update_index(new, cache_dir=tmp_path, rebuild="never")
    assert kept.action == "updated" and kept.rebuild_needed and isinstance(kept.index, DeltaIndex)
    assert "rebuild it with" in kept.describe()
    # ...rebuilt at once otherwise: the catalog's own index, and no delta any more.
    rebuilt = update_index(new, cache_dir=tmp_path)
    assert rebuilt.action == "rebuilt" and isinstance(rebuilt.index, AnnoyIndex) and rebuilt.index.path == own
    assert not delta_path(own).exists() and rebuilt.index.search(query, 1)[0].id == "n0"
    assert update_index(new, cache_dir=tmp_path).action == "current"
    # In the background (the dashboard): the delta serves at once, the rebuild lands later and empties it.
    third = _set([*new.ids[:300], "m0"], np.concatenate([new.vectors[:300], query[None, :]]), "v3")
    background = update_index(third, cache_dir=tmp_path, rebuild="background")
    assert isinstance(background.index, DeltaIndex) and background.rebuilding is not None
    assert background.index.search(query, 1)[0].id in ("m0", "n0")
    background.rebuilding.join(timeout=60)
    assert update_index(third, cache_dir=tmp_path).action == "current"
    assert not delta_path(index_path(tmp_path, third, 50)).exists()
    # Another catalog whose ids happen to overlap (most of the main index changed): built in full, no delta.
    extra = np.random.default_rng(5).normal(size=(100, DIM))
    other = _set([*new.ids[:10], *(f"x{i}" for i in range(100))], np.concatenate([new.vectors[:10], extra]), "v4")
    unrelated = update_index(other, cache_dir=tmp_path, rebuild="never")
    assert unrelated.action == "rebuilt" and not delta_path(index_path(tmp_path, other, 50)).exists()


def test_a_killed_rebuild_leaves_the_old_index_and_delta_serving(
    tmp_path: Path, versions, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lens.index
    from lens.delta import DeltaIndex, rebuild_index, update_index
    from lens.index import build_index, index_path

    base, new, query, _ = versions
    update_index(base, cache_dir=tmp_path)
    update_index(new, cache_dir=tmp_path, rebuild="never")
    real = lens.index.atomic_write

    def killed(path: Path, write) -> None:  # noqa: ANN001
        def write_then_die(tmp: Path) -> None:
            write(tmp)  # the new index is written in full, then the process dies before publishing it
            raise Killed

        real(path, write_then_die)

    monkeypatch.setattr(lens.index, "atomic_write", killed)
    with pytest.raises(Killed):
        rebuild_index(new, cache_dir=tmp_path)
    monkeypatch.undo()
    own = index_path(tmp_path, new, 50)
    assert not own.exists() and not list(own.parent.glob(".*.tmp"))
    served = build_index(new, cache_dir=tmp_path)
    assert isinstance(served, DeltaIndex) and served.search(query, 1)[0].id == "n0"


def test_cli_index_update(capsys: pytest.CaptureFixture[str], tmp_path: Path, lens_cache_dir: Path) -> None:
    import pandas as pd

    from lens.cli import main

    folder = make_catalog(tmp_path / "cat", n_classes=3, per_class=20, size=40)
    table = pd.read_csv(folder / "catalog.csv", dtype=str, keep_default_na=False)
    table.head(58).to_csv(folder / "v1.csv", index=False)  # the catalog before 2 products were added
    table.head(40).to_csv(folder / "v3.csv", index=False)  # after 20 were removed: past the threshold

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["index", "--models", "tiny", "--trees", "4", "--quiet", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("--catalog", str(folder / "v1.csv"))
    assert code == 0, err
    code, out, err = run("--catalog", str(folder), "--update")
    assert code == 0, err
    assert "tiny: updated the index of 58 items: +2 added, 0 edited, -0 removed" in out
    assert "delta of 2 vectors and 0 tombstones" in out
    code, out, _ = run("--catalog", str(folder), "--update")
    assert "loaded the update of the index of 58 items" in out
    code, out, _ = run("--catalog", str(folder / "v3.csv"), "--update", "--no-rebuild")
    assert "-18 removed" in out and "past the threshold: rebuild it" in out
    code, out, _ = run("--catalog", str(folder / "v3.csv"), "--update")
    assert "rebuilt the index of 40 items in full" in out
    code, out, err = run("--catalog", str(folder), "--no-rebuild")
    assert code == 2 and "--no-rebuild goes with --update" in err


def test_the_build_updates_an_older_catalogs_index_and_rebuilds_past_the_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lens.build as build
    from lens.catalog import load_catalog
    from lens.index import cache_state

    monkeypatch.setenv("LENS_OFFLINE", "1")
    monkeypatch.setattr(build, "_precompute_map", lambda *args, **kwargs: None)  # UMAP is not what this tests
    cache = tmp_path / "cache"
    full = load_catalog(make_catalog(tmp_path / "cat", n_classes=3, per_class=20, size=40), cache_dir=cache)
    lines: list[str] = []

    def run(catalog) -> None:  # noqa: ANN001
        status = build.run_build(
            catalog, [build.BuildStep("tiny")], build.BuildOptions(cache_dir=cache), log=lines.append
        )
        assert [e["state"] for e in status["steps"]] == ["ready"], lines

    run(full.subset(list(range(58))))
    run(full)  # 2 products added: the index of the 58 serves with a delta, and the model is ready
    assert any("tiny: updated the index of 58 items: +2 added, 0 edited, -0 removed" in line for line in lines)
    assert cache_state(full, "tiny", cache).indexed and not any("rebuilt" in line for line in lines)
    lines.clear()
    run(full.subset(list(range(40))))  # 18 removed: past the threshold, rebuilt once the model is ready
    assert any("past the threshold" in line for line in lines)
    assert any("tiny: index rebuilt in full" in line for line in lines)
    assert len(list((cache / "indexes" / "tiny").glob("*.delta.npy"))) == 1  # the full catalog's only


def test_a_query_among_removed_items_still_gets_k_results(tmp_path: Path) -> None:
    """The 30 nearest items of the query are all removed: the main index is asked again, for more, until k are left."""
    from lens.delta import DeltaIndex, update_index
    from lens.index import ExactIndex

    rng = np.random.default_rng(3)
    query = _unit(rng.normal(size=(1, DIM)))[0]
    near = query + 0.05 * rng.normal(size=(30, DIM))
    base = _set([f"b{i}" for i in range(330)], np.concatenate([near, rng.normal(size=(300, DIM))]), "v1")
    new = _set(base.ids[30:], base.vectors[30:], "v2")
    update_index(base, cache_dir=tmp_path)
    index = update_index(new, cache_dir=tmp_path, max_fraction=0.2).index
    assert isinstance(index, DeltaIndex) and len(index.tombstones) == 30
    hits = index.search(query, 5)
    assert [h.id for h in hits] == [h.id for h in ExactIndex.from_embeddings(new).search(query, 5)]


def test_cli_search_serves_and_writes_a_delta(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lens_cache_dir: Path
) -> None:
    """`lens search` after a catalog change: a delta over the older index (no full build), and it sees the delta
    the build or `index --update` wrote."""
    import pandas as pd

    from lens.catalog import load_catalog
    from lens.cli import main
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder
    from lens.index import ExactIndex

    folder = make_catalog(tmp_path / "cat", n_classes=3, per_class=20, size=40)
    table = pd.read_csv(folder / "catalog.csv", dtype=str, keep_default_na=False)
    table.head(58).to_csv(folder / "v1.csv", index=False)
    indexes = lens_cache_dir / "indexes" / "tiny"

    def search(catalog: Path) -> str:
        code = main(["search", "--catalog", str(catalog), "--model", "tiny", "--trees", "4", "--id", "000159",
                     "--k", "3", "--quiet"])  # fmt: skip
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    main(["index", "--catalog", str(folder / "v1.csv"), "--models", "tiny", "--trees", "4", "--quiet"])
    capsys.readouterr()
    assert len(list(indexes.glob("*.ann"))) == 1
    out = search(folder)  # 2 products added since the index was built: one of them is the query
    assert len(list(indexes.glob("*.ann"))) == 1 and len(list(indexes.glob("*.delta.npy"))) == 1
    catalog = load_catalog(folder)
    embeddings = embed_catalog(catalog, create_encoder("tiny"))
    want = ExactIndex.from_embeddings(embeddings).search(embeddings.vectors[-1], 3, exclude=["000159"])
    assert all(h.id in out for h in want)  # the exact answer over the new catalog, added products included
    assert search(folder) == out  # the delta written by the first search is loaded, not computed again


def test_the_dashboard_serves_the_rebuilt_index_not_its_cached_delta(tmp_path: Path, lens_cache_dir: Path) -> None:
    """The dashboard caches its index (st.cache_resource): after a background rebuild replaced the main index +
    delta by the catalog's own index, the next query must get the new index, not the cached main + delta."""
    pytest.importorskip("streamlit")
    import pandas as pd

    from dashboard import resources
    from lens.delta import DeltaIndex, rebuild_index
    from lens.index import AnnoyIndex

    folder = make_catalog(tmp_path / "cat", n_classes=3, per_class=20, size=40)
    table = pd.read_csv(folder / "catalog.csv", dtype=str, keep_default_na=False)
    table.head(58).to_csv(folder / "v1.csv", index=False)
    cache, label = str(lens_cache_dir), "articleType"
    resources.clear_caches()
    try:
        for path in (str(folder / "v1.csv"), str(folder)):  # the index of the 58, then the 60 served with a delta
            fingerprint = resources.get_catalog(path, label).fingerprint()
            resources.build_model(path, label, "tiny", cache)
            resources.build_annoy(path, label, "tiny", fingerprint, cache)
        path = str(folder)
        before = resources.index_stamp(path, label, "tiny", cache)
        served = resources.get_index(path, label, "tiny", fingerprint, cache, "annoy", before)
        assert isinstance(served, DeltaIndex)
        embeddings = resources.get_embeddings(path, label, "tiny", fingerprint, cache)
        query = embeddings.vectors[-1]
        hits = resources.search(path, label, "tiny", fingerprint, cache, query, 3)
        rebuild_index(embeddings, cache_dir=cache)  # what the background build does past the threshold
        after = resources.index_stamp(path, label, "tiny", cache)
        assert after != before
        served = resources.get_index(path, label, "tiny", fingerprint, cache, "annoy", after)
        assert isinstance(served, AnnoyIndex) and len(served) == 60
        assert resources.search(path, label, "tiny", fingerprint, cache, query, 3)["id"].tolist() == hits["id"].tolist()
    finally:
        resources.clear_caches()
