"""The readers' data contract: how to prepare a pair (`View`), what a pair becomes (`Prepared` or
`Failure`), and a `Batch` of them. Both readers (`memscore.pillow_reader`, `memscore.dali_reader`) build
batches with `Batch.from_results`; the scorer and the victims read them.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .data import Pair


@dataclass(frozen=True)
class View:
    """How to prepare a pair: victim input size, CNN normalisation, difficulty grid and source."""

    victim_size: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    grid: int
    preset: str
    difficulty_source: str
    input_kind: str = "rgb"
    """`labels`: x is the input's class-id map ([1, H, W], nearest-neighbour resized) for label-map victims."""


@dataclass
class Prepared:
    """One decoded pair. `y` stays at full resolution for Lrec."""

    pair: Pair
    x: torch.Tensor
    y: torch.Tensor
    cnn_view: torch.Tensor
    grid_target: torch.Tensor


@dataclass
class Failure:
    """A pair that cannot be scored; `reason` names the file and the problem, and goes to the store."""

    pair: Pair
    reason: str


@dataclass
class Batch:
    """The prepared pairs of one batch and the ones that failed, each in the pairs' order."""

    items: list[Prepared] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @classmethod
    def from_results(cls, results: Iterable[Prepared | Failure]) -> Batch:
        """A batch from per-pair results, sorted into items and failures, order kept."""
        batch = cls()
        for result in results:
            (batch.items if isinstance(result, Prepared) else batch.failures).append(result)
        return batch

    @property
    def ids(self) -> list[str]:
        return [item.pair.id for item in self.items]
