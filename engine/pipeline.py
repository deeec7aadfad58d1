"""Pairs -> batches of tensors ready for scoring, decoded in background threads.

Two readers give the same `Batch`es: DALI (`engine.dali_reader`; nvJPEG and GPU resizes when CUDA
is there, a CPU pipeline otherwise) and Pillow (`prepare` below, the reference, on every machine).
`batches(..., reader="auto")` uses DALI when it imports. Each pair is prepared on its own terms, so
one bad file becomes one recorded failure and never stops the batch.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .data import Pair
from .images import ImageError, load_labels, load_rgb
from .preprocess import difficulty_target, normalise, resize, resize_shorter_center_crop, to_tensor


@dataclass(frozen=True)
class View:
    """How to prepare a pair: victim input size, CNN normalisation, difficulty grid and source."""

    victim_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: int
    preset: str
    difficulty_source: str
    input_kind: str = "rgb"
    """`labels`: x is the input's class-id map ([1, H, W], nearest-neighbour resized) for label-map victims."""


@dataclass
class Prepared:
    """One decoded pair. `y` stays at full resolution for Lrec."""

    pair: Pair
    x: torch.Tensor
    y: torch.Tensor
    cnn_view: torch.Tensor
    grid_target: torch.Tensor


@dataclass
class Failure:
    pair: Pair
    reason: str


@dataclass
class Batch:
    items: list[Prepared] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [item.pair.id for item in self.items]


def prepare(pair: Pair, view: View) -> Prepared | Failure:
    """Decode and prepare one pair; any problem becomes a `Failure` with its reason."""
    if pair.problem:
        return Failure(pair, pair.problem)
    try:
        y_image = load_rgb(pair.target_path, pair.target_half)
        if view.input_kind == "labels":
            x = torch.from_numpy(load_labels(pair.input_path, pair.input_half)).float()[None]
            size = (view.victim_size, view.victim_size) if view.victim_size is not None else tuple(x.shape[-2:])
            x = F.interpolate(x[None], size=size, mode="nearest")[0]
        if view.input_kind != "labels" or view.difficulty_source == "input":
            x_image = load_rgb(pair.input_path, pair.input_half)
    except ImageError as error:
        return Failure(pair, error.reason)
    if view.input_kind != "labels":
        x = to_tensor(x_image)
        if view.victim_size is not None:
            x = resize(x, (view.victim_size, view.victim_size))
    source = y_image if view.difficulty_source == "target" else x_image
    cnn_view = normalise(resize_shorter_center_crop(to_tensor(source)), view.mean, view.std)
    return Prepared(pair, x, to_tensor(y_image), cnn_view, difficulty_target(y_image, view.grid, view.preset))


READERS = ("auto", "dali", "pillow")
_noticed_fallback = False


def choose_reader(reader: str = "auto") -> str:
    """`dali` or `pillow`; `auto` is DALI where `nvidia.dali` imports, else Pillow (said once on stderr)."""
    global _noticed_fallback
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    if reader != "auto":
        return reader
    from .dali_reader import available
    if available():
        return "dali"
    if not _noticed_fallback:
        _noticed_fallback = True
        print("memscore: nvidia.dali is not importable here; reading images with Pillow", file=sys.stderr, flush=True)
    return "pillow"


def batches(pairs: Iterable[Pair], view: View, batch_size: int, *, threads: int = 2, reader: str = "auto",
            device: str | torch.device | None = "auto", read_ahead: bool = True) -> Iterator[Batch]:
    """Prepared batches of up to `batch_size` pairs, in order.

    `reader`: "auto" (DALI if available, else Pillow), "dali" or "pillow". `device` places the DALI
    reader's work and tensors ("auto": CUDA when torch sees it, else CPU); the Pillow reader's
    tensors are always on the CPU. `read_ahead`: decode the next batch while the caller works on
    this one (see `_read_ahead` for when that does not pay).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if view.input_kind == "rgb" and choose_reader(reader) == "dali":  # label maps: Pillow keeps the ids
        yield from _dali_batches(pairs, view, batch_size, threads, device, read_ahead)
        return

    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield from _read_ahead(_chunks(pairs, batch_size), lambda chunk: [pool.submit(prepare, p, view) for p in chunk],
                               _collect, read_ahead)


def _chunks(pairs: Iterable[Pair], batch_size: int) -> Iterator[list[Pair]]:
    chunk: list[Pair] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read_ahead(chunks: Iterator[list[Pair]], start, finish, ahead: bool) -> Iterator[Batch]:
    """`finish(start(chunk))` for each chunk; with `ahead`, the next chunk is started before a batch is
    handed out: at most three decoded batches at once (the caller's, the next, one being read).

    Reading ahead pays when the caller computes elsewhere (a GPU). When the caller's torch threads
    already take every core, decoding beside them only slows both: a torch thread that loses its
    core holds up its whole parallel region. Measured, 2 cores, Lite0 and a pix2pix victim on 256 px
    pairs: 20.4 images/s reading ahead, 21.7-22.2 reading each batch when asked for.
    """
    if not ahead:
        for chunk in chunks:
            yield finish(start(chunk))
        return
    pending = None
    for chunk in chunks:
        started = start(chunk)
        if pending is not None:
            yield finish(pending)
        pending = started
    if pending is not None:
        yield finish(pending)


def _dali_batches(pairs: Iterable[Pair], view: View, batch_size: int, threads: int,
                  device: str | torch.device | None, read_ahead: bool) -> Iterator[Batch]:
    """The DALI reader on its own thread, reading ahead or not as the Pillow reader."""
    reader = _DaliThread.for_settings(view, batch_size, threads, device)
    yield from _read_ahead(_chunks(pairs, batch_size), reader.submit, lambda future: future.result(), read_ahead)


class _DaliThread:
    """A `DaliReader` and the one thread that builds and runs its pipelines, kept for the process and
    reused by every shard: DALI does not hand back the memory of a closed reader (measured: +17 MB of
    RSS per reader built and closed, so a reader per shard grew a 10k-image run by ~700 MB)."""

    current: _DaliThread | None = None

    def __init__(self, settings: tuple) -> None:
        from .dali_reader import DaliReader

        view, batch_size, threads, device = settings
        self.settings = settings
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="memscore-dali")
        self.reader = self.worker.submit(DaliReader, view, batch_size, device=device, threads=threads).result()

    @classmethod
    def for_settings(cls, view: View, batch_size: int, threads: int, device) -> _DaliThread:
        settings = (view, batch_size, threads, device)
        if cls.current is None or cls.current.settings != settings:
            if cls.current is not None:
                cls.current.close()
            cls.current = cls(settings)
        return cls.current

    def submit(self, pairs: list[Pair]):
        return self.worker.submit(self.reader.read, pairs)

    def close(self) -> None:
        self.worker.submit(self.reader.close).result()
        self.worker.shutdown()


def _collect(futures: list) -> Batch:
    batch = Batch()
    for future in futures:
        result = future.result()
        (batch.items if isinstance(result, Prepared) else batch.failures).append(result)
    return batch


def same_size_groups(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices grouped by spatial size, so a victim without a fixed input size runs in batches."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape), []).append(index)
    return list(groups.values())


