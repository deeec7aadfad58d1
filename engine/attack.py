"""Metrics of a finished score store: membership labels from the store or a file of ids, then
`engine.evaluate` on its columns. Shared by `memscore evaluate`, the report and the demo.
"""
from __future__ import annotations

import numpy as np

from .data import read_id_list
from .alpha import membership_error, resolve_alpha
from .metrics import evaluate_scores
from .seeding import image_seed
from .store import ScoreStore


def membership(store: ScoreStore, members_file: str | None) -> np.ndarray:
    """1/0/-1 per row, from a file of member ids or the store's `member` column."""
    if members_file:
        members = read_id_list(members_file)
        return np.isin(store.column("id"), list(members)).astype(np.int8)
    return store.column("member").astype(np.int8)


def calibration_split(ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the rows that calibrate alpha; decided by (seed, id) alone, so it is reproducible."""
    return np.array([image_seed(seed, f"{i}#alpha-calibration") % 10_000 < fraction * 10_000 for i in ids])


def evaluate_store(store: ScoreStore, members_file: str | None = None, n_boot: int = 0, *,
                   alpha: str | None = None, calibration_fraction: float = 0.5) -> dict:
    """Metrics for lrec and lmem of a finished store (lower score = member).

    `alpha`: evaluate lmem at another alpha than the store's (a number, fit, fit:robust); `auto` picks
    it with labels on a calibration split of the labelled rows and reports every metric on the rest only.
    """
    labels = membership(store, members_file)
    known = labels >= 0
    if not known.any():
        raise ValueError("no membership known: the store has no member column values; pass --members FILE")
    lrec, ldiff = store.column("lrec").astype(np.float64), store.column("ldiff").astype(np.float64)
    lmem, alpha_record = store.column("lmem").astype(np.float64), store.group.attrs.get("alpha")
    if alpha is not None:
        calibration = np.zeros_like(known)
        if alpha == "auto":
            calibration = known & calibration_split(store.column("id"), calibration_fraction, store.config.seed)
        fit = resolve_alpha(alpha, lrec, ldiff, is_member=labels == 1, calibration_mask=calibration)
        lmem = membership_error(lrec, ldiff, fit.alpha)
        alpha_record = {"spec": alpha, "value": fit.alpha, "method": fit.method, "n_rows": fit.n_rows,
                        "calibration_rows": int(calibration.sum()), "evaluated_on": "rows not used to choose alpha"}
        known = known & ~calibration
    result = {"store": str(store.path), "alpha": alpha_record,
              "direction": "lower score = member", "n_unlabelled_excluded": int((labels < 0).sum())}
    for column, scores in (("lrec", lrec), ("lmem", lmem)):
        result[column] = evaluate_scores(scores[known], labels[known] == 1, n_boot=n_boot).to_dict()
    return result


