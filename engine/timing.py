"""Where the seconds go: named stage timers, accumulated per process and reported with a run.

Stages: `decode` (time the scorer waited for the reader), `victim`, `backbone`, `kernel`
(difficulty fit), `write` (store). On CUDA a stage synchronises before it stops its clock, so
asynchronous kernels are charged to the stage that launched them.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


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
