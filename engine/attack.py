"""The attack on a scored store, as the `memscore evaluate / calibrate / predict` commands and the notebook
API run it: `evaluate` (metrics against membership labels), `calibrate` (a threshold from known non-members,
bound to the exact score it was set on) and `predict` (a member decision per image, written into the store).

Every function here reads a store that `verify` finds intact, and refuses an unfinished one unless asked
with `partial=True`; then the result says how many rows were still pending. The metrics themselves are
`memscore.metrics`, pure functions of (scores, labels).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .alpha import AlphaSpec, membership_error, parse_alpha, resolve_alpha
from .blind import BLIND_BOOT, blind_baseline, blind_unavailable
from .data import IdMatch, match_ids, read_id_list
from .errors import UsageError
from .metrics import (DIRECTION, HOLDOUT_RULE, calibrate_threshold, evaluate_scores, held_out_rates, holdout_split,
                      jsonable, predict_members)
from .lmem import reference_rows
from .outputs import write_json
from .score_names import require_score, score_names
from .seeding import image_seed
from .store import ScoreStore, StatusCounts, StoreError

DECISION_COLUMN = "predicted_member"
DECISION_RULE = "member if score <= tau"

StorePath = str | os.PathLike


def readable_store(store: StorePath | ScoreStore, partial: bool = False) -> tuple[ScoreStore, StatusCounts]:
    """The store (opened read-only when given by path) and its status counts; a damaged store is refused,
    and an unfinished one unless `partial`."""
    store = store if isinstance(store, ScoreStore) else ScoreStore.open(store, mode="r")
    return store, store.require_readable(partial=partial)


def completeness(counts: StatusCounts) -> dict[str, Any]:
    """What every reader states about the rows it read: `partial` is True when some were still pending."""
    return {"partial": counts.pending > 0, "pending": counts.pending, "failed": counts.failed,
            "n_images": counts.n_images}


def match_members(store: ScoreStore, members_file: StorePath | None, *, strict: bool = False) -> IdMatch | None:
    """How a file of member ids matches the store's rows (`memscore.data.match_ids`; None without a file): what
    `membership` labels from, and what a command prints and records about the file."""
    if not members_file:
        return None
    return match_ids(read_id_list(members_file), store.column("id"), "members", strict=strict)


def membership(store: ScoreStore, members: IdMatch | None = None) -> np.ndarray:
    """1 (member), 0 (non-member) or -1 (unknown) per row: from the match of a file of member ids
    (`match_members`), else the store's column. Pending rows (not written yet: no id) are unknown either way."""
    if members is not None:
        return np.where(store.column("id") == "", -1, members.rows).astype(np.int8)
    return store.column("member").astype(np.int8)


def calibration_split(ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the rows that choose alpha under `alpha="auto"`; decided by (seed, id) alone, so reproducible."""
    return np.array([image_seed(seed, f"{i}#alpha-calibration") % 10_000 < fraction * 10_000 for i in ids])


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise UsageError(f"{name} must be in (0, 1), got {value}")


def _reference_rows(store: ScoreStore, spec: AlphaSpec, *, strict: bool = False
                    ) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """`memscore.lmem.reference_rows` of the known non-members the store was scored with (`--reference`)."""
    if spec.needs_reference and not store.config.reference_ids:
        raise UsageError(f"alpha fit:reference needs known non-members, and {store.path} was scored without "
                         "--reference FILE; use fit, fit:robust or a number")
    return reference_rows(store, spec, store.config.reference_ids, strict=strict)


def lmem_with_alpha(store: ScoreStore) -> tuple[np.ndarray, dict[str, Any]]:
    """The store's lmem and the record of its alpha. An unfinished store has no lmem yet (it is written after the
    last shard): then lmem at the store's alpha spec, fitted on the rows scored so far, and a record saying so."""
    if store.alpha is not None:
        return store.column("lmem").astype(np.float64), store.alpha.to_dict()
    spec = store.config.alpha
    raw, ldiff = store.column(store.statistic).astype(np.float64), store.column("ldiff").astype(np.float64)
    reference_mask, reference_ids = _reference_rows(store, spec)
    fit = resolve_alpha(spec, raw, ldiff, reference_mask=reference_mask)
    return membership_error(raw, ldiff, fit.alpha), {
        "spec": spec.text, "value": fit.alpha, "method": fit.method, "n_rows": fit.n_rows, "r2": fit.r2,
        "reference_ids": reference_ids, "fitted_on": "the rows scored so far (the store has no lmem yet)"}


def _require_lmem(store: ScoreStore) -> None:
    if store.alpha is None:
        raise StoreError(f"{store.path} has no lmem yet (the alpha pass runs once every shard is scored): finish "
                         f"it with `memscore score`, or use column {store.statistic}")


# ---------------------------------------------------------------- evaluate


def store_blind_baseline(store: ScoreStore, rows: np.ndarray, is_member: np.ndarray, attack_scores: dict[str, np.ndarray],
                         n_boot: int) -> dict[str, Any]:
    """`memscore.blind.blind_baseline` on the store's `features` and `ldiff` at `rows` (a mask), with the attack
    scores' AUC within its strata; a record saying why not where the store has no features or too few rows."""
    if "features" not in store.record.extra_columns:
        return blind_unavailable(f"{store.path} has no per-image features column (scored by an older memscore, or "
                                 "without features): the blind baseline is unavailable")
    try:
        return blind_baseline(store.column("features")[rows], store.column("ldiff").astype(np.float64)[rows],
                              is_member, seed=store.config.seed, n_boot=n_boot or BLIND_BOOT,
                              attack_scores={name: values[rows] for name, values in attack_scores.items()})
    except UsageError as refusal:
        return blind_unavailable(f"the blind baseline is unavailable: {refusal}")



def held_out_thresholds(columns: dict[str, np.ndarray], is_member: np.ndarray, fraction: float, seed: int
                        ) -> dict[str, Any]:
    """Per score, thresholds chosen on one part of the rows and measured on the other
    (`memscore.metrics.held_out_rates`), the `fraction` held out drawn by `memscore.metrics.holdout_split`."""
    held_out = holdout_split(is_member, fraction, seed)
    return {"fraction": fraction, "seed": seed, "rule": HOLDOUT_RULE, "n_held_out": int(held_out.sum()),
            "n_choosing": int((~held_out).sum()),
            "scores": {name: jsonable([dataclasses.asdict(point) for point in held_out_rates(values, is_member, held_out)])
                       for name, values in columns.items()}}


def evaluate(store: StorePath | ScoreStore, members_file: StorePath | None = None, *, n_boot: int = 0,
             alpha: str | None = None, calibration_fraction: float = 0.5, partial: bool = False,
             scores: list[str] | None = None, strict: bool = False, holdout: float | None = None) -> dict[str, Any]:
    """Attack metrics of the store's statistic (`lrec` or `ldenoise`), `lmem` and every derived score it holds, or
    of `scores` (lower score = member), JSON-ready: one entry per score under its name, and `scores` listing them in order; and
    `blind_baseline` (`store_blind_baseline`: membership from the images alone, on the same rows).

    Labels: `members_file` (one member id per line), else the store's `member` column; unlabelled rows are
    left out and counted. The result's `members_ids` says how the file matched the store (`IdMatch.to_dict`);
    `strict` refuses a file with ids the store lacks (they are ignored otherwise). `alpha`: evaluate lmem at
    another alpha than the store's (a number, fit, fit:robust); `auto` chooses it with the labels of a
    calibration split (`calibration_fraction` of the labelled rows, by `calibration_split`) and reports every metric on the other rows only. `partial`:
    accept an unfinished store; the result's `partial` and `pending` say how many rows were not scored yet,
    and lmem, not written before the last shard, is taken at the store's alpha spec fitted on the rows
    scored so far (the result's alpha says so). `holdout`: the fraction of the evaluated rows (stratified by label,
    seeded by the store's seed) on which thresholds chosen on the others are measured (`held_out_thresholds`;
    the result's `holdout`, None without it).
    """
    spec = None if alpha is None else parse_alpha(alpha)  # parsed once, refused before the store is opened
    _check_fraction("calibration_fraction", calibration_fraction)
    if holdout is not None:
        _check_fraction("holdout", holdout)
    if n_boot < 0:
        raise UsageError(f"n_boot must be >= 0, got {n_boot}")
    store, counts = readable_store(store, partial)
    members = match_members(store, members_file, strict=strict)
    labels = membership(store, members)
    known = labels >= 0
    if not known.any():
        raise UsageError(f"{store.path}: no membership known (the member column is -1 on every written row); "
                         "pass a file of member ids (--members FILE)")
    unlabelled = int(((labels < 0) & (store.column("status") != "")).sum())  # pending rows are counted apart
    raw = store.column(store.statistic).astype(np.float64)
    if spec is None:
        lmem, alpha_record = lmem_with_alpha(store)
    else:
        ldiff = store.column("ldiff").astype(np.float64)
        calibration = np.zeros_like(known)
        if spec.needs_labels:
            calibration = known & calibration_split(store.column("id"), calibration_fraction, store.config.seed)
        reference_mask, reference_ids = _reference_rows(store, spec, strict=strict)
        fit = resolve_alpha(spec, raw, ldiff, reference_mask=reference_mask,
                            is_member=labels == 1, calibration_mask=calibration)
        lmem = membership_error(raw, ldiff, fit.alpha)
        alpha_record = {"spec": spec.text, "value": fit.alpha, "method": fit.method, "n_rows": fit.n_rows,
                        "reference_ids": reference_ids}
        if spec.needs_labels:
            alpha_record.update(calibration_rows=int(calibration.sum()), evaluated_on="rows not used to choose alpha")
        known = known & ~calibration
    wanted = score_names(store) if scores is None else list(scores)
    for name in wanted:
        require_score(store, name)
    values = {store.statistic: raw, "lmem": lmem}
    result = {"store": str(store.path), **completeness(counts), "alpha": alpha_record, "direction": DIRECTION,
              "members_ids": None if members is None else members.to_dict(), "n_unlabelled_excluded": unlabelled,
              "scores": wanted}
    columns = {name: values[name] if name in values else store.column(name).astype(np.float64) for name in wanted}
    for name, column in columns.items():
        result[name] = evaluate_scores(column[known], labels[known] == 1, n_boot=n_boot).to_dict()
        if name not in values:
            result[name]["made_by"] = store.column_attrs(name)
    result["blind_baseline"] = store_blind_baseline(store, known, labels[known] == 1, columns, n_boot)
    result["holdout"] = None if holdout is None else held_out_thresholds(
        {name: column[known] for name, column in columns.items()}, labels[known] == 1, holdout, store.config.seed)
    return result


# ---------------------------------------------------------------- calibrate


@dataclass(frozen=True)
class Calibration:
    """A threshold on one score of one store, and the fingerprint of the exact score it was set on
    (`ScoreStore.fingerprint`: store id, column, alpha, digest of the values): `predict` refuses it for any
    other score, such as the same store's lmem after `memscore rescore`."""

    column: str
    tau: float
    target_fpr: float
    n_nonmembers: int
    nonmembers_file: str
    fingerprint: dict[str, Any]
    store: str
    pending: int
    ids_not_in_store: int
    rule: str = DECISION_RULE
    nonmember_ids: dict[str, Any] | None = None
    """How the non-members file matched the store (`IdMatch.to_dict`); None in files of older memscores."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the calibration") -> Calibration:
        names = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(names - set(data))
        if missing:
            raise UsageError(f"{source} lacks {', '.join(missing)}: it was not written by this memscore's "
                             "`calibrate` (which binds a threshold to the score it was set on); run it again")
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def save(self, path: StorePath, *, overwrite: bool = False) -> None:
        """Write the calibration as JSON (an existing file only with `overwrite`; `memscore.outputs.write_json`)."""
        write_json(path, self.to_dict(), overwrite=overwrite)

    @classmethod
    def load(cls, path: StorePath) -> Calibration:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise UsageError(f"{path} is not a calibration file (not JSON: {error})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path} is not a calibration file (expected a JSON object)")
        return cls.from_dict(data, source=str(path))


def _fingerprinted_column(store: ScoreStore, column: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A column and the fingerprint of exactly those values (refused if a writer switched it meanwhile)."""
    before = store.fingerprint(column)
    values = store.column(column).astype(np.float64)
    if store.fingerprint(column) != before:
        raise StoreError(f"{store.path}: {column} changed while it was being read (a rescore finished); "
                         "run the command again")
    return values, before


def calibrate(store: StorePath | ScoreStore, nonmembers_file: StorePath, *, fpr: float = 0.01, column: str = "lmem",
              partial: bool = False, strict: bool = False) -> Calibration:
    """The threshold tau a label-free attacker sets from images it knows are NOT members: the largest tau
    calling at most `fpr` of them members (`memscore.metrics.calibrate_threshold`) on `column`. Ids of the file
    that the store lacks are ignored and counted, or refused when `strict`."""
    _check_fraction("fpr", fpr)
    store, counts = readable_store(store, partial)
    require_score(store, column)
    if column == "lmem":
        _require_lmem(store)
    nonmembers = match_ids(read_id_list(nonmembers_file), store.column("id"), "non-members", strict=strict)
    if not nonmembers.rows.any():
        raise UsageError(f"none of the {nonmembers.n_ids} ids in {nonmembers_file} is in {store.path}")
    scores, fingerprint = _fingerprinted_column(store, column)
    tau = calibrate_threshold(scores[nonmembers.rows], fpr)
    return Calibration(column=column, tau=tau, target_fpr=fpr, n_nonmembers=int(nonmembers.rows.sum()),
                       nonmembers_file=str(nonmembers_file), fingerprint=fingerprint, store=str(store.path),
                       pending=counts.pending, ids_not_in_store=nonmembers.n_not_in_store,
                       nonmember_ids=nonmembers.to_dict())


# ---------------------------------------------------------------- predict


@dataclass(frozen=True)
class Prediction:
    """What `predict` wrote into the store's `predicted_member` column (1, 0, or -1 where not scored)."""

    column: str
    tau: float
    members: int
    nonmembers: int
    not_scored: int
    pending: int


def _differences(made_on: dict[str, Any], now: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        return f"{value[:12]}..." if isinstance(value, str) and len(value) > 16 else repr(value)
    keys = sorted(set(made_on) | set(now))
    return "; ".join(f"{key}: calibrated on {show(made_on.get(key))}, now {show(now.get(key))}"
                     for key in keys if made_on.get(key) != now.get(key))


def predict(store: StorePath, *, tau: float | None = None, calibration: Calibration | StorePath | None = None,
            column: str = "lmem", partial: bool = False) -> Prediction:
    """Write `predicted_member` (1 iff score <= tau, 0 otherwise, -1 where not scored) into the store.

    Give exactly one of `tau` (on `column`) or `calibration` (a `Calibration` or its file; its own column).
    A calibration is refused unless the store's score is still exactly the one it was set on.
    """
    if (tau is None) == (calibration is None):
        raise UsageError("give exactly one of tau or calibration (--tau or --calibration FILE)")
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = Calibration.load(calibration)
    if calibration is not None:
        column, tau = calibration.column, float(calibration.tau)
    if not np.isfinite(tau):
        raise UsageError(f"tau must be a finite number, got {tau}")
    store = ScoreStore.open(store, mode="r+")
    with store.lock():
        counts = store.require_readable(partial=partial)
        require_score(store, column)
        if column == "lmem":
            _require_lmem(store)
        scores, fingerprint = _fingerprinted_column(store, column)
        if calibration is not None and calibration.fingerprint != fingerprint:
            raise StoreError(f"the calibration (tau {tau:.6g} on {column} of {calibration.store}) was set on "
                             f"another score than {store.path}'s {column} now ({_differences(calibration.fingerprint, fingerprint)}); "
                             "run `memscore calibrate` again on the current score")
        decision = np.where(np.isfinite(scores), predict_members(scores, tau), -1).astype(np.int8)
        source = calibration.to_dict() if calibration is not None else {"tau": tau}
        store.write_column(DECISION_COLUMN, decision, -1, {
            "column": column, "tau": tau, "rule": f"{DECISION_RULE}; -1 not scored", "source": source,
            "fingerprint": fingerprint, **completeness(counts)})
    return Prediction(column, tau, members=int((decision == 1).sum()), nonmembers=int((decision == 0).sum()),
                      not_scored=int((decision == -1).sum()), pending=counts.pending)
