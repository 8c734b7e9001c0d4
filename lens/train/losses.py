"""Losses as ``nn.Module(embeddings, labels)``, built on pytorch-metric-learning where it has them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchHardTripletLoss(nn.Module):
    """Triplet loss on cosine similarity with batch-hard mining (hardest positive and negative per anchor).

    pytorch-metric-learning's ``TripletMarginLoss(distance=CosineSimilarity())`` with its ``BatchHardMiner``.
    A batch without any valid triplet (e.g. one label only, or only singletons) gives a zero loss that still
    has a graph (pml returns ``0 * sum(embeddings)``), never NaN.
    """

    def __init__(self, margin: float = 0.2) -> None:
        super().__init__()
        from pytorch_metric_learning import distances, losses, miners

        distance = distances.CosineSimilarity()
        self.miner = miners.BatchHardMiner(distance=distance)
        self.loss = losses.TripletMarginLoss(margin=margin, distance=distance)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        triplets = self.miner(embeddings, labels)
        return self.loss(embeddings, labels, triplets)


class NTXentPairLoss(nn.Module):
    """SimCLR's NT-Xent on two views: view ``i`` of both halves is the positive pair, every other image of the
    ``2n`` is a negative; the mean over all ``2n`` anchors of a cross-entropy over cosine / T logits.

    This is exactly pytorch-metric-learning's ``NTXentLoss`` with labels ``[0..n-1, 0..n-1]`` (a test checks them
    against each other), written as one ``2n x 2n`` cross-entropy: that loss builds a positive-pairs x negative-pairs
    mask, ``O(n^3)`` memory and time, so a batch of 256 took 18.7 s per step on the CPU against milliseconds here.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        n = view_a.shape[0]
        z = F.normalize(torch.cat([view_a, view_b]), dim=-1)
        logits = (z @ z.t()) / self.temperature
        logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, target)


class SymmetricInfoNCE(nn.Module):
    """CLIP's loss: cross-entropy over image->text and text->image cosine logits, with a learnable temperature.

    The temperature is stored as ``logit_scale = log(1 / T)`` (CLIP's parametrisation) and clamped to
    ``T >= 0.01`` so the logits cannot blow up.
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    @property
    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().clamp(max=math.log(100.0)).exp())

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        image = F.normalize(image, dim=-1)
        text = F.normalize(text, dim=-1)
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * image @ text.t()
        target = torch.arange(image.shape[0], device=image.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


#: The losses of the ``proxy`` recipe: name -> (pytorch-metric-learning loss class, its default parameters).
#: ``normalized-softmax``, ``proxy-anchor``, ``arcface`` and ``cosface`` learn one proxy (class weight) per label;
#: ``softtriple`` learns 10 per label; ``multi-similarity`` is a pair loss and comes with its miner. The defaults are
#: the papers' (and pml's) own.
METRIC_LOSSES: dict[str, tuple[str, dict[str, float]]] = {
    "normalized-softmax": ("NormalizedSoftmaxLoss", {"temperature": 0.05}),
    "proxy-anchor": ("ProxyAnchorLoss", {"margin": 0.1, "alpha": 32.0}),
    "arcface": ("ArcFaceLoss", {"margin": 28.6, "scale": 64.0}),
    "cosface": ("CosFaceLoss", {"margin": 0.35, "scale": 64.0}),
    "multi-similarity": ("MultiSimilarityLoss", {"alpha": 2.0, "beta": 50.0, "base": 0.5}),
    # several proxies per label (10 centres, softmax over them): for labels that hold visually distinct sub-groups
    "softtriple": ("SoftTripleLoss", {"centers_per_class": 10, "la": 20.0, "gamma": 0.1, "margin": 0.01}),
}


class MetricLoss(nn.Module):
    """One of pytorch-metric-learning's classification / proxy / pair losses as ``loss(embeddings, labels)``.

    Args:
        name: a key of :data:`METRIC_LOSSES`.
        num_classes: number of labels (integer codes ``0..num_classes-1``); proxies are made for each.
        dim: embedding dimension.
        params: overrides of the loss's default parameters (:data:`METRIC_LOSSES`); ``None`` values are ignored.

    The proxies (``self.parameters()``, empty for ``multi-similarity``) train with the model, in their own optimizer
    parameter group (pml's documented usage: a loss optimizer with a larger learning rate).
    """

    def __init__(self, name: str, num_classes: int, dim: int, **params: float | None) -> None:
        super().__init__()
        from pytorch_metric_learning import losses, miners

        if name not in METRIC_LOSSES:
            raise ValueError(f"unknown metric loss {name!r}; known: {', '.join(METRIC_LOSSES)}")
        cls_name, defaults = METRIC_LOSSES[name]
        kwargs = {**defaults, **{k: v for k, v in params.items() if v is not None and k in defaults}}
        cls = getattr(losses, cls_name)
        self.name = name
        if name == "multi-similarity":
            self.loss = cls(**kwargs)
            self.miner: nn.Module | None = miners.MultiSimilarityMiner(epsilon=0.1)
        else:
            self.loss = cls(num_classes=num_classes, embedding_size=dim, **kwargs)
            self.miner = None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.miner is not None:
            return self.loss(embeddings, labels, self.miner(embeddings, labels))
        return self.loss(embeddings, labels)
