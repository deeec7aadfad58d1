"""memscore.preprocess and the Pillow reader's views: the CNN view is torchvision's `Resize(256)` +
`CenterCrop(224)` (the authors' transform) for both presets; the aligned preset's difficulty target
is that same crop, the reference preset's the whole image by Pillow's default filter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from memscore.batch import Prepared, View
from memscore.data import Pair
from memscore.pillow_reader import prepare
from memscore.preprocess import resize, to_tensor

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# (height, width): square, landscape, portrait, upscaled, odd; 100x151 is where rounding the longer
# side (386.56 -> 387) and torchvision's truncation (386) part ways
SHAPES = [(256, 256), (300, 200), (457, 123), (30, 40), (255, 257), (100, 151), (151, 100)]


def photo(path, height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = (rng.random((height // 8 + 2, width // 8 + 2, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    image.save(path)
    return image


def prepared(path, preset: str, grid: int = 56) -> Prepared:
    view = View(None, *IMAGENET, grid, preset, "target")
    result = prepare(Pair("id", str(path), str(path)), view)
    assert isinstance(result, Prepared), result
    return result


def unnormalised(cnn_view: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in IMAGENET)
    return cnn_view * std + mean


@pytest.mark.parametrize("preset", ["reference", "aligned"])
@pytest.mark.parametrize("height,width", SHAPES)
def test_cnn_view_is_torchvision_resize_256_center_crop_224(tmp_path, preset, height, width):
    image = photo(tmp_path / "y.png", height, width)
    ours = prepared(tmp_path / "y.png", preset).cnn_view
    normalize = T.Normalize(*IMAGENET)
    # on float tensors torchvision runs the same antialiased bilinear: equal up to float rounding
    tensor = to_tensor(np.asarray(image, dtype=np.float32) / 255.0)
    expected = normalize(T.CenterCrop(224)(T.Resize(256, antialias=True)(tensor)))
    assert ours.shape == expected.shape == (3, 224, 224)
    assert torch.allclose(ours, expected, atol=1e-5), float((ours - expected).abs().max())
    # the authors' pipeline on PIL images rounds to 8 bits after each of Pillow's two resize passes
    authors = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])(image)
    gap = (unnormalised(ours) - authors).abs()
    assert float(gap.max()) <= 1.01 / 255 and float(gap.mean()) <= 0.4 / 255, (float(gap.max()) * 255, float(gap.mean()) * 255)


@pytest.mark.parametrize("height,width", [(300, 200), (100, 151)])
def test_aligned_grid_is_the_cnn_crop_and_reference_grid_the_whole_image(tmp_path, height, width):
    """A bright frame outside the centre crop: the reference target (the whole image, Pillow's default
    resize filter) shows it; the aligned target (the crop the CNN sees, resized) does not."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(40, 120, (height, width, 3), dtype=np.uint8)
    edge = max(min(height, width) // 32, 2)  # the crop drops 1/16 of the shorter side on each side
    pixels[:, :edge] = pixels[:, -edge:] = pixels[:edge] = pixels[-edge:] = 255
    image = Image.fromarray(pixels)
    image.save(tmp_path / "framed.png")
    grid = 56
    aligned = prepared(tmp_path / "framed.png", "aligned", grid).grid_target
    reference = prepared(tmp_path / "framed.png", "reference", grid).grid_target

    tensor = to_tensor(pixels.astype(np.float32) / 255.0)
    crop = T.CenterCrop(224)(T.Resize(256, antialias=True)(tensor))
    assert torch.allclose(aligned, T.Resize((grid, grid), antialias=True)(crop).clamp(0, 1), atol=1e-6)
    assert float(aligned.max()) < 0.6  # the frame lies outside the crop

    authors = torch.from_numpy(np.asarray(image.resize((grid, grid)), dtype=np.float32) / 255.0).permute(2, 0, 1)
    assert torch.equal(reference, authors)
    assert float(reference[:, 0].min()) > 0.9  # the frame is in the whole image's target


def test_resize_keeps_values_in_range_and_skips_same_size():
    image = torch.rand(3, 20, 30)
    assert resize(image, (20, 30)) is image
    out = resize(image, (7, 11))
    assert out.shape == (3, 7, 11) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
