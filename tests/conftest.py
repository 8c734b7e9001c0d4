"""Shared pytest fixtures: generated odd images and catalogs, and the real sample catalog when present."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# `import lens` from a checkout without installing it, and `from fixtures import ...` from test modules.
for _p in (str(REPO_ROOT), str(TESTS_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from fixtures import make_catalog, make_fashion_mnist_idx, make_folder_catalog, make_odd_images  # noqa: E402

#: The real product-photo catalog, beside the repository (read-only; never copied into the repo).
SAMPLE_CATALOG_DIR = REPO_ROOT.parent / "shared" / "data" / "fashion-products"
#: Debian's dataset-fashion-mnist package puts the IDX files here.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test writes lens's caches (embeddings, ONNX graphs, trained models, digest memos) under a temporary
    folder, never into the user's ``~/.cache/lens``; ``LENS_TEST_CACHE_DIR`` names a folder to reuse across runs.
    Tests that need an empty cache of their own use ``lens_cache_dir``."""
    cache = Path(os.environ.get("LENS_TEST_CACHE_DIR") or tmp_path_factory.mktemp("session-lens-cache"))
    patch = pytest.MonkeyPatch()
    patch.setenv("LENS_CACHE_DIR", str(cache))
    # The default run tests the CPU paths on every machine; tests/test_gpu.py drives the GPU path with fakes and,
    # where CUDA is present, for real (it removes this).
    patch.setenv("LENS_DEVICE", "cpu")
    yield cache
    patch.undo()


@pytest.fixture(scope="session")
def odd_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{name: path}`` of odd image files (see ``fixtures.ODD_IMAGE_SIZES`` / ``ODD_IMAGE_FAILURES``). Read-only."""
    return make_odd_images(tmp_path_factory.mktemp("odd_images"))


@pytest.fixture(scope="session")
def small_catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic lens CSV catalog: 4 classes x 6 items, 64x64 JPEGs, metadata columns. Do not modify it;
    use ``small_catalog_copy`` for tests that change files."""
    return make_catalog(tmp_path_factory.mktemp("small_catalog"))


@pytest.fixture()
def small_catalog_copy(small_catalog_dir: Path, tmp_path: Path) -> Path:
    """A private, writable copy of ``small_catalog_dir``."""
    return Path(shutil.copytree(small_catalog_dir, tmp_path / "catalog"))


@pytest.fixture(scope="session")
def folder_catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-subfolder catalog: 3 classes x 4 images (jpg and png) plus files a loader must ignore."""
    return make_folder_catalog(tmp_path_factory.mktemp("folder_catalog"))


@pytest.fixture()
def fashion_mnist_idx_dir(tmp_path: Path) -> Path:
    """A folder with 20 gzipped Fashion-MNIST-format t10k IDX images and labels (label = index % 10)."""
    folder, _ = make_fashion_mnist_idx(tmp_path / "fmnist_idx", n=20)
    return folder


@pytest.fixture()
def lens_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``LENS_CACHE_DIR`` at an empty temporary folder for one test."""
    cache = tmp_path / "lens-cache"
    cache.mkdir()
    monkeypatch.setenv("LENS_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def sample_catalog_dir() -> Path:
    """The real fashion-products catalog (8,010 photos), or skip when it is not beside the repository."""
    if not (SAMPLE_CATALOG_DIR / "catalog.csv").is_file():
        pytest.skip(
            f"real sample catalog not found at {SAMPLE_CATALOG_DIR} "
            "(expected ../shared/data/fashion-products beside the repository)"
        )
    return SAMPLE_CATALOG_DIR


@pytest.fixture(scope="session")
def sample_catalog(sample_catalog_dir: Path):  # -> lens.catalog.Catalog
    """The real catalog, loaded once per session."""
    from lens.catalog import load_catalog

    return load_catalog(sample_catalog_dir)


@pytest.fixture(scope="session")
def sample_slice(sample_catalog):  # -> lens.catalog.Catalog
    """A deterministic 80-item slice of the real catalog: 8 articleTypes x 10 items (seed 0)."""
    return sample_catalog.sample(80, per_label=10, seed=0)


@pytest.fixture()
def dashboard_env(small_catalog_dir: Path, lens_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point the dashboard at the small generated catalog, an empty cache and the ``tiny`` encoder (no weights)."""
    monkeypatch.setenv("LENS_CATALOG", str(small_catalog_dir))
    monkeypatch.setenv("LENS_DEFAULT_MODEL", "tiny")
    monkeypatch.setenv("LENS_OFFLINE", "1")
    monkeypatch.delenv("LENS_LABEL", raising=False)
    return {"catalog": small_catalog_dir, "cache": lens_cache_dir}


@pytest.fixture()
def models_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """Private cache and models folders (``(cache, models)``); the registry of trained models is restored to the
    user's afterwards."""
    from lens.encoders.trained import default_models_dir, refresh_trained_models

    previous = default_models_dir()
    cache, models = tmp_path / "cache", tmp_path / "models"
    monkeypatch.setenv("LENS_CACHE_DIR", str(cache))
    monkeypatch.setenv("LENS_MODELS_DIR", str(models))
    refresh_trained_models(models)
    yield cache, models
    refresh_trained_models(previous)


@pytest.fixture(scope="session")
def build_catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 classes x 10 synthetic 48-px product photos with titles."""
    return make_catalog(tmp_path_factory.mktemp("build_catalog"), n_classes=5, per_class=10, size=48)


@pytest.fixture()
def build_env(build_catalog_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # -> (catalog, cache)
    """The catalog loaded, a private cache (trained models under it); the user's trained models restored after."""
    from lens.catalog import load_catalog
    from lens.encoders.trained import default_models_dir, refresh_trained_models

    previous = default_models_dir()
    cache = tmp_path / "cache"
    monkeypatch.setenv("LENS_CACHE_DIR", str(cache))
    monkeypatch.delenv("LENS_MODELS_DIR", raising=False)
    monkeypatch.setenv("LENS_OFFLINE", "1")
    monkeypatch.delenv("LENS_DEFAULT_MODEL", raising=False)
    refresh_trained_models(cache / "models")
    yield load_catalog(build_catalog_dir), cache
    refresh_trained_models(previous)
