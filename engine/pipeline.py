"""Pairs -> batches of tensors ready for scoring, decoded in background threads.

This is the Pillow reader, the path on every machine. Each pair is decoded and prepared on its
own, so one bad file becomes one recorded failure and never stops the batch.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from .data import Pair
from .images import ImageError, load_rgb
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
        x_image = load_rgb(pair.input_path, pair.input_half)
        y_image = load_rgb(pair.target_path, pair.target_half)
    except ImageError as error:
        return Failure(pair, error.reason)
    x = to_tensor(x_image)
    if view.victim_size is not None:
        x = resize(x, (view.victim_size, view.victim_size))
    source = y_image if view.difficulty_source == "target" else x_image
    cnn_view = normalise(resize_shorter_center_crop(to_tensor(source)), view.mean, view.std)
    return Prepared(pair, x, to_tensor(y_image), cnn_view, difficulty_target(y_image, view.grid, view.preset))


def batches(pairs: Iterable[Pair], view: View, batch_size: int, *, threads: int = 2) -> Iterator[Batch]:
    """Prepared batches of up to `batch_size` pairs, in order; decoding runs one batch ahead."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def chunks() -> Iterator[list[Pair]]:
        chunk: list[Pair] = []
        for pair in pairs:
            chunk.append(pair)
            if len(chunk) == batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def assemble(chunk: list[Pair], pool: ThreadPoolExecutor) -> list:
        return [pool.submit(prepare, pair, view) for pair in chunk]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending = None
        for chunk in chunks():
            submitted = assemble(chunk, pool)
            if pending is not None:
                yield _collect(pending)
            pending = submitted
        if pending is not None:
            yield _collect(pending)


def _collect(futures: list) -> Batch:
    batch = Batch()
    for future in futures:
        result = future.result()
        (batch.items if isinstance(result, Prepared) else batch.failures).append(result)
    return batch


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(tensors) if tensors else torch.empty(0)


def same_size_groups(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices grouped by spatial size, so a victim without a fixed input size runs in batches."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape), []).append(index)
    return list(groups.values())


