"""Scoring runs: a dataset cut into store-aligned shards, scored, written, then the alpha pass.

A shard is plain data (`Shard`); `score_shard` is a function of it and a loaded `Scorer`, so the
same code scores in this process or on a worker. Completed shards are skipped on a rerun, the
alpha pass runs once every shard is done, and a changed configuration is refused.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .allocator import release_freed_memory
from .alpha import membership_error, resolve_alpha
from .backbones import create_backbone
from .config import ScoreConfig
from .data import Dataset, open_dataset, read_id_list
from .pipeline import batches
from .schedule import ClusterPlan, ShardOutcome, run_dask, threads_per_worker, worker_device
from .scores import Row, Scorer
from .store import ScoreStore, ShardScores, StoreError
from .timing import StageTimes

DEFAULT_SHARD_SIZE = 1024
SHARDS_PER_WORKER = 16
MIN_SHARD_SIZE = 64


def default_shard_size(n_images: int, cluster: ClusterPlan = ClusterPlan()) -> int:
    """Images per shard (= store chunk) when none is asked for.

    One process: 1024. Local Dask workers: small enough that each worker gets about 16 shards, so
    they finish their last shards together instead of one idling while the other ends a big one
    (measured, 4096 images on 2 workers: 0.88 of one process in 8 shards, 0.96 in 32), never under
    64 nor over 1024. An external scheduler's worker count is not known up front: 1024.
    """
    if not cluster.workers:
        return DEFAULT_SHARD_SIZE
    wanted = math.ceil(n_images / (SHARDS_PER_WORKER * cluster.workers))
    return min(DEFAULT_SHARD_SIZE, max(MIN_SHARD_SIZE, wanted))


@dataclass(frozen=True)
class DatasetSpec:
    """How to open the dataset: serialisable, so a worker can open it too."""

    data: str | None = None
    inputs: str | None = None
    targets: str | None = None
    direction: str = "AtoB"
    members_file: str | None = None

    def open(self) -> Dataset:
        members = read_id_list(self.members_file) if self.members_file else None
        return open_dataset(self.data, inputs=self.inputs, targets=self.targets, direction=self.direction,
                            members=members)


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int


@dataclass
class RunSummary:
    store: str
    scored: int
    failed: int
    skipped_done: int
    seconds: float
    failed_shards: dict[int, str] = field(default_factory=dict)
    stages: StageTimes = field(default_factory=StageTimes)

    def line(self) -> str:
        rate = (self.scored + self.failed) / self.seconds if self.seconds > 0 else float("nan")
        line = (f"scored {self.scored}, failed {self.failed}, skipped (already done) {self.skipped_done}, "
                f"wall {self.seconds:.1f} s, {rate:.1f} images/s")
        if self.failed_shards:
            first = next(iter(self.failed_shards.items()))
            line += f"; {len(self.failed_shards)} shard(s) failed and stay pending (shard {first[0]}: {first[1]})"
        return line


def shard_rows(rows: list[Row], expected_ids: list[str]) -> ShardScores:
    """Rows in the dataset's order, one per expected id."""
    by_id = {row.id: row for row in rows}
    if len(by_id) != len(rows) or set(by_id) != set(expected_ids):
        raise StoreError("duplicate or missing ids in a shard: ids must be unique within the dataset")
    ordered = [by_id[i] for i in expected_ids]
    return ShardScores(
        id=[r.id for r in ordered],
        lrec=np.array([r.lrec for r in ordered], dtype=np.float32),
        ldiff=np.array([r.ldiff for r in ordered], dtype=np.float32),
        status=[r.status for r in ordered],
        reason=[r.reason for r in ordered],
        member=np.array([r.member for r in ordered], dtype=np.int8),
        out_height=np.array([r.out_height for r in ordered], dtype=np.int32),
        out_width=np.array([r.out_width for r in ordered], dtype=np.int32),
    )


def reader_threads() -> int:
    """Decode threads: this process's share of the cores (the reader runs a batch ahead of compute)."""
    return torch.get_num_threads()


def score_shard(shard: Shard, dataset: Dataset, scorer: Scorer, store: ScoreStore, batch_size: int,
                on_batch=None) -> ShardOutcome:
    """Score one shard and write it (data first, done-mark last), then give the heap's free pages back."""
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
        new_rows = scorer.score(batch)
        rows.extend(new_rows)
        if on_batch is not None:
            on_batch(new_rows)
    scores = shard_rows(rows, [pair.id for pair in pairs])
    with scorer.times.stage("write"):
        store.write_shard(shard.index, scores)
    failed = sum(status != "ok" for status in scores.status)
    release_freed_memory()  # the next shard starts from the live memory alone (engine.allocator)
    spent = tuple((name, value - before.get(name, 0.0)) for name, value in scorer.times.as_dict().items())
    return ShardOutcome(shard.index, len(pairs), len(pairs) - failed, failed, stage_seconds=spent)


def check_resumable(store: ScoreStore, config: ScoreConfig, n_images: int, *, ignore: tuple[str, ...] = ()) -> None:
    """Refuse to resume a store made with another configuration or for another dataset size."""
    differences = store.config.differences(config, ignore=ignore)
    if differences:
        listed = "; ".join(f"{k}: store has {a!r}, asked {b!r}" for k, (a, b) in differences.items())
        raise StoreError(f"{store.path} was scored with a different configuration ({listed}). "
                         "Rerun with the store's settings to resume, use `memscore rescore` to change alpha, "
                         "or pass --overwrite to start fresh")
    if store.n_images != n_images:
        raise StoreError(f"{store.path} holds {store.n_images} images but the dataset now has {n_images}; "
                         "pass --overwrite to start fresh")


def alpha_pass(store: ScoreStore, alpha: str | None = None) -> dict:
    """Resolve alpha over the whole store (fixed or fitted) and write Lmem for every row."""
    config = store.config
    spec = config.alpha if alpha is None else alpha
    lrec, ldiff = store.column("lrec").astype(np.float64), store.column("ldiff").astype(np.float64)
    reference_mask = None
    if spec.startswith("fit:reference"):
        if not config.reference_ids:
            raise ValueError("--alpha fit:reference needs --reference FILE (ids of known non-members)")
        reference = read_id_list(config.reference_ids)
        reference_mask = np.isin(store.column("id"), list(reference))
    fit = resolve_alpha(spec, lrec, ldiff, reference_mask=reference_mask)
    record = {"spec": spec, "value": float(fit.alpha), "method": fit.method, "n_rows": int(fit.n_rows),
              "r2": None if fit.r2 is None or not np.isfinite(fit.r2) else float(fit.r2)}
    store.write_lmem(membership_error(lrec, ldiff, fit.alpha), record)
    return record


def run_scoring(dataset_spec: DatasetSpec, config: ScoreConfig, out: str | Path, *, batch_size: int = 32,
                shard_size: int | None = None, device: str = "auto", overwrite: bool = False,
                progress: bool = True, cluster: ClusterPlan = ClusterPlan()) -> RunSummary:
    """Score a dataset into `out`, resuming a matching store; here, or on Dask when `cluster` asks.

    `shard_size` None: `default_shard_size` (a resumed store keeps its own)."""
    started = time.perf_counter()
    dataset = dataset_spec.open()
    resuming = Path(out).exists() and not overwrite
    if resuming:  # refuse a changed configuration before loading anything heavy
        check_resumable(ScoreStore.open(out), config, len(dataset), ignore=("weights_sha256",))
    backbone = create_backbone(config.backbone, weights=config.backbone_weights)
    config = ScoreConfig.from_dict({**config.to_dict(), "weights_sha256": backbone.weights_sha256()})
    if resuming:
        store = ScoreStore.open(out)
        check_resumable(store, config, len(dataset))
    else:
        shard_size = default_shard_size(len(dataset), cluster) if shard_size is None else shard_size
        store = ScoreStore.create(out, len(dataset), shard_size, config, overwrite=overwrite)
    with store.lock():
        done = store.done_shards()
        todo = [Shard(i, *store.shard_range(i)) for i in range(store.n_shards) if not done[i]]
        skipped = store.n_images - sum(shard.stop - shard.start for shard in todo)
        bar = tqdm(total=store.n_images, initial=skipped, unit="img", desc="scoring", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        if cluster.distributed:
            task_args = (dataset_spec, config, str(Path(out).resolve()), batch_size, device, threads_per_worker(cluster))
            outcomes = run_dask(todo, cluster, task_args)
        else:
            scorer = Scorer(config, device=worker_device(device), backbone=backbone)
            failures = 0

            def on_batch(rows: list[Row]) -> None:
                nonlocal failures
                failures += sum(r.status != "ok" for r in rows)
                bar.update(len(rows))
                bar.set_postfix(failed=failures)

            outcomes = (score_shard(shard, dataset, scorer, store, batch_size, on_batch) for shard in todo)
        summary = RunSummary(str(out), 0, 0, skipped, 0.0)
        for outcome in outcomes:
            summary.scored += outcome.scored
            summary.failed += outcome.failed
            summary.stages.add(dict(outcome.stage_seconds))
            if outcome.error:
                summary.failed_shards[outcome.index] = outcome.error
            if cluster.distributed:
                bar.update(outcome.n_images)
                bar.set_postfix(failed=summary.failed, shards_failed=len(summary.failed_shards))
        bar.close()
        if summary.failed_shards:
            store.group.attrs["failed_shards"] = {str(k): v for k, v in summary.failed_shards.items()}
        if not (store.column("status") == "ok").any():
            raise StoreError(f"nothing could be scored: every image failed (reasons in {out}/reason)")
        alpha_pass(store)
    summary.seconds = time.perf_counter() - started
    return summary
