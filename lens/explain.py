"""Why two photos are similar: which regions of each contribute most to their cosine similarity.

For a CNN whose vector is the global average of its last feature map ``F`` (``C x H x W``), the pooled vector is
``p = mean_i F[:, i]`` and the similarity is ``cos(p_a, p_b) = sum_i <F_a[:, i], p_b> / (HW |p_a| |p_b|)``. So each
location ``i`` of photo A contributes ``<F_a[:, i], unit(p_b)> / (HW |p_a|)``, and these contributions add up to the
cosine exactly; the same holds for photo B. That is the map: no gradient, no approximation. A bright region of A is
one whose features point the way B's whole vector points.

It exists for encoders whose vector is that pooled map (mobilenet-v2, the EfficientNets, ResNet-50, the test
``tiny`` CNN): :func:`similarity_maps` checks it on the photos themselves and refuses the others (ViT, CLIP, DINOv2:
their vector is a token, not a pooled conv map; trained heads: a non-linear head after the pooling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from lens.encoders import Encoder, TorchImageEncoder
from lens.encoders.base import pixels_to_batch, resize_crop
from lens.errors import LensError

_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SimilarityMap:
    """Per-location contributions of two photos to their cosine similarity.

    Attributes:
        cosine: the cosine similarity of the two vectors (the sum of either map).
        query, result: ``(H, W)`` float32 contributions of each location of each photo (they sum to ``cosine``).
        query_view, result_view: ``(S, S, 3)`` uint8: each photo as the model saw it (resized, centre-cropped).
    """

    cosine: float
    query: np.ndarray
    result: np.ndarray
    query_view: np.ndarray
    result_view: np.ndarray


def supports_maps(encoder: Encoder) -> str | None:
    """``None`` when ``encoder`` can give similarity maps, else why not (in words)."""
    if not isinstance(encoder, TorchImageEncoder):
        return f"'{encoder.name}' is not a CNN run by lens (its vector is not a pooled convolutional feature map)"
    if _last_global_pool(encoder.model) is None:
        return (
            f"'{encoder.name}' has no global average pooling of a convolutional feature map (a transformer's vector "
            "is a token, not a pooled map)"
        )
    return None


def _last_global_pool(model: Any) -> Any:
    import torch.nn as nn

    found = None
    for module in model.modules():
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
            found = module
    return found


def feature_maps(encoder: Encoder, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(maps (N, C, H, W), vectors (N, C), views (N, S, S, 3))``: the last feature map of each image, the model's
    output for it (torch, fp32) and the pixels it saw.

    Raises:
        LensError: the encoder has no pooled feature map, or its output is not that map's average (e.g. a head).
    """
    import torch

    why = supports_maps(encoder)
    if why is not None:
        raise LensError(f"No similarity map for this model: {why}. Maps exist for the CNN encoders (mobilenet-v2, "
                        "efficientnet-lite0/2, resnet-50, efficientnet-b0/b4).")  # fmt: skip
    assert isinstance(encoder, TorchImageEncoder)
    pool = _last_global_pool(encoder.model)
    views = np.stack([resize_crop(image, encoder.spec.preprocess) for image in images])
    batch = pixels_to_batch(views, encoder.spec.preprocess)
    captured: list[torch.Tensor] = []
    handle = pool.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    try:
        with torch.inference_mode():
            output = encoder.model(batch.float())
    finally:
        handle.remove()
    maps = captured[-1].float().numpy()
    vectors = output.float().reshape(len(images), -1).numpy()
    pooled = maps.mean(axis=(2, 3))
    if pooled.shape != vectors.shape or not np.allclose(pooled, vectors, atol=_TOLERANCE, rtol=_TOLERANCE):
        raise LensError(
            f"No similarity map for '{encoder.name}': its vector is not the average of its last feature map (a head "
            "follows the pooling), so the map would not explain its similarity."
        )
    return maps, vectors, views


def similarity_maps(encoder: Encoder, query: Image.Image, result: Image.Image) -> SimilarityMap:
    """The similarity maps of ``query`` and ``result`` under ``encoder`` (see the module's docstring).

    Raises:
        LensError: the encoder gives no map (the message says which ones do).
    """
    maps, vectors, views = feature_maps(encoder, [query, result])
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    if (norms < 1e-12).any():
        raise LensError("No similarity map: one of the photos has an all-zero vector under this model.")
    units = vectors / norms[:, None]
    _, _, height, width = maps.shape

    def contributions(own: int, other: int) -> np.ndarray:
        local = np.einsum("chw,c->hw", maps[own].astype(np.float64), units[other])
        return (local / (height * width * norms[own])).astype(np.float32)

    return SimilarityMap(
        cosine=float(units[0] @ units[1]),
        query=contributions(0, 1),
        result=contributions(1, 0),
        query_view=views[0],
        result_view=views[1],
    )


def overlay(view: np.ndarray, contributions: np.ndarray, *, alpha: float = 0.55) -> Image.Image:
    """``view`` with ``contributions`` laid over it: transparent where a region adds nothing or takes away, red to
    yellow where it adds most (scaled to the largest positive contribution of this map)."""
    heat = np.clip(contributions, 0.0, None)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else heat
    size = view.shape[1], view.shape[0]
    resized = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize(size, Image.Resampling.BILINEAR))
    level = resized.astype(np.float32)[..., None] / 255.0
    colour = np.concatenate([np.ones_like(level), level, np.zeros_like(level)], axis=-1) * 255.0  # red -> yellow
    weight = alpha * level
    blended = view.astype(np.float32) * (1 - weight) + colour * weight
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
