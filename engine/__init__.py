"""memscore: membership-inference scores (Lrec, Ldiff, Lmem) for conditional image generators.

The handful of names a notebook needs; the `memscore` command (engine.cli) wraps the same calls.
No name here may equal a submodule's (importing `engine.evaluate` would replace it).
"""
from __future__ import annotations

from .config import ScoreConfig
from .run import DatasetSpec, RunSummary
from .run import run_scoring as score
from .store import ScoreStore
from .attack import evaluate_store


def open_store(path: str) -> ScoreStore:
    """A finished or partial score store, read-only."""
    return ScoreStore.open(path, mode="r")


def attack_metrics(store: str | ScoreStore, members_file: str | None = None, **options) -> dict:
    """Attack metrics of a store (see `engine.store_metrics.evaluate_store` for the options)."""
    return evaluate_store(store if isinstance(store, ScoreStore) else open_store(store), members_file, **options)


__all__ = ["DatasetSpec", "RunSummary", "ScoreConfig", "ScoreStore", "attack_metrics", "open_store", "score"]
