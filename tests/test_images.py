"""engine.images: every image form decodes to RGB in [0, 1]; every bad file names itself and its problem."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.images import ImageError, load_rgb


def _save(path, array, mode=None, **kwargs):
    Image.fromarray(array, mode=mode).save(path, **kwargs) if mode else Image.fromarray(array).save(path, **kwargs)
    return str(path)


def test_rgb_png_round_trips_exactly(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    out = load_rgb(_save(tmp_path / "a.png", rgb))
    assert out.dtype == np.float32 and out.shape == (12, 10, 3)
    np.testing.assert_allclose(out, rgb / 255.0, atol=1e-7)


def test_grayscale_is_expanded_to_three_equal_channels(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    out = load_rgb(_save(tmp_path / "g.png", gray))
    assert out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_allclose(out[:, :, c], gray / 255.0, atol=1e-7)


def test_sixteen_bit_png_is_scaled_by_65535(tmp_path):
    values = np.array([[0, 1000], [32768, 65535]], dtype=np.uint16)
    path = tmp_path / "d.png"
    Image.fromarray(values).save(path)
    out = load_rgb(str(path))
    np.testing.assert_allclose(out[:, :, 0], values / 65535.0, atol=1e-6)
    assert out.max() <= 1.0


def test_rgba_is_composited_and_palette_is_expanded(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # transparent pixel -> black background
    out = load_rgb(_save(tmp_path / "r.png", rgba))
    assert out.shape == (4, 4, 3)
    assert out[1, 1, 0] == pytest.approx(200 / 255) and out[0, 0, 0] == 0.0
    palette = Image.fromarray(np.full((4, 4, 3), (10, 20, 30), dtype=np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "p.png")
    np.testing.assert_allclose(load_rgb(str(tmp_path / "p.png"))[0, 0], np.array([10, 20, 30]) / 255, atol=1e-7)


def test_halves_of_an_aligned_file(tmp_path):
    image = np.zeros((4, 8, 3), dtype=np.uint8)
    image[:, 4:] = 255
    path = _save(tmp_path / "ab.png", image)
    assert load_rgb(path, "left").max() == 0.0
    assert load_rgb(path, "right").min() == 1.0
    assert load_rgb(path, "left").shape == (4, 4, 3)


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file"),
    (b"this is not an image at all", "not a readable image"),
])
def test_unusable_files_raise_with_path_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError) as caught:
        load_rgb(str(path))
    assert str(path) in str(caught.value) and problem in str(caught.value)


def test_truncated_jpeg_and_missing_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated.jpg: cannot decode"):
        load_rgb(str(truncated))
    with pytest.raises(ImageError, match="file not found"):
        load_rgb(str(tmp_path / "nope.png"))
