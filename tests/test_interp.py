"""kernels/interp.py against the libraries it reproduces: torch's bilinear resize and skimage's resize."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.transform import resize as sk_resize

from memscore.kernels.interp import cached_matrix, interpolation_matrix, upsample

UPSAMPLE_SIZES = [(7, 56), (14, 56), (28, 56), (56, 56), (1, 4), (2, 9), (3, 3), (5, 17), (13, 50), (11, 41)]


def torch_matrix(in_size: int, out_size: int) -> np.ndarray:
    """torch's 1-D bilinear operator, read off by resizing the unit vectors (height 1 stays 1)."""
    basis = torch.eye(in_size, dtype=torch.float64).reshape(in_size, 1, 1, in_size)
    return F.interpolate(basis, size=(1, out_size), mode="bilinear", align_corners=False)[:, 0, 0].T.numpy()


def skimage_matrix(in_size: int, out_size: int) -> np.ndarray:
    basis = np.eye(in_size, dtype=np.float64)[:, :, None]  # [in (resized axis), unit vector, 1]
    return sk_resize(basis, (out_size, in_size, 1), order=1, mode="reflect", anti_aliasing=False)[:, :, 0]


def real_maps(facades_dir, count: int = 2) -> torch.Tensor:
    """Photos of the first Facades images, float64 [count, 3, 56, 56] (real image statistics)."""
    files = sorted((facades_dir / "train").glob("*.jpg"))[:count]
    photos = []
    for path in files:
        image = Image.open(path).convert("RGB")
        photo = image.crop((0, 0, image.width // 2, image.height)).resize((56, 56), Image.BILINEAR)
        photos.append(np.asarray(photo, dtype=np.float64).transpose(2, 0, 1) / 255.0)
    return torch.from_numpy(np.stack(photos))


@pytest.mark.parametrize("in_size,out_size", UPSAMPLE_SIZES + [(20, 7), (9, 4), (4, 1)])
def test_bilinear_matrix_is_torchs_operator(in_size: int, out_size: int) -> None:
    ours = interpolation_matrix(in_size, out_size, "bilinear")
    assert ours.dtype == torch.float64 and ours.shape == (out_size, in_size)
    assert ((ours != 0).sum(1) <= 2).all()
    np.testing.assert_allclose(ours.numpy(), torch_matrix(in_size, out_size), rtol=0, atol=1e-15)


@pytest.mark.parametrize("in_size,out_size", UPSAMPLE_SIZES)
def test_skimage_matrix_is_skimages_operator(in_size: int, out_size: int) -> None:
    ours = interpolation_matrix(in_size, out_size, "skimage")
    assert ((ours != 0).sum(1) <= 2).all()
    np.testing.assert_allclose(ours.numpy(), skimage_matrix(in_size, out_size), rtol=0, atol=1e-14)


@pytest.mark.parametrize("size", [(7, 7), (14, 14), (28, 28), (5, 9), (13, 11)])
def test_upsample_matches_both_libraries_on_real_maps(facades, size: tuple[int, int]) -> None:
    images = real_maps(facades)
    small = F.interpolate(images, size=size, mode="area")  # a real map at the stage's native size
    for out in [(56, 56), (size[0] * 3 + 1, size[1] * 2 + 3)]:
        expected = F.interpolate(small, size=out, mode="bilinear", align_corners=False)
        torch.testing.assert_close(upsample(small, out, "bilinear"), expected, rtol=0, atol=1e-14)
        sk = np.stack([sk_resize(m.numpy().transpose(1, 2, 0), out, order=1, mode="reflect", anti_aliasing=False)
                       for m in small]).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(upsample(small, out, "skimage").numpy(), sk, rtol=0, atol=1e-14)


def test_modes_differ_only_at_the_border() -> None:
    bilinear = interpolation_matrix(7, 56, "bilinear").numpy()
    skimage = interpolation_matrix(7, 56, "skimage").numpy()
    differ = np.flatnonzero(np.abs(bilinear - skimage).max(1) > 0)
    np.testing.assert_array_equal(differ, [0, 1, 2, 3, 52, 53, 54, 55])  # source coordinate < 0 or > 6


def test_identity_when_sizes_match() -> None:
    for mode in ("bilinear", "skimage"):
        torch.testing.assert_close(interpolation_matrix(56, 56, mode), torch.eye(56, dtype=torch.float64))


def test_rejects_what_it_cannot_reproduce() -> None:
    with pytest.raises(ValueError, match="anti-alias"):
        interpolation_matrix(56, 28, "skimage")
    with pytest.raises(ValueError, match="unknown interpolation mode"):
        interpolation_matrix(7, 56, "bicubic")
    with pytest.raises(ValueError, match="positive"):
        interpolation_matrix(0, 56, "bilinear")


def test_upsample_keeps_dtype_and_caches_operators() -> None:
    maps = torch.randn(2, 3, 7, 5, dtype=torch.float32)
    out = upsample(maps, (56, 40), "bilinear")
    assert out.dtype == torch.float32 and out.shape == (2, 3, 56, 40)
    expected = F.interpolate(maps.double(), size=(56, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    first = cached_matrix(7, 56, "bilinear", torch.float32, torch.device("cpu"))
    assert cached_matrix(7, 56, "bilinear", torch.float32, torch.device("cpu")) is first
    assert cached_matrix(7, 56, "bilinear", torch.float64, torch.device("cpu")).dtype == torch.float64
