"""Tests for engine/pipeline.py, engine/pillow_reader.py and engine/dali_reader.py: the DALI reader
gives the Pillow reader's tensors (within `dali_reader.TOLERANCE`), every id once, and the same
failures for bad files."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from memscore import dali_reader
from memscore.data import AlignedFolder, Pair
from memscore.images import load_rgb
from memscore.batch import Batch, Failure, Prepared, View
from memscore.pillow_reader import prepare
from memscore.pipeline import batches, choose_reader
from memscore.preprocess import to_tensor
from images_for_tests import write_declared_png, write_frames, write_png16

needs_dali = pytest.mark.skipif(not dali_reader.dali_importable(), reason="nvidia.dali is not importable here")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FIELDS = ("x", "y", "cnn_view", "grid_target")


def make_view(victim_size=128, preset="aligned", source="target", grid=56) -> View:
    return View(victim_size, *IMAGENET, grid, preset, source)


def read(pairs, view, batch_size, reader="dali") -> list[Batch]:
    return list(batches(pairs, view, batch_size, reader=reader, device="cpu"))


def items(read_batches: list[Batch]) -> list[Prepared]:
    return [item for batch in read_batches for item in batch.items]


def max_differences(view: View, prepared: list[Prepared]) -> dict[str, tuple[float, float]]:
    """Per tensor: (max, mean) |DALI - Pillow| over the pairs, shapes checked on the way."""
    worst = {name: (0.0, 0.0) for name in FIELDS}
    for item in prepared:
        reference = prepare(item.pair, view)
        assert isinstance(reference, Prepared), reference
        for name in FIELDS:
            ours, theirs = getattr(item, name), getattr(reference, name)
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.float32, (item.pair.id, name)
            gap = (ours - theirs).abs()
            worst[name] = (max(worst[name][0], float(gap.max())), max(worst[name][1], float(gap.mean())))
    return worst


def assert_within_tolerance(view: View, worst: dict[str, tuple[float, float]], reference_mean: float = 2e-4) -> None:
    """Max gaps within `TOLERANCE`; for the reference grid also the worst image's mean gap (DALI's
    tabulated cubic puts ~1% of Facades values, up to ~15% on slight reductions, one level off)."""
    grid_key = "grid_reference" if view.preset == "reference" else "grid_aligned"
    bounds = {"x": "x", "y": "y", "cnn_view": "cnn_view", "grid_target": grid_key}
    for name, key in bounds.items():
        assert worst[name][0] <= dali_reader.TOLERANCE[key], (name, worst[name], view)
    if view.preset == "reference":
        assert worst["grid_target"][1] <= reference_mean, worst


# ---------------------------------------------------------------------------------------------
# Real Facades: both presets, both difficulty sources, three victim sizes
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def facades_pairs(facades) -> list[Pair]:
    pairs = list(AlignedFolder(facades / "train", "BtoA").pairs())
    return pairs[::40]  # 10 pairs spread over the folder


@needs_dali
@pytest.mark.parametrize("victim_size", [64, 128, None])
@pytest.mark.parametrize("preset", ["aligned", "reference"])
@pytest.mark.parametrize("source", ["target", "input"])
def test_dali_matches_pillow_on_facades(facades_pairs, victim_size, preset, source):
    view = make_view(victim_size, preset, source)
    read_batches = read(facades_pairs, view, batch_size=4)  # 4 + 4 + 2: a short last batch too
    prepared = items(read_batches)
    assert [item.pair.id for item in prepared] == [pair.id for pair in facades_pairs]
    assert not [f for b in read_batches for f in b.failures]
    first = prepared[0]
    side = victim_size or 256
    assert first.x.shape == (3, side, side) and first.y.shape == (3, 256, 256)
    assert first.cnn_view.shape == (3, 224, 224) and first.grid_target.shape == (3, 56, 56)
    # BtoA: x is the RIGHT half (the label map), y the LEFT (the photo), as load_rgb cuts them
    whole = load_rgb(first.pair.target_path)
    assert torch.allclose(first.y, to_tensor(whole[:, :256]), atol=1e-6)
    if victim_size is None:
        assert torch.allclose(first.x, to_tensor(whole[:, 256:]), atol=1e-6)
    assert_within_tolerance(view, max_differences(view, prepared))


# ---------------------------------------------------------------------------------------------
# Any geometry: odd widths, portrait and landscape, up- and down-scaling, two-file pairs
# ---------------------------------------------------------------------------------------------

def smooth_image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    coarse = (rng.random((height // 8 + 2, width // 8 + 2, 3)) * 255).astype(np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR)


@pytest.fixture(scope="module")
def odd_pairs(tmp_path_factory) -> list[Pair]:
    root = tmp_path_factory.mktemp("geometry")
    rng = np.random.default_rng(3)
    shapes = [(200, 300), (457, 123), (30, 40), (256, 513), (255, 257)]
    pairs = []
    for k, (h, w) in enumerate(shapes):
        x_path, y_path = root / f"x{k}.{'png' if k % 2 else 'jpg'}", root / f"y{k}.{'jpg' if k % 2 else 'png'}"
        smooth_image(rng, h, w).save(x_path, quality=90)
        smooth_image(rng, *shapes[-1 - k]).save(y_path, quality=90)
        pairs += [Pair(f"two{k}", str(x_path), str(y_path)),
                  Pair(f"half{k}", str(x_path), str(x_path), "right", "left")]
    return pairs


@needs_dali
@pytest.mark.parametrize("victim_size,preset,source", [(64, "aligned", "target"), (256, "reference", "input"),
                                                       (None, "aligned", "input"), (128, "reference", "target")])
def test_dali_matches_pillow_on_any_geometry(odd_pairs, victim_size, preset, source):
    view = make_view(victim_size, preset, source)
    prepared = items(read(odd_pairs, view, batch_size=4))
    assert [item.pair.id for item in prepared] == [pair.id for pair in odd_pairs]
    assert_within_tolerance(view, max_differences(view, prepared), reference_mean=1e-3)


def test_edge_gain_is_torch_renormalisation():
    """torch's antialiased bilinear weights = the full triangle's weights, cut at the image edge and
    multiplied by the gain (which is 1 away from the edges)."""
    size, new = 37, 9
    gain = dali_reader.edge_gain(size, new, dali_reader.LINEAR)
    eye = torch.eye(size, dtype=torch.float64)[:, None, None, :]
    expected = torch.nn.functional.interpolate(eye, size=(1, new), mode="bilinear", align_corners=False,
                                               antialias=True)[:, 0, 0, :].T.numpy()
    scale = size / new
    for o in range(new):
        centre = (o + 0.5) * scale
        taps = np.arange(int(centre - 2 * scale), int(centre + 2 * scale) + 2)
        weights = np.maximum(0.0, 1.0 - np.abs(taps + 0.5 - centre) / scale)
        inside = (taps >= 0) & (taps < size)
        assert np.allclose(expected[o, taps[inside]], weights[inside] / weights.sum() * gain[o], atol=1e-6)
    assert gain[0] > 1.0 and gain[-1] > 1.0 and np.allclose(gain[1:-1], 1.0)


# ---------------------------------------------------------------------------------------------
# Every id exactly once, in order, for sizes that are and are not multiples of the batch size
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory) -> list[Pair]:
    root = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(5)
    pairs = []
    for k in range(7):
        path = root / f"{k}.jpg"
        smooth_image(rng, 48, 96).save(path, quality=92)
        pairs.append(Pair(f"img{k}", str(path), str(path), "right", "left"))
    return pairs


@pytest.mark.parametrize("reader", [pytest.param("dali", marks=needs_dali), "pillow"])
@pytest.mark.parametrize("n,batch_size,sizes", [(7, 3, [3, 3, 1]), (6, 3, [3, 3]), (1, 4, [1])])
def test_every_id_exactly_once(small_pairs, reader, n, batch_size, sizes):
    pairs = small_pairs[:n]
    read_batches = read(pairs, make_view(32), batch_size, reader=reader)
    assert [len(b.items) + len(b.failures) for b in read_batches] == sizes
    assert [item.pair.id for item in items(read_batches)] == [pair.id for pair in pairs]


@needs_dali
def test_mixed_batch_keeps_order(small_pairs, tmp_path):
    """Aligned and two-file pairs, and a pair that fails, in one batch: order kept, one record each."""
    other = tmp_path / "y.png"
    smooth_image(np.random.default_rng(9), 40, 40).save(other)
    pairs = [small_pairs[0], Pair("two-file", small_pairs[1].input_path, str(other)),
             Pair("gone", str(tmp_path / "missing.jpg"), str(other)), small_pairs[2]]
    (batch,) = read(pairs, make_view(32), batch_size=4)
    assert batch.ids == ["img0", "two-file", "img2"]
    assert [f.pair.id for f in batch.failures] == ["gone"]
    assert_within_tolerance(make_view(32), max_differences(make_view(32), batch.items))


# ---------------------------------------------------------------------------------------------
# Odd and broken files
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def odd_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(11)
    rgb = np.asarray(smooth_image(rng, 60, 80))
    files = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        files[name] = root / name
        image.save(files[name], **kwargs)

    save("rgb.jpg", Image.fromarray(rgb), quality=90)
    save("gray.jpg", Image.fromarray(rgb[..., 0]), quality=90)
    save("gray.png", Image.fromarray(rgb[..., 1]))
    save("bilevel.png", Image.fromarray(rgb[..., 1]).convert("1"))
    save("palette.png", Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=40))
    save("palette-transparent.png", Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=40),
         transparency=3)
    alpha = rng.integers(0, 256, rgb.shape[:2], dtype=np.uint8)
    save("rgba.png", Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    save("gray16.png", Image.fromarray((rgb[..., 2].astype(np.uint16) * 257 + 13).astype(np.uint16)))
    files["rgb16.png"] = root / "rgb16.png"
    write_png16(files["rgb16.png"], rgb.astype(np.uint16) * 251 + 7)
    save("rgb.bmp", Image.fromarray(rgb))
    save("rgb.webp", Image.fromarray(rgb), lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90": load_rgb ignores it, so must DALI
    save("rotated.jpg", Image.fromarray(rgb), exif=exif, quality=90)
    whole = files["rgb.jpg"].read_bytes()
    broken = {"zero.jpg": b"", "truncated.jpg": whole[: len(whole) * 2 // 3],
              "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 400, dtype=np.uint8))}
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    png = buffer.getvalue()
    at = png.index(b"IDAT") + 30  # a damaged compressed stream behind a sound header and IEND: only decoding finds it
    broken["bad-idat.png"] = png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1:]
    for name, data in broken.items():
        files[name] = root / name
        files[name].write_bytes(data)
    files["missing.jpg"] = root / "missing.jpg"
    return files


DECODABLE = ["rgb.jpg", "gray.jpg", "gray.png", "bilevel.png", "palette.png", "palette-transparent.png",
             "rgba.png", "gray16.png", "rgb16.png", "rgb.bmp", "rgb.webp", "rotated.jpg"]
BROKEN = {"zero.jpg": "empty file", "truncated.jpg": "truncated", "corrupt.jpg": "cannot decode",
          "bad-idat.png": "cannot decode", "missing.jpg": "file not found"}


@needs_dali
def test_odd_formats_decode_like_load_rgb(odd_files):
    pairs = [Pair(name, str(odd_files[name]), str(odd_files[name])) for name in DECODABLE]
    view = make_view(64)
    read_batches = read(pairs, view, batch_size=5)
    prepared = items(read_batches)
    assert [item.pair.id for item in prepared] == DECODABLE, [f.reason for b in read_batches for f in b.failures]
    for item in prepared:
        assert torch.allclose(item.y, to_tensor(load_rgb(item.pair.target_path)), atol=1e-6), item.pair.id
    assert_within_tolerance(view, max_differences(view, prepared))


def test_routing_sends_what_dali_cannot_match_to_pillow(odd_files):
    """16-bit, alpha and transparency files, and anything broken, never reach DALI."""
    to_pillow = {"palette-transparent.png", "rgba.png", "gray16.png", "rgb16.png", "zero.jpg", "truncated.jpg",
                 "corrupt.jpg", "missing.jpg"}
    for name, path in odd_files.items():
        routed = dali_reader.inspect_file(str(path)) is None
        assert routed == (name in to_pillow), name


@needs_dali
def test_broken_files_become_failures_with_id_and_reason(odd_files):
    names = ["rgb.jpg", *BROKEN, "gray.png"]
    pairs = [Pair(name, str(odd_files[name]), str(odd_files[name])) for name in names]
    pairs.append(Pair("no-partner", str(odd_files["rgb.jpg"]), "", problem="missing target: no file for id"))
    read_batches = read(pairs, make_view(64), batch_size=len(pairs))
    (batch,) = read_batches
    assert batch.ids == ["rgb.jpg", "gray.png"]
    failures = {f.pair.id: f.reason for f in batch.failures}
    assert list(failures) == [*BROKEN, "no-partner"]
    for name, words in BROKEN.items():
        assert words in failures[name] and str(odd_files[name]) in failures[name], (name, failures[name])
        pillow = prepare(Pair(name, str(odd_files[name]), str(odd_files[name])), make_view(64))
        assert isinstance(pillow, Failure) and pillow.reason == failures[name]
    assert failures["no-partner"] == "missing target: no file for id"


@needs_dali
def test_a_batch_dali_rejects_is_read_pair_by_pair(odd_files, capsys):
    """bad-idat.png passes the header checks and makes DALI raise for its whole batch."""
    names = ["rgb.jpg", "bad-idat.png", "gray.jpg"]
    pairs = [Pair(name, str(odd_files[name]), str(odd_files[name])) for name in names]
    view = make_view(64)
    with dali_reader.DaliReader(view, 3, device="cpu") as reader:
        batch = reader.read(pairs)
        assert reader.stats.failed_batches == 1
        again = reader.read(pairs[:1] + pairs[2:])  # the pipeline is rebuilt and DALI carries on
        assert reader.stats.dali == 2 and not again.failures
    assert batch.ids == ["rgb.jpg", "gray.jpg"]
    assert [f.pair.id for f in batch.failures] == ["bad-idat.png"]
    assert "cannot decode" in batch.failures[0].reason
    assert "DALI could not read a batch" in capsys.readouterr().err
    assert_within_tolerance(view, max_differences(view, batch.items))


# ---------------------------------------------------------------------------------------------
# Files no reader may score: decompression bombs, several frames, tiny images; names not UTF-8
# ---------------------------------------------------------------------------------------------

NOT_UTF8 = os.fsdecode(b"caf\xe9")  # Latin-1 bytes in a name: Python keeps \xe9 as a lone surrogate


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> tuple[list[Pair], dict[str, str]]:
    """Good pairs, and pairs each with one file no reader may score -> words its reason must hold."""
    root = tmp_path_factory.mktemp("refused")
    rng = np.random.default_rng(21)
    good = []
    for k, name in enumerate(["a.jpg", "b.png", NOT_UTF8 + ".jpg"]):  # aligned A|B files
        smooth_image(rng, 48, 96).save(root / name, quality=90)
        good.append(Pair(f"good-{k}", str(root / name), str(root / name), "right", "left"))
    smooth_image(rng, 40, 30).save(root / "y.png")
    good.append(Pair("good-two-file", good[0].input_path, str(root / "y.png")))

    write_declared_png(root / "bomb.png", 30000, 30000)       # over Pillow's own limit: it raises in open
    write_declared_png(root / "over-limit.png", 8193, 8193)   # over memscore's limit only
    for name, frames in [("pages.tif", 3), ("animated.gif", 3), ("animated.png", 2), ("animated.webp", 2)]:
        write_frames(root / name, frames)
    smooth_image(rng, 1, 1).save(root / "dot.png")
    smooth_image(rng, 6, 40).save(root / "thin.jpg")           # halves of 20x6
    truncated = root / f"{NOT_UTF8}-cut.jpg"
    truncated.write_bytes((root / "a.jpg").read_bytes()[:500])
    words = {"bomb.png": "over memscore's limit of 67108864 pixels",
             "over-limit.png": "declares 8193x8193 = 67125249 pixels, over memscore's limit of 67108864",
             "pages.tif": "has 3 frames", "animated.gif": "has 3 frames", "animated.png": "has 2 frames",
             "animated.webp": "has 2 frames", "dot.png": "too small to score: it is 1x1 pixels",
             "thin.jpg": "too small to score: its left half is 20x6 pixels",
             truncated.name: "cannot decode"}
    bad = {name: Pair(f"bad-{name}", str(root / name), str(root / name)) for name in words}
    bad["thin.jpg"] = Pair("bad-thin.jpg", str(root / "thin.jpg"), str(root / "thin.jpg"), "right", "left")
    bad["dot.png"] = Pair("bad-dot.png", good[0].input_path, str(root / "dot.png"), "right")
    pairs = list(bad.values())
    for k, pair in enumerate(good):  # good and bad pairs share batches
        pairs.insert(2 * k, pair)
    return pairs, {bad[name].id: text for name, text in words.items()}


@pytest.mark.parametrize("reader", ["pillow", pytest.param("dali", marks=needs_dali)])
def test_refused_files_fail_alone_and_good_pairs_read_as_without_them(refused, reader):
    pairs, words = refused
    view = make_view(32)
    read_batches = read(pairs, view, batch_size=5, reader=reader)
    failures = {f.pair.id: f.reason for b in read_batches for f in b.failures}
    assert sorted(failures) == sorted(words)
    for pair in pairs:
        if pair.id in words:
            reason = failures[pair.id]
            assert words[pair.id] in reason, reason
            path = pair.target_path
            assert reason.startswith(os.fsencode(path).decode("utf-8", "backslashreplace") + ": ")
            reason.encode("utf-8")  # storable: a name that is not UTF-8 shows as \xNN escapes
            assert reason == prepare(pair, view).reason  # DALI hands every refused file to Pillow
            assert dali_reader.plan_pair(pair, view) is None
    good = [pair for pair in pairs if pair.id not in words]
    alone = items(read(good, view, batch_size=5, reader=reader))
    mixed = items(read_batches)
    assert [item.pair.id for item in mixed] == [pair.id for pair in good] == [item.pair.id for item in alone]
    for ours, theirs in zip(mixed, alone):
        for name in FIELDS:
            assert torch.allclose(getattr(ours, name), getattr(theirs, name), rtol=0, atol=1e-6), (ours.pair.id, name)
    assert_within_tolerance(view, max_differences(view, mixed))


def test_the_process_dali_reader_is_replaced_only_when_the_settings_change(small_pairs, monkeypatch):
    """One reader per process (DALI keeps a closed reader's memory): the same settings reuse it, another
    view or batch size closes it and builds a fresh one."""
    built, closed = [], []

    class Recording:
        def __init__(self, view, batch_size, *, device, threads):
            self.settings = (view, batch_size, threads, device)
            built.append(self)

        def read(self, pairs):
            return Batch.from_results(prepare(pair, self.settings[0]) for pair in pairs)

        def close(self):
            closed.append(self)

    monkeypatch.setattr(dali_reader, "DaliReader", Recording)
    monkeypatch.setattr(dali_reader.SharedDaliReader, "current", None)
    first_view, second_view = make_view(32), make_view(48)
    for view, batch_size in [(first_view, 2), (first_view, 2), (second_view, 2), (second_view, 3), (second_view, 3)]:
        read_batches = read(small_pairs[:3], view, batch_size)
        assert [item.pair.id for item in items(read_batches)] == ["img0", "img1", "img2"]
        assert dali_reader.SharedDaliReader.current.reader is built[-1]
        assert built[-1].settings == (view, batch_size, 2, "cpu")
    assert len(built) == 3 and closed == built[:2]
    first = dali_reader.SharedDaliReader.current
    assert read(small_pairs[:1], make_view(32), 3) and first.reader in closed
    with pytest.raises(RuntimeError, match="after shutdown"):  # its thread is gone too
        first.submit(small_pairs[:1])


# ---------------------------------------------------------------------------------------------
# Reader selection
# ---------------------------------------------------------------------------------------------

@needs_dali
def test_auto_picks_dali_here():
    assert choose_reader("auto") == "dali"


def test_reader_names_are_checked(small_pairs):
    with pytest.raises(ValueError, match="reader must be one of"):
        list(batches(small_pairs, make_view(32), 2, reader="opencv"))
    assert choose_reader("pillow") == "pillow" and choose_reader("dali") == "dali"


def test_auto_falls_back_to_pillow_with_one_notice(small_pairs, monkeypatch, capsys):
    import memscore.pipeline as pipeline
    monkeypatch.setattr(dali_reader, "dali_importable", lambda: False)
    pipeline.say_pillow_fallback.cache_clear()  # as in a fresh process
    for _ in range(2):
        read_batches = list(batches(small_pairs[:3], make_view(32), 2))
        assert [item.pair.id for item in items(read_batches)] == ["img0", "img1", "img2"]
    assert capsys.readouterr().err.count("reading images with Pillow") == 1


@needs_dali
def test_both_readers_agree_through_batches(small_pairs):
    view = make_view(48, "reference", "input")
    dali, pillow = items(read(small_pairs, view, 3)), items(read(small_pairs, view, 3, reader="pillow"))
    assert [i.pair.id for i in dali] == [i.pair.id for i in pillow]
    for ours, theirs in zip(dali, pillow):
        assert torch.allclose(ours.x, theirs.x, atol=dali_reader.TOLERANCE["x"])
        assert torch.allclose(ours.cnn_view, theirs.cnn_view, atol=dali_reader.TOLERANCE["cnn_view"])


@pytest.mark.gpu
@needs_dali
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_reader_tensors_arrive_on_the_gpu(facades_pairs):
    """nvJPEG is not libjpeg-turbo: pixels may differ by a few levels, so this bounds the mean gap."""
    view = make_view(128)
    read_batches = list(batches(facades_pairs, view, 4, reader="dali", device="cuda"))
    prepared = items(read_batches)
    assert len(prepared) == len(facades_pairs)
    for item in prepared:
        assert all(getattr(item, name).is_cuda for name in FIELDS)
        reference = prepare(item.pair, view)
        for name in FIELDS:
            gap = (getattr(item, name).cpu() - getattr(reference, name)).abs()
            assert float(gap.mean()) < 2 / 255 and float(gap.max()) < 0.25, (name, float(gap.mean()))


@pytest.mark.parametrize("reader", ["pillow", pytest.param("dali", marks=needs_dali)])
def test_reading_ahead_or_not_gives_the_same_batches_and_decodes_ahead_only_when_asked(tmp_path, reader):
    from memscore.synthetic import write_aligned_dataset
    pairs = list(AlignedFolder(write_aligned_dataset(tmp_path, 7, size=32)).pairs())
    view = make_view(victim_size=32)
    for ahead in (True, False):
        read_pairs: list[str] = []

        def watched():
            for pair in pairs:
                read_pairs.append(pair.id)
                yield pair
        stream = batches(watched(), view, 3, reader=reader, device="cpu", read_ahead=ahead)
        first = next(stream)
        assert len(read_pairs) == (6 if ahead else 3)  # the next batch's pairs are taken only when reading ahead
        got = [first, *stream]
        assert [i.pair.id for b in got for i in b.items] == [p.id for p in pairs]
        if ahead:
            reference = got
        else:
            for mine, theirs in zip(items(got), items(reference)):
                for name in FIELDS:
                    assert torch.equal(getattr(mine, name), getattr(theirs, name))
