"""memscore: membership-inference scores (Lrec, Ldiff, Lmem) for conditional image generators.

The handful of names a notebook needs; the `memscore` command (memscore.cli) calls the same functions:
`score` (memscore score), `rescore` (memscore rescore: every method of `memscore.rescoring.METHODS`),
`evaluate`, `calibrate`, `predict`, `open_store`. No name here may equal a submodule's (it would hide the
module): `rescore` lives in `memscore.rescoring`.
"""
from __future__ import annotations

import os

from .attack import Calibration, Prediction, calibrate, evaluate, predict
from .config import ScoreConfig
from .errors import MemscoreError
from .rescoring import Rescored, rescore
from .run import RunOptions, RunSummary
from .run import run_scoring as score
from .store import AlphaRecord, ScoreStore
from .work import DatasetSpec


def open_store(path: str | os.PathLike) -> ScoreStore:
    """A finished or partial score store, read-only."""
    return ScoreStore.open(path, mode="r")


__all__ = ["AlphaRecord", "Calibration", "DatasetSpec", "MemscoreError", "Prediction", "Rescored", "RunOptions",
           "RunSummary", "ScoreConfig", "ScoreStore", "calibrate", "evaluate", "open_store", "predict", "rescore", "score"]
