"""Decode any image Pillow can read into the 32x32 RGB uint8 the model expects.

Training reads its JPEG folders through `load_image` too, so a test image
reaches the ONNX model with exactly the pixels Keras saw.

Pillow is imported where it is used, not at the top: plain JPEGs (simplejpeg)
never need it, and its import was ~15 ms of the ~210 ms from `cifar-edge infer`
starting to its first prediction.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

try:  # fast decoding of plain JPEGs (a dependency); Pillow does everything else
    import simplejpeg
except ImportError:  # pragma: no cover - a platform without its wheel: Pillow decodes everything
    simplejpeg = None

from cifar_edge.runtime.manifest import IMAGE_SIZE

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


# Pillow's default decompression-bomb limit, for plain JPEGs decoded before Pillow is imported.
PILLOW_DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


def _pixel_limit() -> float:
    """Pillow's current decompression-bomb limit (its default until Pillow is imported)."""
    pil_image = sys.modules.get("PIL.Image")
    limit = pil_image.MAX_IMAGE_PIXELS if pil_image is not None else PILLOW_DEFAULT_MAX_PIXELS
    return float("inf") if limit is None else limit


class ImageReadError(Exception):
    """An image file could not be decoded; the message says why."""


def image_extensions() -> frozenset[str]:
    """File extensions Pillow can open (lower case, with the dot)."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in Image.OPEN)


# Extensions every Pillow build opens with its own built-in plugins: a folder of
# these is listed without loading Pillow's ~40 plugins (50-250 ms on the 2-core
# machine, a tenth of `infer` over 10,000 images); any other extension asks
# Pillow's full registry.
COMMON_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
                                     ".ppm", ".pgm", ".pbm"})


def find_images(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted, de-duplicated list.

    Files named explicitly are always kept (a bad one is reported later);
    inside folders only regular files with an image extension Pillow knows
    are kept, folder by folder in name order (as sorting the paths would),
    without following links to folders.
    Raises FileNotFoundError for a path that does not exist.
    """
    registry: list[frozenset[str]] = []  # Pillow's extensions, loaded on the first uncommon one

    def is_image_name(name: str) -> bool:
        ext = os.path.splitext(name)[1].lower()
        if ext in COMMON_IMAGE_EXTENSIONS:
            return True
        if not registry:
            registry.append(image_extensions())
        return ext in registry[0]

    found: list[Path] = []
    seen: set[str] = set()
    for raw in paths:
        path = os.fspath(raw)
        if os.path.isdir(path):
            candidates = _list_folder(path, is_image_name)
            keys = _dedupe_keys(path, candidates)
        elif os.path.exists(path):
            candidates = [path]
            keys = [os.path.normcase(os.path.abspath(path))]
        else:
            raise FileNotFoundError(path)
        for candidate, key in zip(candidates, keys):
            if key not in seen:
                seen.add(key)
                found.append(Path(candidate))
    return found


def _list_folder(folder: str, is_image_name) -> list[str]:
    """Regular files (links to files included; broken links, FIFOs and links to folders not)
    under `folder`, depth first, each folder's entries in name order."""
    found: list[str] = []
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return found  # unreadable folder: nothing in it to classify
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                found += _list_folder(entry.path, is_image_name)
            elif is_image_name(entry.name) and entry.is_file():
                found.append(entry.path)
        except OSError:  # a link loop, a link into a folder we may not enter: no image to read
            continue
    return found


def _dedupe_keys(folder: str, files: list[str]) -> list[str]:
    """Absolute, case-normalised keys, from one abspath call for the folder instead of one per file."""
    root = os.path.abspath(folder)
    return [os.path.normcase(os.path.join(root, f[len(folder):].lstrip(os.sep))) for f in files]


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    16/32-bit grayscale is scaled down (not clipped), transparency is
    composited onto white, palette/CMYK/LAB/YCbCr go through Pillow's
    converters.
    """
    from PIL import Image

    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "I":
        array = np.asarray(image, dtype=np.float64)
        # 16-bit modes span 0..65535.  Mode "I" (32-bit) has no fixed range:
        # treat it as 16-bit data when it exceeds 8-bit values.
        sixteen = image.mode in _SIXTEEN_BIT_MODES or array.max(initial=0) > 255
        peak = 65535.0 if sixteen else 255.0
        array = np.clip(np.round(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        peak = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        array = np.clip(np.round(array * (255.0 / peak)), 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def load_image(path: str | os.PathLike[str], size: int = IMAGE_SIZE) -> np.ndarray:
    """Read one image file as a (size, size, 3) uint8 array.

    EXIF orientation is applied.  Images of another size are resized with Pillow's bilinear filter (which
    antialiases when shrinking).  Raises ImageReadError with a short reason.
    """
    pixels = decode_plain_jpeg(path)
    if pixels is None:
        pixels = _decode_with_pillow(path)
    if pixels.shape[:2] != (size, size):
        from PIL import Image

        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
    return pixels


def _decode_with_pillow(path: str | os.PathLike[str]) -> np.ndarray:
    """Any image Pillow reads, orientation applied, as (H, W, 3) uint8; ImageReadError with a reason."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)  # EXIF, TIFF tags, XMP or PNG text: Pillow finds them all
            rgb = to_rgb(image)
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot decode image ({exc})") from None
    return np.asarray(rgb, dtype=np.uint8)


_JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


def decode_plain_jpeg(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The pixels of a plain YCbCr or grayscale JPEG as (H, W, 3) uint8, or None for anything else.

    Pillow spends ~120 us of Python per small JPEG parsing markers; simplejpeg
    (libjpeg-turbo, the same ISLOW IDCT and fancy upsampling as Pillow)
    decodes a 32x32 one in ~16 us with identical pixels (all 10,000
    CIFAR-10 (JPEG) test images compared).  Anything unusual (EXIF, CMYK,
    Adobe RGB, a broken file, a huge one) returns None, so Pillow decodes it
    or names what is wrong.  Without simplejpeg installed, always None.
    """
    if simplejpeg is None or not os.fspath(path).lower().endswith(_JPEG_SUFFIXES):
        return None
    try:
        with open(path, "rb") as f:
            data = f.read()
        if not data.startswith(b"\xff\xd8") or b"Exif\x00\x00" in data or b"tiff:Orientation" in data:
            return None  # not a JPEG, or it may carry an orientation (EXIF or XMP): Pillow applies it
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if height * width > _pixel_limit():
            return None  # Pillow's decompression-bomb check gives the error
        if colorspace == "YCbCr":
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        if colorspace == "Gray":
            return np.repeat(simplejpeg.decode_jpeg(data, colorspace="GRAY"), 3, axis=2)
    except (OSError, ValueError):
        pass
    return None
