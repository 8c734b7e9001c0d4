"""lens.images: the one safe loader."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from fixtures import ODD_IMAGE_FAILURES, ODD_IMAGE_SIZES
from lens.errors import ImageLoadError, LensError
from lens.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, max_image_pixels, open_image, to_rgb, try_open_image

LOADABLE = [k for k in ODD_IMAGE_SIZES if k != "huge"]


@pytest.mark.parametrize("name", LOADABLE)
def test_odd_images_load_as_rgb_with_right_size(odd_images, name):
    im = open_image(odd_images[name])
    assert im.mode == "RGB"
    assert im.size == ODD_IMAGE_SIZES[name]
    assert np.asarray(im).dtype == np.uint8


@pytest.mark.parametrize("name,reason", sorted(ODD_IMAGE_FAILURES.items()))
def test_bad_files_raise_with_reason_and_file_name(odd_images, name, reason):
    path = odd_images[name]
    with pytest.raises(ImageLoadError, match=reason) as info:
        open_image(path)
    assert path.name in str(info.value)
    assert info.value.reason and reason in info.value.reason


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ImageLoadError, match="not found") as info:
        open_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(info.value)


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageLoadError, match="folder"):
        open_image(tmp_path)


def test_name_overrides_file_name_in_messages(odd_images):
    with pytest.raises(ImageLoadError, match="item 42.*not an image"):
        open_image(odd_images["text_as_jpg"], name="item 42")


def test_rgba_transparent_pixels_become_white(odd_images):
    a = np.asarray(open_image(odd_images["rgba"]))
    assert tuple(a[0, 0]) == (255, 255, 255)  # transparent black -> white, not black
    assert tuple(a[12, 16]) == (255, 0, 0)  # opaque red stays red


def test_la_and_palette_transparency_composite_on_white(odd_images):
    la = np.asarray(open_image(odd_images["la"]))
    assert tuple(la[5, 2]) == (255, 255, 255)
    assert tuple(la[5, 15]) == (128, 128, 128)
    pal = np.asarray(open_image(odd_images["palette_transparent"]))
    assert tuple(pal[8, 2]) == (0, 255, 0)  # index 1, opaque green
    assert tuple(pal[8, 12]) == (255, 255, 255)  # index 0, transparent
    opaque = np.asarray(open_image(odd_images["palette"]))
    assert tuple(opaque[8, 12]) == (0, 0, 255)  # same index 0, no transparency: its colour


def test_i16_is_scaled_not_clipped(odd_images):
    a = np.asarray(open_image(odd_images["i16_png"]))[:, :, 0]
    assert a.max() == 255 and a[-1, -1] == 255
    assert a.min() == 0 and a[0, 0] == 0
    # a ramp stays a ramp: clipping at 255 would make nearly everything white
    assert 100 < a.mean() < 155
    assert len(np.unique(a)) > 100


def test_cmyk_jpeg_becomes_red(odd_images):
    r, g, b = np.asarray(open_image(odd_images["cmyk_jpeg"])).reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_applied(odd_images):
    im = open_image(odd_images["exif_rotated"])
    assert im.size == (20, 40)
    a = np.asarray(im).astype(int)
    top, bottom = a[5, 10], a[35, 10]
    assert top[0] > 200 and top[2] < 60  # the stored left (red) half is on top after a 90 degree CW turn
    assert bottom[2] > 200 and bottom[0] < 60


def test_pixel_limit_checked_before_decoding(odd_images):
    with pytest.raises(ImageLoadError, match=f"too many pixels.*{MAX_PIXELS_ENV}") as info:
        open_image(odd_images["huge"], max_pixels=1_000_000)
    assert "1,000,000" in str(info.value) and "huge.png" in str(info.value)
    assert open_image(odd_images["huge"], max_pixels=6_000_000).size == (3000, 2000)


def test_pixel_limit_from_environment(odd_images, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    assert max_image_pixels() == 100
    with pytest.raises(ImageLoadError, match="too many pixels"):
        open_image(odd_images["gray_png"])  # 144 pixels
    assert open_image(odd_images["gray_png"], max_pixels=144).size == (12, 12)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(LensError, match=MAX_PIXELS_ENV):
        max_image_pixels()
    monkeypatch.delenv(MAX_PIXELS_ENV)
    assert max_image_pixels() == DEFAULT_MAX_PIXELS


def test_pillow_decompression_bomb_error_is_caught(odd_images, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow raises above 2x this, inside Image.open
    with pytest.raises(ImageLoadError, match="too many pixels"):
        open_image(odd_images["wide_300x20"], max_pixels=10**9)


def test_bytes_and_streams(odd_images):
    data = odd_images["rgba"].read_bytes()
    assert open_image(data).size == (32, 24)
    stream = io.BytesIO(data)
    assert open_image(stream).size == (32, 24)
    assert not stream.closed  # the caller's stream is the caller's to close
    with pytest.raises(ImageLoadError, match="<bytes>.*empty"):
        open_image(b"")
    with pytest.raises(ImageLoadError, match="not an image"):
        open_image(b"hello", name="upload")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count open files")
def test_no_file_handles_left_open(odd_images):
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for name in LOADABLE:
        open_image(odd_images[name])
    for name in ODD_IMAGE_FAILURES:
        try_open_image(odd_images[name])
    assert open_fds() == before


def test_try_open_image(odd_images):
    im, reason = try_open_image(odd_images["tiny_1x1"])
    assert reason is None and im.size == (1, 1)
    im, reason = try_open_image(odd_images["truncated_jpeg"])
    assert im is None and "truncated" in reason
    im, reason = try_open_image(odd_images["huge"], max_pixels=10)
    assert im is None and "too many pixels" in reason


def test_to_rgb_modes_in_memory():
    assert to_rgb(Image.new("RGB", (2, 2))).mode == "RGB"
    white = np.asarray(to_rgb(Image.new("1", (3, 3), 1)))
    assert white.min() == 255
    grey = np.asarray(to_rgb(Image.new("L", (3, 3), 90)))
    assert (grey == 90).all()
    # 32-bit int holding 16-bit data (as Pillow gives for some 16-bit files): scaled by 257
    as_i = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert as_i.mode == "I"
    assert np.asarray(to_rgb(as_i))[0, :, 0].tolist() == [0, 255]
    # 32-bit int with 8-bit data stays as is
    small_i = Image.fromarray(np.array([[0, 200]], dtype=np.int32))
    assert np.asarray(to_rgb(small_i))[0, :, 0].tolist() == [0, 200]
    # float 0..1 -> 0..255; other ranges stretched
    f01 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(f01))[0, :, 0].tolist() == [0, 128, 255]
    fwide = Image.fromarray(np.array([[-10.0, 990.0]], dtype=np.float32))
    assert np.asarray(to_rgb(fwide))[0, :, 0].tolist() == [0, 255]
    # big-endian 16-bit
    be = Image.frombytes("I;16B", (2, 1), np.array([0, 65535], dtype=">u2").tobytes())
    assert np.asarray(to_rgb(be))[0, :, 0].tolist() == [0, 255]
    # RGBA half transparent red over white -> pink
    half = to_rgb(Image.new("RGBA", (1, 1), (255, 0, 0, 128)))
    assert np.asarray(half)[0, 0].tolist() == [255, 127, 127]


# ---------------------------------------------------------------------------------------------------- draft decode


def _big_jpeg(tmp_path, size=(1200, 900), exif_orientation=None):  # noqa: ANN001, ANN202
    """A smooth gradient photo, left half reddish, right half bluish; optionally tagged with an EXIF orientation."""
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    rgb = np.concatenate([np.where(x < 0.5, 220, 40) + 0 * y, 100 * y + 0 * x, np.where(x < 0.5, 40, 220) + 0 * y], 2)
    path = tmp_path / "big.jpg"
    extra = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        extra["exif"] = exif.tobytes()
    Image.fromarray(rgb.astype(np.uint8)).save(path, quality=92, **extra)
    return path


def test_draft_decodes_big_jpegs_smaller_but_never_below_the_size_asked(tmp_path):
    path = _big_jpeg(tmp_path)
    full = open_image(path)
    assert full.size == (1200, 900)
    assert open_image(path, draft_size=256).size == (600, 450)  # 1/2: at 1/4 the short side (225) would be < 256
    assert open_image(path, draft_size=100).size == (150, 113)  # 1/8 (libjpeg rounds up)
    assert open_image(path, draft_size=500).size == (1200, 900)  # 900 < 2 x 500: full decode
    small = open_image(path, draft_size=256)
    assert min(small.size) >= 256 and small.mode == "RGB"
    # the downscaled decode looks like a downscaled full decode
    reference = np.asarray(full.resize(small.size, Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(np.asarray(small).astype(int) - reference).mean() < 3


def test_draft_leaves_png_and_small_jpegs_alone_and_keeps_exif_orientation(tmp_path, odd_images):
    png = tmp_path / "big.png"
    Image.new("RGB", (1200, 900), (10, 200, 30)).save(png)
    assert open_image(png, draft_size=100).size == (1200, 900)
    assert open_image(odd_images["exif_rotated"], draft_size=32).size == (20, 40)  # 20 < 2 x 32: full decode
    rotated = open_image(_big_jpeg(tmp_path, exif_orientation=6), draft_size=200)
    assert rotated.size == (225, 300)  # stored 1200 x 900 decoded at 1/4, then turned upright
    a = np.asarray(rotated).astype(int)
    assert a[30, 112, 0] > 180 and a[270, 112, 2] > 180  # the stored left (red) half is on top after the turn


# ------------------------------------------------------------------------------------- thumbnail files (hover maps)


def test_write_thumbnails_known_sizes_bounded_and_written_once(odd_images, tmp_path):
    import re

    from lens.images import thumbnail_file, write_thumbnails

    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.png"  # the worst case for JPEG: 512 x 384 of random pixels
    Image.fromarray(rng.integers(0, 256, size=(384, 512, 3), dtype=np.uint8)).save(noise)
    names = ["rgba", "cmyk_jpeg", "tiny_1x1", "wide_300x20", "exif_rotated", "truncated_jpeg", "empty"]
    sources = {f"id/{name}": odd_images[name] for name in names} | {"noise": noise}
    folder = tmp_path / "thumbs"
    files, failed = write_thumbnails(sources, folder, px=64)
    assert set(failed) == {"id/truncated_jpeg", "id/empty"} and "truncated" in failed["id/truncated_jpeg"]
    assert set(files) == set(sources) - set(failed)
    expected = {
        "id/rgba": (32, 24),  # never enlarged
        "id/cmyk_jpeg": (30, 20),
        "id/tiny_1x1": (1, 1),
        "id/wide_300x20": (64, 4),  # longer side 64, aspect kept
        "id/exif_rotated": (20, 40),  # EXIF orientation applied
        "noise": (64, 48),
    }
    for item_id, size in expected.items():
        assert files[item_id] == thumbnail_file(item_id)
        assert re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{20}\.jpg", files[item_id])  # any id makes a safe URL
        with Image.open(folder / files[item_id]) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == size
    assert (folder / files["noise"]).stat().st_size < 5_000  # bounded even for noise: a 64 px JPEG at quality 70
    assert not list(folder.rglob("*.tmp"))
    # A second call finds every thumbnail and writes none.
    (folder / files["noise"]).write_bytes(b"kept")  # a file present is trusted (the folder's name says its source)
    stamps = {item_id: (folder / rel).stat().st_mtime_ns for item_id, rel in files.items()}
    again, failed_again = write_thumbnails(sources, folder, px=64)
    assert again == files and failed_again == failed
    assert {item_id: (folder / rel).stat().st_mtime_ns for item_id, rel in again.items()} == stamps
    assert (folder / files["noise"]).read_bytes() == b"kept"
    with pytest.raises(LensError, match="px >= 1"):
        write_thumbnails({"noise": noise}, tmp_path / "other", px=0)
