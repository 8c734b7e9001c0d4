"""The dashboard's cold start without torch (issue 10): the encoder registry imports without torch, and a model's
identity is read from the record its last build left, so a catalog-product search loads no model at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lens.encoders import _registry, create_encoder, encoder_identity, remember_identity
from lens.encoders.base import EncoderSpec, Preprocess, TorchImageEncoder
from lens.encoders.tiny import build_tiny_model
from lens.encoders.weights import WeightsFile, file_sha256
from lens.store import cache_key

REPO = Path(__file__).resolve().parents[1]

#: Run in a fresh interpreter: the dashboard's entry modules, then the app and its Search page through AppTest with
#: a catalog product as the query; prints whether torch was imported and how many results came back.
SEARCH_SCRIPT = """
import json, sys
import dashboard.components, dashboard.query, dashboard.resources  # what app.py and the pages import
after_import = "torch" in sys.modules
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=120)
at.run()
at.switch_page("pages/search.py").run()
at.text_input(key="search_product_query").set_value(sys.argv[2]).run()
errors = [str(e.value) for e in [*at.exception, *at.error]]
results = at.session_state["search_results"] if "search_results" in at.session_state else None
print(json.dumps({"after_import": after_import, "after_search": "torch" in sys.modules, "errors": errors,
                  "n": 0 if results is None else len(results), "ids": [] if results is None else
                  [str(i) for i in results["id"]]}))
"""


def test_catalog_product_search_imports_no_torch(small_catalog_dir: Path, lens_cache_dir: Path) -> None:
    """Known answer: with the embeddings cached (and the identity recorded by that build), importing the dashboard
    and searching by a catalog product leaves ``torch`` out of ``sys.modules``, and the results are the product's
    exact neighbours."""
    from lens.catalog import load_catalog
    from lens.embed import embed_catalog
    from lens.index import ExactIndex

    catalog = load_catalog(small_catalog_dir)
    embeddings = embed_catalog(catalog, create_encoder("tiny"), cache_dir=lens_cache_dir)
    product = embeddings.ids[5]
    index = ExactIndex.from_embeddings(embeddings)
    expected = [hit.id for hit in index.search(embeddings.vectors[5], 10, exclude=[product])]
    env = {
        **os.environ,
        "LENS_CACHE_DIR": str(lens_cache_dir),
        "LENS_CATALOG": str(small_catalog_dir),
        "LENS_DEFAULT_MODEL": "tiny",
        "LENS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    env.pop("LENS_LABEL", None)
    done = subprocess.run(
        [sys.executable, "-c", SEARCH_SCRIPT, str(REPO / "app.py"), product],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["errors"] == []
    assert report["ids"] == expected  # the product's exact neighbours, the product itself left out
    assert report["after_import"] is False, "importing the dashboard imported torch"
    assert report["after_search"] is False, "a catalog-product search imported torch"


# ------------------------------------------------------------------------------------------- encoder_identity


@pytest.fixture()
def file_encoders(tmp_path: Path) -> Iterator[Path]:
    """``tiny-file`` (the tiny CNN, its identity the sha256 of a weights file in the returned folder) and
    ``tiny-pair`` (builds ``tiny-file`` inside its own build, as a trained head builds its base)."""
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    (weights_dir / "tiny-file.bin").write_bytes(b"first weights")
    spec = EncoderSpec(
        name="tiny-file", family="test", dim=64, preprocess=Preprocess(input_size=32, crop_pct=1.0), precision="fp32"
    )

    def build_file(spec: EncoderSpec, weights_path: Path | None, *, precision: object = None) -> TorchImageEncoder:
        assert weights_path is not None
        return TorchImageEncoder(spec, build_tiny_model(), file_sha256(weights_path), precision="fp32")

    def build_pair(spec: EncoderSpec, weights_path: Path | None, *, precision: object = None) -> TorchImageEncoder:
        inner = create_encoder("tiny-file", weights_dir=weights_dir)
        return TorchImageEncoder(spec, build_tiny_model(), f"pair+{inner.weights_id}", precision="fp32")

    _registry.register_encoder(spec, weights=WeightsFile(filename="tiny-file.bin"))(build_file)
    pair = EncoderSpec(name="tiny-pair", family="test", dim=64, preprocess=spec.preprocess, precision="fp32")
    _registry.register_encoder(pair)(build_pair)
    try:
        yield weights_dir
    finally:
        _registry.unregister_encoder("tiny-file")
        _registry.unregister_encoder("tiny-pair")


def test_encoder_identity_is_recorded_with_embeddings_and_dropped_when_weights_change(
    file_encoders: Path, lens_cache_dir: Path
) -> None:
    weights_dir = file_encoders
    assert encoder_identity("tiny-file", weights_dir=weights_dir) is None  # never built: no record
    built = create_encoder("tiny-file", weights_dir=weights_dir)
    assert encoder_identity("tiny-file", weights_dir=weights_dir) is None  # built, but nothing cached with it yet
    remember_identity(built)  # what embed_catalog does beside the embeddings it caches
    recorded = encoder_identity("tiny-file", weights_dir=weights_dir)
    assert recorded is not None and cache_key(recorded) == cache_key(built.identity())
    assert recorded["weights"] == file_sha256(weights_dir / "tiny-file.bin")

    # a build with other options (here an explicit precision) is not the default build: it records nothing
    remember_identity(create_encoder("tiny-file", weights_dir=weights_dir, precision="bf16"))
    assert cache_key(encoder_identity("tiny-file", weights_dir=weights_dir) or {}) == cache_key(built.identity())

    (weights_dir / "tiny-file.bin").write_bytes(b"other weights, longer")
    assert encoder_identity("tiny-file", weights_dir=weights_dir) is None  # the file changed: build again
    rebuilt = create_encoder("tiny-file", weights_dir=weights_dir)
    remember_identity(rebuilt)
    assert rebuilt.weights_id != built.weights_id
    assert cache_key(encoder_identity("tiny-file", weights_dir=weights_dir) or {}) == cache_key(rebuilt.identity())


def test_encoder_identity_follows_the_encoders_built_inside(file_encoders: Path, lens_cache_dir: Path) -> None:
    weights_dir = file_encoders
    pair = create_encoder("tiny-pair", weights_dir=weights_dir)
    remember_identity(pair)
    record = json.loads((lens_cache_dir / "encoders" / "tiny-pair.json").read_text())
    assert record["parts"] == {"tiny-file": {}}
    assert cache_key(encoder_identity("tiny-pair", weights_dir=weights_dir) or {}) == cache_key(pair.identity())
    (weights_dir / "tiny-file.bin").write_bytes(b"the inner encoder's weights changed")
    assert encoder_identity("tiny-pair", weights_dir=weights_dir) is None
    remember_identity(create_encoder("tiny-pair", weights_dir=weights_dir))
    assert encoder_identity("tiny-pair", weights_dir=weights_dir) is not None
    # the record is of the engine the build ran on (torch, for the test family): another engine gets no answer
    assert encoder_identity("tiny-pair", weights_dir=weights_dir, engine="torch") is not None
    assert encoder_identity("tiny-pair", weights_dir=weights_dir, engine="onnx") is None


def test_warm_encoder_builds_in_the_background_once_and_get_encoder_takes_it(lens_cache_dir: Path) -> None:
    import threading

    from dashboard import resources

    resources.clear_caches()
    try:
        resources.warm_encoder("tiny")
        for thread in [t for t in threading.enumerate() if t.name == "lens-warm-tiny"]:
            thread.join(120)
        warmed = resources._WARM_ENCODERS["tiny"]
        assert resources.get_encoder("tiny") is warmed  # the background build is the one the queries use
        assert "tiny" not in resources._WARM_ENCODERS
        resources.warm_encoder("tiny")  # once per model and process
        assert not [t for t in threading.enumerate() if t.name == "lens-warm-tiny"]
        assert "tiny" not in resources._WARM_ENCODERS
    finally:
        resources.clear_caches()
