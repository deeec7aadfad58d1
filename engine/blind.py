"""The blind baseline: membership predicted from the images alone (their stored features and Ldiff), never from
the victim, to tell how much of an attack's figures the member/non-member split itself gives away.

A logistic regression on standardised inputs, cross-fitted over seeded stratified folds: each row is scored by
the model fitted on the other folds, so no row is scored by a model that saw it. Scores follow memscore's
direction (lower = member). If members and non-members differ as images (other sources, dates, sizes), this
classifier separates them and so does any attack, victim or not (docs/ALGORITHM.md, "Claims a data owner can
defend"). Plain arrays in, numbers out (no I/O): `memscore.attack` reads the store and reports it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import UsageError
from .metrics import auc, evaluate_scores, float_vector, format_metrics, member_labels

BLIND_LABEL = "blind baseline (no victim query)"
BLIND_FOLDS = 10
BLIND_FPRS = (0.01,)
BLIND_BOOT = 1000
"""Bootstrap resamples of the baseline's intervals when the caller asks for none: its warning needs one."""
BLIND_MODEL = ("logistic regression (scikit-learn, L2, C=1) on the features and ldiff, standardised on each "
               f"model's training rows; cross-fitted over {BLIND_FOLDS} seeded stratified folds")
STRATA = 5
"""Quantile strata of the blind score within which each attack score's AUC is shown (quintiles)."""


def blind_scores(features, ldiff, is_member, *, folds: int = BLIND_FOLDS, seed: int = 0) -> np.ndarray:
    """Cross-fitted blind membership scores (lower = member): minus the log-odds of membership that a logistic
    regression fitted on the other folds gives each row. features: [n, F]; ldiff, is_member: [n]. A row with a
    missing feature or ldiff scores NaN (and takes no part in any fit). Raises when either class has fewer than
    `folds` usable rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ldiff = float_vector("ldiff", ldiff)
    labels = member_labels(is_member, ldiff.shape[0])
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] != ldiff.shape[0]:
        raise UsageError(f"features must have shape [{ldiff.shape[0]}, F] (one row per image), got {features.shape}")
    inputs = np.column_stack([features, ldiff])
    usable = np.flatnonzero(np.isfinite(inputs).all(axis=1))
    n_members = int(labels[usable].sum())
    if min(n_members, usable.size - n_members) < folds:
        raise UsageError(f"the blind baseline needs at least {folds} members and {folds} non-members with features "
                         f"and ldiff; there are {n_members} and {usable.size - n_members}")
    scores = np.full(ldiff.shape[0], np.nan)
    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(usable, labels[usable])
    for fit_at, score_at in splits:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        model.fit(inputs[usable[fit_at]], labels[usable[fit_at]])
        scores[usable[score_at]] = -model.decision_function(inputs[usable[score_at]])
    return scores


def auc_by_strata(scores, is_member, blind, strata: int = STRATA) -> list[dict[str, Any]]:
    """The AUC of `scores` within each quantile stratum of the `blind` score (rows where both are finite): within
    a stratum, members and non-members look alike to the blind classifier, so an AUC that stays high there is
    the victim's, not the split's. One entry per stratum: its blind-score range, class counts and AUC (None when
    a class is absent)."""
    scores = float_vector("scores", scores)
    blind = float_vector("blind", blind, scores.shape[0])
    labels = member_labels(is_member, scores.shape[0])
    keep = np.isfinite(scores) & np.isfinite(blind)
    scores, blind, labels = scores[keep], blind[keep], labels[keep]
    edges = np.quantile(blind, np.linspace(0, 1, strata + 1))
    which = np.clip(np.searchsorted(edges, blind, side="right") - 1, 0, strata - 1)
    out = []
    for stratum in range(strata):
        rows = which == stratum
        n_members = int(labels[rows].sum())
        n_nonmembers = int(rows.sum()) - n_members
        value = auc(scores[rows], labels[rows]) if n_members and n_nonmembers else None
        out.append({"stratum": stratum + 1, "blind_range": [float(edges[stratum]), float(edges[stratum + 1])],
                    "n_members": n_members, "n_nonmembers": n_nonmembers, "auc": value})
    return out


def blind_baseline(features, ldiff, is_member, *, seed: int = 0, n_boot: int = BLIND_BOOT,
                   attack_scores: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The blind baseline, JSON-ready: `metrics` (AUC and TPR at 1% FPR of the cross-fitted blind scores, with
    `n_boot` stratified bootstrap intervals), `warning` (a sentence when the AUC interval lies above 0.5: the
    classes differ as images, and the attack's figures are inflated by it; else None) and `strata` (per attack
    score in `attack_scores`, its AUC within quintiles of the blind score). A lower AUC interval than 0.5 is not
    flagged: cross-validated AUC is biased below 0.5 when there is nothing to learn, and no classifier uses it."""
    blind = blind_scores(features, ldiff, is_member, seed=seed)
    metrics = evaluate_scores(blind, is_member, fprs=BLIND_FPRS, n_boot=n_boot, seed=seed).to_dict()
    low, high = metrics["auc_ci"]
    warning = None
    if low > 0.5:
        warning = (f"members and non-members differ as images: a classifier that never queries the victim separates "
                   f"them with AUC {metrics['auc']:.3f} [{low:.3f}, {high:.3f}], so the attack's figures are inflated "
                   "by the split itself; compare them with the AUC within strata of the blind score")
    strata = {name: auc_by_strata(values, is_member, blind) for name, values in (attack_scores or {}).items()}
    return {"label": BLIND_LABEL, "available": True, "reason": None, "model": BLIND_MODEL, "folds": BLIND_FOLDS,
            "seed": seed, "inputs": f"{np.shape(features)[1]} feature columns + ldiff", "metrics": metrics,
            "warning": warning, "strata": strata}


def blind_unavailable(reason: str) -> dict[str, Any]:
    """The blind baseline's record where it cannot be computed, saying why."""
    return {"label": BLIND_LABEL, "available": False, "reason": reason, "warning": None}


def format_blind_baseline(record: dict[str, Any]) -> str:
    """The blind baseline's record as text: its metrics (`format_metrics`) and its warning, or why it is
    unavailable."""
    if not record["available"]:
        return f"{record['label']}: unavailable ({record['reason']})"
    text = format_metrics(record["label"], record["metrics"])
    return text + (f"\nWARNING: {record['warning']}" if record["warning"] else
                   "\n  (AUC interval covers 0.5 or lies below it: no sign that members and non-members differ as images)")
