"""The predicted category of a query (lens.probe): known answers on separable vectors, the disk cache, bad input, and
the CLI's predicted column."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lens.errors import LensError
from lens.probe import category_probe, fit_probe


def _clusters(n_classes: int = 5, per_class: int = 40, dim: int = 16, noise: float = 0.15, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat([f"class{c}" for c in range(n_classes)], per_class)
    x = centres[np.repeat(np.arange(n_classes), per_class)] + noise * rng.normal(size=(n_classes * per_class, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels, centres


def test_separable_classes_are_predicted_with_confidence() -> None:
    x, labels, centres = _clusters()
    probe = fit_probe(x, labels, label_column="type", encoder="m")
    assert probe.classes == tuple(f"class{c}" for c in range(5))
    assert probe.accuracy == 1.0 and probe.n_holdout == 40
    for c, centre in enumerate(centres):
        guess = probe.predict(centre / np.linalg.norm(centre))
        assert guess.label == f"class{c}" and guess.confidence > 0.9
        assert len(guess.top) == 3 and guess.top[0] == (guess.label, guess.confidence)
    p = probe.probabilities(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)


def test_overlapping_classes_get_lower_confidence_and_accuracy() -> None:
    x, labels, _ = _clusters(noise=3.0)
    probe = fit_probe(x, labels)
    sharp = fit_probe(*_clusters()[:2])
    assert probe.accuracy < sharp.accuracy
    assert probe.probabilities(x).max(axis=1).mean() < sharp.probabilities(x).max(axis=1).mean()


def test_missing_labels_are_left_out_and_bad_input_is_refused() -> None:
    x, labels, _ = _clusters()
    labels = labels.astype(object)
    labels[:40] = ""  # class0 unlabelled
    assert "class0" not in fit_probe(x, list(labels)).classes
    with pytest.raises(LensError, match="at least 2 values"):
        fit_probe(x[:40], ["a"] * 40)
    with pytest.raises(LensError, match="vectors but"):
        fit_probe(x, labels[:10])
    with pytest.raises(LensError, match="takes 16-d vectors"):
        fit_probe(x, labels).predict(np.ones(8, dtype=np.float32))


def test_category_probe_is_cached_and_a_corrupt_cache_is_refitted(
    small_catalog_dir: Path, lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lens.probe as probe_module
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder

    catalog = load_catalog(small_catalog_dir)
    embeddings = embed_catalog(catalog, create_encoder("tiny"), cache_dir=lens_cache_dir)
    first = category_probe(catalog, embeddings, "articleType", cache_dir=lens_cache_dir)
    # The tiny CNN separates the generated classes: every product's own vector predicts its class.
    predicted = [first.predict(v).label for v in embeddings.vectors]
    assert np.mean(np.array(predicted) == catalog.labels("articleType", ids=embeddings.ids)) >= 0.9
    calls = []
    real_fit = probe_module.fit_probe
    monkeypatch.setattr(probe_module, "fit_probe", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    again = category_probe(catalog, embeddings, "articleType", cache_dir=lens_cache_dir)
    assert calls == [] and again.classes == first.classes
    np.testing.assert_array_equal(again.weights, first.weights)
    sidecar = next((lens_cache_dir / "probes" / "tiny").glob("*.json"))
    meta = json.loads(sidecar.read_text())
    meta["classes"] = 42  # a sidecar lens cannot read
    sidecar.write_text(json.dumps(meta))
    category_probe(catalog, embeddings, "articleType", cache_dir=lens_cache_dir)
    assert calls == [1]
    with pytest.raises(LensError, match="no such column"):
        category_probe(catalog, embeddings, "colour_of_the_sky", cache_dir=lens_cache_dir)


def test_cli_search_prints_and_exports_the_predicted_category(
    capsys: pytest.CaptureFixture[str], small_catalog_dir: Path, lens_cache_dir: Path
) -> None:
    from lens.cli import main

    query = small_catalog_dir / "images" / "000113.jpg"
    rows = pd.read_csv(small_catalog_dir / "catalog.csv", dtype=str).set_index("id")
    truth = rows.loc["000113", "articleType"]
    code = main(
        ["search", "--catalog", str(small_catalog_dir), "--model", "tiny", "--image", str(query), "--csv", "-",
         "--quiet"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out), dtype={"id": str})
    assert set(table["query_predicted_articleType"]) == {truth}
    assert table["query_predicted_confidence"].between(0, 1).all()
    assert f"predicted articleType of the query: {truth}" in err
    code = main(
        ["search", "--catalog", str(small_catalog_dir), "--model", "tiny", "--image", str(query), "--csv", "-",
         "--quiet", "--no-predict"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0 and "query_predicted" not in out and "predicted" not in err
