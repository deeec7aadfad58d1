"""Tasks -> results, in this process or on a Dask cluster; the caller supplies the task function.

`execute(task, items, plan)` runs `task(item)` for every item and yields the results as they finish:
here, in order and with no Dask overhead, when the plan asks for no cluster; otherwise as one Dask task
per item on a local cluster of processes (one per GPU where there are GPUs) or on an existing scheduler.
A task whose worker dies is retried elsewhere; one that keeps failing becomes `failed(item, error)`, so
one bad item never ends the run. This module knows nothing of scoring.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from .errors import UsageError

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class ClusterPlan:
    """Where tasks run: `workers` local Dask processes, or an existing `scheduler`; neither = this process."""

    workers: int = 0
    scheduler: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise UsageError(f"workers must be 0 (this process) or a positive count, got {self.workers}")

    @property
    def distributed(self) -> bool:
        return self.workers > 0 or self.scheduler is not None

    def threads_per_worker(self) -> int:
        """CPU threads each local worker may use: the cores shared evenly (0 = leave as is)."""
        if self.scheduler or not self.workers:
            return 0
        return max(1, (os.cpu_count() or 1) // self.workers)


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


def execute(task: Callable[[Item], Result], items: Sequence[Item], plan: ClusterPlan, *,
            failed: Callable[[Item, BaseException], Result], retries: int = 2, name: str = "task") -> Iterator[Result]:
    """`task(item)` for every item, yielded as each finishes; on a cluster, an item that fails on every try
    yields `failed(item, error)` instead. In this process an error propagates (nothing to retry on)."""
    if not plan.distributed:
        for item in items:
            yield task(item)
        return
    from distributed import as_completed
    client = open_client(plan)
    try:
        print(f"dask: {len(client.scheduler_info(n_workers=-1)['workers'])} workers, dashboard {client.dashboard_link}",
              file=sys.stderr)
        futures = {client.submit(task, item, key=f"memscore-{name}-{index}-{os.getpid()}", retries=retries,
                                 pure=False): item for index, item in enumerate(items)}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as error:  # failed on every try: report it, keep the run going
                yield failed(futures[future], error)
    finally:
        cluster = client.cluster
        client.close()
        if cluster is not None:
            cluster.close()
