"""Scoring runs: a dataset cut into store-aligned shards, scored, written, then the alpha pass.

`run_scoring` checks everything it can before the store is touched, takes the store's lock before
creating, replacing or resuming it, then drives one loop over the shards (in this process or on Dask,
through `memscore.schedule.execute`) and writes Lmem once every shard is done and verified. Completed
shards are skipped on a rerun, damaged ones are scored again, and a changed configuration is refused.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .backbones import feature_width, resolve_weights, weights_sha256
from .config import ScoreConfig
from .data import read_id_list
from .devices import resolve_device
from .errors import UsageError
from .outputs import remove_folder, require_replaceable
from .precision import resolve_precision
from .rescore import alpha_pass, check_alpha_options
from .schedule import ClusterPlan, execute
from .scores import OUT_OF_RANGE_TOLERANCE, Row
from .store import ScoreStore, StoreError, disk_full_message, store_lock
from .timing import StageTimes
from .work import DatasetSpec, Shard, ShardJob, ShardOutcome, process_scorer, score_shard_task

DEFAULT_SHARD_SIZE = 1024
SHARDS_PER_WORKER = 16
MIN_SHARD_SIZE = 64
RESUME_IGNORES = ("alpha", "reference_ids")
"""Config keys a rerun may change: they decide only the alpha pass, which every run redoes at its end."""


def default_shard_size(n_images: int, cluster: ClusterPlan = ClusterPlan()) -> int:
    """Images per shard (= store chunk) when none is asked for.

    One process: 1024. Local Dask workers: small enough that each worker gets about 16 shards, so
    they finish their last shards together instead of one idling while the other ends a big one
    (bench/scale.py measures it), never under 64 nor over 1024. An external scheduler's worker count is not known up front: 1024.
    """
    if not cluster.workers:
        return DEFAULT_SHARD_SIZE
    wanted = math.ceil(n_images / (SHARDS_PER_WORKER * cluster.workers))
    return min(DEFAULT_SHARD_SIZE, max(MIN_SHARD_SIZE, wanted))


@dataclass
class RunSummary:
    store: str
    scored: int
    failed: int
    skipped_done: int
    seconds: float
    failed_shards: dict[int, str] = field(default_factory=dict)
    stages: StageTimes = field(default_factory=StageTimes)
    rescored_damaged: tuple[int, ...] = ()
    """Shards found damaged on resume (digest mismatch, unreadable chunk) and scored again."""
    dataset_notes: tuple[str, ...] = ()
    """What opening the dataset left out or could not match (skipped files, unknown member ids)."""
    clamped: int = 0
    """Images scored with some victim output values outside [0, 1], clamped (within `OUT_OF_RANGE_TOLERANCE`)."""

    @property
    def complete(self) -> bool:
        """Every shard is done and Lmem written: False when shards failed on every try (they stay pending)."""
        return not self.failed_shards

    def line(self) -> str:
        rate = (self.scored + self.failed) / self.seconds if self.seconds > 0 else float("nan")
        line = (f"scored {self.scored}, failed {self.failed}, skipped (already done) {self.skipped_done}, "
                f"wall {self.seconds:.1f} s, {rate:.1f} images/s")
        if self.clamped:
            line += (f"; {self.clamped} scored image(s) had victim output values outside [0, 1], clamped (at most "
                     f"{OUT_OF_RANGE_TOLERANCE:.0%} of values each; the fraction is the store's out_of_range column)")
        if self.failed_shards:
            first = next(iter(self.failed_shards.items()))
            line += (f"; {len(self.failed_shards)} shard(s) failed and stay pending (shard {first[0]}: {first[1]}): "
                     "the store is NOT finished, lmem not written; rerun the same command to retry them")
        if self.rescored_damaged:
            line += f"; {len(self.rescored_damaged)} damaged shard(s) scored again {list(self.rescored_damaged)[:5]}"
        return line




def members_digest(members_file: str | None) -> str | None:
    """What identifies the member labels a run gives (None: no --members file)."""
    if not members_file:
        return None
    ids = sorted(read_id_list(members_file).ids)
    return hashlib.sha256("\n".join(ids).encode("utf-8", "surrogatepass")).hexdigest()


def check_resumable(store: ScoreStore, config: ScoreConfig, n_images: int, members_sha256: str | None, *,
                    ignore: tuple[str, ...] = ()) -> None:
    """Refuse to resume a store made with another configuration, dataset size or member labels."""
    differences = store.config.differences(config, ignore=RESUME_IGNORES + ignore)
    if differences:
        listed = "; ".join(f"{k}: store has {a!r}, asked {b!r}" for k, (a, b) in differences.items())
        raise StoreError(f"{store.path} was scored with a different configuration ({listed}). "
                         "Rerun with the store's settings to resume, or pass --overwrite to start fresh")
    if store.n_images != n_images:
        raise StoreError(f"{store.path} holds {store.n_images} images but the dataset now has {n_images}; "
                         "pass --overwrite to start fresh")
    if store.record.members_sha256 != members_sha256:
        had = "no --members file" if store.record.members_sha256 is None else "another --members file"
        now = "none" if members_sha256 is None else "a different one"
        raise StoreError(f"{store.path} was scored with {had}, this run gives {now}: the member column would mix "
                         "two labellings. Rerun with the same --members, or pass --overwrite to start fresh")


def run_inputs(dataset_spec: DatasetSpec, config: ScoreConfig) -> tuple[str, ...]:
    """Every path a run reads: a store never replaces a folder that holds one of them."""
    victim_kind, _, victim_target = config.victim.partition(":")
    victim_path = victim_target if victim_kind != "python" else None
    given = (dataset_spec.data, dataset_spec.inputs, dataset_spec.targets, dataset_spec.members_file,
             config.reference_ids, victim_path, config.victim_weights, config.backbone_weights, config.shadows)
    return tuple(path for path in given if path)


def wide_columns(config: ScoreConfig) -> dict[str, int]:
    """The 2-D columns a run writes: calibration features always, each shadow's Lrec when there are shadows."""
    widths = {"features": feature_width(config.backbone)}
    if config.shadows:
        from .shadows import read_shadow_set
        widths["lrec_shadow"] = widths["in_shadow"] = len(read_shadow_set(config.shadows).shadows)
    return widths


def check_run_options(batch_size: int, shard_size: int | None) -> None:
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if shard_size is not None and shard_size < 1:
        raise StoreError(f"shard size must be at least 1 image, got {shard_size}")


def process_layout(device: str, cluster: ClusterPlan, precision: str) -> dict:
    """How this run splits the work: results agree across layouts to float32 rounding, not bit for bit."""
    return {"started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": device,
            "precision": precision, "workers": cluster.workers, "scheduler": cluster.scheduler,
            "threads": cluster.threads_per_worker() if cluster.distributed else torch.get_num_threads()}


class Progress:
    """One progress bar for both executors: per batch where the task reports batches (this process), per
    shard otherwise (Dask), never counting an image twice."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, initial=initial, unit="img", desc="scoring", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        self.failed = 0
        self.counted_in_shard = 0

    def batch(self, rows: list[Row]) -> None:
        self.failed += sum(row.status != "ok" for row in rows)
        self.counted_in_shard += len(rows)
        self.bar.update(len(rows))
        self.bar.set_postfix(failed=self.failed)

    def shard(self, outcome: ShardOutcome, failed_shards: int) -> None:
        if not self.counted_in_shard:
            self.failed += outcome.failed
        self.bar.update(outcome.n_images - self.counted_in_shard)
        self.counted_in_shard = 0
        self.bar.set_postfix(failed=self.failed, shards_failed=failed_shards)

    def close(self) -> None:
        self.bar.close()


def run_scoring(dataset_spec: DatasetSpec, config: ScoreConfig, out: str | Path, *, batch_size: int = 32,
                shard_size: int | None = None, device: str = "auto", overwrite: bool = False,
                progress: bool = True, cluster: ClusterPlan = ClusterPlan()) -> RunSummary:
    """Score a dataset into `out`, resuming a matching store; here, or on Dask when `cluster` asks.

    `shard_size` None: `default_shard_size` (a resumed store keeps its own). Every option is checked before
    the store is touched; a fresh store that ends with no shard done is removed again."""
    try:
        return _run_scoring(dataset_spec, config, Path(out), batch_size, shard_size, device, overwrite, progress,
                            cluster)
    except OSError as error:
        message = disk_full_message(out, error, "the store")
        if message is None:
            raise
        raise StoreError(message) from error


def _run_scoring(dataset_spec: DatasetSpec, config: ScoreConfig, out: Path, batch_size: int, shard_size: int | None,
                 device: str, overwrite: bool, progress: bool, cluster: ClusterPlan) -> RunSummary:
    started = time.perf_counter()
    check_run_options(batch_size, shard_size)
    check_alpha_options(config.alpha, config.reference_ids)
    # `auto` is resolved here, once, and recorded: workers and resumes use what the store says, so one store never
    # mixes fp32 and bf16 scores (and bf16 where it would be emulated is refused before anything is touched)
    config = dataclasses.replace(config, precision=resolve_precision(config.precision, resolve_device(device)))
    inputs = run_inputs(dataset_spec, config)
    if overwrite:  # refused before anything is read or loaded: memscore replaces only a store it made
        require_replaceable(out, "store", inputs)
    dataset = dataset_spec.open()
    members_sha256 = members_digest(dataset_spec.members_file)
    if out.exists() and not overwrite:  # a changed configuration is refused before weights are looked for
        check_resumable(ScoreStore.open(out), config, len(dataset), members_sha256, ignore=("weights_sha256",))
    config = ScoreConfig.from_dict({**config.to_dict(), "weights_sha256": weights_sha256(
        resolve_weights(config.backbone, config.backbone_weights))})
    job = ShardJob(dataset_spec, config, str(out.resolve()), batch_size, device, cluster.threads_per_worker())
    with store_lock(out):
        resuming = out.exists() and not overwrite
        damaged: list[int] = []
        if resuming:
            store = ScoreStore.open(out, mode="r+")
            check_resumable(store, config, len(dataset), members_sha256)
            damaged = store.damaged_shards()
            store.reset_shards(damaged)
        if not cluster.distributed:
            process_scorer(config, device)  # load the models before a store is created: a bad victim fails here
        if not resuming:
            shard_size = default_shard_size(len(dataset), cluster) if shard_size is None else shard_size
            store = ScoreStore.create(out, len(dataset), shard_size, config, overwrite=overwrite,
                                      members_sha256=members_sha256, wide_columns=wide_columns(config),
                                      inputs=inputs)
        try:
            summary = _score_shards(store, job, cluster, progress)
        except BaseException:
            if not resuming and not store.done_shards().any():
                remove_folder(out, "store")  # a failed fresh run leaves no empty store behind
            raise
        summary.rescored_damaged = tuple(damaged)
        summary.dataset_notes = tuple(dataset.notes())
        store.set_failed_shards(summary.failed_shards)
        if summary.complete:
            _finish(store, config)
    summary.seconds = time.perf_counter() - started
    return summary


def _score_shards(store: ScoreStore, job: ShardJob, cluster: ClusterPlan, progress: bool) -> RunSummary:
    """Score every shard not done yet, through one loop over the executor."""
    done = store.done_shards()
    todo = [Shard(i, *store.shard_range(i)) for i in range(store.n_shards) if not done[i]]
    skipped = store.n_images - sum(shard.stop - shard.start for shard in todo)
    store.update_record(layouts=store.record.layouts + (process_layout(job.device, cluster, job.config.precision),))
    bar = Progress(store.n_images, skipped, progress)
    task = functools.partial(score_shard_task, job=job, on_batch=None if cluster.distributed else bar.batch)
    summary = RunSummary(str(store.path), 0, 0, skipped, 0.0)
    try:
        for outcome in execute(task, todo, cluster, failed=_failed_shard, name="shard"):
            summary.scored += outcome.scored
            summary.failed += outcome.failed
            summary.clamped += outcome.clamped
            summary.stages.add(dict(outcome.stage_seconds))
            if outcome.error:
                summary.failed_shards[outcome.index] = outcome.error
            bar.shard(outcome, len(summary.failed_shards))
    finally:
        bar.close()
    return summary


def _failed_shard(shard: Shard, error: BaseException) -> ShardOutcome:
    return ShardOutcome(shard.index, shard.stop - shard.start, error=f"{type(error).__name__}: {error}")


def _finish(store: ScoreStore, config: ScoreConfig) -> None:
    """Check the finished store is whole (every shard done and verified), then write Lmem."""
    current = ScoreStore.open(store.path, mode="r")
    if current.store_id != store.store_id:
        raise StoreError(f"{store.path} was replaced by another run while this one wrote it; nothing reported "
                         "from this run is in it: rerun the command")
    if not current.done_shards().all():
        raise StoreError(f"{store.path}: {int((~current.done_shards()).sum())} shard(s) are not done after the run; "
                         "rerun the same command to finish it")
    problems = [p for p in current.verify() if p.array != "lmem"]  # the alpha pass below rewrites lmem
    if problems:
        raise StoreError(f"{store.path} is damaged after the run ({problems[0]}); rerun the same command to "
                         "score the damaged shards again")
    if not (current.column("status") == "ok").any():
        raise StoreError(f"nothing could be scored: every image failed (reasons in {store.path}/reason, "
                         f"`memscore failures {store.path}`)")
    alpha_pass(store, config.alpha, config.reference_ids)
