"""Retrieval-quality levers (issue 12): the proxy losses against pytorch-metric-learning, a tiny problem the proxy
head must separate, the ``concat`` composite encoder, and alpha query expansion with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------ proxy losses


@pytest.mark.parametrize(
    "name", ["normalized-softmax", "proxy-anchor", "arcface", "cosface", "multi-similarity", "softtriple"]
)
def test_metric_loss_equals_pytorch_metric_learning(name: str) -> None:
    """Same inputs, same proxies: our wrapper gives pml's own value (and the pair loss uses pml's miner)."""
    from pytorch_metric_learning import losses, miners

    from lens.train.losses import METRIC_LOSSES, MetricLoss

    torch.manual_seed(3)
    emb = F.normalize(torch.randn(24, 16), dim=-1)
    labels = torch.arange(4).repeat_interleave(6)
    ours = MetricLoss(name, num_classes=4, dim=16)
    cls_name, params = METRIC_LOSSES[name]
    if name == "multi-similarity":
        oracle = getattr(losses, cls_name)(**params)
        expected = oracle(emb, labels, miners.MultiSimilarityMiner(epsilon=0.1)(emb, labels))
    else:
        oracle = getattr(losses, cls_name)(num_classes=4, embedding_size=16, **params)
        oracle.load_state_dict(ours.loss.state_dict())  # the same proxies
        expected = oracle(emb, labels)
    value = ours(emb, labels)
    assert torch.isfinite(value) and float(value.detach()) > 0
    torch.testing.assert_close(value, expected)


def test_metric_loss_parameters_override_the_defaults_and_unknown_names_fail() -> None:
    from lens.train.losses import MetricLoss

    assert MetricLoss("normalized-softmax", 3, 4, temperature=0.5).loss.temperature == 0.5
    assert MetricLoss("normalized-softmax", 3, 4, temperature=None).loss.temperature == 0.05
    assert MetricLoss("cosface", 3, 4, margin=0.2, scale=None).loss.margin == 0.2
    assert len(list(MetricLoss("proxy-anchor", 3, 4).parameters())) == 1  # the proxies
    assert not list(MetricLoss("multi-similarity", 3, 4).parameters())
    with pytest.raises(ValueError, match="unknown metric loss 'softmax'"):
        MetricLoss("softmax", 3, 4)


@pytest.mark.parametrize("name", ["normalized-softmax", "proxy-anchor"])
def test_proxy_head_separates_a_tiny_problem(name: str) -> None:
    """Two classes separable along one axis only, buried in large noise on the seven others: the raw cosine
    neighbours are mostly wrong, and a head trained with the loss must put every point's nearest neighbour in its
    own class."""
    from lens.train.losses import MetricLoss

    g = torch.Generator().manual_seed(0)
    n, dim = 40, 8
    labels = torch.arange(2).repeat_interleave(n // 2)
    x = 3.0 * torch.randn(n, dim, generator=g)  # noise dominates the cosine
    x[:, 1] = torch.where(labels == 0, -1.0, 1.0) + 0.2 * torch.randn(n, generator=g)  # the class axis

    def nn_accuracy(v: torch.Tensor) -> float:
        sims = F.normalize(v, dim=-1) @ F.normalize(v, dim=-1).t()
        sims.fill_diagonal_(-2)
        return float((labels[sims.argmax(1)] == labels).float().mean())

    before = nn_accuracy(x)
    torch.manual_seed(0)
    head, loss_fn = torch.nn.Linear(dim, 4), MetricLoss(name, num_classes=2, dim=4)
    groups = [{"params": head.parameters(), "lr": 5e-2}]
    if list(loss_fn.parameters()):
        groups.append({"params": loss_fn.parameters(), "lr": 1e-1})
    opt = torch.optim.AdamW(groups)
    for _ in range(100):
        loss = loss_fn(F.normalize(head(x), dim=-1), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = nn_accuracy(head(x))
    assert before < 0.8
    assert after == 1.0, (name, before, after)


# ------------------------------------------------------------------------------------------------ concat encoder


def _two_part_concat():
    from lens.encoders import create_encoder
    from lens.encoders.composite import ConcatEncoder, _concat_spec

    tiny = create_encoder("tiny")
    other = create_encoder("tiny")
    with torch.no_grad():  # a second, different part: the same CNN with its last conv scaled per channel
        conv = [m for m in other.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        conv.weight.mul_(torch.linspace(0.1, 2.0, conv.weight.shape[0])[:, None, None, None])
    other.weights_id = "tiny-scaled"  # its own cache key
    spec = _concat_spec("concat-test", ("tiny", "tiny*"), (64, 64), "test")
    return ConcatEncoder(spec, [tiny, other]), tiny, other


def test_concat_encoder_is_the_normalised_concatenation_of_its_parts(small_catalog_dir: Path) -> None:
    from lens.catalog import load_catalog
    from lens.images import open_image

    concat, tiny, other = _two_part_concat()
    catalog = load_catalog(small_catalog_dir)
    images = [open_image(p) for p in catalog.image_paths()[:5]]
    got = concat.embed_images(images)
    a, b = tiny.embed_images(images), other.embed_images(images)
    expected = np.concatenate([a, b], axis=1) / np.sqrt(2.0)  # two unit halves: each weighs 1/sqrt(2)
    assert got.shape == (5, 128) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(a, b)  # the two parts really differ
    ident = concat.identity()
    assert [p["weights"] for p in ident["parts"]] == [tiny.weights_id, other.weights_id]


def test_concat_embeds_a_catalog_from_its_parts_vectors(small_catalog_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import lens.embed as embed_module
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.images import open_image

    concat, tiny, other = _two_part_concat()
    catalog = load_catalog(small_catalog_dir)
    parts = [embed_catalog(catalog, part, cache_dir=tmp_path) for part in (tiny, other)]
    assert not any(p.from_cache for p in parts)

    def no_images(catalog, enc, *args):  # noqa: ANN001, ANN002, ANN202
        raise AssertionError(f"{enc.name} decoded images although its parts' vectors are cached")

    monkeypatch.setattr(embed_module, "embed_files", no_images)
    joined = embed_catalog(catalog, concat, cache_dir=tmp_path)
    monkeypatch.undo()
    assert joined.ids == catalog.ids and joined.vectors.shape == (len(catalog), 128)
    expected = np.concatenate([p.vectors for p in parts], axis=1) / np.sqrt(2.0)
    np.testing.assert_allclose(joined.vectors, expected, atol=1e-6)
    # the image path agrees up to the pixel pipeline (catalog files are decoded with draft + box resize)
    images = [open_image(p) for p in catalog.image_paths()[:4]]
    np.testing.assert_allclose(joined.vectors[:4], concat.embed_images(images), atol=2e-2)
    assert embed_catalog(catalog, concat, cache_dir=tmp_path).from_cache


def test_concat_is_registered_with_its_three_backbones() -> None:
    from lens.encoders import get_spec
    from lens.encoders.composite import CONCAT_PARTS
    from lens.train import default_config

    assert CONCAT_PARTS == ("mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2")
    assert get_spec("concat").dim == 3 * 1280
    assert default_config("proxy-concat").backbone == "concat"
    assert default_config("proxy").backbone == "efficientnet-lite2"  # the default (docs/training.md)
    assert default_config("proxy-efficientnet-lite2", loss="arcface").model_name() == "proxy-efficientnet-lite2"


# ------------------------------------------------------------------------------------------------ query expansion


def test_alpha_query_expansion_known_answer() -> None:
    from lens.rerank import expand_queries

    gallery = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    query = np.array([[0.8, 0.6, 0.0]], dtype=np.float32)  # cosines 0.8, 0.96, 0
    # k=1, alpha=2: q + 0.96^2 * g1
    expected = query[0] + 0.96**2 * gallery[1]
    got = expand_queries(query, gallery, k=1, alpha=2.0)
    np.testing.assert_allclose(got[0], expected / np.linalg.norm(expected), atol=1e-6)
    # k=2, alpha=0: plain average query expansion over the top 2 (weights 1)
    expected = query[0] + gallery[1] + gallery[0]
    np.testing.assert_allclose(expand_queries(query, gallery, k=2, alpha=0.0)[0], expected / np.linalg.norm(expected))
    # excluded rows are not used as neighbours; k=0 is the identity; negative similarities add nothing
    np.testing.assert_allclose(
        expand_queries(query, gallery, k=1, alpha=1.0, exclude=np.array([1]))[0],
        (query[0] + 0.8 * gallery[0]) / np.linalg.norm(query[0] + 0.8 * gallery[0]),
        atol=1e-6,
    )
    np.testing.assert_array_equal(expand_queries(query, gallery, k=0), query)
    far = np.array([[-1.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(expand_queries(query, far, k=1, alpha=1.0), query, atol=1e-7)


def test_query_expansion_misuse_says_what_to_pass() -> None:
    from lens.errors import LensError
    from lens.rerank import expand_queries

    v = np.eye(3, dtype=np.float32)
    with pytest.raises(LensError, match="k >= 0"):
        expand_queries(v, v, k=-1)
    with pytest.raises(LensError, match="alpha >= 0"):
        expand_queries(v, v, k=1, alpha=-2.0)


def test_evaluate_with_expansion_oracles(small_catalog_dir: Path) -> None:
    """With a huge alpha only exact duplicates would count: the expanded evaluation equals the plain one. With
    expansion on, a query's own vector never helps it (it is excluded from its neighbours)."""
    from lens.catalog import load_catalog
    from lens.embed import EmbeddingSet
    from lens.evaluate import evaluate_embeddings

    catalog = load_catalog(small_catalog_dir)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(catalog), 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    emb = EmbeddingSet(vectors=vectors, ids=catalog.ids, encoder="random")
    plain = evaluate_embeddings(emb, catalog, ks=(1, 5))
    same = evaluate_embeddings(emb, catalog, ks=(1, 5), expand=2, alpha=1e6)
    for key in ("precision@1", "precision@5", "map@r"):
        assert same.summary[key] == pytest.approx(plain.summary[key]), key
    expanded = evaluate_embeddings(emb, catalog, ks=(1, 5), expand=3, alpha=1.0, query_ids=catalog.ids[:6])
    assert expanded.summary["n_queries"] == 6 and 0 <= expanded.summary["precision@1"] < 1.0


# ------------------------------------------------------------------------------------------ k-reciprocal re-ranking


def _two_clusters() -> tuple[np.ndarray, np.ndarray]:
    """A query from cluster A (8 photos around e0), 7 more of A, 8 of B (around e1), and X between A and B: X is
    nearer the query by cosine than one A photo, but X's own neighbours are B's."""
    from lens.vectors import l2_normalize

    e = np.eye(8, dtype=np.float32)
    rng = np.random.default_rng(1)
    a = l2_normalize(e[0] + 0.15 * rng.standard_normal((8, 8)).astype(np.float32))
    b = l2_normalize(e[1] + 0.15 * rng.standard_normal((8, 8)).astype(np.float32))
    x = l2_normalize((e[0] + e[1])[None, :])
    return a[:1], np.vstack([a[1:], b, x])  # gallery rows 0-6 = A, 7-14 = B, 15 = X


def test_kreciprocal_rerank_known_answer() -> None:
    from lens.rerank import kreciprocal_rerank
    from lens.vectors import rank_by_cosine

    query, gallery = _two_clusters()
    by_cosine, _ = rank_by_cosine(query, gallery, len(gallery))
    assert list(by_cosine[0]).index(15) == 6  # X is 7th by cosine, ahead of the A photo ranked 8th
    reranked = kreciprocal_rerank(query, gallery, len(gallery), k1=4, k2=2, lam=0.3, candidates=len(gallery))
    assert set(reranked[0, :7]) == set(range(7))  # k-reciprocal: the whole cluster A first, X behind it
    assert sorted(reranked[0]) == list(range(len(gallery)))  # a permutation
    # lambda = 1 is the original distance: the cosine order; rows beyond the candidates keep it too
    same = kreciprocal_rerank(query, gallery, len(gallery), k1=4, k2=2, lam=1.0, candidates=len(gallery))
    np.testing.assert_array_equal(same, by_cosine)
    tail = kreciprocal_rerank(query, gallery, len(gallery), k1=4, k2=2, lam=0.3, candidates=8)
    np.testing.assert_array_equal(tail[0, 8:], by_cosine[0, 8:])
    # the excluded row never comes back
    assert 3 not in kreciprocal_rerank(query, gallery, 10, k1=4, k2=2, candidates=12, exclude=np.array([3]))[0]


def test_kreciprocal_misuse_says_what_to_pass() -> None:
    from lens.errors import LensError
    from lens.rerank import kreciprocal_rerank

    v = np.eye(3, dtype=np.float32)
    with pytest.raises(LensError, match="k2 <= k1 <= candidates"):
        kreciprocal_rerank(v, v, 2, k1=2, k2=3, candidates=3)
    with pytest.raises(LensError, match="lambda"):
        kreciprocal_rerank(v, v, 2, k1=2, k2=1, lam=2.0, candidates=3)


def test_evaluate_with_kreciprocal_runs_on_the_catalog(small_catalog_dir: Path) -> None:
    from lens.catalog import load_catalog
    from lens.embed import EmbeddingSet
    from lens.evaluate import evaluate_embeddings

    catalog = load_catalog(small_catalog_dir)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(catalog), 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    emb = EmbeddingSet(vectors=vectors, ids=catalog.ids, encoder="random")
    report = evaluate_embeddings(emb, catalog, ks=(1, 5), kreciprocal=True, query_ids=catalog.ids[:6])
    assert report.summary["n_queries"] == 6 and 0 <= report.summary["precision@5"] <= 1
