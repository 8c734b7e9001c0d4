"""Inference engines of the torch image encoders: torch itself, or ONNX Runtime on the CPU.

ONNX Runtime's fp32 CPU execution of the CNN encoders is 2-3x faster than lens's tuned torch path (BatchNorm folded,
channels_last, bf16 autocast) and gives fp32 vectors, not bf16 approximations; measured side by side in
``scripts/bench_engines.py``. So ``engine="auto"`` (the default) runs the families in :data:`ONNX_FASTER_FAMILIES` on
ONNX Runtime in fp32 and everything else on torch.

How an encoder reaches ONNX Runtime:

1. :func:`choose_engine` decides from the spec, the request (``engine=`` / ``$LENS_ENGINE``) and the precision.
2. The torch module is exported once (``torch.onnx.export``, TorchScript-based exporter, opset :data:`ONNX_OPSET`,
   dynamic batch) and the graph is checked against torch on a probe batch (cosine >= :data:`MIN_EXPORT_COSINE`
   row by row) before it is trusted.
3. The graph is cached as ``<cache>/onnx/<encoder>/<key>.onnx`` plus a JSON sidecar with its SHA-256. The key covers
   what the graph depends on: encoder name, weights hash, input size, torch / onnx / onnxruntime versions, opset and
   the export recipe. Written atomically; verified on load; re-exported when it does not verify. A fresh export
   removes the encoder's other graphs (made by older versions or other weights: :func:`remove_stale_graphs`).
4. One ``InferenceSession`` per graph and process (CPUExecutionProvider, graph optimisation ALL, intra-op threads =
   the cores lens may use), shared by every encoder object of that graph.

The engine is not part of the embedding cache key: fp32 torch and fp32 ONNX Runtime agree row by row to cosine
>= 0.9999 (tested on every exported encoder), i.e. within float rounding. The precision is (bf16 vectors differ).

On a machine with an NVIDIA GPU (:func:`visible_gpu`), the image families of :data:`GPU_FAMILIES` run on it in fp32:
torch on CUDA or ONNX Runtime's CUDA provider, whichever measures faster (:mod:`lens.encoders.gpu`); the same vectors
up to float rounding, so the same cache keys as the CPU's fp32 path.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lens.encoders.base import EncoderSpec, Precision, TorchImageEncoder
from lens.errors import LensError
from lens.store import atomic_write, bytes_sha256, cache_key, read_json, resolve_cache_dir, utc_now, write_json

if TYPE_CHECKING:  # torch loads when a graph is exported or checked, never on import
    import torch

log = logging.getLogger("lens.encoders")

EngineName = Literal["torch", "onnx"]
ENGINE_ENV = "LENS_ENGINE"
ENGINES = ("auto", "torch", "onnx", "onnx-int8")
ONNX_OPSET = 17
#: Bump when the export recipe changes (wrapper, axes, opset handling): every cached graph is then re-exported.
EXPORT_RECIPE = 1
MIN_EXPORT_COSINE = 0.9999

#: Families that ``engine="auto"`` runs on ONNX Runtime in fp32: measured faster than lens's torch default, one process,
#: side by side, 2 cores, batch 32 (scripts/bench_engines.py, median ratio of interleaved rounds on a shared machine):
#: mobilenet-v2 2.2-3.7x, efficientnet-lite0 3.3-7x, efficientnet-lite2 3.3x (real weights); random weights:
#: resnet50 2.1x, efficientnet-b0 2.2x, efficientnet-b4 1.5x, ViT-B/16 1.6x, CLIP ViT-B/32 1.8x, DINOv2-S 1.6x. For
#: the transformers the gain is mostly fp32 against the spec's bf16 autocast, which is slower than fp32 on a CPU
#: without AMX (ONNX Runtime fp32 / torch fp32: 1.0x, 1.3x, 1.2x).
ONNX_FASTER_FAMILIES = frozenset({"efficientnet-lite", "torchvision-cnn", "timm-vit", "clip", "dinov2"})

ONNXRUNTIME_PIN = "onnxruntime==1.32.0"

#: Encoders offered on ``engine="onnx-int8"`` (opt-in, never a default): ONNX Runtime static int8 quantization (QDQ,
#: per-channel int8 weights, uint8 activations) calibrated on :data:`INT8_CALIBRATION_PHOTOS` catalog photos moved
#: their held-out precision@5 by less than 0.005 (``python -m benchmarks.int8``: the split's 1,600 held-out queries
#: against the whole 8,010-photo catalog; calibration on train-part photos). Measured: mobilenet-v2 0.8058 -> 0.8040
#: (-0.0018; row cosine to fp32 min 0.91, mean 0.98), efficientnet-lite0 0.8096 -> 0.8070 (-0.0026; cosine min 0.95,
#: mean 0.99), efficientnet-lite2 0.8246 -> 0.8241 (-0.0005; cosine min 0.94, mean 0.996). The others (not measured:
#: no weights on the measuring machine, or not CNNs) run ONNX Runtime fp32 under onnx-int8.
INT8_ENCODERS = frozenset({"mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2"})
INT8_CALIBRATION_PHOTOS = 192
#: Bump when the quantization recipe changes: every cached int8 graph is then quantized again.
INT8_RECIPE = 1
QUANTIZATION = f"onnxruntime-static-qdq-int8-v{INT8_RECIPE}"
"""What an int8 encoder's identity says under ``quantization``: int8 vectors are cached apart from fp32 ones."""


#: Families that run on a visible GPU (fp32, torch on CUDA or ONNX Runtime's CUDA provider, :mod:`lens.encoders.gpu`):
#: the torch image encoders with lens's own pixel pipeline, and the test encoder (so the GPU path is testable).
GPU_FAMILIES = ONNX_FASTER_FAMILIES | {"test"}
DEVICE_ENV = "LENS_DEVICE"
"""``cpu`` hides the GPU from lens (``auto``, the default, uses one when the driver shows one)."""
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class GpuInfo:
    """An NVIDIA GPU as the driver describes it (read without importing torch)."""

    name: str
    driver: str


@lru_cache(maxsize=1)
def _driver_gpu(root: str = "/proc/driver/nvidia") -> GpuInfo | None:
    folder = Path(root)
    infos = sorted((folder / "gpus").glob("*/information"))
    if not infos and not Path("/dev/nvidia0").exists():
        return None
    name = "NVIDIA GPU"
    for line in infos[0].read_text(errors="replace").splitlines() if infos else []:
        if line.startswith("Model:"):
            name = line.split(":", 1)[1].strip() or name
    driver = "unknown"
    try:
        version = (folder / "version").read_text(errors="replace")
    except OSError:
        version = ""
    for word in version.split():
        if word.count(".") >= 1 and word.replace(".", "").isdigit():
            driver = word
            break
    return GpuInfo(name, driver)


def visible_gpu() -> GpuInfo | None:
    """The NVIDIA GPU this process may use (the driver's ``/proc/driver/nvidia`` files, or ``/dev/nvidia0``), or
    ``None``: no driver, ``$LENS_DEVICE=cpu``, or ``$CUDA_VISIBLE_DEVICES`` empty / ``-1``. Cheap, torch-free: the
    encoders listing calls it. Whether torch or onnxruntime can use the GPU is found when a model is built."""
    if os.environ.get(DEVICE_ENV, "").strip().lower() == "cpu":
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None
    try:
        return _driver_gpu()
    except OSError:
        return None


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs an encoder, in which precision, and why (shown by ``python -m lens encoders``)."""

    engine: EngineName
    precision: Precision
    reason: str
    strict: bool = False
    """``True`` when the user asked for this engine explicitly: a failure then raises instead of falling back."""
    variant: str = "fp32"
    """The ONNX graph: ``"fp32"``, or ``"int8"`` (``engine="onnx-int8"`` on an encoder of :data:`INT8_ENCODERS`)."""
    device: Device = "cpu"
    """``"cuda"``: the forward pass runs on the GPU (:mod:`lens.encoders.gpu`), fp32."""
    measure: bool = False
    """On a GPU with ``engine="auto"``: torch and ONNX Runtime are measured on the first batch, the faster runs
    (``engine`` is then only the provisional one)."""

    @property
    def label(self) -> str:
        """The engine as ``python -m lens encoders`` lists it: ``torch``, ``onnx`` or ``onnx-int8`` on the CPU;
        ``auto-cuda`` (measured on first use), ``torch-cuda`` or ``onnx-cuda`` on a GPU."""
        if self.device == "cuda":
            return "auto-cuda" if self.measure else f"{self.engine}-cuda"
        return "onnx-int8" if self.engine == "onnx" and self.variant == "int8" else self.engine


def requested_engine(engine: str | None = None) -> str:
    """``engine`` if given, else ``$LENS_ENGINE``, else ``"auto"``; validated.

    Raises:
        LensError: not one of ``auto``, ``torch``, ``onnx``.
    """
    source = "engine" if engine is not None else ENGINE_ENV
    value = (engine if engine is not None else os.environ.get(ENGINE_ENV, "")).strip().lower() or "auto"
    if value not in ENGINES:
        raise LensError(f"{source}={value!r} is not an engine; use one of {', '.join(ENGINES)}.")
    return value


def onnxruntime_installed() -> bool:
    """Whether onnxruntime can be imported (checked without importing it: listing encoders stays cheap)."""
    return importlib.util.find_spec("onnxruntime") is not None


def choose_engine(
    spec: EncoderSpec,
    *,
    engine: str | None = None,
    precision: Precision | None = None,
    device: Device | None = None,
) -> EngineChoice:
    """The engine and precision an encoder will run with.

    Args:
        spec: the registered spec (its ``precision`` is torch's measured default).
        engine: ``"auto"``, ``"torch"`` or ``"onnx"``; ``None`` reads ``$LENS_ENGINE`` (default ``auto``).
        precision: an explicit precision; ``None`` takes the engine's default (fp32 on ONNX Runtime and on a GPU).
        device: ``"cpu"`` ignores a GPU; ``None`` uses one when :func:`visible_gpu` finds it (families of
            :data:`GPU_FAMILIES`, fp32, engines ``auto`` / ``torch`` / ``onnx``).

    Raises:
        LensError: an unknown engine; ``onnx`` with ``bf16``; ``onnx`` without onnxruntime installed.
    """
    wanted = requested_engine(engine)
    if (
        device != "cpu"
        and wanted in ("auto", "torch", "onnx")
        and precision != "bf16"
        and spec.family in GPU_FAMILIES
        and (gpu := visible_gpu()) is not None
    ):
        if wanted == "onnx" and not onnxruntime_installed():
            raise LensError(
                f"engine onnx needs onnxruntime, which is not installed: `pip install {ONNXRUNTIME_PIN}` "
                "(onnxruntime-gpu for its CUDA provider), or use engine torch."
            )
        if wanted == "auto":
            return EngineChoice(
                "torch",
                "fp32",
                f"{gpu.name}: torch or ONNX Runtime CUDA, measured on first use",
                device="cuda",
                measure=True,
            )
        return EngineChoice(wanted, "fp32", f"requested, on {gpu.name}", device="cuda")  # type: ignore[arg-type]
    if wanted == "onnx-int8":
        if spec.name in INT8_ENCODERS and precision != "bf16" and onnxruntime_installed():
            return EngineChoice(
                "onnx", "fp32", "int8 requested (held-out P@5 within 0.005 of fp32)", strict=True, variant="int8"
            )
        fallback = choose_engine(spec, engine="auto", precision=precision)
        why = "not measured within 0.005 of fp32 held-out P@5" if spec.name not in INT8_ENCODERS else "unavailable"
        return replace(fallback, reason=f"int8 {why} for {spec.name}: {fallback.reason}")
    if wanted == "torch":
        return EngineChoice("torch", precision or spec.precision, "requested", strict=True)
    if wanted == "onnx":
        if precision == "bf16":
            raise LensError(
                f"The ONNX engine runs '{spec.name}' in fp32 only; drop precision bf16 or use engine torch."
            )
        if not onnxruntime_installed():
            raise LensError(
                f"engine onnx needs onnxruntime, which is not installed: `pip install {ONNXRUNTIME_PIN}` "
                "(or use engine torch)."
            )
        return EngineChoice("onnx", "fp32", "requested", strict=True)
    if spec.family not in ONNX_FASTER_FAMILIES:
        return EngineChoice("torch", precision or spec.precision, f"torch measured as fast or faster for {spec.family}")
    if precision == "bf16":
        return EngineChoice("torch", "bf16", "bf16 requested (ONNX Runtime runs fp32)")
    if not onnxruntime_installed():
        return EngineChoice(
            "torch", precision or spec.precision, f"onnxruntime not installed (`pip install {ONNXRUNTIME_PIN}`)"
        )
    return EngineChoice("onnx", "fp32", "measured faster than torch")


def attach_engine(encoder: Any, choice: EngineChoice, cache_dir: str | os.PathLike | None = None) -> None:
    """Make ``encoder`` run on ``choice.engine``; the ONNX session is built lazily, on the first batch.

    Encoders that are not a plain :class:`TorchImageEncoder` forward stay on torch (with the reason recorded). On a
    GPU (``choice.device == "cuda"``) the runner comes from :func:`lens.encoders.gpu.gpu_runner`, also on the first
    batch (measuring torch against ONNX Runtime there when ``choice.measure``).
    """
    if choice.device == "cuda" and isinstance(encoder, TorchImageEncoder):
        from lens.encoders import gpu

        wanted = "auto" if choice.measure else choice.engine
        encoder.set_engine(
            choice.engine,
            choice.reason,
            loader=lambda: gpu.gpu_runner(encoder, wanted, cache_dir=cache_dir),
            device="cuda",
        )
        return
    if choice.engine == "torch":
        if isinstance(encoder, TorchImageEncoder):
            encoder.set_engine("torch", choice.reason)
        return
    if not isinstance(encoder, TorchImageEncoder):
        if choice.strict:
            raise LensError(f"Encoder '{encoder.name}' cannot run on ONNX Runtime (not a torch image encoder).")
        return
    if choice.variant == "int8":
        encoder.quantization = QUANTIZATION  # part of the identity: int8 vectors never share fp32's cache entries
    encoder.set_engine(
        "onnx",
        choice.reason,
        loader=lambda: onnx_runner(encoder, cache_dir=cache_dir, variant=choice.variant),
        strict=choice.strict,
    )


# ----------------------------------------------------------------------------------------------------------- threads


THREADS_ENV = "LENS_THREADS"


def lens_threads() -> int:
    """The number of cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where missing), or
    ``$LENS_THREADS`` when set (a Ray worker that shares a machine with others gets its share)."""
    override = os.environ.get(THREADS_ENV, "").strip()
    if override.isdigit() and int(override) > 0:
        return int(override)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------------------------------------------ export


def _export_identity(encoder: TorchImageEncoder, variant: str) -> dict[str, Any]:
    import onnxruntime
    import torch

    try:
        import onnx

        onnx_version = onnx.__version__
    except ImportError:  # the TorchScript exporter does not need it; quantization does
        onnx_version = None
    identity = {k: v for k, v in encoder.identity().items() if k not in ("precision", "pixels", "quantization")}
    return {
        "kind": "onnx",
        **identity,
        "input_size": encoder.spec.preprocess.input_size,
        "module": type(encoder.model).__qualname__,
        "torch": torch.__version__,
        "onnx": onnx_version,
        "onnxruntime": onnxruntime.__version__,
        "opset": ONNX_OPSET,
        "recipe": EXPORT_RECIPE,
        "variant": variant,
    }


def export_onnx(model: torch.nn.Module, input_size: int) -> bytes:
    """The ONNX graph of ``model`` (``(N, 3, S, S)`` float32 pixels -> ``(N, dim)`` features), batch axis dynamic.

    Uses the TorchScript-based exporter (``dynamo=False``): it needs no extra package (the dynamo exporter needs
    onnxscript) and its graphs of lens's encoders agree with torch to cosine 1.0000. torch >= 2.9 warns that it is
    deprecated; the warning is silenced here and :func:`onnx_runner` checks every exported graph against torch.
    """
    import torch

    from lens.encoders.wrappers import _Flat

    buffer = io.BytesIO()
    probe = torch.zeros(2, 3, input_size, input_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Flat(model).eval(),
            (probe,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to a file object too
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["pixels"],
            output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            do_constant_folding=True,
        )
    return buffer.getvalue()


def _onnx_paths(root: Path, name: str, key: str) -> tuple[Path, Path]:
    folder = root / "onnx" / name
    return folder / f"{key}.onnx", folder / f"{key}.json"


def _load_cached(graph_path: Path, meta_path: Path, key: str) -> bytes | None:
    meta = read_json(meta_path)
    if meta is None or meta.get("key") != key or not graph_path.is_file():
        return None
    try:
        data = graph_path.read_bytes()
    except OSError:
        return None
    if bytes_sha256(data) != meta.get("sha256"):
        log.warning("%s does not match the checksum in its sidecar; exporting it again.", graph_path)
        return None
    return data


def _store(graph_path: Path, meta_path: Path, key: str, identity: dict[str, Any], data: bytes) -> None:
    try:
        atomic_write(graph_path, lambda tmp: tmp.write_bytes(data))  # graph first, sidecar last
        write_json(
            meta_path,
            {"key": key, "identity": identity, "sha256": bytes_sha256(data), "bytes": len(data), "created": utc_now()},
        )
    except OSError as exc:  # a read-only cache costs an export per process, nothing else
        log.warning("cannot cache the ONNX graph at %s (%s); it will be exported again next time.", graph_path, exc)


def remove_stale_graphs(folder: Path, keep: str, variant: str = "fp32") -> list[Path]:
    """Delete the graphs of ``folder`` (one encoder's) of this ``variant`` other than ``keep``; returns them.

    Called after a fresh export: every other graph of the encoder was made by another torch / onnx / onnxruntime /
    opset / export recipe or other weights, so no process of this installation loads it again (about 14-330 MB each).
    A graph whose sidecar is missing or unreadable is removed with it; other variants are left alone.
    """
    removed = []
    for graph in sorted(folder.glob("*.onnx")):
        if graph.stem == keep:
            continue
        meta = read_json(graph.with_suffix(".json")) or {}
        if (meta.get("identity") or {}).get("variant", variant) != variant:
            continue
        for path in (graph, graph.with_suffix(".json")):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # a read-only cache keeps them; nothing else depends on this
                log.warning("cannot remove the stale ONNX graph %s (%s)", path, exc)
        removed.append(graph)
    if removed:
        log.info("removed %d stale ONNX graph(s) of %s", len(removed), folder.name)
    return removed


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def _probe_batch(input_size: int, n: int = 4) -> torch.Tensor:
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, input_size, input_size, generator=generator)


# ----------------------------------------------------------------------------------------------------------- session


#: Families whose CPU runner splits a batch over :func:`lens_threads` single-threaded sessions run side by side,
#: instead of one session that parallelises every operator over the cores. An operator split over threads ends at
#: a barrier, so a thread that the OS preempts (for the catalog pass's decode threads, or another process) stalls the
#: others, and the CNNs' many small depthwise operators pay the fork/join each time. Measured side by side on 2 cores
#: (320 catalog photos, batch 32, interleaved rounds, load 2-3), new / old: efficientnet-lite0 forward 1.28x, catalog
#: pass 1.24x (20 % less CPU); mobilenet-v2 1.05x / 1.05x; efficientnet-lite2 1.04x / 1.04x; the same bits (max abs
#: difference 0). Transformers (few, large matmuls) keep one session.
BATCH_PARALLEL_FAMILIES = frozenset({"efficientnet-lite", "torchvision-cnn"})
#: At most this many sessions (each holds its own copy of the weights); on more cores each gets cores / sessions
#: intra-op threads. Measured only on 2 cores.
MAX_REPLICAS = 4


def session_options(threads: int | None = None) -> Any:
    """CPU session options: graph optimisation ALL, ``threads`` intra-op threads (default :func:`lens_threads`),
    sequential."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or lens_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    # Idle worker threads sleep instead of spinning: measured 1.3x faster forward on a loaded 2-core machine and no
    # CPU taken from the decode threads that overlap the forward pass (spinning threads compete with them).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRunner:
    """CPU ONNX Runtime sessions of one exported encoder: ``runner(pixels)`` -> ``(N, dim)`` float32 features.

    With ``replicas`` > 1 (the families of :data:`BATCH_PARALLEL_FAMILIES`, one per core) each replica is a
    single-threaded session (``cores // replicas`` threads on more than :data:`MAX_REPLICAS` cores) and a batch is split into that many consecutive slices run side by side (the calling
    thread runs the first); otherwise one session runs with :func:`lens_threads` intra-op threads. The same graph
    either way, so the same features, bit for bit. Features are the module's raw output (not L2-normalised).
    Thread-safe (``InferenceSession.run`` is).
    """

    def __init__(self, graph: bytes, *, key: str = "", path: Path | None = None, replicas: int = 1) -> None:
        import onnxruntime as ort

        self.key = key
        self.path = path
        threads = max(1, lens_threads() // replicas) if replicas > 1 else None
        self.sessions = [
            ort.InferenceSession(graph, session_options(threads), providers=["CPUExecutionProvider"])
            for _ in range(max(1, replicas))
        ]
        self.session = self.sessions[0]
        self.input_name = self.session.get_inputs()[0].name
        self._pool: ThreadPoolExecutor | None = None
        if len(self.sessions) > 1:
            self._pool = ThreadPoolExecutor(len(self.sessions) - 1, thread_name_prefix="lens-onnx")

    def _run(self, session: Any, pixels: np.ndarray) -> np.ndarray:
        (features,) = session.run(None, {self.input_name: pixels})
        return np.asarray(features, dtype=np.float32).reshape(len(pixels), -1)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels``: ``(N, 3, S, S)`` float32 (normalised as the spec says). Returns ``(N, dim)`` float32."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        parts = min(len(self.sessions), len(pixels))
        if parts <= 1 or self._pool is None:
            return self._run(self.session, pixels)
        slices = np.array_split(pixels, parts)  # consecutive rows: contiguous views, no copy
        futures = [self._pool.submit(self._run, s, x) for s, x in zip(self.sessions[1:parts], slices[1:])]
        first = self._run(self.sessions[0], slices[0])
        return np.concatenate([first, *(future.result() for future in futures)])


def _replicas(encoder: TorchImageEncoder) -> int:
    """Sessions of ``encoder``'s CPU runner: one per core (at most :data:`MAX_REPLICAS`) for
    :data:`BATCH_PARALLEL_FAMILIES`, else one."""
    return min(lens_threads(), MAX_REPLICAS) if encoder.spec.family in BATCH_PARALLEL_FAMILIES else 1


_SESSIONS: dict[str, OnnxRunner] = {}
_SESSIONS_LOCK = threading.Lock()


def onnx_runner(
    encoder: TorchImageEncoder, *, cache_dir: str | os.PathLike | None = None, variant: str = "fp32"
) -> OnnxRunner:
    """The ONNX Runtime session of ``encoder``: from the process's sessions, the disk cache, or a fresh export.

    A fresh export is checked against the torch module on a probe batch before it is cached or used.

    Raises:
        LensError: the export failed or the exported graph disagrees with torch (callers fall back to torch).
    """
    if variant == "int8":
        return _int8_runner(encoder, cache_dir)
    if variant != "fp32":
        raise LensError(f"unknown ONNX variant {variant!r}: use 'fp32' or 'int8'.")
    identity = _export_identity(encoder, variant)
    key = cache_key(identity)
    with _SESSIONS_LOCK:
        if key in _SESSIONS:
            return _SESSIONS[key]
        graph_path, meta_path = _onnx_paths(resolve_cache_dir(cache_dir), encoder.name, key)
        graph = _load_cached(graph_path, meta_path, key)
        if graph is not None:
            try:
                runner = OnnxRunner(graph, key=key, path=graph_path, replicas=_replicas(encoder))
            except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types: treat as a cache miss
                log.warning("cached ONNX graph %s does not load (%s); exporting it again.", graph_path, exc)
                graph = None
        if graph is None:
            graph, runner = _export_and_check(encoder, key)
            _store(graph_path, meta_path, key, identity, graph)
            remove_stale_graphs(graph_path.parent, key, variant)
            runner.path = graph_path
        _SESSIONS[key] = runner
        return runner


def _export_and_check(encoder: TorchImageEncoder, key: str) -> tuple[bytes, OnnxRunner]:
    import torch

    size = encoder.spec.preprocess.input_size
    try:
        graph = export_onnx(encoder.model, size)
        runner = OnnxRunner(graph, key=key, replicas=_replicas(encoder))
    except Exception as exc:  # the exporter raises many types (tracer, unsupported op, onnx checker)
        raise LensError(f"ONNX export of '{encoder.name}' failed ({exc.__class__.__name__}: {exc})") from exc
    probe = _probe_batch(size)
    with torch.no_grad():
        expected = encoder.model(
            probe.contiguous(memory_format=torch.channels_last) if encoder.channels_last else probe
        )
    cosine = _row_cosine(runner(probe.numpy()), expected.float().numpy())
    if not cosine.min() >= MIN_EXPORT_COSINE:
        raise LensError(
            f"the ONNX graph of '{encoder.name}' disagrees with torch (row cosine {cosine.min():.6f} < "
            f"{MIN_EXPORT_COSINE})"
        )
    return graph, runner


def _int8_runner(encoder: TorchImageEncoder, cache_dir: str | os.PathLike | None) -> OnnxRunner:
    """The int8 session of ``encoder``: its fp32 graph quantized by :func:`quantize_int8`, cached beside it.

    The int8 graph's key is the fp32 graph's key plus :data:`INT8_RECIPE`; the calibration photos are recorded in its
    sidecar. It is quantized on first use from ``encoder.calibration()`` (``lens.embed.embed_catalog`` sets that to
    :data:`INT8_CALIBRATION_PHOTOS` photos spread over the catalog it embeds); an encoder without calibration finds
    the cached graph or raises.

    Raises:
        LensError: no cached int8 graph and no calibration photos, or quantization failed.
    """
    fp32 = onnx_runner(encoder, cache_dir=cache_dir)
    identity = {"kind": "onnx-int8", "fp32": fp32.key, "recipe": INT8_RECIPE, "variant": "int8"}
    key = cache_key(identity)
    with _SESSIONS_LOCK:
        if key in _SESSIONS:
            return _SESSIONS[key]
        graph_path, meta_path = _onnx_paths(resolve_cache_dir(cache_dir), encoder.name, key)
        graph = _load_cached(graph_path, meta_path, key)
        runner = None
        if graph is not None:
            try:
                runner = OnnxRunner(graph, key=key, path=graph_path, replicas=_replicas(encoder))
            except Exception as exc:  # onnxruntime raises its own types: a cache miss
                log.warning("cached int8 graph %s does not load (%s); quantizing again.", graph_path, exc)
        if runner is None:
            calibration = encoder.calibration() if encoder.calibration is not None else None
            if calibration is None:
                raise LensError(
                    f"'{encoder.name}' on engine onnx-int8 is quantized on catalog photos the first time it embeds a "
                    "catalog: run `python -m lens embed --engine onnx-int8 --models "
                    f"{encoder.name}` first (or use engine onnx)."
                )
            if fp32.path is None or not fp32.path.is_file():
                raise LensError(f"the fp32 ONNX graph of '{encoder.name}' is not cached, so it cannot be quantized.")
            try:
                graph = quantize_int8(fp32.path.read_bytes(), calibration)
                runner = OnnxRunner(graph, key=key, path=graph_path, replicas=_replicas(encoder))
            except Exception as exc:  # quantization raises many types (onnx checker, calibrator)
                raise LensError(
                    f"int8 quantization of '{encoder.name}' failed ({exc.__class__.__name__}: {exc})"
                ) from exc
            identity["calibration"] = {"photos": len(calibration), "sha256": bytes_sha256(calibration.tobytes())}
            _store(graph_path, meta_path, key, identity, graph)
            remove_stale_graphs(graph_path.parent, key, "int8")
        _SESSIONS[key] = runner
        return runner


def clear_sessions() -> None:
    """Forget the process's ONNX sessions (tests; a later call loads them from the disk cache)."""
    with _SESSIONS_LOCK:
        _SESSIONS.clear()


# ------------------------------------------------------------------------------------------------------------ int8


def quantize_int8(graph: bytes, calibration: np.ndarray, *, batch_size: int = 16) -> bytes:
    """Static int8 quantization (QDQ, per-channel int8 weights, uint8 activations) of an fp32 encoder graph.

    Offered as ``engine="onnx-int8"`` for :data:`INT8_ENCODERS` only, never a default. Needs the ``onnx`` package.

    Args:
        graph: the fp32 ONNX graph (:func:`export_onnx`).
        calibration: ``(N, 3, S, S)`` float32 preprocessed catalog photos (about 200).
        batch_size: calibration batch size.
    """
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                [{"pixels": calibration[i : i + batch_size]} for i in range(0, len(calibration), batch_size)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(graph)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation of the quantized graph, not a requirement
            pre = src
        quantize_static(
            str(pre),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
        return dst.read_bytes()


FeatureExtractor = Callable[[np.ndarray], np.ndarray]
