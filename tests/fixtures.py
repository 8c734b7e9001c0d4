"""Generators for test data: odd images, small synthetic catalogs, Fashion-MNIST IDX files.

Nothing binary is committed; every fixture is written on demand, deterministically for a given seed.
"""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Loaded (width, height) of every odd image that should load; EXIF orientation 6 swaps the stored 40x20.
ODD_IMAGE_SIZES: dict[str, tuple[int, int]] = {
    "rgba": (32, 24),
    "la": (20, 10),
    "palette": (16, 16),
    "palette_transparent": (16, 16),
    "cmyk_jpeg": (30, 20),
    "i16_png": (16, 8),
    "gray_png": (12, 12),
    "bilevel_png": (9, 7),
    "float_tiff": (10, 6),
    "tiny_1x1": (1, 1),
    "wide_300x20": (300, 20),
    "exif_rotated": (20, 40),
    "webp": (24, 18),
    "huge": (3000, 2000),
}

# Odd files that must fail, and a word the ImageLoadError message must contain.
ODD_IMAGE_FAILURES: dict[str, str] = {
    "truncated_jpeg": "truncated",
    "text_as_jpg": "not an image",
    "empty": "empty file",
}


def make_odd_images(folder: Path) -> dict[str, Path]:
    """Write the odd images lens must cope with; return ``{name: path}``.

    Keys are those of :data:`ODD_IMAGE_SIZES` (load fine; "huge" is meant to be loaded with a small
    ``max_pixels``) and of :data:`ODD_IMAGE_FAILURES` (must raise).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def save(name: str, image: Image.Image, filename: str, **kw: object) -> None:
        path = folder / filename
        image.save(path, **kw)
        out[name] = path

    # RGBA: fully transparent background (the colour under it is black, so compositing matters),
    # an opaque red square in the middle.
    rgba = Image.new("RGBA", (32, 24), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle([10, 6, 21, 17], fill=(255, 0, 0, 255))
    save("rgba", rgba, "rgba.png")

    # LA: transparent black left half, opaque mid-grey right half.
    la = Image.new("LA", (20, 10), (0, 0))
    ImageDraw.Draw(la).rectangle([10, 0, 19, 9], fill=(128, 255))
    save("la", la, "la.png")

    # Palette without transparency: two palette colours.
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 255, 0, 255, 0] + [0] * (256 * 3 - 6))
    ImageDraw.Draw(pal).rectangle([0, 0, 7, 15], fill=1)
    save("palette", pal, "palette.png")

    # Palette with a transparent index (index 0 is transparent, index 1 green).
    palt = pal.copy()
    save("palette_transparent", palt, "palette_transparent.png", transparency=0)

    # CMYK JPEG: pure red ink mix (no cyan, full magenta and yellow).
    save("cmyk_jpeg", Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "cmyk.jpg", quality=95)

    # 16-bit greyscale PNG: a ramp from 0 to 65535 (the last pixel is the maximum).
    ramp = np.linspace(0, 65535, 16 * 8).round().astype(np.uint16).reshape(8, 16)
    save("i16_png", Image.fromarray(ramp), "i16.png")

    save("gray_png", Image.new("L", (12, 12), 77), "gray.png")

    bilevel = Image.new("1", (9, 7), 0)
    bilevel.putpixel((0, 0), 1)
    save("bilevel_png", bilevel, "bilevel.png")

    # 32-bit float TIFF with values in 0..1.
    floats = np.linspace(0.0, 1.0, 60, dtype=np.float32).reshape(6, 10)
    save("float_tiff", Image.fromarray(floats), "float.tif")

    save("tiny_1x1", Image.new("RGB", (1, 1), (10, 20, 30)), "tiny.png")
    save("wide_300x20", Image.new("RGB", (300, 20), (200, 100, 50)), "wide.jpg", quality=90)
    save("webp", Image.new("RGB", (24, 18), (0, 128, 255)), "image.webp")

    # Stored 40x20, left half red, right half blue, with EXIF orientation 6 ("rotate 90 CW to display"):
    # loaded it must be 20x40 with red on top and blue below.
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    ImageDraw.Draw(stored).rectangle([20, 0, 39, 19], fill=(0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_rotated", stored, "exif_rotated.jpg", exif=exif.tobytes(), quality=95)

    # Large dimensions, tiny file (a flat PNG compresses to a few KB): tested with a small max_pixels.
    save("huge", Image.new("L", (3000, 2000), 255), "huge.png")

    # A real JPEG cut in half.
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8))
    full = folder / "full.jpg"
    noisy.save(full, quality=90)
    data = full.read_bytes()
    full.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    out["truncated_jpeg"] = folder / "truncated.jpg"

    (folder / "text.jpg").write_text("this is not an image\n", encoding="utf-8")
    out["text_as_jpg"] = folder / "text.jpg"

    (folder / "empty.jpg").write_bytes(b"")
    out["empty"] = folder / "empty.jpg"
    return out


# ----------------------------------------------------------------------------------------------------------
# Synthetic catalogs

_SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar", "star")
_HUES = (
    ("Red", (220, 40, 40)),
    ("Blue", (40, 70, 220)),
    ("Green", (40, 170, 60)),
    ("Orange", (245, 150, 30)),
    ("Purple", (140, 60, 190)),
    ("Teal", (30, 160, 160)),
    ("Black", (30, 30, 30)),
    ("Pink", (240, 110, 170)),
)
_GENDERS = ("Men", "Women", "Unisex")


def class_names(n_classes: int) -> list[str]:
    """Class names used by :func:`make_catalog`: ``"<Colour><Shape>"``, e.g. ``"RedCircle"``."""
    if not 1 <= n_classes <= len(_SHAPES):
        raise ValueError(f"n_classes must be 1..{len(_SHAPES)}")
    return [f"{_HUES[c][0]}{_SHAPES[c].capitalize()}" for c in range(n_classes)]


def draw_item(class_index: int, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One synthetic product photo: the class's shape in the class's hue on white, jittered per item."""
    shape = _SHAPES[class_index % len(_SHAPES)]
    base = np.array(_HUES[class_index % len(_HUES)][1], dtype=float)
    colour = tuple(int(v) for v in np.clip(base + rng.uniform(-25, 25, size=3), 0, 255))
    img = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.22, 0.34)
    cx = size / 2 + rng.uniform(-0.1, 0.1) * size
    cy = size / 2 + rng.uniform(-0.1, 0.1) * size
    box = [cx - r, cy - r, cx + r, cy + r]
    w = max(2, int(r / 2.5))
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        draw.rectangle([cx - r, cy - w / 2, cx + r, cy + w / 2], fill=colour)
        draw.rectangle([cx - w / 2, cy - r, cx + w / 2, cy + r], fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=w)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "bar":
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
    else:  # star
        pts = []
        for k in range(10):
            ang = np.pi / 2 + k * np.pi / 5
            rad = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rad * np.cos(ang), cy - rad * np.sin(ang)))
        draw.polygon(pts, fill=colour)
    return img


def make_catalog(
    folder: Path,
    *,
    n_classes: int = 4,
    per_class: int = 6,
    size: int = 64,
    seed: int = 0,
    label_column: str = "articleType",
    extra_columns: bool = True,
) -> Path:
    """Write a lens CSV catalog of synthetic, visually distinct-per-class JPEGs; return its folder.

    Layout: ``<folder>/catalog.csv`` and ``<folder>/images/<id>.jpg``. Ids are zero-padded numbers
    (``"000100"``...) so that reading them as anything but strings would lose the zeros. Rows are ordered
    class by class. With ``extra_columns``: ``gender``, ``subCategory``, ``baseColour`` (one cell left empty)
    and ``productDisplayName``.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = class_names(n_classes)
    header = ["id", "image", label_column]
    if extra_columns:
        header += ["gender", "subCategory", "baseColour", "productDisplayName"]
    rows: list[list[str]] = []
    for c, cls in enumerate(names):
        for k in range(per_class):
            n = len(rows)
            item_id = f"{100 + n:06d}"
            rel = f"images/{item_id}.jpg"
            draw_item(c, rng, size).save(folder / rel, quality=92)
            row = [item_id, rel, cls]
            if extra_columns:
                colour = _HUES[c][0]
                row += [
                    _GENDERS[n % len(_GENDERS)],
                    "Round" if _SHAPES[c] in ("circle", "ring") else "Angular",
                    "" if n == 1 else colour,
                    f"{colour} {_SHAPES[c]} item {k + 1}",
                ]
            rows.append(row)
    with open(folder / "catalog.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return folder


def make_folder_catalog(
    folder: Path,
    *,
    n_classes: int = 3,
    per_class: int = 4,
    size: int = 48,
    seed: int = 0,
) -> Path:
    """Write a class-subfolder catalog ``<folder>/<Class>/<item>.jpg|.png``; return ``folder``.

    Also writes things a loader must ignore: a ``notes.txt`` in each class folder, a hidden file, a hidden
    folder with an image, and a loose ``README.md`` at the top.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for c, cls in enumerate(class_names(n_classes)):
        sub = folder / cls
        sub.mkdir(exist_ok=True)
        for k in range(per_class):
            ext = ".png" if k % 2 else ".jpg"
            draw_item(c, rng, size).save(sub / f"item{k:02d}{ext}")
        (sub / "notes.txt").write_text("not an image\n", encoding="utf-8")
        (sub / ".hidden.jpg").write_bytes(b"")
    hidden = folder / ".thumbnails"
    hidden.mkdir(exist_ok=True)
    draw_item(0, rng, 16).save(hidden / "x.jpg")
    (folder / "README.md").write_text("a folder catalog\n", encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------------------------------------
# Fashion-MNIST IDX files


def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None, compress: bool | None = None) -> Path:
    """Write an unsigned-byte IDX file (gzipped when the name ends in .gz, or when ``compress``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    path = Path(path)
    gz = path.name.endswith(".gz") if compress is None else compress
    if gz:
        # mtime=0: byte-identical output for identical input
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_fashion_mnist_idx(
    folder: Path,
    *,
    n: int = 20,
    split: str = "t10k",
    gz: bool = True,
    seed: int = 0,
) -> tuple[Path, np.ndarray]:
    """Write ``<split>-images-idx3-ubyte[.gz]`` and ``<split>-labels-idx1-ubyte[.gz]``; return (folder, labels).

    Images are 28x28 random noise with a bright block whose position encodes the label; labels are
    ``i % 10``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, lab in enumerate(labels):
        r, c = divmod(int(lab), 5)
        images[i, 4 + r * 10 : 12 + r * 10, 2 + c * 5 : 6 + c * 5] = 255
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return folder, labels
