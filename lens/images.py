"""One safe image loader, used by every part of lens that reads a picture.

``open_image`` turns any file Pillow can read into a fully loaded 8-bit RGB image: EXIF orientation applied,
transparency composited on white (product photos sit on white), 16-bit and float data scaled rather than
clipped, and the pixel count checked against a limit before any pixel is decoded. Every failure is an
:class:`~lens.errors.ImageLoadError` whose message names the file and the reason, so that an embedder can
list the files it skipped instead of stopping at the first bad one.

Truncated files are reported, never silently padded: this module does not set
``ImageFile.LOAD_TRUNCATED_IMAGES``.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lens.errors import ImageLoadError, LensError
from lens.store import atomic_write

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "IMAGE_EXTENSIONS",
    "UPLOAD_FORMATS",
    "ImageSource",
    "max_image_pixels",
    "open_image",
    "thumbnail_file",
    "thumbnail_jpeg",
    "to_rgb",
    "try_open_image",
    "write_thumbnails",
]

#: Largest width x height accepted when neither ``max_pixels`` nor ``LENS_MAX_IMAGE_PIXELS`` says otherwise.
#: 50 megapixels is well above any product photo and below Pillow's own bomb warning (about 89 megapixels).
DEFAULT_MAX_PIXELS: int = 50_000_000

#: Environment variable that overrides :data:`DEFAULT_MAX_PIXELS` (read at every call, not at import).
MAX_PIXELS_ENV = "LENS_MAX_IMAGE_PIXELS"

#: Decoded formats accepted for an uploaded query image (checked on the content, not the file name). MPO is how
#: Pillow names a camera JPEG that carries extra pictures (the first one is used).
UPLOAD_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP")

#: File suffixes (lower case) that lens treats as images when it lists a folder.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm"}
)

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, BinaryIO]

# Errors Pillow raises while decoding damaged data (truncated streams, bad chunks, bad headers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

_WHITE = (255, 255, 255)


def max_image_pixels() -> int:
    """The pixel limit in force: ``LENS_MAX_IMAGE_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        LensError: the environment variable is set but is not a positive integer.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise LensError(
            f"{MAX_PIXELS_ENV}={raw!r} is not a positive integer; set it to a pixel count such as "
            f"{DEFAULT_MAX_PIXELS} or unset it."
        )
    return value


def _fail(name: str, reason: str) -> ImageLoadError:
    err = ImageLoadError(f"Cannot load image {name}: {reason}")
    # Attributes for callers that list failures (embedder, validate_images) without re-parsing the text.
    err.image_name = name  # type: ignore[attr-defined]
    err.reason = reason  # type: ignore[attr-defined]
    return err


def _describe(source: object, name: str | None) -> str:
    if name is not None:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return str(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    stream_name = getattr(source, "name", None)
    return str(stream_name) if isinstance(stream_name, (str, os.PathLike)) else "<stream>"


def open_image(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    name: str | None = None,
    draft_size: int | None = None,
    formats: Sequence[str] | None = None,
) -> Image.Image:
    """Open, fully decode and normalise one image.

    Args:
        source: a file path, the encoded bytes, or an open binary stream (read from its current
            position; the caller keeps ownership and it is not closed).
        max_pixels: largest width x height accepted; ``None`` uses :func:`max_image_pixels`
            (``LENS_MAX_IMAGE_PIXELS`` or :data:`DEFAULT_MAX_PIXELS`). Checked on the header, before decoding.
            Pillow's own bomb check (``Image.MAX_IMAGE_PIXELS`` x 2, about 179 MP) still applies above it.
        name: how to call the image in error messages (defaults to the path or the stream's name).
        draft_size: a JPEG whose sides are both at least twice this is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
            (Pillow's ``draft``), keeping both sides >= ``draft_size``: several times faster for a big photo that
            is then resized down to about ``draft_size`` anyway. Pixels differ slightly from a full decode followed
            by the resize. ``None`` (the default) always decodes at full size.
        formats: the decoded formats accepted (Pillow names, e.g. :data:`UPLOAD_FORMATS`), whatever the file's name
            says; ``None`` accepts any format Pillow reads.

    Returns:
        A loaded image in mode ``"RGB"`` (8 bits per channel), EXIF orientation applied, alpha composited on
        white. No file handle stays open.

    Raises:
        ImageLoadError: the file is missing, empty, not an image, truncated or corrupt, has a zero side, or
            has more pixels than allowed. The message names the file; ``err.reason`` holds the reason alone.
    """
    label = _describe(source, name)
    limit = max_image_pixels() if max_pixels is None else int(max_pixels)

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise _fail(label, "file not found") from None
        except OSError as exc:
            raise _fail(label, f"cannot read file ({exc.strerror or exc})") from None
        if path.is_dir():
            raise _fail(label, "is a folder, not an image file")
        if size == 0:
            raise _fail(label, "empty file (0 bytes)")
        try:
            with open(path, "rb") as fh:
                return _decode(fh, label, limit, draft_size, formats)
        except PermissionError as exc:
            raise _fail(label, f"cannot read file ({exc.strerror or exc})") from None

    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise _fail(label, "empty file (0 bytes)")
        return _decode(io.BytesIO(bytes(source)), label, limit, draft_size, formats)

    if not hasattr(source, "read"):
        raise TypeError(f"open_image expects a path, bytes or a binary stream, not {type(source).__name__}")
    return _decode(source, label, limit, draft_size, formats)


def _decode(
    fh: BinaryIO, label: str, limit: int, draft_size: int | None = None, formats: Sequence[str] | None = None
) -> Image.Image:
    try:
        # Our own limit below is the one that counts; Pillow's warning (at ~89 MP) would only be noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fh)
    except UnidentifiedImageError:
        # Pillow reads nothing from an empty stream either; say which case it is.
        raise _fail(label, _empty_or_unknown(fh)) from None
    except Image.DecompressionBombError as exc:
        raise _fail(label, f"too many pixels for Pillow's own decompression-bomb limit ({exc})") from None
    except _DECODE_ERRORS as exc:
        raise _fail(label, f"corrupt or truncated image header ({exc})") from None

    with im:
        if formats is not None and im.format not in formats:
            raise _fail(label, f"its content is {im.format or 'an unknown format'}, not one of {', '.join(formats)}")
        width, height = im.size
        if width <= 0 or height <= 0:
            raise _fail(label, f"zero-size image ({width}x{height})")
        if width * height > limit:
            raise _fail(
                label,
                f"too many pixels: {width}x{height} = {width * height:,} pixels exceeds the limit of "
                f"{limit:,}; {_LIMIT_HINT}",
            )
        if draft_size and im.format == "JPEG" and min(width, height) >= 2 * draft_size:
            # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, keeping both sides >= draft_size (the pixel limit
            # above was checked on the full size).
            im.draft(im.mode, (draft_size, draft_size))
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise _fail(label, f"too many pixels for Pillow's own decompression-bomb limit ({exc})") from None
        except _DECODE_ERRORS as exc:
            raise _fail(label, f"truncated or corrupt image data ({exc})") from None
        oriented = _apply_exif_orientation(im)
        try:
            result = to_rgb(oriented)
        except _DECODE_ERRORS as exc:
            raise _fail(label, f"cannot convert mode {oriented.mode!r} to RGB ({exc})") from None
    # Leaving the ``with`` drops Pillow's file reference; the decoded pixels stay in ``result``.
    return result


def _empty_or_unknown(fh: BinaryIO) -> str:
    try:
        fh.seek(0, io.SEEK_END)
        if fh.tell() == 0:
            return "empty file (0 bytes)"
    except (OSError, ValueError, AttributeError):
        pass
    return "not an image (Pillow cannot identify the file format)"


_LIMIT_HINT = f"if the file is trusted, raise the limit with {MAX_PIXELS_ENV}=<pixels> (or max_pixels=)"


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    """Turn the image upright as its EXIF orientation tag says; unchanged (same object) when upright."""
    try:
        orientation = im.getexif().get(0x0112, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            return ImageOps.exif_transpose(im) or im
    except _DECODE_ERRORS + (KeyError, TypeError):
        pass  # broken EXIF must not cost us the picture: keep it as stored
    return im


def try_open_image(source: ImageSource, **kwargs: object) -> tuple[Image.Image | None, str | None]:
    """Like :func:`open_image`, but returns ``(image, None)`` or ``(None, reason)`` instead of raising.

    ``reason`` is the short reason (e.g. ``"file not found"``), without the file name, so callers that key
    failures by id or path can list them as they like. Only :class:`ImageLoadError` is absorbed.
    """
    try:
        return open_image(source, **kwargs), None  # type: ignore[arg-type]
    except ImageLoadError as exc:
        return None, getattr(exc, "reason", str(exc))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB.

    - Alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``) and palette/colour-key transparency are composited
      on white.
    - ``I;16*`` is scaled from 0..65535 to 0..255 (65535 -> 255), not clipped.
    - ``I`` (32-bit int): values in 0..255 are kept, values in 0..65535 are scaled as 16-bit (PNG and TIFF
      store 16-bit grey this way), anything else is min-max stretched.
    - ``F`` (float): values in 0..1 are scaled by 255, values in 0..255 are kept, anything else is min-max
      stretched.
    - Everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``) goes through Pillow's
      ``convert("RGB")``.

    Returns the same object when it is already ``RGB`` without a transparency key.
    """
    mode = image.mode
    has_key = "transparency" in image.info
    if mode == "RGB" and not has_key:
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (has_key and mode in ("P", "L", "RGB", "1")):
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _gray_to_rgb(_to_uint8(image))
    return image.convert("RGB")


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))


def _to_uint8(image: Image.Image) -> np.ndarray:
    """Scale a single-channel 16-bit, 32-bit int or float image to uint8 (H, W)."""
    mode = image.mode
    data = np.asarray(image)
    if data.ndim != 2:  # defensive: Pillow gives (H, W) for these modes
        data = data.reshape(image.size[1], image.size[0])
    if mode.startswith("I;16"):
        scaled = data.astype(np.float64) / 257.0
    else:
        values = data.astype(np.float64)
        finite = values[np.isfinite(values)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = values * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = values
        elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
            scaled = values / 257.0
        elif hi > lo:
            scaled = (values - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(values)
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Thumbnail files (served to the browser one by one, e.g. the photo shown on hover in the dashboard's maps)

THUMBNAIL_QUALITY = 70
"""JPEG quality of :func:`write_thumbnails`: a 64 px product photo is about 1.3 KB at 70 (the fashion catalog)."""


def thumbnail_file(item_id: str) -> str:
    """Relative path of an item's thumbnail in a :func:`write_thumbnails` folder: ``ab/<20 hex digits>.jpg``.

    A hash of the id rather than the id itself, so that any id (slashes, dots, spaces, non-ASCII) makes a safe URL
    and file name; the first two digits name a sub-folder, so that no folder holds more than a few hundred files
    (each atomic write lists its folder for stale temporaries)."""
    digest = hashlib.sha1(str(item_id).encode("utf-8"), usedforsecurity=False).hexdigest()[:20]
    return f"{digest[:2]}/{digest}.jpg"


def thumbnail_jpeg(source: ImageSource, px: int, *, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """JPEG bytes of ``source`` with its longer side at most ``px`` (aspect kept, never enlarged), loaded with
    :func:`open_image` (big JPEGs decoded at a reduced scale first). Raises :class:`ImageLoadError`."""
    if int(px) < 1:
        raise LensError(f"A thumbnail needs px >= 1, got {px}.")
    image = open_image(source, draft_size=int(px))
    image.thumbnail((int(px), int(px)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def write_thumbnails(
    sources: Mapping[str, ImageSource], folder: str | os.PathLike[str], *, px: int, quality: int = THUMBNAIL_QUALITY
) -> tuple[dict[str, str], dict[str, str]]:
    """Write a JPEG thumbnail of each image under ``folder`` (at :func:`thumbnail_file` of its id), atomically
    (:func:`lens.store.atomic_write`); a thumbnail already there is kept, so a second call writes nothing.

    The folder's name should say what the thumbnails were made from (the catalog's fingerprint and ``px``): a file
    present is trusted, not checked against its source.

    Args:
        sources: ``{item id: its image}`` (paths, usually).
        folder: where the thumbnails go (created if needed).
        px: the longer side of a thumbnail, in pixels.
        quality: JPEG quality.

    Returns:
        ``(files, failed)``: ``{id: relative path}`` of every thumbnail present (written now or before), and
        ``{id: reason}`` of the images that could not be read (no file is written for them).
    """
    root = Path(folder)
    files: dict[str, str] = {}
    failed: dict[str, str] = {}
    for item_id, source in sources.items():
        rel = thumbnail_file(item_id)
        target = root / rel
        if not target.is_file():
            try:
                data = thumbnail_jpeg(source, px, quality=quality)
            except ImageLoadError as exc:
                failed[str(item_id)] = getattr(exc, "reason", str(exc))
                continue
            atomic_write(target, lambda tmp, data=data: tmp.write_bytes(data))  # type: ignore[misc]
        files[str(item_id)] = rel
    return files, failed
