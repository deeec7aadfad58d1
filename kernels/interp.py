"""Explicit 1-D interpolation operators, applied separably (rows, then columns) to resize feature maps.

`"bilinear"` is torch's `F.interpolate(mode="bilinear", align_corners=False)`; `"skimage"` is
`skimage.transform.resize(order=1, mode="reflect", anti_aliasing=False)` (the authors' reference path).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

MODES = ("bilinear", "skimage")


def interpolation_matrix(in_size: int, out_size: int, mode: str) -> torch.Tensor:
    """Dense float64 `[out_size, in_size]` operator with at most 2 non-zeros per row.

    Both modes sample source coordinate `(i + 0.5) * in_size / out_size - 0.5`. They differ only at the
    border: torch clamps a coordinate below 0 to 0 (and drops the right tap past the last pixel);
    skimage's `reflect` is ndimage's `mirror`, a reflection about the edge pixel's centre, so
    -0.25 reads 0.75 * x[0] + 0.25 * x[1].
    """
    if mode not in MODES:
        raise ValueError(f"unknown interpolation mode {mode!r}; expected one of {MODES}")
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in_size={in_size}, out_size={out_size}")
    if mode == "skimage" and out_size < in_size:
        raise ValueError(f"skimage mode only upsamples ({in_size} -> {out_size}): skimage would anti-alias a "
                         "shrink, which this operator does not reproduce")
    scale = in_size / out_size
    # Same expression and order of operations as torch's area_pixel_compute_source_index (float64).
    src = scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5
    if mode == "bilinear":
        src = np.maximum(src, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
        frac = np.clip(src - lo, 0.0, 1.0)
        hi = np.where(lo < in_size - 1, lo + 1, lo)
    else:
        lo = np.floor(src).astype(np.int64)
        frac = src - lo
        hi = lo + 1
        period = max(2 * (in_size - 1), 1)  # mirror about the edge pixel centres; size 1 is constant
        lo, hi = (_mirror(index, in_size, period) for index in (lo, hi))
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lo), 1.0 - frac)
    np.add.at(matrix, (rows, hi), frac)
    return torch.from_numpy(matrix)


def _mirror(index: np.ndarray, size: int, period: int) -> np.ndarray:
    folded = np.mod(index, period)
    return np.where(folded >= size, period - folded, folded)


@functools.lru_cache(maxsize=128)
def cached_matrix(in_size: int, out_size: int, mode: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`interpolation_matrix` in a given dtype and device, built once per combination."""
    return interpolation_matrix(in_size, out_size, mode).to(dtype=dtype, device=device)


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize `[B, C, h, w]` to `[B, C, H, W]` with the explicit operators, in `maps`' dtype and device."""
    rows = cached_matrix(maps.shape[-2], size[0], mode, maps.dtype, maps.device)
    cols = cached_matrix(maps.shape[-1], size[1], mode, maps.dtype, maps.device)
    return torch.matmul(torch.matmul(rows, maps), cols.T)
