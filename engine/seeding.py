"""Per-image seeds: every random choice made for one image (its fit/held-out pixel split, its
augmentation copies, the alpha calibration split, a stochastic victim's samples and a diffusion
victim's noise) is derived from the run seed and the image id alone, never from batch composition,
worker count or order.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

from .errors import UsageError


def image_seed(seed: int, image_id: str) -> int:
    """A 64-bit seed derived from the run seed and the image id."""
    digest = hashlib.blake2b(f"{seed}\x00{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def sample_seed(seed: int, image_id: str, sample: int) -> int:
    """The seed a stochastic victim gets for sample `sample` of an image, below 2**63 (an int64). Sample 0 is
    the seed victims always had, so stores written before there were several samples stay valid."""
    key = image_id if sample == 0 else f"{image_id}\x00sample{sample}"
    return image_seed(seed, key) >> 1


def noise_seed(seed: int, timestep: int, draw: int) -> int:
    """The seed of noise draw `draw` at diffusion timestep `timestep` for the image whose seed is `seed`,
    below 2**63; the victim and every shadow draw the same noise for an image."""
    digest = hashlib.blake2b(f"{seed}\x00{timestep}\x00{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def fit_mask(ids: Sequence[str], n_pixels: int, fit_fraction: float, seed: int) -> torch.Tensor:
    """Bool [len(ids), n_pixels]: True marks the pixels the linear map is fitted on.

    Every image gets exactly round(fit_fraction * n_pixels) fit pixels.
    """
    n_fit = int(round(fit_fraction * n_pixels))
    if not 0 < n_fit < n_pixels:
        raise UsageError(f"fit fraction {fit_fraction} leaves no fit or no held-out pixel of {n_pixels}")
    mask = np.zeros((len(ids), n_pixels), dtype=bool)
    for row, image_id in enumerate(ids):
        order = np.random.Generator(np.random.PCG64(image_seed(seed, image_id))).permutation(n_pixels)
        mask[row, order[:n_fit]] = True
    return torch.from_numpy(mask)
