"""lcal on a store: the per-image calibrated score written as a column (the `per-image` method of
`memscore.rescore`), checked against the store before a reader trusts it, and its per-image thresholds.

The models and the cross-fitting are `memscore.calibration` (pure, no I/O); this module reads their inputs from
a store, writes `lcal` with the record of how it was made, and refuses it once anything it came from changed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .calibration import DEFAULT_LEVEL, MODELLED, calibrate_per_image, check_model_options
from .data import IdList, ids_digest, match_ids, read_id_list
from .errors import UsageError
from .score_names import LCAL_COLUMN, SCORE_MARK
from .store import ScoreStore, StoreError, column_digest
from .timing import utc_now

def input_columns(store: ScoreStore) -> tuple[str, str, str]:
    """The store columns `lcal` is computed from (their fingerprints are recorded with it): the store's statistic,
    ldiff and the features."""
    return store.statistic, "ldiff", "features"


def _require_features(store: ScoreStore) -> None:
    if "features" not in store.record.extra_columns:
        raise StoreError(f"{store.path} has no per-image features column (it was scored by a memscore that did "
                         "not keep them): per-image calibration needs them; score it again with "
                         "`memscore score ... --overwrite`")


def write_lcal(store_path: str | os.PathLike, reference_ids_file: str | os.PathLike, *, model: str, folds: int,
               seed: int, level: float, modelled: str, strict: bool = False) -> dict[str, Any]:
    """Write column `lcal` of a finished store (cross-fitted, `calibrate_per_image`) and return its record.
    `modelled` (`MODELLED`): `lmem` models a non-member's statistic - alpha * Ldiff at the store's alpha, `raw`
    the statistic (the store's lrec or ldenoise) itself.
    Reference ids the store lacks are ignored and counted, or refused when `strict`. The options' defaults are
    declared once, by the `per-image` method of `memscore.rescore`.

    The record, kept in the column's attributes as `calibration`, holds the method, model, folds, seed, the
    reference ids file, the digest of its ids and how it matched the store (`reference_ids`), and the
    fingerprints of the lrec, ldiff and features it was computed from (`require_current_lcal` refuses the column
    once any of them changed). Reference ids must be known non-members: one the store labels a member is
    refused. Options are checked before the store is opened.
    """
    check_model_options(model, folds, level)
    if modelled not in MODELLED:
        raise UsageError(f"modelled must be one of {MODELLED}, got {modelled!r}")
    if not os.path.isfile(reference_ids_file):
        raise UsageError(f"--reference {reference_ids_file}: no such file (one known non-member id per line)")
    reference_ids = read_id_list(reference_ids_file)
    store = ScoreStore.open(store_path, mode="r+")
    with store.lock():
        store.require_readable()
        _require_features(store)
        ids, status = store.column("id"), store.column("status")
        reference = match_ids(reference_ids, ids, "reference", strict=strict)
        given = reference.rows
        labelled_members = ids[given & (store.column("member") == 1)]
        if labelled_members.size:
            raise UsageError(f"{reference_ids_file}: {labelled_members.size} reference ids are labelled members in "
                             f"{store_path} (e.g. {labelled_members[0]!r}); the reference must be known non-members")
        if not given.any():
            raise UsageError(f"none of the {reference.n_ids} ids in {reference_ids_file} is in {store_path}")
        uses = input_columns(store) + (("lmem",) if modelled == "lmem" else ())
        inputs = {name: store.fingerprint(name) for name in uses}
        alpha = store.alpha.value if modelled == "lmem" else 0.0
        result = calibrate_per_image(*(store.column(name) for name in input_columns(store)),
                                     given & (status == "ok"), model=model, folds=folds, seed=seed, level=level,
                                     alpha=alpha)
        lcal = result.lcal.astype(np.float32)
        record = {**result.record, "statistic": store.statistic,
                  "reference_ids_file": str(Path(reference_ids_file).resolve()),
                  "reference_sha256": ids_digest(reference_ids.ids), "n_reference_ids": reference.n_ids,
                  "reference_ids_not_in_store": reference.n_not_in_store, "reference_ids": reference.to_dict(),
                  "inputs_fingerprint": inputs, "lcal_sha256": column_digest(lcal, full=True), "created": utc_now()}
        store.write_column(LCAL_COLUMN, lcal, float("nan"), {"calibration": record, SCORE_MARK: True})
    return record


def require_current_lcal(store: ScoreStore) -> dict[str, Any]:
    """The record of the store's `lcal`, once checked against the store as it is now: refused (StoreError) when
    there is none, when lcal's values differ from those recorded, or when lrec, ldiff or features changed since
    it was computed (a rescored shard, another store)."""
    try:
        record = store.column_attrs(LCAL_COLUMN).get("calibration")
    except StoreError:
        record = None
    if not record:
        raise StoreError(f"{store.path} has no per-image calibrated score yet: run "
                         f"`memscore rescore {store.path} --method per-image --reference NONMEMBER_IDS`")
    if column_digest(store.column(LCAL_COLUMN), full=True) != record["lcal_sha256"]:
        raise StoreError(f"{store.path}: lcal differs from its calibration record (damaged); run "
                         "`memscore rescore --method per-image` again")
    changed = [name for name, fingerprint in record["inputs_fingerprint"].items()
               if store.fingerprint(name) != fingerprint]
    if changed:
        raise StoreError(f"{store.path}: {', '.join(changed)} changed after lcal was computed "
                         f"({record['created']}); run `memscore rescore --method per-image` again")
    return record


def lcal_reference(record: dict[str, Any], remedy: str) -> IdList:
    """The reference ids lcal was computed from (`require_current_lcal`'s record), read again from their file;
    refused, ending with `remedy` (what to do instead), when the file is gone or holds other ids now."""
    recorded = record["reference_ids_file"]
    reference_ids = read_id_list(recorded) if os.path.isfile(recorded) else None
    if reference_ids is None or ids_digest(reference_ids.ids) != record["reference_sha256"]:
        raise UsageError(f"{recorded}, lcal's reference, is gone or changed since lcal was computed from it; {remedy}")
    return reference_ids


@dataclass(frozen=True)
class PerImageThresholds:
    """Per-image Lrec thresholds at a target FPR for a store's `lcal`: call image i a member iff
    ``lrec[i] <= lrec_threshold[i]`` (NaN where it was not scored)."""

    ids: np.ndarray
    lrec_threshold: np.ndarray
    fpr: float
    rule: str
    calibration: dict[str, Any]
    """The record of the lcal the thresholds belong to."""


def per_image_thresholds(store: str | os.PathLike | ScoreStore, fpr: float, *,
                         rule: str = "model") -> PerImageThresholds:
    """`PerImageScores.thresholds_at(fpr, rule)` for a store's current `lcal`: the calibration is fitted again
    from its record (same reference ids, model, folds, seed, level; deterministic) and refused unless it
    reproduces the stored lcal exactly. With the quantile model and rule `model`, `fpr` must be the level it
    was fitted at (`memscore.rescore(store, "per-image", model="quantile", level=fpr, ...)`)."""
    store = store if isinstance(store, ScoreStore) else ScoreStore.open(store, mode="r")
    store.require_readable()
    record = require_current_lcal(store)
    reference_ids = lcal_reference(record, "run `memscore rescore --method per-image` again with the reference "
                                           "you hold")
    ids = store.column("id")
    reference = match_ids(reference_ids, ids, "reference").rows & (store.column("status") == "ok")
    result = calibrate_per_image(*(store.column(name) for name in input_columns(store)), reference,
                                 model=record["model"], folds=record["folds"], seed=record["seed"],
                                 level=record.get("level", DEFAULT_LEVEL), alpha=record.get("alpha", 0.0))
    if column_digest(result.lcal.astype(np.float32), full=True) != record["lcal_sha256"]:
        raise StoreError(f"{store.path}: fitting the calibration again did not reproduce the stored lcal (another "
                         "memscore or scikit-learn version?); run `memscore rescore --method per-image` again")
    return PerImageThresholds(ids=ids, lrec_threshold=result.thresholds_at(fpr, rule), fpr=float(fpr), rule=rule,
                              calibration=record)
