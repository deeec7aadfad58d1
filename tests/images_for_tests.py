"""Image files for the reader tests that Pillow will not write as they are needed: 16-bit RGB PNGs,
PNGs that declare a huge size in their header, multi-frame files."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png(path: Path, width: int, height: int, bit_depth: int, color_type: int, pixels: bytes) -> None:
    """A PNG with the given header and `pixels` (filtered scanlines) as its one IDAT chunk."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(pixels))
                     + png_chunk(b"IEND", b""))


def write_png16(path: Path, array: np.ndarray) -> None:
    """16-bit RGB PNG (Pillow cannot write one)."""
    height, width, _ = array.shape
    write_png(path, width, height, 16, 2, b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array))


def write_declared_png(path: Path, width: int, height: int) -> None:
    """A small, sound-looking RGB PNG whose header declares `width` x `height`: a decompression bomb's
    shape (its pixel data stops after a few rows, so only a decoder would find out)."""
    write_png(path, width, height, 8, 2, bytes(1 + 3 * min(width, 64)))


def write_frames(path: Path, frames: int, size: tuple[int, int] = (40, 30)) -> None:
    """A `frames`-frame file in the format of `path`'s suffix (.tif, .gif, .png (APNG), .webp)."""
    rng = np.random.default_rng(frames)
    images = [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:])
