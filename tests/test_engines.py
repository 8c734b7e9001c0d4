"""lens.encoders.engines: engine choice, the ONNX Runtime engine (export, disk cache, fallback) and its agreement
with torch fp32, row by row, on every exported encoder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lens.encoders import create_encoder, create_feature_extractor, engine_choice, engines, get_spec, list_encoders
from lens.encoders.base import preprocess_images
from lens.errors import LensError

onnxruntime = pytest.importorskip("onnxruntime")

MIN_COSINE = 0.9999


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (90, 140, 3), dtype=np.uint8))
    wide = Image.new("RGB", (300, 120), (250, 250, 250))
    wide.paste((200, 30, 30), (100, 20, 200, 100))
    gray = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (80, 1)), mode="L")
    return [noise, wide, gray, Image.new("RGBA", (33, 47), (0, 90, 200, 128))]


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)  # both L2-normalised


@pytest.fixture(autouse=True)
def _fresh_sessions(lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    engines.clear_sessions()
    yield
    engines.clear_sessions()


# ---------------------------------------------------------------------------------------------------- choice


def test_auto_runs_the_zoo_on_onnx_in_fp32_and_the_test_encoder_on_torch() -> None:
    zoo = ("mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2", "resnet50", "efficientnet-b4", "vit-b16")
    for name in (*zoo, "clip-vit-b32", "dinov2-small"):
        choice = engine_choice(name)
        assert (choice.engine, choice.precision) == ("onnx", "fp32"), name
        assert get_spec(name).precision == "fp32", name  # what create_encoder builds, so what cache keys hold
    assert engine_choice("tiny").engine == "torch"
    # an explicit bf16 stays on torch; explicit torch keeps torch's measured default
    assert engine_choice("efficientnet-lite0", precision="bf16").engine == "torch"
    assert get_spec("efficientnet-lite0", engine="torch").precision == "bf16"


def test_engine_from_environment_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engines.ENGINE_ENV, "torch")
    assert engine_choice("mobilenet-v2").engine == "torch"
    monkeypatch.setenv(engines.ENGINE_ENV, "onnx")
    assert engine_choice("tiny").engine == "onnx"
    monkeypatch.setenv(engines.ENGINE_ENV, "tensorrt")
    with pytest.raises(LensError, match=r"LENS_ENGINE='tensorrt' is not an engine; use one of auto, torch, onnx"):
        engine_choice("tiny")
    with pytest.raises(LensError, match=r"engine='gpu' is not an engine"):
        create_encoder("tiny", engine="gpu")
    with pytest.raises(LensError, match=r"fp32 only; drop precision bf16"):
        create_encoder("tiny", engine="onnx", precision="bf16")


def test_without_onnxruntime_auto_falls_back_and_onnx_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "onnxruntime_installed", lambda: False)
    choice = engine_choice("efficientnet-lite0")
    assert choice.engine == "torch" and choice.precision == "bf16"  # torch's measured default, a different key
    assert "onnxruntime not installed" in choice.reason and engines.ONNXRUNTIME_PIN in choice.reason
    with pytest.raises(LensError, match=r"needs onnxruntime.*pip install onnxruntime=="):
        create_encoder("tiny", engine="onnx")


def test_encoders_listing_and_cli_show_the_engine(capsys: pytest.CaptureFixture[str]) -> None:
    from lens.cli import main

    rows = {info.name: info for info in list_encoders()}
    assert rows["mobilenet-v2"].engine.engine == "onnx" and rows["mobilenet-v2"].spec.precision == "fp32"
    assert rows["tiny"].engine.engine == "torch"
    assert main(["encoders", "--csv", "-"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split(",")
    assert "engine" in header
    line = next(row for row in out.splitlines() if row.startswith("mobilenet-v2,"))
    assert line.split(",")[header.index("engine")] == "onnx"
    assert main(["encoders", "--csv", "-", "--engine", "torch"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("mobilenet-v2,"))
    assert line.split(",")[header.index("engine")] == "torch"


# ---------------------------------------------------------------------------------------------------- agreement


def test_tiny_on_onnx_matches_torch_row_by_row_and_keeps_the_identity() -> None:
    images = _images()
    torch_enc = create_encoder("tiny", engine="torch")
    onnx_enc = create_encoder("tiny", engine="onnx")
    assert onnx_enc.engine == "onnx"
    reference, vectors = torch_enc.embed_images(images), onnx_enc.embed_images(images, batch_size=3)
    assert vectors.dtype == np.float32 and vectors.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert _row_cosine(vectors, reference).min() >= MIN_COSINE
    assert onnx_enc.identity() == torch_enc.identity()  # the engine is not part of the embedding cache key
    single = np.concatenate([onnx_enc.embed_images([image]) for image in images])  # dynamic batch axis
    np.testing.assert_allclose(single, vectors, atol=1e-5)


def test_feature_extractor_shares_the_session() -> None:
    extractor = create_feature_extractor("tiny")
    runner = extractor.onnx_runner()
    again = create_feature_extractor("tiny").onnx_runner()
    assert runner is again  # one session per graph and process
    pixels = preprocess_images(_images(), extractor.spec.preprocess).numpy()
    features = runner(pixels)
    assert features.shape == (4, 64) and features.dtype == np.float32
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(features / norms, extractor.embed_tensor(pixels), atol=1e-6)


# ---------------------------------------------------------------------------------------------------- disk cache


def _graphs(cache: Path) -> list[Path]:
    return sorted((cache / "onnx" / "tiny").glob("*.onnx"))


def test_export_is_cached_verified_and_redone_on_mismatch(lens_cache_dir: Path, monkeypatch) -> None:  # noqa: ANN001
    import json

    create_encoder("tiny", engine="onnx").embed_images(_images()[:1])
    (graph,) = _graphs(lens_cache_dir)
    meta = json.loads(graph.with_suffix(".json").read_text())
    assert (
        meta["identity"]["onnxruntime"] == onnxruntime.__version__ and meta["identity"]["opset"] == engines.ONNX_OPSET
    )
    assert {"torch", "onnx", "weights", "preprocess", "recipe"} <= set(meta["identity"])
    assert not list(graph.parent.glob(".*.tmp"))  # atomic writes leave no temporary file

    # a second process (sessions forgotten) loads it from disk: no export
    engines.clear_sessions()
    real_export = engines.export_onnx

    def no_export(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("exported again")

    monkeypatch.setattr(engines, "export_onnx", no_export)
    create_encoder("tiny", engine="onnx").embed_images(_images()[:1])

    # a damaged graph does not verify: exported again and rewritten
    graph.write_bytes(graph.read_bytes()[:-10] + b"0123456789")
    engines.clear_sessions()
    calls = []
    monkeypatch.setattr(engines, "export_onnx", lambda *a, **k: calls.append(1) or real_export(*a, **k))
    vectors = create_encoder("tiny", engine="onnx").embed_images(_images())
    assert calls == [1]
    reference = create_encoder("tiny", engine="torch").embed_images(_images())
    assert _row_cosine(vectors, reference).min() >= MIN_COSINE
    meta = json.loads(graph.with_suffix(".json").read_text())
    import hashlib

    assert hashlib.sha256(graph.read_bytes()).hexdigest() == meta["sha256"]


def test_a_fresh_export_removes_stale_graphs(lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    create_encoder("tiny", engine="onnx").embed_images(_images()[:1])
    (old,) = _graphs(lens_cache_dir)
    other_variant = old.with_name("int8graph.onnx")
    other_variant.write_bytes(b"x")
    other_variant.with_suffix(".json").write_text(json.dumps({"identity": {"variant": "int8"}}))
    # a new torch version: a new key, so a fresh export, and the old graph (and its sidecar) are gone
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    engines.clear_sessions()
    create_encoder("tiny", engine="onnx").embed_images(_images()[:1])
    (new,) = [g for g in _graphs(lens_cache_dir) if g != other_variant]
    assert new != old and not old.exists() and not old.with_suffix(".json").exists()
    assert json.loads(new.with_suffix(".json").read_text())["identity"]["torch"] == "9.9.9"
    assert other_variant.exists()  # another variant is not this export's business


def test_graph_key_follows_torch_and_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = create_encoder("tiny", engine="onnx")
    base = engines._export_identity(encoder, "fp32")
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert engines._export_identity(encoder, "fp32")["torch"] == "9.9.9" != base["torch"]
    assert base["weights"] == encoder.weights_id


def test_failed_export_falls_back_to_torch_with_a_logged_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(engines, "export_onnx", broken)
    monkeypatch.setattr(engines, "ONNX_FASTER_FAMILIES", frozenset({"test"}))  # tiny as if auto picked ONNX
    encoder = create_encoder("tiny")
    assert encoder.engine == "onnx"
    with caplog.at_level(logging.WARNING, logger="lens.encoders"):
        vectors = encoder.embed_images(_images())
    assert encoder.engine == "torch" and "aten::frobnicate" in encoder.engine_reason
    assert "runs on torch fp32" in caplog.text and "aten::frobnicate" in caplog.text
    np.testing.assert_allclose(vectors, create_encoder("tiny", engine="torch").embed_images(_images()), atol=1e-6)
    with pytest.raises(LensError, match=r"ONNX export of 'tiny' failed.*frobnicate"):
        create_encoder("tiny", engine="onnx").embed_images(_images())


def test_graph_that_disagrees_with_torch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    real_export = engines.export_onnx

    class Reversed(torch.nn.Module):  # the same numbers in another order: another direction
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.flip(1)

    def wrong(model, size):  # noqa: ANN001, ANN202
        return real_export(torch.nn.Sequential(model, Reversed()), size)

    monkeypatch.setattr(engines, "export_onnx", wrong)
    with pytest.raises(LensError, match=r"disagrees with torch"):
        create_encoder("tiny", engine="onnx").embed_images(_images())


# ---------------------------------------------------------------------------------------------------- every encoder


def _photos() -> list[Image.Image]:
    from conftest import SAMPLE_CATALOG_DIR

    paths = sorted((SAMPLE_CATALOG_DIR / "images").glob("*.jpg"))[:12]
    return [Image.open(p).convert("RGB") for p in paths] or _images()


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["resnet50", "efficientnet-b0", "efficientnet-b4", "vit-b16", "clip-vit-b32", "dinov2-small"],
)
def test_random_weight_zoo_on_onnx_matches_torch_fp32(name: str) -> None:
    images = _photos()[:6]
    reference = create_encoder(name, pretrained=False, engine="torch", precision="fp32").embed_images(images)
    encoder = create_encoder(name, pretrained=False, engine="onnx")
    vectors = encoder.embed_images(images)
    assert encoder.engine == "onnx"
    cosine = _row_cosine(vectors, reference)
    assert cosine.min() >= MIN_COSINE, f"{name}: {cosine}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2", "efficientnet-lite2-ml"])
def test_pretrained_cnns_on_onnx_match_torch_fp32(name: str) -> None:
    images = _photos()
    try:
        reference = create_encoder(name, engine="torch", precision="fp32").embed_images(images)
    except LensError as exc:  # weights not installed
        pytest.skip(str(exc))
    encoder = create_encoder(name)  # auto
    vectors = encoder.embed_images(images)
    assert encoder.engine == "onnx" and encoder.precision == "fp32"
    cosine = _row_cosine(vectors, reference)
    assert cosine.min() >= MIN_COSINE, f"{name}: {cosine}"


# ------------------------------------------------------------------------------------------------------------ int8


def test_onnx_int8_is_opt_in_and_offered_only_where_measured() -> None:
    offered = sorted(engines.INT8_ENCODERS)
    assert offered, "at least one encoder passed the held-out P@5 bar"
    for name in offered:
        choice = engine_choice(name, engine="onnx-int8")
        assert (choice.engine, choice.variant, choice.label, choice.strict) == ("onnx", "int8", "onnx-int8", True)
        assert engine_choice(name).variant == "fp32", "never the default"
        assert engine_choice(name, engine="onnx").variant == "fp32"
    others = [info.name for info in list_encoders() if info.name not in engines.INT8_ENCODERS][:3]
    for name in others:
        choice = engine_choice(name, engine="onnx-int8")
        assert choice.variant == "fp32" and choice.label != "onnx-int8" and choice.reason.startswith("int8 not")


def test_int8_tiny_is_calibrated_on_the_catalog_cached_and_keyed_apart(
    small_catalog_dir: Path, lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from lens.catalog import load_catalog
    from lens.embed import embed_catalog, embedding_key

    monkeypatch.setattr(engines, "INT8_ENCODERS", frozenset({"tiny"}))
    catalog = load_catalog(small_catalog_dir)
    fp32 = embed_catalog(catalog, create_encoder("tiny", engine="onnx"))
    encoder = create_encoder("tiny", engine="onnx-int8")
    assert encoder.identity()["quantization"] == engines.QUANTIZATION
    assert embedding_key(catalog, encoder) != fp32.key, "int8 vectors are cached apart from fp32 ones"
    int8 = embed_catalog(catalog, encoder)
    assert int8.ids == fp32.ids and int8.vectors.shape == fp32.vectors.shape
    np.testing.assert_allclose(np.linalg.norm(int8.vectors, axis=1), 1.0, atol=1e-5)
    cosine = (int8.vectors * fp32.vectors).sum(1)
    assert cosine.min() > 0.5 and not np.allclose(int8.vectors, fp32.vectors, atol=1e-6), "quantized, not fp32"
    sidecars = [json.loads(p.read_text()) for p in (lens_cache_dir / "onnx" / "tiny").glob("*.json")]
    (meta,) = [m for m in sidecars if m["identity"].get("variant") == "int8"]
    assert meta["identity"]["calibration"]["photos"] == len(catalog)  # 24 photos: every one (at most 192)

    # another process: the cached int8 graph is loaded, not quantized again, and gives the same vectors
    engines.clear_sessions()

    def no_quantize(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("quantized again")

    monkeypatch.setattr(engines, "quantize_int8", no_quantize)
    again = create_encoder("tiny", engine="onnx-int8")
    np.testing.assert_allclose(again.embed_images(_images()), encoder.embed_images(_images()), atol=1e-6)

    # an int8 query encoder with no cached graph and no catalog to calibrate on says what to run
    engines.clear_sessions()
    for graph in (lens_cache_dir / "onnx" / "tiny").glob("*"):
        graph.unlink()
    with pytest.raises(LensError, match=r"embed --engine onnx-int8 --models tiny"):
        create_encoder("tiny", engine="onnx-int8").embed_images(_images())


# ------------------------------------------------------------------------------------------------ the catalog pass


@pytest.mark.parametrize(("batch_size", "sessions"), [(1, 1), (5, 1), (32, 1), (5, 3)])
def test_catalog_pass_gives_each_row_its_own_vector_with_failures(
    small_catalog_copy: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int, sessions: int
) -> None:
    """Decode threads run ahead of the forward pass: with unreadable files among the rows and batches of 1, 5 and
    32, every row still gets its own image's vector, in catalog order (an oracle for any change to the pass)."""
    from lens import embed
    from lens.catalog import load_catalog

    catalog = load_catalog(small_catalog_copy)
    paths = catalog.image_paths()
    for broken in (3, 4, 11):  # a truncated, an empty and a missing file
        data = paths[broken].read_bytes()
        paths[broken].write_bytes(data[: len(data) // 2] if broken == 3 else b"")
    paths[11].unlink()
    monkeypatch.setattr(embed, "_decode_threads", lambda: 3)
    if sessions > 1:  # batches split over single-threaded ONNX Runtime sessions, as the CNNs run on the CPU
        monkeypatch.setattr(engines, "BATCH_PARALLEL_FAMILIES", frozenset({"test"}))
        monkeypatch.setenv(engines.THREADS_ENV, str(sessions))
    encoder = create_encoder("tiny", engine="torch" if sessions == 1 else "onnx")
    if sessions > 1:
        assert len(encoder.onnx_runner().sessions) == sessions
    progress: list[tuple[int, int]] = []
    vectors, kept, failed = embed.embed_files(
        catalog, encoder, batch_size=batch_size, progress=lambda d, t: progress.append((d, t))
    )
    assert progress[-1] == (len(catalog), len(catalog)) and progress == sorted(progress)
    assert [item for item, _ in failed] == [catalog.ids[i] for i in (3, 4, 11)]
    assert kept == [item for i, item in enumerate(catalog.ids) if i not in (3, 4, 11)]
    one_by_one = np.concatenate([embed.embed_images(encoder, [paths[catalog.ids.index(item)]]) for item in kept])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)  # float rounding of other batch sizes only


def test_batch_split_over_single_threaded_sessions_gives_the_same_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = create_encoder("tiny", engine="onnx")
    graph = encoder.onnx_runner().path.read_bytes()
    one = engines.OnnxRunner(graph)
    split = engines.OnnxRunner(graph, replicas=3)
    assert len(split.sessions) == 3 and split.sessions[0].get_session_options().intra_op_num_threads == 1
    pixels = np.random.default_rng(0).standard_normal((7, 3, 32, 32), dtype=np.float32)
    for n in (1, 2, 7):  # fewer rows than sessions, and a slice of 3, 2, 2
        np.testing.assert_array_equal(split(pixels[:n]), one(pixels[:n]))
    # the CNN families get one session per core, the rest one session on every core
    monkeypatch.setenv(engines.THREADS_ENV, "2")
    cnn = create_encoder("mobilenet-v2", pretrained=False, engine="torch")
    assert engines._replicas(cnn) == 2 and engines._replicas(encoder) == 1
    monkeypatch.setenv(engines.THREADS_ENV, "16")  # a big machine: 4 sessions of 4 threads
    assert engines._replicas(cnn) == engines.MAX_REPLICAS == 4
    assert engines.OnnxRunner(graph, replicas=4).sessions[0].get_session_options().intra_op_num_threads == 4
