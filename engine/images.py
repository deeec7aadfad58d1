"""Decode one image file (or one half of an aligned pix2pix file) to RGB float in [0, 1].

Grayscale, palette, RGBA and 16-bit files are converted; anything unusable raises `ImageError`
naming the file and the problem, so the caller can record it and go on.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data import Half


class ImageError(ValueError):
    """An image that cannot be used; `reason` is what gets recorded in the store."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem

    @property
    def reason(self) -> str:
        return str(self)


def _to_float_rgb(image: Image.Image) -> np.ndarray:
    """[H, W, 3] float32 in [0, 1] from any Pillow mode."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.float32) / 65535.0
    elif mode == "I":  # Pillow's 32-bit integer mode: how older Pillows open 16-bit grayscale PNGs
        array = np.asarray(image, dtype=np.float32) / 65535.0
    elif mode == "F":
        array = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    else:
        if mode == "P":
            image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode in ("RGBA", "LA", "PA"):
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def load_rgb(path: str, half: Half = None) -> np.ndarray:
    """Decode `path` to float32 [H, W, 3] in [0, 1]; `half` keeps the left or right half of an A|B file."""
    if not path:
        raise ImageError(path, "no file given")
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with Image.open(path) as image:
            image.load()
            array = _to_float_rgb(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(path, f"cannot decode: {error}") from None
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(path, f"image has no pixels ({array.shape[1]}x{array.shape[0]})")
    if half is not None:
        width = array.shape[1]
        if width < 2:
            raise ImageError(path, "too narrow to split into A|B halves")
        array = array[:, : width // 2] if half == "left" else array[:, width // 2:]
    return np.ascontiguousarray(array)


def load_labels(path: str, half: Half = None) -> np.ndarray:
    """Decode a label map of class ids to int64 [H, W] (palette indices, or gray / 16-bit values)."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(path, "empty file (0 bytes)")
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N"):
                raise ImageError(path, f"a label map must hold one class id per pixel (palette or grayscale), "
                                       f"got mode {image.mode}")
            labels = np.asarray(image).astype(np.int64)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(path, f"cannot decode label map: {error}") from None
    if half is not None:
        width = labels.shape[1]
        labels = labels[:, : width // 2] if half == "left" else labels[:, width // 2:]
    return np.ascontiguousarray(labels)
