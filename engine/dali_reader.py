"""The DALI reader: pairs -> the same prepared batches as the Pillow reader, decoded by NVIDIA DALI.

With CUDA, JPEGs decode on the GPU (nvJPEG, `mixed`) and every resize runs there, so tensors reach
torch on the GPU with no host copy; without CUDA the same pipeline runs on the CPU (`device_id=None`).

What goes through DALI and what does not (the Pillow reader `memscore.pillow_reader.prepare` stays the
reference; everything here matches it within the tolerances stated in `TOLERANCE`):
- File bytes are read on the host and fed with `fn.external_source`, so a shard is any list of
  pairs in any order, every id exactly once, and a short last batch is just a smaller batch.
- A cheap host check (`inspect_file`) reads each file's header (Pillow, no decoding) and sends to DALI
  only what DALI decodes exactly like `memscore.images.load_rgb`: JPEG (RGB or grayscale), PNG with
  at most 8 bits per channel, BMP and WebP, without alpha or a transparency key. Everything else
  goes to `prepare` in a thread pool, which either decodes it or reports the `Failure`: missing,
  empty, unreadable or truncated files (JPEG without its end marker, PNG without IEND), files that
  `memscore.images.check_header` refuses (over `MAX_IMAGE_PIXELS`, more than one frame) or halves
  under `MIN_SIDE` (`require_min_side`), and by
  measurement on DALI 2.4 (`tests/test_pipeline.py`):
  * 16-bit PNGs: DALI converts 16-bit RGB to 8 bits by rounding, Pillow (hence `load_rgb`) keeps
    the high byte, up to 1/255 apart; 16-bit grayscale would need a 16-bit decode for every file.
  * RGBA, LA and palette-with-transparency files: both drop alpha (`load_rgb` like the pix2pix loader), but
    DALI's decode of them has not been compared with Pillow's since `load_rgb` stopped compositing over black.
  * CMYK JPEGs, TIFF, GIF, PPM and other formats: not verified against Pillow, so not trusted.
- pix2pix aligned files (input and target are the same file) are decoded once; the two halves are
  cut from the decoded image inside the pipeline.
- If DALI still raises for a batch, that batch is redone pair by pair with `prepare`: the culprit(s)
  become `Failure`s with Pillow's reason and the rest of the batch goes on. One known divergence: a
  JPEG whose compressed data is damaged (e.g. a bogus Huffman table) behind a sound header and end
  marker can be decoded by DALI (libjpeg warnings, garbage pixels) where Pillow refuses it.
- Tensors land on the reader's device; on CUDA that is the GPU, so consumers comparing them with
  CPU tensors (a victim's outputs) must move one side. The GPU path (nvJPEG, `mixed`) has not been
  run by the tests here (no CUDA); `tests/test_pipeline.py` has a `gpu`-marked check for it.
- One reader per process (`SharedDaliReader`), on its own thread, reused by every shard while the
  settings stay the same.
"""
from __future__ import annotations

import functools
import io
import math
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .batch import Batch, Failure, Prepared, View
from .data import Half, Pair
from .devices import resolve_device
from .errors import MemscoreError, UsageError
from .images import ImageError, check_header, require_min_side
from .pillow_reader import prepare
from .preprocess import CNN_CROP, cnn_geometry

# max |DALI - Pillow| per tensor, CPU pipeline (tests/test_pipeline.py asserts them). Measured on all
# 400 Facades train pairs, both presets, both difficulty sources, victim sizes 64/128/None:
#   x 2.4e-7, y 6.0e-8, cnn_view 4.8e-7, aligned grid 3.0e-7, reference grid 1/255 (mean 4.1e-5);
# on synthetic odd geometries (odd widths, portrait, 8x upscaling): x 4.2e-7, cnn_view 3.8e-5
# (normalised units, i.e. 8.6e-6 in [0, 1]), aligned grid 4.2e-6. JPEG decoding is bit-exact on the
# CPU (the same libjpeg-turbo); the rest is float rounding. The reference grid goes through two
# 8-bit passes like Pillow's, with DALI's bicubic, which DALI samples from a table (weights up to
# 6e-4 off Pillow's): about 1% of Facades values land one level (1/255) apart, up to 15% on slight
# reductions (57 -> 56 px), where an odd value is two levels off. nvJPEG on the GPU decodes
# differently from libjpeg-turbo (not measured here).
TOLERANCE = {
    "x": 1e-6,
    "y": 1e-6,
    "cnn_view": 1e-4,
    "grid_aligned": 1e-5,
    "grid_reference": 2 / 255 + 1e-6,
}

_DALI_FORMATS = {"JPEG", "PNG", "BMP", "WEBP"}
_DALI_MODES = {"RGB", "L", "P", "1"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def dali_importable() -> bool:
    """True when `nvidia.dali` imports (Linux x86_64 / aarch64 wheels only). Says nothing about CUDA:
    without it the reader runs DALI's CPU pipeline."""
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # ImportError, or a broken native library
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Host side: read bytes, check headers, plan the geometry (the same arithmetic as memscore.preprocess)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoded:
    """One file DALI may decode (`inspect_file`): its bytes and its size from the header."""

    data: np.ndarray          # the file's bytes, uint8
    width: int
    height: int


def inspect_file(path: str) -> Encoded | None:
    """The file's bytes when DALI decodes it exactly like `load_rgb` and `check_header` lets it
    through; None sends the pair to Pillow, which decodes it or names the problem."""
    if not path:
        return None
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    blob = data.tobytes()
    try:
        with Image.open(io.BytesIO(blob)) as image:  # reads the header only
            check_header(path, image)
            fmt, mode, (width, height) = image.format, image.mode, image.size
            transparent = "transparency" in image.info
    except Exception:  # unreadable or refused header: Pillow's own reader names the reason
        return None
    if fmt not in _DALI_FORMATS or mode not in _DALI_MODES or transparent or width < 1 or height < 1:
        return None
    head, tail = blob[:32], blob[-12:]
    if fmt == "JPEG" and not tail.endswith(b"\xff\xd9"):
        return None  # no end-of-image marker: truncated (or trailing bytes); Pillow decides
    if fmt == "PNG":
        if head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR" or head[24] > 8 or tail != _PNG_END:
            return None  # 16-bit samples, or no IEND chunk (truncated)
    if fmt == "WEBP" and int.from_bytes(head[4:8], "little") + 8 != len(blob):
        return None
    if fmt == "BMP" and int.from_bytes(head[2:6], "little") not in (0, len(blob)):
        return None
    return Encoded(data, width, height)


def _half_window(path: str, image: Encoded, half: Half) -> tuple[list[int], list[int]] | None:
    """(start, shape) in (x, y) order: the whole image, or one half as `load_rgb` cuts it; None when
    the Pillow reader refuses it (too narrow to halve, under `MIN_SIDE`) and says why."""
    width, height = image.width, image.height
    if half is None:
        start, shape = [0, 0], [width, height]
    elif width < 2:
        return None
    elif half == "left":
        start, shape = [0, 0], [width // 2, height]
    else:
        start, shape = [width // 2, 0], [width - width // 2, height]
    try:
        require_min_side(path, *shape, half)
    except ImageError:
        return None
    return start, shape


LINEAR, CUBIC = 1, 2  # filter support radius, in input pixels at scale 1


def _filter(t: np.ndarray, support: int) -> np.ndarray:
    """Triangle (bilinear) or Pillow's bicubic (a = -0.5), as functions of distance in input pixels."""
    t = np.abs(t)
    if support == LINEAR:
        return np.maximum(0.0, 1.0 - t)
    a = -0.5
    return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1, np.where(t < 2, (((t - 5) * t + 8) * t - 4) * a, 0.0))


@functools.lru_cache(maxsize=512)
def edge_gain(size: int, new_size: int, support: int) -> np.ndarray:
    """Per output position along one axis: the filter's total weight over the weight that lands inside
    the image. Multiplying a zero-padded resize by it is cutting the filter at the edge and
    renormalising, as torch's antialiased bilinear and Pillow do (1 away from the edges)."""
    scale = size / new_size
    stretch = max(scale, 1.0)  # antialiasing widens the filter when shrinking
    centres = (np.arange(new_size) + 0.5) * scale
    taps = np.floor(centres - support * stretch)[:, None] + np.arange(int(2 * support * stretch) + 3)[None, :]
    weights = _filter((taps + 0.5 - centres[:, None]) / stretch, support)
    inside = weights * ((taps >= 0) & (taps < size))
    return weights.sum(axis=1) / inside.sum(axis=1)


@functools.lru_cache(maxsize=256)
def _resample(width: int, height: int, new_width: int, new_height: int, support: int) -> dict[str, np.ndarray]:
    """Arguments of one edge-exact resize (see `_graph`): zero padding as wide as the filter reaches,
    the region of the padded image that is the original, and the edge gain map [h, w, 1]."""
    margin_x = 0 if width == new_width else math.ceil(support * max(width / new_width, 1.0)) + 1
    margin_y = 0 if height == new_height else math.ceil(support * max(height / new_height, 1.0)) + 1
    gain = np.outer(edge_gain(height, new_height, support), edge_gain(width, new_width, support))
    return {"size": np.array([new_height, new_width], np.float32),
            "pad_start": np.array([-margin_x, -margin_y], np.int32),
            "pad_shape": np.array([width + 2 * margin_x, height + 2 * margin_y], np.int32),
            "roi_start": np.array([margin_y, margin_x], np.float32),
            "roi_end": np.array([margin_y + height, margin_x + width], np.float32),
            "gain": np.ascontiguousarray(gain[:, :, None], dtype=np.float32)}


@dataclass
class Planned:
    """One pair bound for DALI: its bytes, every per-sample argument the pipeline may read, and the
    resize steps that change its size (an unchanged size is no resize, as in `preprocess.resize`)."""

    pair: Pair
    shared: bool
    halves: bool
    feeds: dict[str, np.ndarray]
    resizing: frozenset[str]


def plan_pair(pair: Pair, view: View) -> Planned | None:
    """None when the pair goes to the Pillow reader (see the module docstring for why)."""
    if pair.problem:
        return None
    shared = pair.input_path == pair.target_path
    x = inspect_file(pair.input_path)
    if x is None:
        return None
    y = x if shared else inspect_file(pair.target_path)
    if y is None:
        return None
    windows = {"x": _half_window(pair.input_path, x, pair.input_half),
               "y": _half_window(pair.target_path, y, pair.target_half)}
    if windows["x"] is None or windows["y"] is None:
        return None
    feeds: dict[str, np.ndarray] = {"x.bytes": x.data}
    if not shared:
        feeds["y.bytes"] = y.data
    steps: dict[str, tuple[int, int, int, int, int]] = {}  # name: (w, h, new w, new h, filter support)
    for side, (start, (w, h)) in windows.items():
        feeds[f"{side}.start"], feeds[f"{side}.shape"] = np.array(start, np.int32), np.array([w, h], np.int32)
        new_h, new_w, top, left = cnn_geometry(h, w)
        feeds[f"{side}_cnn.crop"] = np.array([left, top], np.int32)
        steps[f"{side}_cnn"] = (w, h, new_w, new_h, LINEAR)
    (x_w, x_h), (y_w, y_h), grid = windows["x"][1], windows["y"][1], view.grid
    if view.victim_size is not None:
        steps["victim"] = (x_w, x_h, view.victim_size, view.victim_size, LINEAR)
    if view.preset == "reference":  # Pillow's bicubic runs as two 8-bit passes, horizontal then vertical
        steps["ref_w"], steps["ref_h"] = (y_w, y_h, grid, y_h, CUBIC), (grid, y_h, grid, grid, CUBIC)
    for step, geometry in steps.items():
        feeds.update({f"{step}.{k}": v for k, v in _resample(*geometry).items()})
    resizing = frozenset(step for step, (w, h, new_w, new_h, _) in steps.items() if (w, h) != (new_w, new_h))
    halves = pair.input_half is not None or pair.target_half is not None
    return Planned(pair, shared, halves, feeds, resizing)


# ----------------------------------------------------------------------------------------------
# The pipeline: one definition for CPU and GPU, shared-file (aligned) or two-file pairs
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Spec:
    """Everything that fixes the pipeline's graph (per-sample values come from external sources)."""

    gpu: bool
    shared: bool
    halves: bool
    victim_size: int | None
    grid: int
    preset: str
    source: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resizing: frozenset[str]
    """Resize steps some sample of the batch needs; the rest of the batch goes through them unchanged."""


def _graph(spec: _Spec, inputs: list[str]):
    """The DALI graph of `memscore.pillow_reader.prepare`: outputs x, y, cnn_view, grid_target (CHW float).

    Appends the names of the external sources it reads to `inputs`.

    Every resize is edge-exact: DALI's resampler clamps filter taps that fall outside the image to
    the edge pixel, whereas torch's antialiased bilinear and Pillow cut the filter at the edge and
    renormalise it (up to 0.1 apart in edge pixels at a 4x reduction). So each resize reads the
    image zero-padded beyond the filter's reach, over the region of interest that is the original,
    and is multiplied by the host-computed gain that renormalises the cut filter (`edge_gain`).
    """
    from nvidia.dali import fn, types

    device = "gpu" if spec.gpu else "cpu"

    def source(name: str, dtype=types.INT32, ndim: int = 1):
        inputs.append(name)
        return fn.external_source(name=name, dtype=dtype, ndim=ndim)  # host data; arguments stay on the CPU

    def decode(name: str):
        # adjust_orientation=False: Pillow ignores EXIF orientation; fancy upsampling: libjpeg's (Pillow's) default
        return fn.decoders.image(source(name, types.UINT8), device="mixed" if spec.gpu else "cpu",
                                 output_type=types.RGB, adjust_orientation=False, jpeg_fancy_upsampling=True)

    def step_args(step: str) -> dict:
        """A resize step's per-sample arguments, from the host plan (`_resample`)."""
        args = {k: source(f"{step}.{k}", types.FLOAT) for k in ("size", "roi_start", "roi_end")}
        args.update({k: source(f"{step}.{k}") for k in ("pad_start", "pad_shape")})
        gain = source(f"{step}.gain", types.FLOAT, ndim=3)
        args["gain"] = gain.gpu() if spec.gpu else gain  # an operand of the product: on the image's device
        return args

    def resize(image, args: dict, interp):
        """Edge-exact antialiased resize of HWC RGB; float out, value range kept."""
        padded = fn.slice(image, start=args["pad_start"], shape=args["pad_shape"], axis_names="WH",
                          out_of_bounds_policy="pad", fill_values=0)
        out = fn.resize(padded, size=args["size"], roi_start=args["roi_start"], roi_end=args["roi_end"],
                        interp_type=interp, antialias=True, dtype=types.FLOAT)
        return out * args["gain"]

    def unit_chw(image):
        """0..255 HWC -> [0, 1] CHW float."""
        return fn.crop_mirror_normalize(image, mean=[0.0], std=[255.0], output_layout="CHW", dtype=types.FLOAT)

    x_file = decode("x.bytes")
    y_file = x_file if spec.shared else decode("y.bytes")  # an aligned A|B file is decoded once
    x8, y8 = x_file, y_file
    if spec.halves:
        x8 = fn.slice(x_file, start=source("x.start"), shape=source("x.shape"), axis_names="WH")
        y8 = fn.slice(y_file, start=source("y.start"), shape=source("y.shape"), axis_names="WH")

    def cnn_crop(side: str):
        """Resize(256) + CenterCrop(224), 0..255 HWC."""
        step, image = f"{side}_cnn", (x8 if side == "x" else y8)
        if step in spec.resizing:
            image = resize(image, step_args(step), types.INTERP_LINEAR)
        return fn.slice(image, start=source(f"{step}.crop"), shape=[CNN_CROP, CNN_CROP], axis_names="WH")

    x = unit_chw(resize(x8, step_args("victim"), types.INTERP_LINEAR) if "victim" in spec.resizing else x8)
    y = unit_chw(y8)
    crop = cnn_crop("x" if spec.source == "input" else "y")
    cnn_view = fn.crop_mirror_normalize(crop, mean=[255.0 * m for m in spec.mean], std=[255.0 * s for s in spec.std],
                                        output_layout="CHW", dtype=types.FLOAT)
    grid = y8
    if spec.preset == "reference":
        # the authors' target: the whole y by Pillow's bicubic, two passes, each rounded to 8 bits
        for step in ("ref_w", "ref_h"):
            if step in spec.resizing:
                grid = fn.cast(resize(grid, step_args(step), types.INTERP_CUBIC), dtype=types.UINT8)
    else:
        grid = crop if spec.source == "target" else cnn_crop("y")
        if spec.grid != CNN_CROP:  # the same geometry for every sample: constants
            fixed = dict(_resample(CNN_CROP, CNN_CROP, spec.grid, spec.grid, LINEAR))
            fixed["gain"] = types.Constant(fixed["gain"], device=device)
            grid = resize(grid, {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in fixed.items()},
                          types.INTERP_LINEAR)
    return x, y, cnn_view, unit_chw(grid)


def _build(spec: _Spec, batch_size: int, threads: int, device: torch.device):
    """A built pipeline and the names of its external sources."""
    from nvidia.dali import pipeline_def

    inputs: list[str] = []
    # prefetch_queue_depth=1: one batch in flight inside DALI; reading ahead (on GPU runs) is memscore.pipeline's
    pipe = pipeline_def(_graph, batch_size=batch_size, num_threads=threads, prefetch_queue_depth=1,
                        device_id=device.index if spec.gpu else None)(spec, inputs)
    pipe.build()
    return pipe, inputs


def _to_torch(outputs, device: torch.device) -> list[list[torch.Tensor]]:
    """Per output, per sample torch tensors, copied straight from DALI's buffers (GPU stays on GPU)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray

    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    result = []
    for tensor_list in outputs:
        if tensor_list.is_dense_tensor():
            whole = tensor_list.as_tensor()
            target = torch.empty(whole.shape(), dtype=torch.float32, device=device)
            feed_ndarray(whole, target, cuda_stream=stream)
            result.append(list(target.unbind(0)))
            continue
        samples = []
        for index in range(len(tensor_list)):
            sample = tensor_list[index]
            target = torch.empty(sample.shape(), dtype=torch.float32, device=device)
            samples.append(feed_ndarray(sample, target, cuda_stream=stream))
        result.append(samples)
    if stream is not None:
        stream.synchronize()  # hand over finished tensors: the consumer may use another stream
    return result


# ----------------------------------------------------------------------------------------------
# The reader
# ----------------------------------------------------------------------------------------------

@dataclass
class ReaderStats:
    """Where pairs went; `bench/io.py` and the tests read these."""

    dali: int = 0
    pillow: int = 0
    failed_batches: int = 0


class DaliReader:
    """Turns a list of pairs (one batch) into a `Batch`, as `prepare` would, with DALI doing the work.

    Call `read` from one thread only (pipelines are built and run in the caller's thread).
    """

    def __init__(self, view: View, batch_size: int, *, device: str | torch.device | None = "auto",
                 threads: int = 2) -> None:
        if batch_size < 1:
            raise UsageError(f"batch_size must be >= 1, got {batch_size}")
        if not dali_importable():
            raise MemscoreError("the DALI reader needs nvidia-dali (pip install nvidia-dali-cuda130); "
                               "use reader='pillow' on this machine")
        self.view, self.batch_size, self.threads = view, batch_size, max(int(threads), 1)
        self.device = resolve_device(device)
        self.stats = ReaderStats()
        self._pipes: dict[_Spec, tuple] = {}
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="memscore-read")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._pipes.clear()

    def __enter__(self) -> DaliReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spec(self, plans: list[Planned]) -> _Spec:
        view = self.view
        return _Spec(self.device.type == "cuda", plans[0].shared, any(plan.halves for plan in plans),
                     view.victim_size, view.grid, view.preset, view.difficulty_source, tuple(view.mean),
                     tuple(view.std), frozenset().union(*(plan.resizing for plan in plans)))

    def read(self, pairs: list[Pair]) -> Batch:
        """One batch, at most `batch_size` pairs; items and failures keep the pairs' order."""
        if len(pairs) > self.batch_size:
            raise UsageError(f"{len(pairs)} pairs given to a reader built for batches of {self.batch_size}")
        plans = list(self._pool.map(lambda pair: plan_pair(pair, self.view), pairs))
        results: list[Prepared | Failure | None] = [None] * len(pairs)
        to_pillow = [i for i, plan in enumerate(plans) if plan is None]
        pillow_futures = {i: self._pool.submit(prepare, pairs[i], self.view) for i in to_pillow}
        for shared in (True, False):
            group = [i for i, plan in enumerate(plans) if plan is not None and plan.shared == shared]
            if not group:
                continue
            spec = self._spec([plans[i] for i in group])
            pipe, inputs = self._pipeline(spec)  # a pipeline that cannot be built is a setup problem: raised
            try:
                prepared = self._run(pipe, inputs, [plans[i] for i in group])
            except Exception as error:  # DALI could not decode some file: redo this group pair by pair
                self._pipes.pop(spec, None)  # a pipeline that raised is not reused
                self._failed_batch(error)
                pillow_futures.update({i: self._pool.submit(prepare, pairs[i], self.view) for i in group})
                continue
            self.stats.dali += len(group)
            for i, item in zip(group, prepared):
                results[i] = item
        for i, future in pillow_futures.items():
            results[i] = self._on_device(future.result())
            self.stats.pillow += 1
        return Batch.from_results(results)

    def _failed_batch(self, error: Exception) -> None:
        self.stats.failed_batches += 1
        if self.stats.failed_batches == 1:
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            cause = next((b for a, b in zip(lines, lines[1:]) if a == "encountered:"), lines[0] if lines else "")
            print(f"memscore: DALI could not read a batch ({type(error).__name__}: {cause[:160]}); that batch is "
                  "read pair by pair with Pillow, and files neither can decode are recorded as failures "
                  "(said once per reader)", file=sys.stderr, flush=True)

    def _pipeline(self, spec: _Spec) -> tuple:
        if spec not in self._pipes:
            try:
                self._pipes[spec] = _build(spec, self.batch_size, self.threads, self.device)
            except Exception as error:
                raise MemscoreError(f"could not build the DALI pipeline on {self.device} ({error}); pass "
                                   "device='cpu' or reader='pillow' to read without it") from error
        return self._pipes[spec]

    def _run(self, pipe, inputs: list[str], plans: list[Planned]) -> list[Prepared]:
        for name in inputs:
            pipe.feed_input(name, [plan.feeds[name] for plan in plans])
        xs, ys, views, grids = _to_torch(pipe.run(), self.device)
        return [Prepared(plan.pair, x, y, v, g) for plan, x, y, v, g in zip(plans, xs, ys, views, grids)]

    def _on_device(self, result: Prepared | Failure) -> Prepared | Failure:
        """Pillow-read pairs join the batch on the reader's device, so a batch never mixes devices."""
        if isinstance(result, Failure) or self.device.type == "cpu":
            return result
        tensors = (result.x, result.y, result.cnn_view, result.grid_target)
        return Prepared(result.pair, *(tensor.to(self.device) for tensor in tensors))


class SharedDaliReader:
    """A `DaliReader` and the one thread that builds and runs its pipelines, kept for the process and
    reused by every shard: DALI does not hand back the memory of a closed reader (measured: +17 MB of
    RSS per reader built and closed, so a reader per shard grew a 10k-image run by ~700 MB). Other
    settings (view, batch size, threads, device) close it and build the one they need."""

    current: SharedDaliReader | None = None

    def __init__(self, settings: tuple) -> None:
        view, batch_size, threads, device = settings
        self.settings = settings
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memscore-dali")
        self.reader = self.worker.submit(DaliReader, view, batch_size, device=device, threads=threads).result()

    @classmethod
    def for_settings(cls, view: View, batch_size: int, threads: int,
                     device: str | torch.device | None) -> SharedDaliReader:
        """The process's reader, replaced first if it was built for other settings."""
        settings = (view, batch_size, threads, device)
        if cls.current is None or cls.current.settings != settings:
            if cls.current is not None:
                cls.current.close()
            cls.current = cls(settings)
        return cls.current

    def submit(self, pairs: list[Pair]) -> Future[Batch]:
        """Read one batch on the reader's thread."""
        return self.worker.submit(self.reader.read, pairs)

    def close(self) -> None:
        self.worker.submit(self.reader.close).result()
        self.worker.shutdown()
