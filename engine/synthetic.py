"""Procedurally generated paired datasets: label maps and the "photos" they condition.

For the demo and for scale tests, with no download: each pair is a pix2pix aligned file (photo on
the left, colour-coded label map on the right, like Facades). Photos carry per-image texture of
random strength, so images differ in intrinsic difficulty as real ones do. Deterministic in
(seed, index).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = np.array([[0, 0, 170], [0, 85, 255], [170, 255, 85], [255, 85, 0], [255, 255, 0], [170, 0, 0],
                    [0, 170, 255], [85, 255, 170]], dtype=np.float32) / 255.0
BASE_COLOURS = np.array([[0.55, 0.50, 0.45], [0.25, 0.30, 0.40], [0.80, 0.78, 0.70], [0.45, 0.25, 0.20],
                         [0.70, 0.65, 0.40], [0.30, 0.20, 0.15], [0.60, 0.70, 0.80], [0.35, 0.45, 0.30]],
                        dtype=np.float32)


def make_pair(index: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(photo, label map), both [size, size, 3] float32 in [0, 1]."""
    rng = np.random.default_rng([seed, index])
    labels = np.zeros((size, size), dtype=np.int64)
    for _ in range(rng.integers(3, 9)):
        h, w = rng.integers(size // 8, size // 2, size=2)
        top, left = rng.integers(0, size - h), rng.integers(0, size - w)
        labels[top: top + h, left: left + w] = rng.integers(1, len(PALETTE))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    texture = np.zeros((size, size), dtype=np.float32)
    strength = rng.uniform(0.0, 0.25)  # the image's intrinsic difficulty
    for _ in range(6):
        fy, fx = rng.uniform(2, 12, size=2)
        texture += np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
    texture = strength * texture / 6.0 + strength * 0.5 * rng.standard_normal((size, size)).astype(np.float32)
    photo = BASE_COLOURS[labels] * (1.0 + 0.15 * rng.standard_normal(3).astype(np.float32)) + texture[:, :, None]
    return np.clip(photo, 0.0, 1.0), PALETTE[labels]


def write_aligned_dataset(root: str | Path, n: int, *, size: int = 64, seed: int = 0,
                          split: dict[str, range] | None = None) -> Path:
    """Write `n` aligned PNGs (photo | label) under `root`, optionally into named subfolders by index range."""
    root = Path(root)
    split = split or {"": range(n)}
    for folder, indices in split.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for index in indices:
            photo, label = make_pair(index, size, seed)
            side_by_side = np.concatenate([photo, label], axis=1)
            Image.fromarray(np.rint(side_by_side * 255).astype(np.uint8)).save(root / folder / f"{index}.png")
    return root


def write_manifest_dataset(root: str | Path, n: int, *, distinct: int = 64, size: int = 64, seed: int = 0,
                           members_every: int = 2) -> Path:
    """A manifest of `n` rows over `distinct` pairs written once (inputs/ and targets/), for scale runs.

    Ids are unique (`img0000000`, ...); row i uses pair i % distinct; every `members_every`-th row
    is marked a member. Written in blocks, so n = 1M costs seconds and no memory.
    """
    root = Path(root)
    for folder in ("inputs", "targets"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(distinct):
        photo, label = make_pair(index, size, seed)
        Image.fromarray(np.rint(label * 255).astype(np.uint8)).save(root / "inputs" / f"{index}.png")
        Image.fromarray(np.rint(photo * 255).astype(np.uint8)).save(root / "targets" / f"{index}.png")
    manifest = root / "manifest.csv"
    with open(manifest, "w", encoding="utf-8") as handle:
        handle.write("id,input,target,member\n")
        for start in range(0, n, 100_000):
            handle.write("".join(f"img{i:07d},inputs/{i % distinct}.png,targets/{i % distinct}.png,"
                                 f"{int(i % members_every == 0)}\n" for i in range(start, min(start + 100_000, n))))
    return manifest
