"""lens: a visual product search workbench.

Data flows one way: catalog -> images -> encoder -> embeddings (cached) -> index -> search / metrics.
The library never imports streamlit; the dashboard lives in ``dashboard/`` and ``pages/``.
"""

from lens.errors import (
    CacheError,
    CatalogError,
    ImageLoadError,
    IndexMismatchError,
    LensError,
    UnknownEncoderError,
    WeightsUnavailableError,
)

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "CatalogError",
    "ImageLoadError",
    "IndexMismatchError",
    "LensError",
    "UnknownEncoderError",
    "WeightsUnavailableError",
    "__version__",
]
