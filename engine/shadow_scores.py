"""LiRA and RMIA on a store: the shadow-calibrated scores (the `lira` and `rmia` methods of `memscore.rescore`)
written as columns from what `memscore score --shadows` stored beside the victim's statistic (each shadow's value
of it, and whether the image was in that shadow's training half).

The scores themselves are `memscore.likelihood_ratio` (pure, no I/O); the shadows are trained by
`memscore.shadows`. Options' defaults are declared once, by the methods of `memscore.rescore`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .config import per_shadow_column
from .data import IdMatch, match_ids, read_id_list
from .errors import UsageError
from .likelihood_ratio import ShadowScores, Transform, lira, rmia
from .score_names import SCORE_MARK, shadow_column
from .store import ScoreStore, StoreError

Scorer = Callable[[ScoreStore, np.ndarray, np.ndarray, np.ndarray], tuple[ShadowScores, IdMatch | None]]
"""(store, statistic [n], each shadow's statistic [n, K], in_shadow [n, K]) -> the scores, and how a reference
file matched."""


def shadow_inputs(store: ScoreStore) -> tuple[str, str, str]:
    """The store columns a shadow score is computed from (their fingerprints are recorded with it): the statistic,
    each shadow's value of it, and the shadows' memberships."""
    return store.statistic, per_shadow_column(store.statistic), "in_shadow"


def write_lira(store_path: str | os.PathLike, *, online: bool, fixed_variance: bool, transform: Transform,
               prior_dof: float) -> dict[str, Any]:
    """Write the LiRA column (`shadow_column`: lira, lira_offline, lira_fixed, lira_offline_fixed; lower = member)
    of a finished store and return the record kept in its attributes. The options are those of
    `memscore.likelihood_ratio.lira`."""
    def score(store: ScoreStore, target: np.ndarray, shadow: np.ndarray, in_shadow: np.ndarray
              ) -> tuple[ShadowScores, IdMatch | None]:
        if transform == "logit" and store.statistic != "lrec":
            raise UsageError(f"--transform logit maps values in [0, 1]; {store_path} is built on {store.statistic}, "
                             "which is not bounded by 1: use log or none")
        return lira(target, shadow, in_shadow, online=online, fixed_variance=fixed_variance, transform=transform,
                    prior_dof=prior_dof), None

    return _write(store_path, shadow_column("lira", online, fixed_variance), score)


def write_rmia(store_path: str | os.PathLike, *, online: bool, temperature: float | None, offline_a: float | None,
               gamma: float, reference: str | os.PathLike | None, strict: bool = False) -> dict[str, Any]:
    """Write the RMIA column (rmia, rmia_offline; lower = member) of a finished store and return the record kept
    in its attributes. The options are those of `memscore.likelihood_ratio.rmia`; `reference`: a file of the ids
    used as population samples z (None: every scored image); ids the store lacks are ignored and counted in the
    record's `reference_ids`, or refused when `strict`."""
    def score(store: ScoreStore, lrec: np.ndarray, shadow: np.ndarray, in_shadow: np.ndarray
              ) -> tuple[ShadowScores, IdMatch | None]:
        samples = None if reference is None else match_ids(read_id_list(reference), store.column("id"), "reference",
                                                           strict=strict)
        return rmia(lrec, shadow, in_shadow, online=online, temperature=temperature, offline_a=offline_a, gamma=gamma,
                    reference=None if samples is None else samples.rows), samples

    return _write(store_path, shadow_column("rmia", online), score, reference)


def _write(store_path: str | os.PathLike, column: str, score: Scorer, reference: str | os.PathLike | None = None
           ) -> dict[str, Any]:
    """Under the store's lock: read the shadow columns of a finished, intact store, score, and write `column`
    with its record (what the method found, K, the `reference` ids file and how it matched, the inputs'
    fingerprints)."""
    store = ScoreStore.open(store_path, mode="r+")
    with store.lock():
        store.require_readable()  # refuses an unfinished or damaged store, saying how to mend it
        inputs = shadow_inputs(store)
        target, shadow, in_shadow = (store.column(c) for c in inputs)
        if shadow.ndim != 2 or shadow.shape != in_shadow.shape or shadow.shape[0] != target.shape[0]:
            raise StoreError(f"{store_path}: {inputs[1]} {shadow.shape} and in_shadow {in_shadow.shape} must both "
                             f"be [{target.shape[0]}, K]; rescore the store with `memscore score --shadows DIR`")
        found, samples = score(store, target, shadow, in_shadow)
        record = {**found.record(), "column": column, "k": int(shadow.shape[1]),
                  "reference_file": None if reference is None else str(reference),
                  "reference_ids": None if samples is None else samples.to_dict(),
                  "uses": {c: store.fingerprint(c) for c in inputs}}
        store.write_column(column, found.scores, np.nan, {**record, SCORE_MARK: True})
    return record
