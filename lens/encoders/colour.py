"""``colour-histogram``: a hand-made 77-d colour descriptor of the product (no weights), and ``concat-colour``.

Product titles name a colour almost every time ("... Men **Black** Casual Shoes"), and the pooled vectors of
ImageNet CNNs carry colour only weakly (they are trained to be invariant to it). This encoder describes the photo's
colours directly: at 64 px, every pixel that is not near-white background (value > 0.9 and saturation < 0.1) counts
in one of 72 chromatic bins (12 hues x 2 saturations x 3 values, for saturation >= 0.2) or 5 grey bins (by value);
the histogram is L1-normalised and square-rooted (Hellinger), so it is a unit vector and cosine compares colour
distributions. A photo with fewer than 10 foreground pixels counts every pixel.

``concat-colour`` = ``concat`` (mobilenet-v2 + efficientnet-lite0 + efficientnet-lite2) + ``colour-histogram``, each
part unit length (3917-d): the image side of ``text-align`` (docs/training.md, "4. Text side").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lens.encoders._registry import register_encoder
from lens.encoders.base import EncoderSpec, Precision, Preprocess, TorchImageEncoder
from lens.encoders.composite import CONCAT_PARTS, ConcatEncoder, _concat_spec

HUES, SATURATIONS, VALUES, GREYS = 12, 2, 3, 5
COLOUR_DIM = HUES * SATURATIONS * VALUES + GREYS  #: 77
COLOUR_INPUT = 64  #: pixels per side the histogram is computed at
#: Identifies the descriptor in cache keys (a change of bins or thresholds must change it).
COLOUR_WEIGHTS_ID = "colour-hsv-12x2x3+5-fg0.9-0.1-v2"


class ColourHistogramEncoder(TorchImageEncoder):
    """The histogram on fully decoded photos, for catalogs and queries alike.

    Overriding :meth:`_embed_batch` takes this encoder off the catalog pass's JPEG ``draft`` decode
    (:func:`lens.embed.pixel_preprocess`): a hard histogram moves by up to 0.1 when libjpeg's DCT scaling shifts pixel
    values by a level, so a catalog photo given as a query (decoded in full) would not get its catalog vector.
    """

    def _embed_batch(self, images: Sequence[Any]) -> np.ndarray:
        return super()._embed_batch(images)


@register_encoder(
    EncoderSpec(
        name="colour-histogram",
        family="handcrafted",
        dim=COLOUR_DIM,
        preprocess=Preprocess(input_size=COLOUR_INPUT, crop_pct=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
        weights="none (a fixed colour histogram)",
        license="n/a",
        pooling="HSV histogram of the foreground pixels",
        description="77-bin HSV colour histogram of the product (64 px, background left out)",
        precision="fp32",
        channels_last=False,
    )
)
def _build_colour(
    spec: EncoderSpec, weights_path: Path | None, *, precision: Precision | None = None
) -> TorchImageEncoder:
    from lens.encoders.wrappers import ColourHistogram  # torch loads here, when the encoder is built

    return ColourHistogramEncoder(spec, ColourHistogram(), COLOUR_WEIGHTS_ID, precision="fp32")


CONCAT_COLOUR_PARTS = (*CONCAT_PARTS, "colour-histogram")


@register_encoder(
    _concat_spec(
        "concat-colour",
        CONCAT_COLOUR_PARTS,
        (1280, 1280, 1280, COLOUR_DIM),
        "mobilenet-v2 + efficientnet-lite0 + efficientnet-lite2 + colour histogram, concatenated (3917-d)",
    ),
    parts=CONCAT_COLOUR_PARTS,
)
def _build_concat_colour(
    spec: EncoderSpec, weights_path: Path | None, *, precision: Precision | None = None
) -> ConcatEncoder:
    from lens.encoders._registry import create_encoder

    return ConcatEncoder(spec, [create_encoder(name) for name in CONCAT_COLOUR_PARTS])
