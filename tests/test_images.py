"""memscore.images: every image form decodes to RGB in [0, 1]; every bad file names itself and its problem,
in text that can be stored; bombs and multi-frame files are refused from the header."""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from memscore.images import MAX_IMAGE_PIXELS, MIN_SIDE, ImageError, load_labels, load_rgb, require_min_side
from images_for_tests import write_declared_png, write_frames


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


def test_semi_transparent_rgba_decodes_to_exactly_its_rgb_channels_and_palette_is_expanded(tmp_path):
    """Alpha is dropped, as pix2pix's `Image.open(path).convert('RGB')` does, never composited over black."""
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (6, 6, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(1, 255, (6, 6), dtype=np.uint8)  # every pixel semi-transparent
    path = _save(tmp_path / "r.png", rgba)
    out = load_rgb(path)
    np.testing.assert_array_equal(out, rgba[..., :3].astype(np.float32) / 255.0)
    with Image.open(path) as image:  # what a victim trained by the pix2pix loader saw
        np.testing.assert_array_equal(out, np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
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


# ---------------------------------------------------------------------------------------------
# Refused before decoding: decompression bombs and multi-frame files; names that are not UTF-8
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,height", [(30000, 30000), (8193, 8193)])  # over Pillow's limit; over ours only
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path, width, height):
    """The pixel data stops after a few rows: a decoder would report a truncated file, so the limit in
    the reason shows the header was judged first. Pillow's own DecompressionBombError becomes an
    ImageError too (the first size), so a `recon:` output or a dataset file never aborts a run."""
    path = tmp_path / "bomb.png"
    write_declared_png(path, width, height)
    with pytest.raises(ImageError) as caught:
        load_rgb(str(path))
    assert str(path) in caught.value.reason
    assert f"over memscore's limit of {MAX_IMAGE_PIXELS}" in caught.value.reason
    assert "before decoding" in caught.value.reason
    with pytest.raises(ImageError, match="limit of"):
        load_labels(str(path))


def test_a_bomb_among_recon_outputs_is_that_ids_reason(tmp_path):
    from memscore.victims import ReconFolder
    write_declared_png(tmp_path / "bomb.png", 30000, 30000)
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "fine.png")
    items = [SimpleNamespace(pair=SimpleNamespace(id=name)) for name in ("bomb", "fine")]
    bomb, fine = ReconFolder(str(tmp_path)).reconstruct(items)
    assert isinstance(bomb, str) and "bomb.png" in bomb and f"limit of {MAX_IMAGE_PIXELS}" in bomb
    assert fine.shape == (3, 16, 16)


@pytest.mark.parametrize("name,frames", [("pages.tif", 3), ("animated.gif", 2), ("animated.png", 2),
                                         ("animated.webp", 3)])
def test_multi_frame_files_are_refused_naming_the_frame_count(tmp_path, name, frames):
    path = tmp_path / name
    write_frames(path, frames)
    with pytest.raises(ImageError) as caught:
        load_rgb(str(path))
    assert caught.value.reason.startswith(f"{path}: has {frames} frames"), caught.value.reason


def test_single_frame_gif_and_the_first_picture_of_an_mpo_are_read(tmp_path):
    rng = np.random.default_rng(4)
    photo, preview = (Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)) for _ in range(2))
    photo.save(tmp_path / "one.gif")
    assert load_rgb(str(tmp_path / "one.gif")).shape == (24, 32, 3)
    photo.save(tmp_path / "photo.jpg")
    photo.save(tmp_path / "stereo.mpo", save_all=True, append_images=[preview])
    np.testing.assert_array_equal(load_rgb(str(tmp_path / "stereo.mpo")), load_rgb(str(tmp_path / "photo.jpg")))


def test_minimum_side():
    require_min_side("a.png", MIN_SIDE, MIN_SIDE)
    with pytest.raises(ImageError, match=rf"a.png: too small to score: its right half is 9x{MIN_SIDE - 1} pixels"):
        require_min_side("a.png", 9, MIN_SIDE - 1, "right")


def test_a_file_name_that_is_not_utf8_is_read_and_named_in_storable_text(tmp_path):
    """os.walk gives such names as str with lone surrogates; a reason must still encode to UTF-8."""
    name = os.fsdecode(b"caf\xe9")
    good, missing, broken = (str(tmp_path / f"{name}-{kind}.png") for kind in ("good", "missing", "broken"))
    rgb = np.random.default_rng(2).integers(0, 256, (9, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(good)
    np.testing.assert_allclose(load_rgb(good), rgb / 255.0, atol=1e-7)
    Path(broken).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for path, problem in [(missing, "file not found"), (broken, "not a readable image")]:
        with pytest.raises(ImageError) as caught:
            load_rgb(path)
        reason = caught.value.reason
        assert reason.startswith(f"{tmp_path}/caf\\xe9-") and problem in reason, reason
        assert reason.encode("utf-8").decode("utf-8") == reason
        assert caught.value.path == path  # the path itself stays usable for opening
