"""What the attack report of a store shows, computed: counts, the alpha choices, every score's metrics
(`memscore.attack.evaluate`, so the page and `memscore evaluate` agree), ROC curves, the alpha sweep and the
easiest and hardest images by Ldiff. Numbers and arrays only; `memscore.report` draws and writes them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .alpha import AlphaFit, fit_alpha
from .attack import evaluate, lmem_with_alpha, match_members, membership, readable_store
from .metrics import RocCurve, alpha_sweep, roc
from .score_names import stored_scores
from .store import ScoreStore, StatusCounts
from .timing import utc_now

SWEEP_POINTS = 81
"""Alphas on the grid of the AUC-against-alpha sweep (the store's and the label-free fit's are added)."""


@dataclass(frozen=True)
class ReportData:
    """Everything the report page shows about one store, before any drawing."""

    store: str
    created: str
    members_file: str | None
    """Where the labels come from (None: the store's member column)."""
    n_images: int
    status: StatusCounts
    counts: dict[str, int]
    """The counts table: images, scored, failed, pending, members, non-members, unlabelled."""
    ids: np.ndarray
    statistic: str
    """The store's membership statistic (lrec or ldenoise)."""
    raw: np.ndarray
    """Its values per row (lmem = raw - alpha * ldiff)."""
    ldiff: np.ndarray
    lmem: np.ndarray
    labels: np.ndarray
    """1 member, 0 non-member, -1 unknown, per row (`memscore.attack.membership`)."""
    alpha: dict[str, Any]
    """The record of the store's alpha (`memscore.attack.lmem_with_alpha`)."""
    alpha_history: list[dict[str, Any]]
    fit: AlphaFit
    """The label-free least-squares line of the statistic on Ldiff over this store."""
    failed_shards: list[tuple[int, int, int, str]]
    """(shard, first row, row after the last, error) of each shard the last run could not score."""
    metrics: dict[str, Any] | None
    """`evaluate`'s result; None without labels, or when it was refused (`metrics_error`)."""
    metrics_error: str | None
    thresholds: dict[str, float | None]
    """The best balanced-accuracy threshold of each stored score (None without metrics)."""
    curves: dict[str, RocCurve]
    """The ROC of every evaluated score (none without metrics)."""
    sweep: tuple[np.ndarray, np.ndarray] | None
    """(alphas, AUC of the statistic - alpha * Ldiff at each), with labels."""
    easiest: np.ndarray
    """Rows with the lowest Ldiff, lowest first; `hardest`: the highest, highest first."""
    hardest: np.ndarray
    record: dict[str, Any]
    """The store's run record (configuration, versions, ...)."""


def report_data(store: str | os.PathLike | ScoreStore, *, members_file: str | None = None, n_boot: int = 200,
                thumbnails: int = 8, partial: bool = False, scores: list[str] | None = None,
                holdout: float | None = None) -> ReportData:
    """The numbers of `memscore.report.write_report`'s page (see there for the arguments). A damaged store is
    refused, an unfinished one too unless `partial`."""
    store, status = readable_store(store, partial)  # verified once: `evaluate` below reads the same handle
    ids, scored = store.column("id"), store.column("status") == "ok"
    statistic, shown = store.statistic, stored_scores(store)[:2]
    raw, ldiff = store.column(statistic).astype(np.float64), store.column("ldiff").astype(np.float64)
    lmem, alpha_record = lmem_with_alpha(store)
    labels = membership(store, match_members(store, members_file))
    known = labels >= 0
    fit = fit_alpha(raw, ldiff)

    metrics, metrics_error = None, None
    if known.any():
        wanted = None if scores is None else [*shown, *[c for c in scores if c not in shown]]
        try:
            metrics = evaluate(store, members_file, n_boot=n_boot, partial=partial, scores=wanted, holdout=holdout)
        except ValueError as error:  # e.g. every labelled row is a member
            metrics_error = str(error)

    curves, sweep = {}, None
    if metrics:
        stored = {statistic: raw, "lmem": lmem}
        curves = {c: roc((stored[c] if c in stored else store.column(c).astype(np.float64))[known], labels[known] == 1)
                  for c in metrics["scores"]}
        store_alpha = alpha_record["value"]
        lo = min(0.0, 1.5 * min(store_alpha, fit.alpha))
        hi = max(1.0, 1.5 * max(store_alpha, fit.alpha))
        grid = np.union1d(np.linspace(lo, hi, SWEEP_POINTS), [store_alpha, fit.alpha])
        sweep = alpha_sweep(raw[known], ldiff[known], labels[known] == 1, grid)

    finite = np.flatnonzero(np.isfinite(ldiff))
    k = min(thumbnails, finite.size // 2)
    order = finite[np.argsort(ldiff[finite], kind="stable")]
    counts = {
        "images in the store": store.n_images,
        "scored": status.ok,
        "failed (excluded)": status.failed,
        "pending (excluded)": status.pending,
        "members (scored)": int((scored & (labels == 1)).sum()),
        "non-members (scored)": int((scored & (labels == 0)).sum()),
        "unlabelled (scored; not in metrics)": int((scored & (labels < 0)).sum()),
    }
    return ReportData(
        store=str(store.path), created=utc_now(), members_file=members_file, n_images=store.n_images,
        status=status, counts=counts, ids=ids, statistic=statistic, raw=raw, ldiff=ldiff, lmem=lmem, labels=labels,
        alpha=alpha_record, alpha_history=[record.to_dict() for record in store.alpha_history], fit=fit,
        failed_shards=[(index, *store.shard_range(index), error)
                       for index, error in sorted(store.failed_shards.items())],
        metrics=metrics, metrics_error=metrics_error,
        thresholds={c: metrics[c]["balanced_accuracy_threshold"] if metrics else None for c in shown},
        curves=curves, sweep=sweep, easiest=order[:k], hardest=order[::-1][:k], record=store.record.to_dict())
