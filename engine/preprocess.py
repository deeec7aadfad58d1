"""Per-image tensor preparation: the victim's input, the CNN's view and the difficulty target.

Presets (docs/ALGORITHM.md): both show the CNN `Resize(256)` then `CenterCrop(224)` with ImageNet
normalisation. `aligned` (default) takes the difficulty target from that same crop, so features
and target pixels line up; `reference` reproduces the authors' code: the WHOLE ground truth
resized to the grid by Pillow's bicubic filter, not aligned with the crop.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

CNN_RESIZE = 256
CNN_CROP = 224


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """[H, W, 3] float array -> [3, H, W] tensor (no copy of the values beyond layout)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [3, H, W] (antialiased when shrinking), values kept in [0, 1]."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return out.clamp_(0.0, 1.0)


def cnn_geometry(height: int, width: int, shorter: int = CNN_RESIZE, crop: int = CNN_CROP) -> tuple[int, int, int, int]:
    """(resized height, width, crop top, left) of torchvision's `Resize(shorter)` then `CenterCrop(crop)`,
    with torchvision's arithmetic: the longer side is `int(shorter * long / short)`, truncated, not rounded."""
    if height <= width:
        new_h, new_w = shorter, int(shorter * width / height)
    else:
        new_h, new_w = int(shorter * height / width), shorter
    return new_h, new_w, int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))


def resize_shorter_center_crop(image: torch.Tensor, shorter: int = CNN_RESIZE, crop: int = CNN_CROP) -> torch.Tensor:
    """torchvision's `Resize(shorter)` then `CenterCrop(crop)` on [3, H, W]."""
    new_h, new_w, top, left = cnn_geometry(*image.shape[-2:], shorter, crop)
    image = resize(image, (new_h, new_w))
    return image[:, top: top + crop, left: left + crop]


def normalise(image: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image - mean_t) / std_t


def difficulty_target(target: np.ndarray, grid: int, preset: str) -> torch.Tensor:
    """The RGB values the linear map predicts, [3, grid, grid] in [0, 1]."""
    if preset == "reference":
        as_uint8 = Image.fromarray(np.clip(np.rint(target * 255.0), 0, 255).astype(np.uint8))
        small = np.asarray(as_uint8.resize((grid, grid), Image.BICUBIC), dtype=np.float32) / 255.0
        return to_tensor(small)
    return resize(resize_shorter_center_crop(to_tensor(target)), (grid, grid))
