"""Real photos as a tensor batch, for the kernel's tests and benchmark: the first photos of a
pix2pix aligned folder (the photo is the left half), resized to the CNN size, and their target grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def aligned_photo_batch(folder: str | Path, count: int, size: int = 224, grid: int = 56
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`[count, 3, size, size]` photos in [0, 1] (sorted `*.jpg` of `folder`) and `[count, 3, grid, grid]` targets."""
    paths = sorted(Path(folder).glob("*.jpg"))[:count]
    if len(paths) < count:
        raise FileNotFoundError(f"{folder}: {count} aligned .jpg photos needed, found {len(paths)}")
    photos = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        photo = image.crop((0, 0, image.width // 2, image.height)).resize((size, size), Image.BILINEAR)
        photos.append(torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0).permute(2, 0, 1))
    images = torch.stack(photos)
    target = F.interpolate(images, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return images, target
