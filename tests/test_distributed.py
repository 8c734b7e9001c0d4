"""Embedding on Ray Data (lens.distributed): the local path's vectors, ids and order from 2 workers; unreadable images
listed, not fatal; bad input refused before Ray starts; a dead cluster address gets one clear error."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from fixtures import make_catalog  # noqa: E402
from lens.errors import LensError  # noqa: E402


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One local Ray instance for the module (2 CPUs), so each test pays the start-up once."""
    from lens.distributed import _init, _ray

    ray = _ray()
    _init(ray, None, 2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def catalog_with_a_broken_image(tmp_path_factory: pytest.TempPathFactory):  # -> Catalog
    from lens.catalog import load_catalog

    folder = make_catalog(tmp_path_factory.mktemp("ray_catalog"), n_classes=4, per_class=10, size=48)
    (folder / "images" / "000105.jpg").write_bytes(b"not a jpeg")
    shutil.copy(folder / "images" / "000100.jpg", folder / "images" / "000101.jpg")  # a duplicate photo
    return load_catalog(folder)


def test_ray_gives_the_local_vectors(ray_local: None, catalog_with_a_broken_image, tmp_path: Path) -> None:
    from lens.distributed import embed_catalog_ray
    from lens.embed import embed_catalog, load_embeddings
    from lens.encoders import create_encoder

    catalog = catalog_with_a_broken_image
    local = embed_catalog(catalog, create_encoder("tiny"), use_cache=False)
    encoder, on_ray = embed_catalog_ray(catalog, "tiny", workers=2, batch_size=8, cache_dir=tmp_path)
    assert on_ray.ids == local.ids and len(on_ray.ids) == len(catalog) - 1  # same ids, same order
    assert on_ray.failed == local.failed and [item for item, _ in on_ray.failed] == ["000105"]
    cosines = np.sum(on_ray.vectors * local.vectors, axis=1)
    assert cosines.min() >= 0.9999
    # It landed in the same store, under the local path's key: the local path now reads it from the cache.
    assert load_embeddings(tmp_path, "tiny", on_ray.key) is not None
    again = embed_catalog(catalog, encoder, cache_dir=tmp_path)
    assert again.from_cache and again.key == on_ray.key


def test_cli_embed_on_ray(ray_local: None, catalog_with_a_broken_image, tmp_path: Path, capsys) -> None:
    from lens.cli import main

    folder = str(Path(catalog_with_a_broken_image.root))
    code = main(["embed", "--catalog", folder, "--models", "tiny", "--ray", "--workers", "2", "--cache-dir",
                 str(tmp_path), "--quiet"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "tiny: 39 vectors" in out and "skipped 000105" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "nope", "--ray"], "Unknown encoder"),
        (["--models", "tiny", "--workers", "2"], "go with --ray"),
        (["--models", "tiny", "--ray", "--workers", "0"], "--workers"),
    ],
)
def test_bad_input_before_ray_starts(catalog_with_a_broken_image, capsys, args: list[str], message: str) -> None:
    from lens.cli import main

    code = main(["embed", "--catalog", str(Path(catalog_with_a_broken_image.root)), "--quiet", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1", "nowhere.invalid:6379", "head-node"])
def test_a_dead_cluster_address_is_one_clear_error(catalog_with_a_broken_image, tmp_path: Path, address: str) -> None:
    """Checked before Ray is asked (Ray itself retries a dead address for minutes)."""
    from lens.distributed import embed_catalog_ray

    with pytest.raises(LensError, match="reach the Ray cluster|is not a Ray address"):
        embed_catalog_ray(catalog_with_a_broken_image, "tiny", address=address, cache_dir=tmp_path)
    assert not list(tmp_path.glob("embeddings/tiny/*.npy"))  # nothing published
