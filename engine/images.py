"""Decode one image file (or one half of an aligned pix2pix file) to RGB float in [0, 1], or a label
map to class ids.

Grayscale, palette, RGBA (alpha dropped) and 16-bit files are converted; anything unusable raises `ImageError`
naming the file and the problem, so the caller can record it and go on. Before anything is decoded,
the header is checked (`check_header`): more than `MAX_IMAGE_PIXELS` pixels or more than one frame
is refused. `require_min_side` is the readers' floor on what is worth scoring.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data import Half
from .errors import UsageError

MAX_IMAGE_PIXELS = 8192 * 8192
"""Most pixels (64 megapixels) an image may declare in its header; larger files are refused before
decoding. Decoded to float RGB an image takes 12 bytes a pixel (768 MiB at the limit) and a reader
holds up to three batches, so a larger file is a decompression bomb (a small file declaring a huge
image) or an image to downscale before scoring. Pillow's own limit (`Image.MAX_IMAGE_PIXELS`, 89.5
megapixels by default) is higher: whatever it warns about is over this limit too, and what it
refuses outright (over twice its limit) is reported as over this one."""

MIN_SIDE = 8
"""Fewest pixels an image (or the half of an A|B file) may have on a side to be scored. The CNN sees
the image resized to 256 px on its shorter side and the difficulty target is a 56x56 grid: below
8 px every 8 px of that grid (a 1x1 image: all of it) is interpolation between the same few values,
so Ldiff measures the resize filter, not the image. Such files are thumbnails or export mistakes."""


def printable(text: str | bytes) -> str:
    """`text` (a path or a message holding one) as valid UTF-8 text for the store and the terminal:
    file-name bytes that are not UTF-8 (kept by Python as lone surrogates) become `\\xNN` escapes."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


class ImageError(UsageError):
    """An image that cannot be used; `reason` is what gets recorded in the store."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(printable(f"{os.fsdecode(path)}: {problem}"))
        self.path, self.problem = path, problem

    @property
    def reason(self) -> str:
        return str(self)


def check_header(path: str, image: Image.Image) -> None:
    """Refuse, from the header alone, an image over `MAX_IMAGE_PIXELS` or with more than one frame
    (multi-page TIFF, animated GIF / PNG / WebP: which frame is "the" image is not ours to guess).
    MPO files are JPEGs with extra pictures (a preview, a second view): their first picture is the
    photo, and it is what every JPEG decoder returns."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(path, f"declares {width}x{height} = {width * height} pixels, over memscore's limit of "
                               f"{MAX_IMAGE_PIXELS} (memscore.images.MAX_IMAGE_PIXELS); refused before decoding: "
                               "downscale the image, or check the file is not a decompression bomb")
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format != "MPO":
        raise ImageError(path, f"has {frames} frames (a multi-frame {image.format}); memscore scores single "
                               "images: save the frame to score as its own file")


def require_min_side(path: str, width: int, height: int, half: Half = None) -> None:
    """ImageError when the image (or its `half`) is under `MIN_SIDE` pixels wide or high."""
    if min(width, height) < MIN_SIDE:
        what = f"its {half} half is" if half else "it is"
        raise ImageError(path, f"too small to score: {what} {width}x{height} pixels, memscore needs at least "
                               f"{MIN_SIDE} on each side (memscore.images.MIN_SIDE)")


def _decode(path: str, convert: Callable[[Image.Image], np.ndarray], what: str = "") -> np.ndarray:
    """Open `path`, check its header, decode it and `convert` it; every problem becomes an ImageError."""
    if not path:
        raise ImageError(path, "no file given")
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with Image.open(path) as image:
            check_header(path, image)
            image.load()
            return convert(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except Image.DecompressionBombError as error:  # Pillow refused it in `open`, before `check_header` could
        raise ImageError(path, f"over memscore's limit of {MAX_IMAGE_PIXELS} pixels "
                               f"(memscore.images.MAX_IMAGE_PIXELS), refused before decoding ({error})") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(path, f"cannot decode{what}: {error}") from None


def _cut(path: str, array: np.ndarray, half: Half) -> np.ndarray:
    """The left or right half of an A|B image (the right one takes the odd column)."""
    if half is None:
        return np.ascontiguousarray(array)
    width = array.shape[1]
    if width < 2:
        raise ImageError(path, "too narrow to split into A|B halves")
    return np.ascontiguousarray(array[:, : width // 2] if half == "left" else array[:, width // 2:])


def _to_float_rgb(image: Image.Image) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1] from any Pillow mode."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.float32) / 65535.0
    elif mode == "I":  # Pillow's 32-bit integer mode: how older Pillows open 16-bit grayscale PNGs
        array = np.asarray(image, dtype=np.float32) / 65535.0
    elif mode == "F":
        array = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    else:  # alpha and a palette's transparency are dropped, as the pix2pix loader's `convert('RGB')` does
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def load_rgb(path: str, half: Half = None) -> np.ndarray:
    """Decode `path` to float32 [H, W, 3] in [0, 1]; `half` keeps the left or right half of an A|B file.

    Alpha (RGBA, LA, PA, a palette's transparent entry) is dropped, not composited: a pixel is its colour
    channels whatever its opacity, as the public pix2pix loader (`Image.open(path).convert('RGB')`) gives a victim
    trained by it; compositing would score images the victim never saw."""
    array = _decode(path, _to_float_rgb)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(path, f"image has no pixels ({array.shape[1]}x{array.shape[0]})")
    return _cut(path, array, half)


def load_labels(path: str, half: Half = None) -> np.ndarray:
    """Decode a label map of class ids to int64 [H, W] (palette indices, or gray / 16-bit values)."""
    def class_ids(image: Image.Image) -> np.ndarray:
        if image.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N"):
            raise ImageError(path, f"a label map must hold one class id per pixel (palette or grayscale), "
                                   f"got mode {image.mode}")
        return np.asarray(image).astype(np.int64)

    return _cut(path, _decode(path, class_ids, " label map"), half)
