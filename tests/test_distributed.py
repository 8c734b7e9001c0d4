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


def test_the_build_embeds_on_ray_and_its_status_says_so(
    ray_local: None, catalog_with_a_broken_image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lens.build as build
    from lens.embed import embed_catalog
    from lens.encoders import create_encoder

    monkeypatch.setenv("LENS_OFFLINE", "1")
    monkeypatch.setattr(build, "_precompute_map", lambda *args, **kwargs: None)  # UMAP is not what this tests
    catalog, lines = catalog_with_a_broken_image, []
    steps = [build.BuildStep("tiny")]
    options = build.BuildOptions(cache_dir=tmp_path, ray_workers=2)
    status = build.run_build(catalog, steps, options, log=lines.append)
    entry = status["steps"][0]
    assert entry["state"] == "ready", lines
    assert entry["embedded_by"] == "Ray Data, 2 workers" and status["embedding"] == "Ray Data, 2 workers"
    assert any("tiny: 39 vectors in" in line and "(Ray Data, 2 workers)" in line for line in lines)
    views, _ = build.plan_status(catalog, steps, options)
    assert build.format_state(views[0]) == "ready (embedded on Ray Data, 2 workers)"
    local = embed_catalog(catalog, create_encoder("tiny"), use_cache=False)
    cached = embed_catalog(catalog, create_encoder("tiny"), cache_dir=tmp_path)  # what Ray wrote, read back
    assert cached.from_cache and cached.ids == local.ids
    assert np.sum(cached.vectors * local.vectors, axis=1).min() >= 0.9999
    # Built again: nothing to embed, and the status says where the vectors came from.
    local_options = build.BuildOptions(cache_dir=tmp_path)
    status = build.run_build(catalog, steps, local_options, log=lines.append)
    assert status["embedding"] == "local" and status["steps"][0]["reason"] == "already built"
    assert build.format_state(build.plan_status(catalog, steps, local_options)[0][0]) == "ready"


def test_build_ray_flags_are_checked_before_anything_starts(
    catalog_with_a_broken_image, tmp_path: Path, capsys
) -> None:
    from lens.build import BuildOptions, start_build
    from lens.cli import main

    folder = str(Path(catalog_with_a_broken_image.root))
    code = main(["build", "--catalog", folder, "--models", "tiny", "--recipes", "none", "--workers", "2",
                 "--cache-dir", str(tmp_path), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "go with --ray" in err and not (tmp_path / "build").exists()
    # The background build gets the same flags on its command line (the dashboard's toggle starts it this way).
    argv: list[str] = []

    def fake_start(args, **kwargs):  # noqa: ANN001, ANN003, ANN202
        argv.extend(args)
        raise RuntimeError("not started")

    import lens.build

    real = lens.build.start_detached
    lens.build.start_detached = fake_start  # type: ignore[assignment]
    try:
        with pytest.raises(RuntimeError):
            start_build(folder, options=BuildOptions(cache_dir=tmp_path, ray_workers=2), models="tiny")
    finally:
        lens.build.start_detached = real  # type: ignore[assignment]
    assert argv[argv.index("--ray") :][:3] == ["--ray", "--workers", "2"]
