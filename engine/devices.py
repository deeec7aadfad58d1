"""Which device and how many CPU threads this process uses: one place for both, for every caller.

`resolve_device` turns a user's device name into a `torch.device` (`auto`: a GPU when torch sees one);
on a Dask worker `auto` spreads workers over the visible GPUs by worker name. `use_threads` sets the
process's CPU threads for torch and the numba kernels together.
"""
from __future__ import annotations

import torch

from .errors import UsageError


def resolve_device(requested: str | torch.device | None = "auto") -> torch.device:
    """`auto` -> this worker's GPU when torch sees one, else the CPU; `cpu`, `gpu`, `cuda`, `cuda:N` as asked."""
    name = "auto" if requested is None else str(requested)
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", _dask_worker_index() % torch.cuda.device_count())
    resolved = torch.device("cuda" if name == "gpu" else name) if name in ("cpu", "gpu") or name.startswith("cuda") \
        else None
    if resolved is None:
        raise UsageError(f"device must be auto, cpu, gpu, cuda or cuda:N, got {requested!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {requested!r} asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
    return resolved


def _dask_worker_index() -> int:
    """This process's Dask worker number (0 outside Dask, or for workers not named by a number)."""
    try:
        from distributed import get_worker
        name = get_worker().name
    except (ImportError, ValueError):
        return 0
    return int(name) if str(name).isdigit() else 0


def use_threads(threads: int) -> None:
    """This process's CPU threads, for torch (MKL, oneDNN) and the numba kernels alike; numba would
    otherwise take every core in each Dask worker and spin against the other workers. numba first: starting
    its threading layer resets torch's threads (`start_numba_threads`), so torch's are set after it."""
    import numba
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    torch.set_num_threads(threads)


def start_numba_threads() -> None:
    """Start numba's threading layer now (once per process), leaving torch's CPU threads as they were.

    numba's OpenMP layer, when it starts (lazily, at the first parallel kernel or thread call), calls
    omp_set_num_threads(NUMBA_NUM_THREADS), and that symbol binds to torch's libgomp (torch loads it
    globally): the calling thread's torch threads become NUMBA_NUM_THREADS. Started by the first difficulty
    kernel, that switched torch's threads after a process's first batch wherever the two counts differ
    (OMP_NUM_THREADS, a CPU affinity, torch threads set before it started), and oneDNN and torch's
    reductions round differently with another thread count: a resumed run's first shard differed from an
    uninterrupted run's in the last bits. Call it before the first forward (`Scorer` does) in the thread
    that scores."""
    import numba
    threads = torch.get_num_threads()
    numba.get_num_threads()  # starts the layer; a no-op once started
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def reader_threads() -> int:
    """Decode threads: this process's share of the cores (the same number torch computes with)."""
    return torch.get_num_threads()
