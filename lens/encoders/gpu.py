"""The GPU path of the torch image encoders: torch on CUDA, or ONNX Runtime's CUDA provider, whichever measures faster.

Issue 10 asks that on a GPU "torch (or ONNX Runtime's CUDA provider, whichever measures faster) is used; report
both". How lens does it:

1. :func:`lens.encoders.engines.visible_gpu` finds an NVIDIA GPU from the driver's ``/proc`` files, without importing
   torch (the encoders listing and the dashboard's cold start stay torch-free); ``$LENS_DEVICE=cpu`` or an empty
   ``$CUDA_VISIBLE_DEVICES`` hides it. :func:`~lens.encoders.engines.choose_engine` then picks ``device="cuda"``,
   fp32, for the CNN and transformer image families.
2. On the first batch the encoder builds its two candidates (:func:`build_torch_cuda`, :func:`build_ort_cuda`), each
   checked against the CPU torch module on a probe batch (row cosine >= ``MIN_EXPORT_COSINE``, 0.9999: fp32, TF32
   off in both, so the vectors, and the embedding cache keys, are the CPU's up to float rounding).
3. With ``engine="auto"`` both are timed on one probe batch (:data:`WARMUP_CALLS` warm-up calls, then
   :data:`TIMED_ROUNDS` interleaved rounds, median), the faster one runs, and the decision with both throughputs is
   written under ``<cache>/engines/<encoder>/<key>.json`` (self-describing, atomic). The key covers the encoder's
   identity, the GPU's name, the driver and the torch / CUDA / onnxruntime versions, so a new driver or library
   measures again; a later process with the same key builds only the recorded winner.
4. ``engine="torch"`` / ``"onnx"`` skip the measurement. A candidate that cannot run (torch without CUDA,
   onnxruntime without ``CUDAExecutionProvider``, i.e. the CPU ``onnxruntime`` wheel instead of ``onnxruntime-gpu``)
   is dropped with its reason: auto then runs the other one; when neither runs, the CPU default (ONNX Runtime on the
   CPU where it is faster, else torch) runs, with the reasons in ``engine_reason``.

Nothing here runs without a GPU; the tests drive it with fake devices, runners and clocks (tests/test_gpu.py).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lens.encoders import engines
from lens.encoders.base import GPU_BATCH
from lens.errors import LensError
from lens.store import cache_key, read_json, resolve_cache_dir, utc_now, write_json

if TYPE_CHECKING:
    from lens.encoders.base import TorchImageEncoder

log = logging.getLogger("lens.encoders")

Runner = Callable[[np.ndarray], np.ndarray]
"""``runner(pixels (N, 3, S, S) float32) -> (N, dim) float32 features`` (raw, not L2-normalised)."""

#: Probe batch of the measurement: the batch the catalog pass will run.
PROBE_BATCH = GPU_BATCH
WARMUP_CALLS = 3
"""Untimed calls per candidate first: cuDNN's autotuner (``cudnn.benchmark``) and ONNX Runtime's allocator settle."""
TIMED_ROUNDS = 5
#: Bump when the measurement or the candidates' recipes change: every recorded decision is measured again.
DECISION_RECIPE = 1
ORT_GPU_PIN = "onnxruntime-gpu==1.32.0"
CANDIDATES = ("torch", "onnx")

#: The clock of the measurement (tests replace it with a fake one).
_clock: Callable[[], float] = time.perf_counter


# -------------------------------------------------------------------------------------------------------- runners


class TorchCudaRunner:
    """The encoder's module on CUDA in fp32: channels_last where the spec says so, ``cudnn.benchmark`` on, TF32 off
    (TF32 convolutions round inputs to 10 mantissa bits, beyond float rounding of fp32 vectors).

    Batches are copied through a pinned host buffer with ``non_blocking=True``, so the copy of the next batch does
    not wait on a pageable-memory staging copy; the features come back as numpy.
    """

    def __init__(self, encoder: TorchImageEncoder, device: str = "cuda", *, tf32: bool = False) -> None:
        """``tf32=True`` only for the benchmark's comparison (its vectors are checked, never lens's default)."""
        import copy

        import torch

        if not torch.cuda.is_available():
            raise LensError(
                f"torch {torch.__version__} sees no CUDA device (a CPU build of torch, or no usable driver); "
                "install a CUDA build of torch to run on the GPU."
            )
        self.device = torch.device(device)
        self.channels_last = encoder.channels_last
        model = copy.deepcopy(encoder.model).float().eval()  # the CPU module stays: the fallback and the ONNX export
        model = model.to(self.device)
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        self.tf32 = tf32
        self._pinned: torch.Tensor | None = None
        self.name = torch.cuda.get_device_name(self.device)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if self._pinned is None or self._pinned.shape[0] < len(pixels) or self._pinned.shape[1:] != pixels.shape[1:]:
            self._pinned = torch.empty((max(len(pixels), GPU_BATCH), *pixels.shape[1:]), pin_memory=True)
        host = self._pinned[: len(pixels)]
        host.numpy()[...] = pixels
        with (
            torch.inference_mode(),
            torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=self.tf32),
        ):
            batch = host.to(self.device, non_blocking=True)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = self.tf32  # the transformers' matmuls: fp32, as on the CPU
            try:
                output = self.model(batch)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous
            features = output.float().reshape(len(pixels), -1).cpu()  # synchronises with the stream
        return features.numpy()


class OrtCudaRunner(engines.OnnxRunner):
    """An ONNX Runtime session of the encoder's fp32 graph on ``CUDAExecutionProvider`` (TF32 off)."""

    def __init__(self, graph: bytes, *, key: str = "", path: Path | None = None) -> None:  # noqa: D107
        import onnxruntime as ort

        self.key, self.path = key, path
        options = engines.session_options()
        providers: list[Any] = [
            ("CUDAExecutionProvider", {"device_id": 0, "use_tf32": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"}),
            "CPUExecutionProvider",
        ]
        self.session = ort.InferenceSession(graph, options, providers=providers)
        self.sessions, self._pool = [self.session], None
        if self.session.get_providers()[0] != "CUDAExecutionProvider":  # ORT falls back to the CPU silently
            raise LensError(
                "ONNX Runtime could not start its CUDA provider (CUDA or cuDNN libraries missing or not matching "
                f"onnxruntime {ort.__version__}); the session runs on {self.session.get_providers()[0]}."
            )
        self.input_name = self.session.get_inputs()[0].name


def ort_cuda_available() -> bool:
    """Whether onnxruntime offers ``CUDAExecutionProvider`` (the ``onnxruntime-gpu`` wheel)."""
    if not engines.onnxruntime_installed():
        return False
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def build_torch_cuda(encoder: TorchImageEncoder, cache_dir: str | os.PathLike | None = None) -> Runner:
    """Candidate 1: torch on CUDA, fp32. Raises ``LensError`` when torch has no CUDA."""
    return TorchCudaRunner(encoder)


def build_ort_cuda(encoder: TorchImageEncoder, cache_dir: str | os.PathLike | None = None) -> Runner:
    """Candidate 2: ONNX Runtime's CUDA provider on the encoder's cached fp32 graph (exported and checked on the CPU
    first, :func:`lens.encoders.engines.onnx_runner`). Raises ``LensError`` without the CUDA provider."""
    if not engines.onnxruntime_installed():
        raise LensError(f"onnxruntime is not installed (`pip install {ORT_GPU_PIN}` for its CUDA provider)")
    if not ort_cuda_available():
        import onnxruntime as ort

        raise LensError(
            f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (the CPU wheel): "
            f"`pip uninstall onnxruntime && pip install {ORT_GPU_PIN}` to measure it"
        )
    cpu = engines.onnx_runner(encoder, cache_dir=cache_dir)
    if cpu.path is None or not cpu.path.is_file():
        raise LensError(f"the fp32 ONNX graph of '{encoder.name}' is not cached, so no CUDA session can load it")
    try:
        return OrtCudaRunner(cpu.path.read_bytes(), key=cpu.key, path=cpu.path)
    except LensError:
        raise
    except Exception as exc:  # onnxruntime raises its own types (Fail, RuntimeException)
        raise LensError(f"ONNX Runtime's CUDA session failed ({exc.__class__.__name__}: {exc})") from exc


def _builders() -> dict[str, Callable[..., Runner]]:
    return {"torch": build_torch_cuda, "onnx": build_ort_cuda}  # looked up at call time: tests replace them


def check_candidate(encoder: TorchImageEncoder, runner: Runner, n: int = 4) -> float:
    """Lowest row cosine of ``runner``'s features to the CPU torch module's on a seeded probe batch.

    Raises:
        LensError: below ``MIN_EXPORT_COSINE`` (0.9999): not the CPU's vectors up to float rounding.
    """
    import torch

    probe = engines._probe_batch(encoder.spec.preprocess.input_size, n)
    with torch.inference_mode():
        expected = encoder.model(
            probe.contiguous(memory_format=torch.channels_last) if encoder.channels_last else probe
        )
    cosine = float(engines._row_cosine(runner(probe.numpy()), expected.float().numpy()).min())
    if not cosine >= engines.MIN_EXPORT_COSINE:
        raise LensError(f"its vectors disagree with torch on the CPU (row cosine {cosine:.6f})")
    return cosine


# ---------------------------------------------------------------------------------------------------- measurement


def measure(runners: dict[str, Runner], probe: np.ndarray) -> dict[str, float]:
    """Images per second of each runner on ``probe``: :data:`WARMUP_CALLS` untimed calls each, then
    :data:`TIMED_ROUNDS` rounds of one timed call per runner, interleaved (so a clock change or another process
    hits every runner alike); median. Each call returns host numpy, so it has synchronised with the GPU."""
    for run in runners.values():
        for _ in range(WARMUP_CALLS):
            run(probe)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(TIMED_ROUNDS):
        for name, run in runners.items():
            started = _clock()
            run(probe)
            times[name].append(max(_clock() - started, 1e-12))
    return {name: len(probe) / statistics.median(t) for name, t in times.items()}


def _version(*packages: str) -> str | None:
    for package in packages:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def device_identity(gpu: engines.GpuInfo) -> dict[str, Any]:
    """What a decision depends on besides the encoder: the GPU, its driver, the libraries (read without importing
    them, so the encoders listing finds decisions cheaply)."""
    return {
        "device": gpu.name,
        "driver": gpu.driver,
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime-gpu", "onnxruntime"),
        "recipe": DECISION_RECIPE,
        "batch": PROBE_BATCH,
    }


def decision_identity(encoder: TorchImageEncoder, gpu: engines.GpuInfo) -> dict[str, Any]:
    """The key's input of one encoder's decision on one GPU."""
    identity = {k: v for k, v in encoder.identity().items() if k not in ("pixels", "quantization")}
    return {"kind": "gpu-engine", **identity, **device_identity(gpu)}


def _decision_path(root: Path, name: str, key: str) -> Path:
    return root / "engines" / name / f"{key}.json"


@dataclass(frozen=True)
class Decision:
    """A recorded choice between the GPU candidates (``python -m lens encoders`` shows it)."""

    chosen: str
    img_per_s: dict[str, float]
    device: str
    created: str = ""

    @property
    def summary(self) -> str:
        figures = ", ".join(f"{engine} {rate:.0f}" for engine, rate in sorted(self.img_per_s.items()))
        return f"{self.chosen} on {self.device} (img/s at batch {PROBE_BATCH}: {figures})"


def _as_decision(meta: dict[str, Any] | None) -> Decision | None:
    if not meta or meta.get("chosen") not in CANDIDATES or not isinstance(meta.get("img_per_s"), dict):
        return None
    try:
        rates = {str(k): float(v) for k, v in meta["img_per_s"].items()}
    except (TypeError, ValueError):
        return None
    identity = meta.get("identity")
    if not isinstance(identity, dict):
        identity = {}
    return Decision(str(meta["chosen"]), rates, str(identity.get("device", "")), str(meta.get("created", "")))


def load_decision(path: Path, key: str) -> Decision | None:
    """The decision recorded at ``path`` when its key is ``key``; ``None`` on a miss or an unreadable file."""
    meta = read_json(path)
    return _as_decision(meta) if meta is not None and meta.get("key") == key else None


def recorded_decision(name: str, cache_dir: str | os.PathLike | None = None) -> Decision | None:
    """The newest decision recorded for encoder ``name`` on this machine's GPU and libraries (any weights), read from
    the sidecars only: what the encoders listing shows before a model is built; ``None`` without a GPU or a record."""
    gpu = engines.visible_gpu()
    if gpu is None:
        return None
    wanted = device_identity(gpu)
    folder = resolve_cache_dir(cache_dir) / "engines" / name
    best: Decision | None = None
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        meta = read_json(path) or {}
        identity = meta.get("identity")
        if not isinstance(identity, dict) or any(identity.get(k) != v for k, v in wanted.items()):
            continue
        decision = _as_decision(meta)
        if decision is not None and (best is None or decision.created > best.created):
            best = decision
    return best


def _record(path: Path, key: str, identity: dict[str, Any], chosen: str, rates: dict[str, float], extra: dict) -> None:
    try:
        write_json(
            path,
            {
                "key": key,
                "identity": identity,
                "chosen": chosen,
                "img_per_s": {k: round(v, 1) for k, v in rates.items()},
                "warmup_calls": WARMUP_CALLS,
                "timed_rounds": TIMED_ROUNDS,
                "created": utc_now(),
                **extra,
            },
        )
    except OSError as exc:  # a read-only cache measures again next time, nothing else
        log.warning("cannot record the GPU engine decision at %s (%s)", path, exc)


# ------------------------------------------------------------------------------------------------------ selection


def _label(engine: str) -> str:
    return "torch" if engine == "torch" else "ONNX Runtime"


def _cpu_fallback(encoder: TorchImageEncoder, why: str, cache_dir: str | os.PathLike | None) -> Runner | None:
    """The CPU default (ONNX Runtime where it is faster and installed, else torch) after the GPU path failed."""
    choice = engines.choose_engine(encoder.spec, engine="auto", precision="fp32", device="cpu")
    log.warning("encoder '%s' runs on the CPU: %s", encoder.name, why)
    encoder.device = "cpu"
    if choice.engine == "onnx":
        try:
            runner = engines.onnx_runner(encoder, cache_dir=cache_dir)
        except LensError as exc:
            why = f"{why}; ONNX Runtime on the CPU failed too ({exc})"
        else:
            encoder.engine, encoder.engine_reason = "onnx", f"CPU fallback: {why}"
            return runner
    encoder.engine, encoder.engine_reason = "torch", f"CPU fallback: {why}"
    return None


def gpu_runner(encoder: TorchImageEncoder, wanted: str, cache_dir: str | os.PathLike | None = None) -> Runner | None:
    """The runner of ``encoder`` on this machine's GPU (the loader that :func:`lens.encoders.engines.attach_engine`
    gives an encoder whose choice says ``device="cuda"``); sets ``encoder.engine``, ``device``, ``engine_reason`` and
    ``engine_figures``. ``None`` means torch on the CPU.

    Args:
        encoder: the encoder (its CPU module is the reference of the agreement check and stays the fallback).
        wanted: ``"auto"`` (measure both, run the faster), ``"torch"`` or ``"onnx"``.
        cache_dir: where decisions and ONNX graphs are cached.
    """
    gpu = engines.visible_gpu()
    if gpu is None:  # hidden since the choice was made ($LENS_DEVICE=cpu)
        return _cpu_fallback(encoder, "no GPU visible", cache_dir)
    builders = _builders()
    order = list(CANDIDATES) if wanted == "auto" else [wanted]
    identity = decision_identity(encoder, gpu)
    key = cache_key(identity)
    path = _decision_path(resolve_cache_dir(cache_dir), encoder.name, key)
    recorded = load_decision(path, key) if wanted == "auto" else None
    if recorded is not None:
        order = [recorded.chosen] + [c for c in order if c != recorded.chosen]

    runners: dict[str, Runner] = {}
    failures: dict[str, str] = {}
    cosines: dict[str, float] = {}
    for engine in order:
        try:
            runner = builders[engine](encoder, cache_dir)
            cosines[engine] = check_candidate(encoder, runner)
        except LensError as exc:
            failures[engine] = str(exc)
            continue
        runners[engine] = runner
        if recorded is not None and engine == recorded.chosen:
            break  # the recorded winner runs: nothing to measure again
    if not runners:
        why = "; ".join(f"{_label(e)} on cuda: {failures[e]}" for e in order)
        if wanted == "onnx" and "onnx" in failures:  # the user asked for ONNX Runtime: on the CPU, then
            try:
                cpu = engines.onnx_runner(encoder, cache_dir=cache_dir)
            except LensError as exc:
                return _cpu_fallback(encoder, f"{why}; ONNX Runtime on the CPU: {exc}", cache_dir)
            encoder.device, encoder.engine, encoder.engine_reason = "cpu", "onnx", f"requested; CPU fallback: {why}"
            return cpu
        return _cpu_fallback(encoder, why, cache_dir)

    encoder.device = "cuda"
    if recorded is not None and recorded.chosen in runners:
        chosen, rates = recorded.chosen, dict(recorded.img_per_s)
        reason = f"recorded decision: {recorded.summary}"
    elif len(runners) == 1:
        (chosen,) = runners
        rates = {}
        missing = [e for e in CANDIDATES if e != chosen and e in failures]
        reason = "requested" if wanted != "auto" else "the only GPU engine that runs"
        if missing:
            reason += f" ({_label(missing[0])} on cuda unavailable: {failures[missing[0]]})"
    else:
        probe = np.random.default_rng(0).standard_normal(
            (PROBE_BATCH, 3, encoder.spec.preprocess.input_size, encoder.spec.preprocess.input_size), dtype=np.float32
        )
        rates = measure(runners, probe)
        chosen = max(rates, key=lambda e: rates[e])
        decision = Decision(chosen, rates, gpu.name)
        _record(path, key, identity, chosen, rates, {"cosine_to_cpu_torch": cosines})
        reason = f"measured faster: {decision.summary}"
        log.info("encoder '%s' on %s: %s", encoder.name, gpu.name, decision.summary)
    for engine in list(runners):
        if engine != chosen:
            del runners[engine]  # the loser's GPU memory goes with it
    encoder.engine, encoder.engine_reason = chosen, f"cuda: {reason}"
    encoder.engine_figures = rates
    return runners[chosen]
