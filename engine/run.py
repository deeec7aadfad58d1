"""Scoring runs: a dataset cut into store-aligned shards, scored, written, then the alpha pass.

`run_scoring` checks everything it can before the store is touched, takes the store's lock before
creating, replacing or resuming it, then drives one loop over the shards (in this process or on Dask,
through `memscore.schedule.execute`) and writes Lmem once every shard is done and verified. Completed
shards are skipped on a rerun, damaged ones are scored again, and a changed configuration is refused.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .backbones import feature_width, resolve_weights, weights_sha256
from .config import ScoreConfig, per_shadow_column
from .data import ids_digest, read_id_list
from .devices import resolve_device, use_threads
from .lmem import alpha_pass, check_alpha_options
from .outputs import remove_folder, require_replaceable
from .precision import resolve_precision
from .schedule import ClusterPlan, execute
from .settings import WHOLE_NON_NEGATIVE, WHOLE_POSITIVE, check_settings, setting
from .scores import OUT_OF_RANGE_TOLERANCE, Row
from .store import ScoreStore, StoreError, disk_full_guard, store_lock
from .timing import StageTimes, utc_now
from .victims import trained_size
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


def resolve_config(config: ScoreConfig, device: str = "auto") -> ScoreConfig:
    """The configuration a run records: precision `auto` resolved for `device`, and the victim's input size read
    from its checkpoint when none is given (`memscore.victims.trained_size`). Resolved once, before anything is
    written: workers and resumes use what the store says, so one store never mixes fp32 and bf16 scores (and bf16
    where it would be emulated is refused before anything is touched)."""
    return dataclasses.replace(config, precision=resolve_precision(config.precision, resolve_device(device)),
                               victim_size=config.victim_size or trained_size(config.victim))


def run_inputs(dataset_spec: DatasetSpec, config: ScoreConfig) -> tuple[str, ...]:
    """Every path a run reads: a store never replaces a folder that holds one of them."""
    victim_kind, _, victim_target = config.victim.partition(":")
    victim_path = victim_target if victim_kind != "python" else None
    given = (dataset_spec.data, dataset_spec.inputs, dataset_spec.targets, dataset_spec.members_file,
             config.reference_ids, victim_path, config.victim_weights, config.backbone_weights, config.shadows)
    return tuple(path for path in given if path)


def extra_columns(config: ScoreConfig) -> dict[str, int]:
    """The columns a run writes beyond the schema's (width 0: one value per image): calibration features always,
    the statistic when it is not lrec, each sample's Lrec when there are several, and with shadows each shadow's
    statistic and membership."""
    widths = {"features": feature_width(config.backbone)}
    if config.statistic != "lrec":
        widths[config.statistic] = 0
    if config.samples > 1:
        widths["lrec_samples"] = config.samples
    if config.shadows:
        from .shadows import read_shadow_set
        widths[per_shadow_column(config.statistic)] = widths["in_shadow"] = len(read_shadow_set(config.shadows).shadows)
    return widths


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, not what it computes (the `memscore score` options are generated from these
    declarations): scores agree across these choices to float32 rounding (tests/test_run.py)."""

    batch_size: int = setting(32, "images per batch", rule=WHOLE_POSITIVE)
    shard_size: int | None = setting(None, "images per shard (= store chunk); default 1024, or about 16 shards per "
                                           "local Dask worker; a resumed store keeps its own", rule=WHOLE_POSITIVE,
                                     optional=True)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    threads: int = setting(0, "CPU threads for this process (0: torch's choice; local Dask workers share the cores)",
                           rule=WHOLE_NON_NEGATIVE)
    workers: int = setting(0, "score on a local Dask cluster of N worker processes (one per GPU where there are "
                              "GPUs; 0: in this process)", rule=WHOLE_NON_NEGATIVE)
    scheduler: str | None = setting(None, "score on an existing Dask cluster, e.g. tcp://HOST:8786 (the store path "
                                          "must be reachable from every worker)", optional=True)

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def cluster(self) -> ClusterPlan:
        return ClusterPlan(self.workers, self.scheduler)


def process_layout(device: str, cluster: ClusterPlan, precision: str) -> dict:
    """How this run splits the work: results agree across layouts to float32 rounding, not bit for bit."""
    return {"started": utc_now(), "device": device,
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


def run_scoring(dataset_spec: DatasetSpec, config: ScoreConfig, out: str | Path, options: RunOptions = RunOptions(),
                *, overwrite: bool = False, progress: bool = True) -> RunSummary:
    """Score a dataset into `out`, resuming a matching store; in this process, or on Dask when `options` asks.

    Every option is checked before the store is touched; a fresh store that ends with no shard done is removed
    again. `overwrite` replaces only a store memscore made, holding none of the run's inputs."""
    with disk_full_guard(out, "the store"):
        return _run_scoring(dataset_spec, config, Path(out), options, overwrite, progress)


def _run_scoring(dataset_spec: DatasetSpec, config: ScoreConfig, out: Path, options: RunOptions, overwrite: bool,
                 progress: bool) -> RunSummary:
    started = time.perf_counter()
    if options.threads:
        use_threads(options.threads)
    cluster, device = options.cluster, options.device
    check_alpha_options(config.alpha, config.reference_ids)
    config = resolve_config(config, device)
    inputs = run_inputs(dataset_spec, config)
    if overwrite:  # refused before anything is read or loaded: memscore replaces only a store it made
        require_replaceable(out, "store", inputs)
    dataset = dataset_spec.open()
    members_file = dataset_spec.members_file  # what identifies the member labels (None: no --members file)
    members_sha256 = ids_digest(read_id_list(members_file).ids) if members_file else None
    if out.exists() and not overwrite:  # a changed configuration is refused before weights are looked for
        check_resumable(ScoreStore.open(out), config, len(dataset), members_sha256, ignore=("weights_sha256",))
    config = ScoreConfig.from_dict({**config.to_dict(), "weights_sha256": weights_sha256(
        resolve_weights(config.backbone, config.backbone_weights))})
    job = ShardJob(dataset_spec, config, str(out.resolve()), options.batch_size, device, cluster.threads_per_worker())
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
            shard_size = options.shard_size or default_shard_size(len(dataset), cluster)
            store = ScoreStore.create(out, len(dataset), shard_size, config, overwrite=overwrite,
                                      members_sha256=members_sha256, extra_columns=extra_columns(config),
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
    current.require_scored()
    if not (current.column("status") == "ok").any():
        raise StoreError(f"nothing could be scored: every image failed (reasons in {store.path}/reason, "
                         f"`memscore failures {store.path}`)")
    alpha_pass(store, config.alpha, config.reference_ids)
