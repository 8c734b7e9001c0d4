"""lens.encoders.gpu: the GPU path (torch on CUDA or ONNX Runtime's CUDA provider, whichever measures faster), driven
by a fake GPU, fake candidates and a fake clock so that it runs without one; plus one real run where CUDA exists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lens.encoders import create_encoder, engine_choice, engines, gpu
from lens.encoders.base import TorchImageEncoder, preprocess_images
from lens.errors import LensError
from lens.vectors import l2_normalize

pytest.importorskip("onnxruntime")

FAKE = engines.GpuInfo("Fake H200", "570.1")
_real_build_ort_cuda = gpu.build_ort_cuda  # before any fixture replaces it


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (60 + 7 * i, 80, 3), dtype=np.uint8)) for i in range(5)]


class Clock:
    """A fake clock that only the fake runners move: each call costs its candidate's seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Candidates:
    """Fake GPU candidates: torch = the CPU module, onnx = the real ONNX Runtime CPU session; each call advances the
    fake clock by its cost and is counted."""

    def __init__(self, clock: Clock, cost: dict[str, float]) -> None:
        self.clock, self.cost = clock, cost
        self.built: list[str] = []
        self.calls = {"torch": 0, "onnx": 0}
        self.fail: dict[str, str] = {}
        self.wrong: set[str] = set()

    def _wrap(self, engine: str, run):  # noqa: ANN001, ANN202
        def call(pixels: np.ndarray) -> np.ndarray:
            self.calls[engine] += 1
            self.clock.now += self.cost[engine]
            out = run(pixels)
            return out[:, ::-1].copy() if engine in self.wrong else out

        return call

    def torch(self, encoder: TorchImageEncoder, cache_dir=None):  # noqa: ANN001, ANN201
        self.built.append("torch")
        if "torch" in self.fail:
            raise LensError(self.fail["torch"])

        def run(pixels: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return encoder.model(torch.from_numpy(pixels)).float().reshape(len(pixels), -1).numpy()

        return self._wrap("torch", run)

    def onnx(self, encoder: TorchImageEncoder, cache_dir=None):  # noqa: ANN001, ANN201
        self.built.append("onnx")
        if "onnx" in self.fail:
            raise LensError(self.fail["onnx"])
        return self._wrap("onnx", engines.onnx_runner(encoder, cache_dir=cache_dir))


@pytest.fixture
def fake_gpu(lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Candidates:
    monkeypatch.delenv("LENS_DEVICE", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    monkeypatch.setattr(engines, "visible_gpu", lambda: FAKE)
    clock = Clock()
    monkeypatch.setattr(gpu, "_clock", clock)
    candidates = Candidates(clock, {"torch": 2.0, "onnx": 1.0})  # ONNX Runtime twice as fast
    monkeypatch.setattr(gpu, "build_torch_cuda", candidates.torch)
    monkeypatch.setattr(gpu, "build_ort_cuda", candidates.onnx)
    monkeypatch.setattr(gpu, "PROBE_BATCH", 4)  # tiny's probe: cheap on the CPU
    engines.clear_sessions()
    yield candidates
    engines.clear_sessions()


def _decisions(cache: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((cache / "engines" / "tiny").glob("*.json"))]


def _cosine_to_cpu(vectors: np.ndarray) -> float:
    """Lowest row cosine to tiny's module run by torch on the CPU (what every GPU candidate must agree with)."""
    encoder = create_encoder("tiny", engine="torch")
    assert isinstance(encoder, TorchImageEncoder)
    with torch.inference_mode():
        features = encoder.model(preprocess_images(_images(), encoder.spec.preprocess)).numpy()
    return float((vectors * l2_normalize(features)).sum(1).min())


def test_auto_on_a_gpu_measures_both_runs_the_faster_and_records_why(
    fake_gpu: Candidates, lens_cache_dir: Path
) -> None:
    choice = engine_choice("tiny")
    assert (choice.device, choice.measure, choice.label, choice.precision) == ("cuda", True, "auto-cuda", "fp32")
    encoder = create_encoder("tiny")
    assert isinstance(encoder, TorchImageEncoder) and encoder.device == "cuda" and encoder.batch_size == 128
    vectors = encoder.embed_images(_images())
    assert _cosine_to_cpu(vectors) >= 0.9999
    assert (encoder.engine, encoder.device) == ("onnx", "cuda")
    assert encoder.engine_figures == pytest.approx({"torch": 4 / 2.0, "onnx": 4 / 1.0})
    assert "measured faster" in encoder.engine_reason and "Fake H200" in encoder.engine_reason
    # warm-up calls, then interleaved timed rounds, plus the agreement check and the real batches
    assert fake_gpu.calls["torch"] == 1 + gpu.WARMUP_CALLS + gpu.TIMED_ROUNDS
    (decision,) = _decisions(lens_cache_dir)
    assert decision["chosen"] == "onnx" and decision["img_per_s"] == {"onnx": 4.0, "torch": 2.0}
    identity = decision["identity"]
    assert identity["device"] == "Fake H200" and identity["driver"] == "570.1" and identity["encoder"] == "tiny"
    assert {"torch", "onnxruntime", "weights", "recipe"} <= set(identity)
    assert min(decision["cosine_to_cpu_torch"].values()) >= 0.9999
    assert not list((lens_cache_dir / "engines" / "tiny").glob(".*.tmp"))  # written atomically


def test_the_faster_torch_wins_when_it_measures_faster(fake_gpu: Candidates) -> None:
    fake_gpu.cost = {"torch": 0.5, "onnx": 1.5}
    encoder = create_encoder("tiny")
    encoder.embed_images(_images())
    assert (encoder.engine, encoder.device) == ("torch", "cuda") and encoder.onnx_runner() is None


def test_a_recorded_decision_is_reused_without_measuring(
    fake_gpu: Candidates, lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    create_encoder("tiny").embed_images(_images())
    engines.clear_sessions()
    fake_gpu.built.clear()

    def no_measuring(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("measured again")

    monkeypatch.setattr(gpu, "measure", no_measuring)
    encoder = create_encoder("tiny")
    vectors = encoder.embed_images(_images())
    assert fake_gpu.built == ["onnx"], "only the recorded winner is built"
    assert encoder.engine == "onnx" and encoder.engine_reason.startswith("cuda: recorded decision")
    assert _cosine_to_cpu(vectors) >= 0.9999
    # the listing shows the device and both figures, read from the record without building the model
    from lens.cli import main

    assert main(["encoders", "--csv", "-"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split(",")
    row = next(line for line in lines if line.startswith("tiny,")).split(",")
    assert row[header.index("engine")] == "auto-cuda" and row[header.index("device")] == "Fake H200"
    assert row[header.index("gpu img/s")] == "onnx 4 / torch 2 -> onnx"


def test_a_new_driver_measures_again(fake_gpu: Candidates, lens_cache_dir: Path, monkeypatch) -> None:  # noqa: ANN001
    create_encoder("tiny").embed_images(_images())
    monkeypatch.setattr(engines, "visible_gpu", lambda: engines.GpuInfo("Fake H200", "580.2"))
    fake_gpu.cost = {"torch": 0.5, "onnx": 1.5}
    encoder = create_encoder("tiny")
    encoder.embed_images(_images())
    assert encoder.engine == "torch"
    assert sorted(d["identity"]["driver"] for d in _decisions(lens_cache_dir)) == ["570.1", "580.2"]


def test_missing_cuda_provider_falls_back_to_torch_cuda_with_the_reason(
    fake_gpu: Candidates, lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu, "build_ort_cuda", _real_build_ort_cuda)
    monkeypatch.setattr(gpu, "ort_cuda_available", lambda: False)
    encoder = create_encoder("tiny")
    vectors = encoder.embed_images(_images())
    assert (encoder.engine, encoder.device) == ("torch", "cuda")
    assert "CUDAExecutionProvider" in encoder.engine_reason and "onnxruntime-gpu" in encoder.engine_reason
    assert _cosine_to_cpu(vectors) >= 0.9999
    assert not _decisions(lens_cache_dir), "one candidate measured nothing: no decision recorded"


def test_no_gpu_engine_runs_so_the_cpu_default_runs_with_both_reasons(fake_gpu: Candidates) -> None:
    fake_gpu.fail = {"torch": "torch 2.15.0+cpu sees no CUDA device", "onnx": "no CUDAExecutionProvider"}
    encoder = create_encoder("tiny")
    vectors = encoder.embed_images(_images())
    assert (encoder.engine, encoder.device) == ("torch", "cpu")  # tiny's CPU default is torch
    assert "sees no CUDA device" in encoder.engine_reason and "no CUDAExecutionProvider" in encoder.engine_reason
    assert _cosine_to_cpu(vectors) >= 0.9999


def test_a_candidate_that_disagrees_with_the_cpu_is_dropped(fake_gpu: Candidates) -> None:
    fake_gpu.wrong = {"onnx"}
    fake_gpu.cost = {"torch": 2.0, "onnx": 0.1}  # faster, but wrong
    encoder = create_encoder("tiny")
    vectors = encoder.embed_images(_images())
    assert encoder.engine == "torch" and "disagree" in encoder.engine_reason
    assert _cosine_to_cpu(vectors) >= 0.9999


def test_an_explicit_engine_on_a_gpu_is_not_measured(fake_gpu: Candidates, lens_cache_dir: Path) -> None:
    assert engine_choice("tiny", engine="torch").label == "torch-cuda"
    encoder = create_encoder("tiny", engine="torch")
    encoder.embed_images(_images())
    assert fake_gpu.built == ["torch"] and (encoder.engine, encoder.device) == ("torch", "cuda")
    fake_gpu.built.clear()
    encoder = create_encoder("tiny", engine="onnx")
    encoder.embed_images(_images())
    assert fake_gpu.built == ["onnx"] and encoder.onnx_runner() is not None
    assert not _decisions(lens_cache_dir)


def test_without_a_gpu_nothing_changes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(engines.ENGINE_ENV, raising=False)
    for name in ("mobilenet-v2", "efficientnet-lite0", "tiny"):
        assert engine_choice(name).device == "cpu"  # conftest sets LENS_DEVICE=cpu
    assert engine_choice("mobilenet-v2").label == "onnx" and engine_choice("tiny").label == "torch"
    assert create_encoder("tiny").batch_size == 32
    # the driver's files: parsed when present; LENS_DEVICE=cpu and an empty CUDA_VISIBLE_DEVICES hide the GPU
    root = tmp_path / "nvidia"
    (root / "gpus" / "0000:00:1e.0").mkdir(parents=True)
    (root / "gpus" / "0000:00:1e.0" / "information").write_text("Model: \t\t NVIDIA H200\nIRQ: 10\n")
    (root / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.133.20  Fri Mar 14 2025\n")
    assert engines._driver_gpu.__wrapped__(str(root)) == engines.GpuInfo("NVIDIA H200", "570.133.20")
    monkeypatch.setattr(engines, "_driver_gpu", lambda: engines.GpuInfo("NVIDIA H200", "570.133.20"))
    monkeypatch.delenv("LENS_DEVICE")
    assert engines.visible_gpu() is not None and engine_choice("mobilenet-v2").label == "auto-cuda"
    assert engine_choice("mobilenet-v2", precision="bf16").device == "cpu"  # bf16 stays on the CPU's torch
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert engines.visible_gpu() is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("LENS_DEVICE", "cpu")
    assert engines.visible_gpu() is None and engine_choice("mobilenet-v2").label == "onnx"


def test_the_catalog_pass_uses_the_gpu_batch(
    fake_gpu: Candidates, small_catalog_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lens.catalog import load_catalog
    from lens.embed import default_batch_size, embed_catalog

    monkeypatch.setattr("lens.encoders.base.GPU_BATCH", 16)  # the small catalog's 24 photos: two batches
    catalog = load_catalog(small_catalog_dir)
    encoder = create_encoder("tiny")
    assert default_batch_size(encoder) == 16
    progress: list[int] = []
    result = embed_catalog(catalog, encoder, use_cache=False, progress=lambda d, t: progress.append(d))
    sizes = [b - a for a, b in zip([0, *progress], progress)]
    assert max(sizes) == 16 and len(result.ids) + len(result.failed) == len(catalog)
    assert encoder.device == "cuda"


def test_ray_actors_ask_for_gpus_only_where_the_cluster_has_them() -> None:
    from lens.distributed import actor_gpus

    assert actor_gpus({"CPU": 16.0}, 2) == 0.0
    assert actor_gpus({"CPU": 16.0, "GPU": 2.0}, 2) == 1.0
    assert actor_gpus({"CPU": 16.0, "GPU": 1.0}, 4) == 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_real_cuda_candidates_agree_with_the_cpu(lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LENS_DEVICE", raising=False)
    engines.clear_sessions()
    encoder = create_encoder("tiny")
    vectors = encoder.embed_images(_images())
    assert encoder.device == "cuda", encoder.engine_reason
    assert _cosine_to_cpu(vectors) >= 0.9999
    if gpu.ort_cuda_available():
        assert set(encoder.engine_figures or {}) == {"torch", "onnx"}
