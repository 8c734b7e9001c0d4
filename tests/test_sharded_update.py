"""Updates of a sharded index (lens.sharded.update_sharded_index): each shard of the older catalog's sharded index
keeps its own delta and tombstones (lens.delta), the fan-out gives a full sharded rebuild's results (exact here:
every Annoy search is exhaustive), a shard past the threshold is rebuilt alone, and a kill leaves shards serving."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest

from fixtures import make_catalog
from lens.catalog import Catalog
from lens.embed import EmbeddingSet
from lens.index import ExactIndex

DIM = 16
EXHAUSTIVE = 100_000  # more nodes than these sets hold: Annoy's answer is exact, so results compare exactly
NO_CATALOG = cast(Catalog, None)  # sharding by hash reads no column


class Killed(BaseException):
    """What a kill -9 looks like to the code under it: nothing after this point runs."""


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def versions() -> tuple[EmbeddingSet, EmbeddingSet, np.ndarray]:
    """400 items, and the next version: b0-b9 removed, b10-b14 edited (new vectors), n0-n11 added (n0 is the query's
    exact duplicate); and the query."""
    rng = np.random.default_rng(1)
    base = EmbeddingSet(_unit(rng.normal(size=(400, DIM))), [f"b{i}" for i in range(400)], "synthetic", key="v1")
    query = _unit(rng.normal(size=(1, DIM)))[0]
    vectors = dict(zip(base.ids, base.vectors))
    for i in range(10, 15):
        vectors[f"b{i}"] = _unit(rng.normal(size=(1, DIM)))[0]
    for i in range(10):
        del vectors[f"b{i}"]
    added = _unit(rng.normal(size=(12, DIM)))
    added[0] = query
    vectors.update({f"n{i}": v for i, v in enumerate(added)})
    new = EmbeddingSet(np.stack(list(vectors.values())), list(vectors), "synthetic", key="v2")
    return base, new, query


def _update(embeddings: EmbeddingSet, cache: Path, **kwargs):  # noqa: ANN003, ANN202
    from lens.sharded import update_sharded_index

    kwargs.setdefault("search_k", EXHAUSTIVE)
    kwargs.setdefault("max_fraction", 0.15)  # 27 changes over 4 shards of ~100: about 7 % of each shard
    return update_sharded_index(NO_CATALOG, embeddings, 4, cache_dir=cache, n_trees=5, **kwargs)


def _assert_exact(index, embeddings: EmbeddingSet, queries: np.ndarray) -> None:  # noqa: ANN001
    exact = ExactIndex.from_embeddings(embeddings)
    for vector in queries:
        got, want = index.search(vector, 10), exact.search(vector, 10)
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)


def test_each_shard_gets_its_delta_and_the_fan_out_equals_a_full_rebuild(tmp_path: Path, versions) -> None:
    from lens.delta import DeltaIndex
    from lens.sharded import build_sharded_index, hash_shard

    base, new, query = versions
    first = _update(base, tmp_path)
    assert first.action == "built" and first.built == [0, 1, 2, 3]
    done = _update(new, tmp_path)
    assert done.action == "updated" and done.built == [] and sorted(done.deltas) == [0, 1, 2, 3]
    assert not list(done.index.directory.glob("shard-*.ann"))  # no shard was built: deltas over the older shards
    # Every change went to the shard its id hashes to, as a delta row or a tombstone of that shard.
    for shard, diff in done.deltas.items():
        for item_id in diff.added + diff.edited + diff.removed:
            assert hash_shard([item_id], 4)[0] == shard
    assert sum(len(d.added) for d in done.deltas.values()) == 12
    assert sorted(i for d in done.deltas.values() for i in d.edited) == sorted(f"b{i}" for i in range(10, 15))
    assert sum(len(d.removed) for d in done.deltas.values()) == 10
    index = done.index
    assert len(index) == len(new) and sorted(index.ids) == sorted(new.ids)
    assert all(isinstance(index.shard(s), DeltaIndex) for s in range(4))
    top = index.search(query, 1)[0]
    assert top.id == "n0" and top.score == pytest.approx(1.0, abs=1e-5)
    listing = index.search(query, len(new))
    assert len({h.id for h in listing}) == len(new) and not {f"b{i}" for i in range(10)} & {h.id for h in listing}
    _assert_exact(index, new, np.concatenate([[query], new.vectors[::17]]))
    rebuilt, _ = build_sharded_index(NO_CATALOG, new, 4, cache_dir=tmp_path / "full", n_trees=5, search_k=EXHAUSTIVE)
    for vector in new.vectors[::23]:
        assert [h.id for h in index.search(vector, 10)] == [h.id for h in rebuilt.search(vector, 10)]
    rows = list(range(0, len(new), 29))
    np.testing.assert_array_equal(
        index.search_rows(new.vectors[rows], 10, exclude_rows=rows),
        rebuilt.search_rows(new.vectors[rows], 10, exclude_rows=rows),
    )
    # Loaded again (verified, not recomputed); `lens search --shards` (build_sharded_index) serves it, rebuilding at
    # once the shards past its default threshold (5 %: here the shards with more than 5 changes)
    again = _update(new, tmp_path)
    assert again.action == "delta" and again.built == []
    served, built = build_sharded_index(NO_CATALOG, new, 4, cache_dir=tmp_path, n_trees=5, search_k=EXHAUSTIVE)
    past = [s for s, d in done.deltas.items() if d.changed > 0.05 * len(index.shard(s).main)]  # type: ignore[union-attr]
    assert built == past and [served.is_delta(s) for s in range(4)] == [s not in past for s in range(4)]
    _assert_exact(served, new, np.concatenate([[query], new.vectors[::17]]))


def test_a_third_version_is_diffed_against_the_older_shards(tmp_path: Path, versions) -> None:
    base, new, query = versions
    _update(base, tmp_path)
    _update(new, tmp_path)
    third = EmbeddingSet(new.vectors[:-1], new.ids[:-1], "synthetic", key="v3")  # n11 removed too
    done = _update(third, tmp_path)
    assert done.action == "updated"
    assert sum(len(d.added) for d in done.deltas.values()) == 11  # against v1's shards: n0-n10 are still added
    assert sum(len(d.removed) for d in done.deltas.values()) == 10
    _assert_exact(done.index, third, third.vectors[::19])


def test_a_shard_past_the_threshold_is_rebuilt_alone(tmp_path: Path, versions) -> None:
    from lens.sharded import hash_shard

    base, _, _ = versions
    _update(base, tmp_path)
    in_zero = [i for i, s in zip(base.ids, hash_shard(base.ids, 4)) if s == 0]
    gone = set(in_zero[:30])  # 30 of shard 0's ~100 removed: past 15 %; the other shards unchanged
    keep = [r for r, i in enumerate(base.ids) if i not in gone]
    v2 = EmbeddingSet(base.vectors[keep], [base.ids[r] for r in keep], "synthetic", key="v2")
    waiting = _update(v2, tmp_path, rebuild="never")
    assert waiting.pending == [0] and waiting.built == [] and 0 in waiting.deltas
    _assert_exact(waiting.index, v2, v2.vectors[::13])  # past the threshold, the delta still gives the answer
    directory = waiting.index.directory
    done = _update(v2, tmp_path)
    assert done.built == [0] and done.pending == [] and sorted(done.deltas) == [1, 2, 3]
    assert not done.index.is_delta(0) and done.index.is_delta(1)
    assert (directory / "shard-000.ann").exists() and not (directory / "shard-000.delta.npy").exists()
    assert not (directory / "shard-001.ann").exists() and (directory / "shard-001.delta.npy").exists()
    _assert_exact(done.index, v2, v2.vectors[::13])


def test_a_kill_mid_update_or_mid_rebuild_leaves_shards_serving(
    tmp_path: Path, versions, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lens.sharded as sharded

    base, new, query = versions
    _update(base, tmp_path)
    # Killed while writing the deltas: the new folder has no manifest, the older index serves its catalog as before.
    real_write_delta = sharded.write_delta
    calls = []

    def dies_on_the_third(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 3:
            raise Killed
        return real_write_delta(*args, **kwargs)

    monkeypatch.setattr(sharded, "write_delta", dies_on_the_third)
    with pytest.raises(Killed):
        _update(new, tmp_path)
    monkeypatch.undo()
    new_dir = sharded.sharded_path(tmp_path, new, 5, 4, "hash")
    assert not (new_dir / sharded.MANIFEST).exists()
    old = sharded.load_sharded(sharded.sharded_path(tmp_path, base, 5, 4, "hash"), embeddings=base)
    old.search_k = EXHAUSTIVE
    _assert_exact(old, base, base.vectors[::37])
    # Killed while a shard past the threshold is rebuilt (its file written, not yet published): its delta serves.
    _update(new, tmp_path, rebuild="never", max_fraction=0.0)
    real_atomic_write = sharded.atomic_write

    def write_then_die(path: Path, write) -> None:  # noqa: ANN001
        def inner(tmp: Path) -> None:
            write(tmp)
            raise Killed

        real_atomic_write(path, inner)

    monkeypatch.setattr(sharded, "atomic_write", write_then_die)
    with pytest.raises(Killed):
        _update(new, tmp_path, max_fraction=0.0)
    monkeypatch.undo()
    assert not list(new_dir.glob("shard-*.ann")) and not list(new_dir.glob(".*.tmp"))
    served = sharded.load_sharded(new_dir, embeddings=new)
    served.search_k = EXHAUSTIVE
    assert all(served.is_delta(s) for s in range(4))
    assert served.search(query, 1)[0].id == "n0"
    _assert_exact(served, new, new.vectors[::31])


def test_column_placement_is_kept_and_a_new_value_goes_to_the_emptiest_shard(tmp_path: Path) -> None:
    from lens.sharded import manifest_partition

    manifest = {"n_shards": 2, "by": "colour", "shards": [{"values": ["red"]}, {"values": ["blue", "green"]}]}

    class Table:  # the two columns manifest_partition reads
        def __init__(self) -> None:
            import pandas as pd

            self.frame = pd.DataFrame(
                {"id": ["a", "b", "c", "d", "e", "f"], "colour": ["red", "red", "blue", "pink", "pink", "red"]}
            )

    catalog = cast(Catalog, type("C", (), {"table": Table().frame})())
    vectors = _unit(np.ones((5, DIM)))
    embeddings = EmbeddingSet(vectors, ["a", "b", "c", "d", "e"], "synthetic", key="k")
    partition = manifest_partition(manifest, catalog, embeddings)
    # red (a, b) stays on 0, blue (c) on 1; pink is new: shard 1 holds 1 row, shard 0 holds 2, so pink goes to 1.
    assert partition.shard_of.tolist() == [0, 0, 1, 1, 1]
    assert partition.values == [["red"], ["blue", "green", "pink"]]


def test_cli_index_update_and_search_with_shards_by_column(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, lens_cache_dir: Path
) -> None:
    import pandas as pd

    from lens.catalog import load_catalog
    from lens.cli import main
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder

    folder = make_catalog(tmp_path / "cat", n_classes=3, per_class=20, size=40)
    table = pd.read_csv(folder / "catalog.csv", dtype=str, keep_default_na=False)
    table.head(59).to_csv(folder / "v1.csv", index=False)  # then 1 added: 1 of 39 in its shard

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--models" if argv[0] == "index" else "--model", "tiny", "--trees", "4", "--quiet"])
        out, err = capsys.readouterr()
        return code, out, err

    shards = ("--shards", "2", "--by", "articleType")
    code, out, err = run("index", "--catalog", str(folder / "v1.csv"), *shards)
    assert code == 0, err
    code, out, err = run("index", "--catalog", str(folder), *shards, "--update", "--search-k", "100000")
    assert code == 0, err
    assert (
        "2 annoy shards by articleType of 60 items: updated" in out
        and "2 shard(s) served by an older shard + a delta (+1 added, 0 edited, -0 removed, in 1 of them)" in out
    )
    code, out, err = run("search", "--catalog", str(folder), *shards, "--id", "000159", "--k", "5")
    assert code == 0, err
    catalog = load_catalog(folder)
    embeddings = embed_catalog(catalog, create_encoder("tiny"))
    want = ExactIndex.from_embeddings(embeddings).search(embeddings.vectors[-1], 5, exclude=["000159"])
    assert all(h.id in out for h in want)
