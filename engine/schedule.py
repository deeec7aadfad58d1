"""Shards -> results, in this process or on a Dask cluster; the same function scores a shard in both.

Without `--workers`/`--scheduler` shards run in order here with no Dask overhead. With them, each
shard is one Dask task; a worker loads the backbone and victim once (a per-process cache) and
reuses them for every shard it is given, and writes only its shard's own chunks of the store.
A task whose worker dies is retried elsewhere; a shard that keeps failing is reported, not fatal.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .config import ScoreConfig

@dataclass(frozen=True)
class ShardOutcome:
    index: int
    n_images: int
    scored: int = 0
    failed: int = 0
    error: str = ""
    """Set when the whole shard could not be scored (after retries)."""
    stage_seconds: tuple[tuple[str, float], ...] = ()
    """Seconds per pipeline stage spent on this shard."""


_PROCESS_CACHE: dict[tuple, object] = {}


def cached(key: tuple, build: Callable[[], object]) -> object:
    """One object per key per process (the loaded scorer, the opened dataset); older keys are dropped."""
    if key not in _PROCESS_CACHE:
        for old in [k for k in _PROCESS_CACHE if k[0] == key[0]]:
            del _PROCESS_CACHE[old]
        _PROCESS_CACHE[key] = build()
    return _PROCESS_CACHE[key]


def use_threads(threads: int) -> None:
    """This process's CPU threads, for torch (MKL, oneDNN) and the numba kernels alike; numba would
    otherwise take every core in each Dask worker and spin against the other workers."""
    import numba
    torch.set_num_threads(threads)
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))


def worker_device(requested: str) -> torch.device:
    """The device for this process: `auto` spreads Dask workers over visible GPUs by worker name."""
    if requested != "auto":
        return torch.device(requested)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    index = 0
    try:
        from distributed import get_worker
        name = get_worker().name
        index = int(name) if str(name).isdigit() else 0
    except (ImportError, ValueError):
        pass
    return torch.device(f"cuda:{index % torch.cuda.device_count()}")


def score_shard_task(shard, dataset_spec, config: ScoreConfig, store_path: str, batch_size: int, device: str,
                     threads: int) -> ShardOutcome:
    """Score one shard in whatever process runs this; pure function of its arguments and the files."""
    from .run import score_shard
    from .scores import Scorer
    from .store import ScoreStore

    if threads > 0:
        use_threads(threads)
    torch_device = worker_device(device)
    scorer = cached(("scorer", config, str(torch_device)), lambda: Scorer(config, device=torch_device))
    dataset = cached(("dataset", dataset_spec), dataset_spec.open)
    return score_shard(shard, dataset, scorer, ScoreStore.open(store_path), batch_size)


@dataclass(frozen=True)
class ClusterPlan:
    workers: int = 0
    scheduler: str | None = None

    @property
    def distributed(self) -> bool:
        return self.workers > 0 or self.scheduler is not None


def open_client(plan: ClusterPlan):
    """A Dask client: an existing scheduler, or a local cluster of processes (one per GPU when there are GPUs)."""
    from distributed import Client, LocalCluster
    if plan.scheduler:
        return Client(plan.scheduler)
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus:
        try:
            from dask_cuda import LocalCUDACluster
            return Client(LocalCUDACluster(n_workers=min(plan.workers, n_gpus)))
        except ImportError:
            pass
    cluster = LocalCluster(n_workers=plan.workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    return Client(cluster)


def threads_per_worker(plan: ClusterPlan) -> int:
    """CPU threads each torch worker may use: the cores shared evenly (0 = leave as is)."""
    if plan.scheduler or not plan.workers:
        return 0
    return max(1, (os.cpu_count() or 1) // plan.workers)


def run_dask(shards, plan: ClusterPlan, task_args: tuple, retries: int = 2) -> Iterator[ShardOutcome]:
    """Submit one task per shard; yield outcomes as they finish (failed shards carry their error)."""
    from distributed import as_completed
    client = open_client(plan)
    try:
        print(f"dask: {len(client.scheduler_info(n_workers=-1)['workers'])} workers, dashboard {client.dashboard_link}",
              file=sys.stderr)
        futures = {client.submit(score_shard_task, shard, *task_args, key=f"memscore-shard-{shard.index}-{os.getpid()}",
                                 retries=retries, pure=False): shard for shard in shards}
        for future in as_completed(futures):
            shard = futures[future]
            try:
                yield future.result()
            except Exception as error:  # the shard failed on every try: report it, keep the run going
                yield ShardOutcome(shard.index, shard.stop - shard.start, error=f"{type(error).__name__}: {error}")
    finally:
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()
