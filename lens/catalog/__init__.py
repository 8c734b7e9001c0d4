"""Catalogs: which product images exist, where they are, and what their labels are.

Three layouts load into the same :class:`Catalog` (:func:`load_catalog`):

(a) a folder holding ``catalog.csv`` (or a path to any ``.csv`` file): one row per item with an id column, an
    image path relative to the CSV's folder, and any metadata columns;
(b) a folder of class subfolders, ``<root>/<class>/<file>.jpg``: id ``"<class>/<stem>"``, label = subfolder;
(c) a folder holding Fashion-MNIST IDX files (``t10k-images-idx3-ubyte.gz`` ...): parsed and materialised once,
    as PNG files plus a ``catalog.csv``, under the lens cache folder; then loaded as (a).

Modules: :mod:`~lens.catalog.model` (the :class:`Catalog` itself, :func:`validate_images`),
:mod:`~lens.catalog.loaders` (CSV and folder layouts, the default catalog), :mod:`~lens.catalog.fashion_mnist`.
The file digests behind :meth:`Catalog.fingerprint` are memoised by :func:`lens.store.file_digests`.
"""

from lens.catalog.fashion_mnist import FASHION_MNIST_CLASSES, FMNIST_SPLIT_ENV
from lens.catalog.loaders import CATALOG_ENV, DEBIAN_FASHION_MNIST, default_catalog_path, load_catalog
from lens.catalog.model import CATALOG_FILENAME, DEFAULT_LABEL_COLUMN, Catalog, CatalogProblem, validate_images
from lens.store import default_cache_dir, file_digests  # re-exported: they were lens.catalog names

__all__ = [
    "CATALOG_ENV",
    "CATALOG_FILENAME",
    "DEBIAN_FASHION_MNIST",
    "DEFAULT_LABEL_COLUMN",
    "FASHION_MNIST_CLASSES",
    "FMNIST_SPLIT_ENV",
    "Catalog",
    "CatalogProblem",
    "default_cache_dir",
    "default_catalog_path",
    "file_digests",
    "load_catalog",
    "validate_images",
]
