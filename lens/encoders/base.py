"""The encoder contract: images (and, for some encoders, texts) in, L2-normalised float32 numpy out."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from lens.errors import LensError
from lens.vectors import l2_normalize

if TYPE_CHECKING:  # torch loads when a model is built or run, never on import (the dashboard's cold start)
    import torch

Precision = Literal["fp32", "bf16"]
_log = logging.getLogger("lens.encoders")
ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each batch; the CLI passes tqdm, the dashboard ``st.progress``."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Seed of every ``pretrained=False`` (random-init) build, so that two such builds give identical encoders.
RANDOM_INIT_SEED = 0
#: ``weights_id`` of a random-init build (part of cache keys, so never confused with a checkpoint's hash).
RANDOM_WEIGHTS_ID = f"random-seed{RANDOM_INIT_SEED}"
#: How pixels are made from a file, part of every encoder identity (``identity()["pixels"]``): JPEGs larger than twice the resize size
#: are decoded with Pillow's ``draft`` (libjpeg's DCT scaling), and resize + centre crop is one ``Image.resize`` with
#: a box. Both move a few pixel values by one or two levels compared with the v0 pipeline (full decode, resize, then
#: crop), so the vectors move slightly and every embedding cache key changed with this version.
PIXEL_PIPELINE = "draft-box-v1"
#: Images per forward pass of the catalog pass by default: on the CPU, and on a GPU (where a batch of 32 leaves the
#: device idle between kernel launches; 128 keeps it busy at a few hundred MB of activations for the CNNs).
CPU_BATCH = 32
GPU_BATCH = 128


@dataclass(frozen=True)
class Preprocess:
    """How a PIL image becomes the model's input tensor; travels with the weights, never hard-coded in a page.

    The image is resized so that its shorter side is ``resize_size`` (aspect kept), centre-cropped to
    ``input_size`` x ``input_size``, scaled to [0, 1] and normalised with ``mean`` / ``std``. ``resize_size`` is
    ``resize`` when given (torchvision and Hugging Face state it as a pixel size: 232 for ResNet-50 V2 weights),
    else ``floor(input_size / crop_pct)`` (timm's convention).
    """

    input_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    resize: int | None = None

    @property
    def resize_size(self) -> int:
        if self.resize is not None:
            return self.resize
        return int(math.floor(self.input_size / self.crop_pct))

    def key(self) -> dict:
        key = asdict(self)
        if key["resize"] is None:
            # Absent rather than null, so that cache keys written before the field existed stay valid.
            del key["resize"]
        return key


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is, independent of whether its weights are on this machine.

    Attributes:
        name: registry name, e.g. ``"efficientnet-lite0"``.
        family: architecture family (``"efficientnet-lite"``, ``"torchvision-cnn"``, ``"test"``).
        dim: length of the output vectors.
        preprocess: input transform that matches the weights.
        weights: where the weights come from, in words.
        license: licence of the weights.
        modalities: ``("image",)`` or ``("image", "text")``.
        pooling: how the feature map becomes a vector.
        description: one line for tables.
        precision: default inference precision on the CPU (measured; see README).
        channels_last: whether to run the convolution stack in channels_last memory format.
    """

    name: str
    family: str
    dim: int
    preprocess: Preprocess = field(default_factory=Preprocess)
    weights: str = ""
    license: str = ""
    modalities: tuple[str, ...] = ("image",)
    pooling: str = "global average pooling"
    description: str = ""
    precision: Precision = "bf16"
    channels_last: bool = True

    @property
    def supports_text(self) -> bool:
        return "text" in self.modalities


class Encoder:
    """Base class of every encoder.

    Subclasses implement :meth:`_forward_images` on a preprocessed batch. :meth:`embed_images` takes PIL images of
    any mode and size and returns an ``(N, dim)`` float32 array whose rows have unit L2 norm.
    """

    spec: EncoderSpec
    weights_id: str
    """Content hash of the loaded weights (part of every cache key)."""

    def __init__(self, spec: EncoderSpec, weights_id: str, *, precision: Precision | None = None) -> None:
        self.spec = spec
        self.weights_id = weights_id
        self.precision: Precision = precision or spec.precision

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return self.spec.dim

    build_record: object | None = None
    """Set by ``create_encoder`` on a build with its default options (``lens.encoders._registry.BuildRecord``): what
    ``remember_identity`` needs to record this encoder's identity for the next process; ``None`` otherwise."""

    quantization: str | None = None
    """Set on an encoder that runs an int8 graph (``engine="onnx-int8"``): its vectors differ beyond float rounding,
    so it enters the identity; ``None`` (every other encoder) leaves the identity as it was."""

    def identity(self) -> dict:
        """Everything that changes the vectors this encoder produces: part of the embedding cache key."""
        identity = {
            "encoder": self.spec.name,
            "weights": self.weights_id,
            "preprocess": self.spec.preprocess.key(),
            "pixels": PIXEL_PIPELINE,
            "precision": self.precision,
            "dim": self.spec.dim,
        }
        if self.quantization:
            identity["quantization"] = self.quantization
        return identity

    def embed_images(
        self,
        images: Sequence[Image.Image],
        *,
        batch_size: int = 32,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Embed images.

        Args:
            images: PIL images in any mode; each is converted to RGB here.
            batch_size: images per forward pass.
            progress: optional ``progress(done, total)`` callback.

        Returns:
            ``(len(images), dim)`` float32 array, rows L2-normalised.
        """
        if batch_size < 1:
            raise LensError(f"batch_size must be a positive integer, got {batch_size}.")
        total = len(images)
        out = np.empty((total, self.dim), dtype=np.float32)
        for start in range(0, total, batch_size):
            batch = images[start : start + batch_size]
            out[start : start + len(batch)] = self._embed_batch(batch)
            if progress is not None:
                progress(min(start + batch_size, total), total)
        return out

    def embed_texts(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Embed texts into the image space; only text-capable encoders (``spec.supports_text``) implement it.

        Returns:
            ``(len(texts), dim)`` float32 array, rows L2-normalised, comparable by cosine with ``embed_images``.
        """
        raise LensError(
            f"Encoder '{self.name}' embeds images only; pick a text-capable encoder for text queries "
            "(`python -m lens encoders` lists them)."
        )

    def base_and_head(self) -> tuple[Encoder, Callable[[np.ndarray], np.ndarray]] | None:
        """``(base, head)`` when this encoder is a trained head on a frozen encoder, i.e. ``embed_images(x)`` equals
        ``head(base.embed_images(x))`` up to float rounding: ``embed_catalog`` then embeds a catalog from the base's
        (usually cached) vectors instead of decoding every image again. ``None`` (the default): from the images."""
        return None

    def parts_and_join(self) -> tuple[list[Encoder], Callable[[Sequence[np.ndarray]], np.ndarray]] | None:
        """``(parts, join)`` when this encoder combines other encoders' vectors, i.e. ``embed_images(x)`` equals
        ``join([p.embed_images(x) for p in parts])``: ``embed_catalog`` then builds a catalog's vectors from the
        parts' (usually cached) ones. ``None`` (the default): from the images."""
        return None

    def _embed_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        raise NotImplementedError


MAX_TEXT_CHARS = 1000
"""Longest text query embedded: a product description, not a document (the text models read 128 tokens at most)."""


def check_texts(texts: Sequence[str]) -> list[str]:
    """Validate text queries before tokenising them: a list of non-empty strings of at most :data:`MAX_TEXT_CHARS`.

    Raises:
        LensError: a bare string instead of a list, a non-string item, an empty / whitespace-only text, or a text
            longer than :data:`MAX_TEXT_CHARS` characters.
    """
    if isinstance(texts, str):
        raise LensError(f"embed_texts takes a list of texts, got a single string {texts!r}: pass [{texts!r}].")
    checked = list(texts)
    for i, text in enumerate(checked):
        if not isinstance(text, str):
            raise LensError(f"text query #{i} is a {type(text).__name__}, not a string.")
        if not text.strip():
            raise LensError(
                f"text query #{i} is empty{' (only whitespace)' if text else ''}: type a few words that describe "
                "the product, e.g. 'red summer dress'."
            )
        if len(text) > MAX_TEXT_CHARS:
            raise LensError(
                f"text query #{i} is {len(text):,} characters long; describe the product in at most "
                f"{MAX_TEXT_CHARS:,} characters (a few words work best, e.g. 'red summer dress')."
            )
    return checked


@contextlib.contextmanager
def random_init(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Seed torch for a random-init build without disturbing the caller's RNG stream."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


_THREADS_LOCK = threading.Lock()


@contextlib.contextmanager
def single_query_threads() -> Iterator[None]:
    """Run a single-query forward pass on one intra-op thread (the dashboard's query path).

    One image is too little work to split: on a busy 2-core machine, two OpenMP threads waiting for each other made
    one EfficientNet-Lite0 query take 1.9 s instead of 16 ms (measured). The lock keeps concurrent sessions from
    restoring each other's setting; a catalog being embedded meanwhile runs single-threaded for those milliseconds.
    """
    import torch

    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def state_dict_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """A short content hash of a model's weights, stable across runs and machines."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(json.dumps([str(tensor.dtype), list(tensor.shape)]).encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:16]


def resize_crop(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """One image -> ``(S, S, 3)`` uint8: RGB, shorter side resized to ``preprocess.resize_size``, centre-cropped to S.

    Resize and crop are one ``Image.resize`` with a source box (the crop's footprint in the source), so only the
    S x S output pixels are computed, on uint8; the same filter and sampling positions as resizing the whole image
    and then cropping it (torchvision's ``resize`` + ``center_crop``), up to the rounding of the box.
    """
    from lens.images import to_rgb

    image = to_rgb(image)
    size, resize = preprocess.input_size, preprocess.resize_size
    resample = Image.Resampling.BICUBIC if preprocess.interpolation == "bicubic" else Image.Resampling.BILINEAR
    width, height = image.size
    # torchvision's resize(int): the shorter side becomes `resize`, the longer one int(resize * long / short).
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    if new_w < size or new_h < size:  # crop larger than the resized image (crop_pct > 1): torchvision pads
        return _resize_then_crop(image, preprocess, (new_w, new_h), resample)
    left, top = int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(image.resize((size, size), resample, box=box))


def _resize_then_crop(
    image: Image.Image, preprocess: Preprocess, new_size: tuple[int, int], resample: Image.Resampling
) -> np.ndarray:
    from torchvision.transforms import functional as TF

    resized = image.resize(new_size, resample)
    cropped = TF.center_crop(resized, [preprocess.input_size, preprocess.input_size])
    return np.asarray(cropped.convert("RGB"))


def pixels_to_batch(pixels: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """``(N, S, S, 3)`` uint8 -> normalised ``(N, 3, S, S)`` float32 tensor, one vectorised pass per channel.

    ``(x / 255 - mean) / std`` is computed as ``x * (1 / (255 std)) - mean / std``, straight from the uint8 pixels
    into a contiguous NCHW float32 array (what ONNX Runtime and the transformers take; CNNs on torch convert it to
    channels_last). Measured 5x faster than torch's permute + cast + normalise on 2 cores (0.12 vs 0.62 ms/image).
    """
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise LensError(f"pixels_to_batch takes (N, S, S, 3) uint8 pixels, got {pixels.dtype} {pixels.shape}.")
    mean = np.asarray(preprocess.mean, dtype=np.float64)
    std = np.asarray(preprocess.std, dtype=np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    shift = (mean / std).astype(np.float32)
    n, height, width, _ = pixels.shape
    out = np.empty((n, 3, height, width), dtype=np.float32)
    for channel in range(3):
        np.multiply(pixels[..., channel], scale[channel], out=out[:, channel], dtype=np.float32)
        out[:, channel] -= shift[channel]
    import torch

    return torch.from_numpy(out)


def preprocess_images(images: Sequence[Image.Image], preprocess: Preprocess) -> torch.Tensor:
    """PIL images -> normalised ``(N, 3, S, S)`` float32 tensor, following ``preprocess``.

    Every image is converted to RGB first (the safe loader already does it; this keeps direct callers correct).
    """
    if not len(images):
        import torch

        size = preprocess.input_size
        return torch.empty((0, 3, size, size), dtype=torch.float32)
    return pixels_to_batch(np.stack([resize_crop(image, preprocess) for image in images]), preprocess)


class TorchImageEncoder(Encoder):
    """An encoder around an ``nn.Module`` that maps a normalised image batch to pooled ``(N, dim)`` features.

    The forward pass runs on one of two engines (:mod:`lens.encoders.engines` chooses; ``engine`` says which):

    - ``"torch"``: under ``torch.inference_mode``; ``precision="bf16"`` uses CPU autocast to bfloat16. CNNs run in
      channels_last memory format (``spec.channels_last``) and, with ``fold_bn`` in fp32, with BatchNorm folded into
      the convolutions (:func:`fold_batchnorm`).
    - ``"onnx"``: the module exported to ONNX and run by ONNX Runtime on the CPU, fp32 only. The session is built
      on the first batch; when that fails the encoder falls back to torch fp32 (same vectors up to float rounding)
      and logs why, unless the ONNX engine was requested explicitly.
    """

    engine: str = "torch"
    """``"torch"`` or ``"onnx"``: the engine that runs (or, before the first batch, will run) the forward pass."""
    engine_reason: str = ""
    """Why this engine, in words (``python -m lens encoders`` shows it)."""
    device: str = "cpu"
    """``"cpu"`` or ``"cuda"``: where the forward pass runs (on a GPU, set when the runner is built)."""
    engine_figures: dict[str, float] | None = None
    """On a GPU with ``engine="auto"``: images per second of each engine measured (or recorded) at the choice."""
    calibration: Callable[[], np.ndarray] | None = None
    """For an int8 encoder: returns ``(N, 3, S, S)`` float32 preprocessed catalog photos to quantize its graph on
    (set by ``lens.embed.embed_catalog``); ``None`` elsewhere."""

    def __init__(
        self,
        spec: EncoderSpec,
        model: torch.nn.Module,
        weights_id: str,
        *,
        precision: Precision | None = None,
        fold_bn: bool = False,
    ) -> None:
        super().__init__(spec, weights_id, precision=precision)
        if self.precision not in ("fp32", "bf16"):
            raise LensError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}.")
        self.model = model.eval()
        if fold_bn and self.precision == "fp32":
            # Only in fp32: folded weights rounded to bfloat16 lose accuracy (cosine to fp32 fell from 0.99 to 0.91).
            self.model = fold_batchnorm(self.model)
        self.channels_last = spec.channels_last
        if self.channels_last:
            import torch

            self.model = self.model.to(memory_format=torch.channels_last)
        self._engine_lock = threading.Lock()
        self._runner: Callable[[np.ndarray], np.ndarray] | None = None
        self._runner_loader: Callable[[], Callable[[np.ndarray], np.ndarray] | None] | None = None
        self._engine_strict = False

    def set_engine(
        self,
        engine: str,
        reason: str,
        *,
        loader: Callable[[], Callable[[np.ndarray], np.ndarray] | None] | None = None,
        strict: bool = False,
        device: str = "cpu",
    ) -> None:
        """Run the forward pass on ``engine``; ``loader()`` builds the runner on the first batch.

        Args:
            engine: ``"torch"`` or ``"onnx"``.
            reason: why, in words.
            loader: returns ``runner(pixels (N, 3, S, S) float32) -> (N, dim) float32 features``, or ``None`` for
                this module on the CPU; raises ``LensError`` when it cannot. Required for ``"onnx"``; for
                ``"torch"`` it builds the GPU runner (``device="cuda"``), whose loader may also switch the engine
                (:func:`lens.encoders.gpu.gpu_runner`).
            strict: raise the loader's error instead of falling back to torch on the CPU.
            device: ``"cpu"`` or ``"cuda"`` (where the loader's runner will run).
        """
        if engine not in ("torch", "onnx") or (engine == "onnx" and loader is None) or device not in ("cpu", "cuda"):
            raise LensError(f"engine must be 'torch', or 'onnx' with a loader, got {engine!r} on {device!r}.")
        with self._engine_lock:
            self.engine, self.engine_reason, self.device = engine, reason, device
            self._runner, self._runner_loader, self._engine_strict = None, loader, strict
            self.engine_figures = None

    def runner(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The runner of the forward pass (ONNX Runtime, or a GPU runner), built on first use; ``None`` when this
        module runs on torch on the CPU. A loader that fails falls back to torch fp32 on the CPU (logged), unless
        the engine was requested explicitly."""
        if self._runner_loader is not None:
            with self._engine_lock:
                loader = self._runner_loader
                if loader is not None:
                    try:
                        self._runner = loader()
                    except LensError as exc:
                        if self._engine_strict:
                            raise
                        _log.warning("encoder '%s' runs on torch fp32: %s", self.name, exc)
                        self.engine, self.engine_reason, self.device = "torch", f"fallback: {exc}", "cpu"
                        self._runner = None
                    self._runner_loader = None
        return self._runner

    def onnx_runner(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The ONNX Runtime runner of this encoder (built on first use), or ``None`` when it runs on torch.

        A trained model whose backbone is this encoder can feed it preprocessed batches and share its session.
        """
        if self.engine != "onnx" and self.device != "cuda":
            return None
        runner = self.runner()
        return runner if self.engine == "onnx" else None

    @property
    def batch_size(self) -> int:
        """Images per forward pass of the catalog pass when the caller does not say: 32 on the CPU, more on a GPU
        (:data:`GPU_BATCH`), where a small batch leaves the device idle between launches."""
        return GPU_BATCH if self.device == "cuda" else CPU_BATCH

    def _embed_batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        batch = preprocess_images(images, self.spec.preprocess)
        return self.embed_tensor(batch)

    def embed_tensor(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Embed an already preprocessed ``(N, 3, S, S)`` float32 batch (tensor or array; read, never kept);
        returns L2-normalised float32 ``(N, dim)``."""
        import torch

        runner = self.runner() if self.precision == "fp32" else None
        if runner is not None:
            features = runner(batch.numpy() if isinstance(batch, torch.Tensor) else batch)
        else:
            if not isinstance(batch, torch.Tensor):
                batch = torch.from_numpy(batch)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with (
                torch.inference_mode(),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"),
            ):
                output = self.model(batch)
            features = output.float().reshape(output.shape[0], -1).numpy()
        if features.shape[1] != self.dim:
            raise LensError(f"encoder '{self.name}' produced {features.shape[1]}-d features, spec says {self.dim}.")
        return l2_normalize(features)


def fold_conv_bn(parent: torch.nn.Module, conv_name: str, bn_name: str) -> None:
    """Fold an eval-mode BatchNorm into the convolution before it and replace the BatchNorm by ``Identity``.

    ``conv_name`` / ``bn_name`` are paths below ``parent`` (``"0"``, ``"_bn0"``, ``"block.1"``). Exact up to float
    rounding (cosine to the unfolded model >= 0.99999 measured); it saves a full pass over every activation map,
    which is what makes fp32 CPU inference of BN-heavy CNNs up to 2x faster. Only call it for a pair the data really
    flows through (conv output feeds the BatchNorm and nothing else): :func:`fold_batchnorm` finds those pairs.
    """
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    conv = parent.get_submodule(conv_name)
    bn = parent.get_submodule(bn_name)
    if not isinstance(conv, torch.nn.Conv2d) or not isinstance(bn, torch.nn.BatchNorm2d):
        return
    assert bn.running_mean is not None and bn.running_var is not None, "eval-mode BatchNorm tracks running stats"
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    conv.weight = weight
    conv.bias = bias
    owner, _, attr = bn_name.rpartition(".")
    setattr(parent.get_submodule(owner) if owner else parent, attr, torch.nn.Identity())


def _conv_bn_pairs(model: torch.nn.Module) -> list[tuple[str, str]] | None:
    """``(conv path, BatchNorm path)`` of every BatchNorm2d whose only input is a Conv2d's output that nothing else
    reads, found in the traced graph; ``None`` when ``model`` does not trace."""
    import torch
    import torch.fx

    from lens.encoders.wrappers import _ConvBnTracer

    try:
        graph = _ConvBnTracer().trace(model)
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: the caller folds the children instead
        return None
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(str(node.target)), torch.nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if (
            isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(model.get_submodule(str(source.target)), torch.nn.Conv2d)
            and len(source.users) == 1
            and calls[str(source.target)] == 1  # a conv (or BatchNorm) used twice cannot take one BatchNorm's scale
            and calls[str(node.target)] == 1
        ):
            pairs.append((str(source.target), str(node.target)))
    return pairs


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm2d into the convolution that feeds it, in place; returns ``model`` (eval mode).

    The one BatchNorm fold of lens (torchvision CNNs, EfficientNet-Lite, trained models, the frozen training stems).
    Pairs come from the traced graph (``torch.fx``), not from attribute order, so a fold is made only where the
    convolution's output goes to the BatchNorm alone; a module that does not trace is folded child by child. Same
    outputs up to float rounding, up to 2x faster fp32 inference on the CPU. Call it in fp32 only: folded weights
    rounded to bfloat16 lose accuracy.
    """
    model.eval()
    pairs = _conv_bn_pairs(model)
    if pairs is None:
        for child in model.children():
            fold_batchnorm(child)
        return model
    for conv_path, bn_path in pairs:
        fold_conv_bn(model, conv_path, bn_path)
    return model
