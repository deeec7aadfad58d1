"""Where the seconds go: named stage timers, accumulated per process and reported with a run.

Stages: `decode` (time the scorer waited for the reader), `victim`, `backbone`, `kernel`
(difficulty fit), `write` (store). On CUDA a stage synchronises before it stops its clock, so
asynchronous kernels are charged to the stage that launched them. `utc_now` is the one clock for the
timestamps records carry (a store's creation, an alpha pass, a lock's owner, a run's layout).
"""
from __future__ import annotations

import datetime
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


def utc_now() -> str:
    """The current time as UTC ISO 8601 to the second: every record stamps time this one way, so stamps from
    different modules (and machines in different time zones) compare and sort as text."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class StageTimes:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            self.seconds[name] += time.perf_counter() - started

    def add(self, other: dict[str, float]) -> None:
        for name, value in other.items():
            self.seconds[name] += value

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)

    def line(self) -> str:
        total = sum(self.seconds.values()) or 1.0
        return ", ".join(f"{name} {value:.1f} s ({100 * value / total:.0f}%)" for name, value in
                         sorted(self.seconds.items(), key=lambda item: -item[1]))
