"""lens.sharded: fan-out over Annoy shards equals the exact index on small sets, filtered queries open only their
shards, damaged shards are refused and rebuilt alone, and ``--shards`` / ``--by`` misuse says what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lens.catalog import Catalog, load_catalog
from lens.cli import main
from lens.embed import EmbeddingSet, embed_catalog
from lens.encoders import create_encoder
from lens.errors import CatalogError, IndexMismatchError, LensError
from lens.index import ExactIndex
from lens.search import search_vector
from lens.sharded import (
    MANIFEST,
    build_sharded,
    build_sharded_index,
    catalog_partition,
    hash_shard,
    load_sharded,
    partition_rows,
)

EXACT_SEARCH_K = 100_000  # more nodes than the small sets hold: every shard's Annoy search is then exhaustive


def _random_set(n: int = 300, dim: int = 8, seed: int = 0) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return EmbeddingSet(vectors, [f"item{i:04d}" for i in range(n)], "random", key=f"random-{n}-{seed}")


@pytest.fixture(scope="module")
def tiny_catalog(small_catalog_dir: Path) -> tuple[Catalog, EmbeddingSet]:
    catalog = load_catalog(small_catalog_dir)
    return catalog, embed_catalog(catalog, create_encoder("tiny"))


# ---------------------------------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("n_shards", [1, 4, 7])
def test_fan_out_equals_exact_top_k(tmp_path: Path, n_shards: int) -> None:
    embeddings = _random_set()
    exact = ExactIndex.from_embeddings(embeddings)
    sharded = build_sharded(
        embeddings, tmp_path, partition_rows(embeddings.ids, n_shards), n_trees=5, search_k=EXACT_SEARCH_K
    )
    assert len(sharded) == 300 and sharded.n_shards == n_shards
    queries = embeddings.vectors[:25]
    for q, vector in enumerate(queries):
        got = sharded.search(vector, 10, exclude=[embeddings.ids[q]])
        want = exact.search(vector, 10, exclude=[embeddings.ids[q]])
        assert [h.id for h in got] == [h.id for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)
        assert [h.rank for h in got] == list(range(1, 11))
    rows = list(range(25))
    np.testing.assert_array_equal(
        sharded.search_rows(queries, 10, exclude_rows=rows), exact.search_rows(queries, 10, exclude_rows=rows)
    )
    assert sharded.ids == embeddings.ids  # assembled from the shards' sidecars in row order


def test_hash_partition_is_stable_and_even() -> None:
    ids = [str(i) for i in range(4000)]
    shards = hash_shard(ids, 4)
    np.testing.assert_array_equal(shards, hash_shard(ids, 4))  # BLAKE2b, not Python's salted hash()
    assert hash_shard(["42"], 16)[0] == hash_shard(["42"], 16)[0]
    counts = np.bincount(shards, minlength=4)
    assert counts.sum() == 4000 and counts.min() > 900  # 1000 each, give or take


def test_column_partition_keeps_values_together_and_balances() -> None:
    # value counts a:5 b:3 c:2 d:2, placed largest first on the emptiest shard: a->0, b->1, c->1 (3 < 5), d->0 (tie
    # 5/5 goes to the lower shard)
    values = list("aaaaabbbccdd")
    part = partition_rows([str(i) for i in range(12)], 2, "letter", column_values=values)
    assert part.values == [["a", "d"], ["b", "c"]]
    assert part.shard_of.tolist() == [0] * 5 + [1] * 3 + [1] * 2 + [0] * 2
    with pytest.raises(LensError, match=r"4 distinct values \(a, b, c, d\): use --shards 4 or fewer"):
        partition_rows([str(i) for i in range(12)], 5, "letter", column_values=values)


# ---------------------------------------------------------------------------------------------------- filtered queries


def test_filtered_query_opens_only_its_shard(tiny_catalog: tuple[Catalog, EmbeddingSet], tmp_path: Path) -> None:
    catalog, embeddings = tiny_catalog
    index, built = build_sharded_index(
        catalog, embeddings, 4, by="articleType", cache_dir=tmp_path, n_trees=4, search_k=EXACT_SEARCH_K
    )
    assert built == [0, 1, 2, 3]
    assert all(len(s["values"]) == 1 for s in index.manifest["shards"])  # 4 classes, 4 shards: one class each
    label = "BlueSquare"
    shard = next(i for i, s in enumerate(index.manifest["shards"]) if s["values"] == [label])
    fresh = load_sharded(index.directory)
    assert fresh.opened == set()
    view = fresh.restrict([label])
    allowed = {i for i, v in zip(catalog.table["id"], catalog.table["articleType"]) if v == label}
    hits = search_vector(view, embeddings.vectors[0], 3, allowed=allowed)
    assert fresh.opened == {shard}  # the other three shards were never mapped
    assert len(hits) == 3 and {h.id for h in hits} <= allowed
    # the same answer as the exact index filtered afterwards
    exact = ExactIndex.from_embeddings(embeddings)
    assert [h.id for h in hits] == [h.id for h in search_vector(exact, embeddings.vectors[0], 3, allowed=allowed)]
    with pytest.raises(LensError, match="No shard of this index holds articleType = Nothing"):
        fresh.restrict(["Nothing"])


def test_hash_index_cannot_skip_shards(tmp_path: Path) -> None:
    embeddings = _random_set(40)
    index = build_sharded(embeddings, tmp_path, partition_rows(embeddings.ids, 2), n_trees=2)
    with pytest.raises(LensError, match="sharded by id hash"):
        index.restrict(["anything"])


# ---------------------------------------------------------------------------------------------------- damage and misuse


def test_damaged_shard_is_refused_then_rebuilt_alone(
    tiny_catalog: tuple[Catalog, EmbeddingSet], tmp_path: Path
) -> None:
    catalog, embeddings = tiny_catalog
    index, _ = build_sharded_index(catalog, embeddings, 3, cache_dir=tmp_path, n_trees=4, search_k=EXACT_SEARCH_K)
    want = [h.id for h in index.search(embeddings.vectors[5], 5)]
    index.unload()
    directory = index.directory
    damaged = directory / "shard-001.ann"
    kept = directory / "shard-000.ann"
    kept_mtime = kept.stat().st_mtime_ns
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, other SHA-256
    damaged.write_bytes(bytes(data))

    with pytest.raises(IndexMismatchError, match=r"shard-001\.ann is damaged: its SHA-256 differs.*Rebuild it"):
        load_sharded(directory).search(embeddings.vectors[5], 5)

    again, built = build_sharded_index(catalog, embeddings, 3, cache_dir=tmp_path, n_trees=4, search_k=EXACT_SEARCH_K)
    assert built == [1]
    assert kept.stat().st_mtime_ns == kept_mtime  # the good shards were kept as they were
    assert [h.id for h in again.search(embeddings.vectors[5], 5)] == want
    _, built = build_sharded_index(catalog, embeddings, 3, cache_dir=tmp_path, n_trees=4)
    assert built == []  # now everything verifies and loads


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    embeddings = _random_set(40)
    build_sharded(embeddings, tmp_path, partition_rows(embeddings.ids, 2), n_trees=2)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(IndexMismatchError, match=r"missing or malformed manifest\.json.*--shards N"):
        load_sharded(tmp_path)


def test_unknown_column_lists_the_columns(tiny_catalog: tuple[Catalog, EmbeddingSet]) -> None:
    catalog, embeddings = tiny_catalog
    with pytest.raises(CatalogError, match=r"Cannot shard by 'colour'.*--by hash or one of: articleType, gender"):
        catalog_partition(catalog, embeddings, 2, "colour")


def test_cli_index_and_search_with_shards(
    capsys: pytest.CaptureFixture[str], small_catalog_dir: Path, lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LENS_OFFLINE", "1")
    base = ["--catalog", str(small_catalog_dir), "--quiet"]
    assert main(["index", *base, "--models", "tiny", "--trees", "4", "--shards", "2", "--by", "articleType"]) == 0
    out = capsys.readouterr().out
    assert "tiny: 2 annoy shards by articleType of 24 items, 4 trees" in out and "built 2 of 2 shards" in out
    argv = ["search", *base, "--model", "tiny", "--id", "000100", "--k", "3", "--trees", "4", "--shards", "2",
            "--by", "articleType", "--filter", "articleType=RedCircle", "--csv", "-", "--no-predict"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all(",RedCircle," in line for line in lines[1:]) and "000100" not in lines[1]

    assert main(["index", *base, "--models", "tiny", "--shards", "2", "--by", "colour"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Cannot shard by 'colour'") and "articleType, gender, subCategory" in err
    assert main(["index", *base, "--models", "tiny", "--by", "articleType"]) == 2
    assert "give --shards N too" in capsys.readouterr().err


def test_benchmark_streaming_truth_equals_exact_search() -> None:
    """benchmarks.shards keeps the exact top 10 block by block (10M rows never in memory): the same rows as exact
    search over the whole matrix, self excluded."""
    from benchmarks.shards import exact_truth

    embeddings = _random_set(1000, 16, seed=3)
    query_rows = np.array([0, 17, 499, 999])
    queries = embeddings.vectors[query_rows]
    blocks = ((start, embeddings.vectors[start : start + 128]) for start in range(0, 1000, 128))
    got = exact_truth(blocks, queries, query_rows)
    want = ExactIndex.from_embeddings(embeddings).search_rows(queries, 10, exclude_rows=query_rows.tolist())
    np.testing.assert_array_equal(got, want)


def test_benchmark_ten_million_path_builds_every_shard_in_parallel_and_finds_the_exact_top_10(tmp_path: Path) -> None:
    """The 10M path of benchmarks.shards on 600 rows in 3 shards, 2 built at a time: every shard is built once, the
    raw vector files are gone, and with an exhaustive search_k the fan-out finds the exact top 10 over all rows."""
    from benchmarks.scale import clustered_blocks
    from benchmarks.shards import bench_ten_million
    from lens.sharded import load_sharded

    result = bench_ten_million(
        tmp_path, n=600, dim=16, n_shards=3, n_trees=4, search_ks=(EXACT_SEARCH_K, 30), n_queries=8, jobs=2
    )
    built = result["built"]
    assert [b["shard"] for b in built] == [0, 1, 2]
    assert sum(b["items"] for b in built) == 600
    assert all(b["cpu_s"] > 0 and b["index_mib"] > 0 for b in built)
    assert result["build_cpu_s"] == pytest.approx(sum(b["cpu_s"] for b in built))
    assert not list(tmp_path.glob("vectors-*.f32")) and not list(tmp_path.glob("rows-*.npy"))
    exhaustive, partial = result["fan_out"]
    assert exhaustive["shards searched"] == 3 and exhaustive["fan-out queries timed"] == 8
    assert exhaustive["recall@10 (all items)"] == 1.0
    assert [r["recall@10"] for r in result["per_shard"] if r["search_k"] == EXACT_SEARCH_K] == [1.0, 1.0, 1.0]
    # the shard-by-shard merge is the fan-out's answer: the same rows as ShardedIndex.search_rows at a search_k that
    # leaves neighbours out
    query_rows = np.array(result["query_rows"])
    _, block = next(clustered_blocks(600, 16))
    index = load_sharded(tmp_path)
    index.search_k = 30
    want = index.search_rows(block[query_rows], 10, exclude_rows=query_rows.tolist())
    np.testing.assert_array_equal(np.array(result["merged_rows"][30]), want)
    assert partial["recall@10 (all items)"] < 1.0


def test_benchmark_shard_builds_stop_at_the_time_box(tmp_path: Path) -> None:
    """A deadline already past: the first shard is built (nothing measured yet to judge by), the others are not
    started and keep their raw vectors."""
    from benchmarks.shards import build_shards_in_parallel

    embeddings = _random_set(90, 8, seed=5)
    rows = [np.arange(s, 90, 3) for s in range(3)]
    for s, mine in enumerate(rows):
        (tmp_path / f"vectors-{s:03d}.f32").write_bytes(embeddings.vectors[mine].tobytes())
    built = build_shards_in_parallel(tmp_path, rows, dim=8, n_trees=2, jobs=1, deadline=0.0)
    assert [b["shard"] for b in built] == [0]
    assert (tmp_path / "shard-000.ann").exists() and not (tmp_path / "vectors-000.f32").exists()
    assert (tmp_path / "vectors-001.f32").exists() and not (tmp_path / "shard-001.ann").exists()
