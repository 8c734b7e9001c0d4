"""Class-balanced batches (m items per class) from pytorch-metric-learning's ``MPerClassSampler``, made seedable.

pml's sampler draws from the global ``numpy.random`` state; :func:`class_balanced_batches` swaps in a seeded
``RandomState`` while it draws, so a (seed, epoch) pair always gives the same batches and resuming is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_balanced_batches(
    labels: Sequence[int] | np.ndarray, *, m: int, batch_size: int, n_batches: int, seed: int
) -> list[np.ndarray]:
    """``n_batches`` index arrays of ``batch_size`` items, ``batch_size // m`` classes x ``m`` items each.

    Classes with fewer than ``m`` items are sampled with replacement (pml's behaviour). ``batch_size`` is cut to a
    multiple of ``m`` and to ``m * number of classes`` when there are too few classes.
    """
    from pytorch_metric_learning.samplers import MPerClassSampler
    from pytorch_metric_learning.utils import common_functions as c_f

    labels = np.asarray(labels)
    n_classes = len(np.unique(labels))
    batch_size = max(m, min(batch_size - batch_size % m, m * n_classes))
    saved = c_f.NUMPY_RANDOM
    c_f.NUMPY_RANDOM = np.random.RandomState(seed % (2**32))
    try:
        sampler = MPerClassSampler(labels, m=m, batch_size=batch_size, length_before_new_iter=batch_size * n_batches)
        order = np.fromiter(iter(sampler), dtype=np.int64)
    finally:
        c_f.NUMPY_RANDOM = saved
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]


def shuffled_batches(n_items: int, *, batch_size: int, seed: int, drop_last: bool = True) -> list[np.ndarray]:
    """Seeded random permutation of ``range(n_items)`` cut into batches."""
    order = np.random.default_rng(seed).permutation(n_items)
    stop = n_items - n_items % batch_size if drop_last and n_items >= batch_size else n_items
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]
