"""Pairs -> batches of tensors ready for scoring, decoded in background threads.

Two readers give the same `Batch`es (`memscore.batch`): DALI (`memscore.dali_reader`; nvJPEG and GPU
resizes when CUDA is there, a CPU pipeline otherwise) and Pillow (`memscore.pillow_reader`, the
reference, on every machine). This module chooses one (`reader="auto"` uses DALI when it imports)
and reads ahead of the caller.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from . import dali_reader
from .batch import Batch, View
from .data import Pair
from .errors import UsageError
from .pillow_reader import prepare


READERS = ("auto", "dali", "pillow")


def choose_reader(reader: str = "auto") -> str:
    """`dali` or `pillow`; `auto` is DALI where `nvidia.dali` imports, else Pillow (said once on stderr)."""
    if reader not in READERS:
        raise UsageError(f"reader must be one of {READERS}, got {reader!r}")
    if reader != "auto":
        return reader
    if dali_reader.dali_importable():
        return "dali"
    say_pillow_fallback()
    return "pillow"


@functools.cache
def say_pillow_fallback() -> None:
    """Say on stderr that `auto` reads with Pillow: once per process (cached), though every shard chooses a reader."""
    print("memscore: nvidia.dali is not importable here; reading images with Pillow", file=sys.stderr, flush=True)


def batches(pairs: Iterable[Pair], view: View, batch_size: int, *, threads: int = 2, reader: str = "auto",
            device: str | torch.device | None = "auto", read_ahead: bool = True) -> Iterator[Batch]:
    """Prepared batches of up to `batch_size` pairs, in order.

    `reader`: "auto" (DALI if available, else Pillow), "dali" or "pillow". `device` places the DALI
    reader's work and tensors ("auto": CUDA when torch sees it, else CPU); the Pillow reader's
    tensors are always on the CPU. `read_ahead`: decode the next batch while the caller works on
    this one (see `_read_ahead` for when that does not pay).
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    chunks = _chunks(pairs, batch_size)
    if view.input_kind == "rgb" and choose_reader(reader) == "dali":  # label maps: Pillow keeps the ids
        shared = dali_reader.SharedDaliReader.for_settings(view, batch_size, threads, device)
        yield from _read_ahead(chunks, shared.submit, Future.result, read_ahead)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield from _read_ahead(chunks, lambda chunk: [pool.submit(prepare, pair, view) for pair in chunk],
                               lambda futures: Batch.from_results(future.result() for future in futures), read_ahead)


def _chunks(pairs: Iterable[Pair], batch_size: int) -> Iterator[list[Pair]]:
    chunk: list[Pair] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _read_ahead(chunks: Iterator[list[Pair]], start: Callable[[list[Pair]], Any], finish: Callable[[Any], Batch],
                ahead: bool) -> Iterator[Batch]:
    """`finish(start(chunk))` for each chunk; with `ahead`, the next chunk is started before a batch is
    handed out: at most three decoded batches at once (the caller's, the next, one being read).

    Reading ahead pays when the caller computes elsewhere (a GPU). When the caller's torch threads
    already take every core, decoding beside them only slows both: a torch thread that loses its
    core holds up its whole parallel region (bench/README.md has the side-by-side measurement).
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
