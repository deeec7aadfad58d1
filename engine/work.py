"""The unit of work of a scoring run: a shard of the dataset, scored and written by one function.

A shard is plain data (`Shard`), and so is everything a task needs (`ShardJob`), so the same
`score_shard_task` runs in this process or on a Dask worker. Each process loads the backbone and victim
once (`cached`) and reuses them for every shard it is given; it writes only its shard's own chunks.
An exception while scoring fails only the image that raises it (`score_batch`); the shard fails (stays pending,
retried) only for faults that are not an image's (`NOT_THE_IMAGES`, writing the store, a worker's death).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .allocator import release_freed_memory
from .batch import Batch, Prepared
from .config import ScoreConfig
from .data import Dataset, open_dataset, read_id_list
from .devices import reader_threads, resolve_device, use_threads
from .pipeline import batches
from .scores import Row, Scorer
from .store import ScoreStore, StoreError, disk_full_guard, shard_columns


@dataclass(frozen=True)
class DatasetSpec:
    """How to open the dataset: serialisable, so a worker can open it too."""

    data: str | None = None
    inputs: str | None = None
    targets: str | None = None
    direction: str = "AtoB"
    members_file: str | None = None

    def open(self) -> Dataset:
        members = set(read_id_list(self.members_file).ids) if self.members_file else None
        return open_dataset(self.data, inputs=self.inputs, targets=self.targets, direction=self.direction,
                            members=members)


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of the dataset: exactly one chunk of every per-image array of the store."""

    index: int
    start: int
    stop: int


@dataclass(frozen=True)
class ShardJob:
    """Everything a process needs to score any shard of one run."""

    dataset: DatasetSpec
    config: ScoreConfig
    store_path: str
    batch_size: int
    device: str = "auto"
    threads: int = 0
    """CPU threads for the process scoring it (0 = leave as is)."""


@dataclass(frozen=True)
class ShardOutcome:
    index: int
    n_images: int
    scored: int = 0
    failed: int = 0
    clamped: int = 0
    """Images scored although some of their victim output values were outside [0, 1] (clamped)."""
    error: str = ""
    """Set when the whole shard could not be scored (after retries)."""
    stage_seconds: tuple[tuple[str, float], ...] = ()
    """Seconds per pipeline stage spent on this shard."""


_PROCESS_CACHE: dict[tuple, object] = {}


def cached(key: tuple, build: Callable[[], object]) -> object:
    """One object per key per process (the loaded scorer, the opened dataset); older keys of a kind are dropped."""
    if key not in _PROCESS_CACHE:
        for old in [k for k in _PROCESS_CACHE if k[0] == key[0]]:
            del _PROCESS_CACHE[old]
        _PROCESS_CACHE[key] = build()
    return _PROCESS_CACHE[key]


def process_scorer(config: ScoreConfig, device: str) -> Scorer:
    """This process's scorer for `config` (loaded once, reused by every shard)."""
    torch_device = resolve_device(device)
    return cached(("scorer", config, str(torch_device)), lambda: Scorer(config, device=torch_device))


def ordered_rows(rows: list[Row], expected_ids: list[str]) -> list[Row]:
    """Rows in the dataset's order, one per expected id."""
    by_id = {row.id: row for row in rows}
    if len(by_id) != len(rows) or set(by_id) != set(expected_ids):
        missing = sorted(set(expected_ids) - set(by_id))[:3]
        raise StoreError(f"a shard's rows do not match its ids (missing {missing}): ids must be unique in the dataset")
    return [by_id[i] for i in expected_ids]


NOT_THE_IMAGES: tuple[type[Exception], ...] = (MemoryError, torch.OutOfMemoryError, torch.AcceleratorError)
"""Errors while scoring that belong to the process, not to an image: memory running out (host or device) and a
device fault (after which CUDA refuses every later call). Recording them against images would mark images failed
that a healthy process scores, so they fail the shard instead: it stays pending and is tried again (by Dask, by a
rerun). KeyboardInterrupt and SystemExit are not `Exception`s and always propagate. Disk full, the store's lock,
store errors and a worker's death happen outside `Scorer.score` (writing the shard, the run, Dask): they fail the
shard too."""

REASON_MAX_CHARS = 300
"""Longest error message kept in a failed image's reason (a TorchScript error can carry a whole traceback)."""


def raised_reason(image_id: str, error: Exception) -> str:
    """One line naming the image and the error that scoring it raised (type and message)."""
    message = " ".join(str(error).split())
    if len(message) > REASON_MAX_CHARS:
        message = message[:REASON_MAX_CHARS] + "..."
    return f"{image_id}: scoring raised {type(error).__name__}: {message}"


def score_batch(scorer: Scorer, batch: Batch) -> list[Row]:
    """The batch's rows. When scoring the batch raises, each image is scored again on its own, so only an image
    that raises by itself fails (with `raised_reason`) and the others are scored: one image a victim, the
    backbone, the kernel or a shadow cannot handle never costs the rest of its shard. Every path (this process,
    Dask) scores through here."""
    try:
        return scorer.score(batch)
    except NOT_THE_IMAGES:
        raise
    except Exception:
        rows = scorer.score(Batch(failures=batch.failures))
        for item in batch.items:
            rows.extend(_score_alone(scorer, item))
        return rows


def _score_alone(scorer: Scorer, item: Prepared) -> list[Row]:
    """One image's row; what it raises (but `NOT_THE_IMAGES`) is that image's failure."""
    try:
        return scorer.score(Batch(items=[item]))
    except NOT_THE_IMAGES:
        raise
    except Exception as error:
        return [Row(item.pair.id, item.pair.member, status="failed", reason=raised_reason(item.pair.id, error))]


def score_shard(shard: Shard, dataset: Dataset, scorer: Scorer, store: ScoreStore, batch_size: int,
                on_batch: Callable[[list[Row]], None] | None = None) -> ShardOutcome:
    """Score one shard and write it (data, digest, done-mark last), then give the heap's free pages back."""
    before = scorer.times.as_dict()
    pairs = list(dataset.pairs(shard.start, shard.stop))
    rows: list[Row] = []
    reader = iter(batches(pairs, scorer.view, batch_size, device=scorer.device, threads=reader_threads(),
                          read_ahead=scorer.device.type != "cpu"))  # on a CPU, compute has every core
    while True:
        with scorer.times.stage("decode"):  # time spent waiting for the reader, not hidden behind compute
            batch = next(reader, None)
        if batch is None:
            break
        new_rows = score_batch(scorer, batch)
        rows.extend(new_rows)
        if on_batch is not None:
            on_batch(new_rows)
    ordered = ordered_rows(rows, [pair.id for pair in pairs])
    with scorer.times.stage("write"), disk_full_guard(store.path, f"shard {shard.index}"):
        store.write_shard(shard.index, shard_columns(ordered, store.shard_columns))
    failed = sum(row.status != "ok" for row in ordered)
    clamped = sum(row.status == "ok" and row.out_of_range > 0 for row in ordered)
    release_freed_memory()  # the next shard starts from the live memory alone (memscore.allocator)
    spent = tuple((name, value - before.get(name, 0.0)) for name, value in scorer.times.as_dict().items())
    return ShardOutcome(shard.index, len(pairs), len(pairs) - failed, failed, clamped, stage_seconds=spent)


def score_shard_task(shard: Shard, job: ShardJob, on_batch: Callable[[list[Row]], None] | None = None) -> ShardOutcome:
    """Score one shard in whatever process runs this: a pure function of its arguments and the files."""
    if job.threads > 0:
        use_threads(job.threads)
    scorer = process_scorer(job.config, job.device)
    dataset = cached(("dataset", job.dataset), job.dataset.open)
    return score_shard(shard, dataset, scorer, ScoreStore.open(job.store_path, mode="r+"), job.batch_size, on_batch)
