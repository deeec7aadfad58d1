"""Metrics of a finished score store: membership labels from the store or a file of ids, then
`engine.evaluate` on its columns. Shared by `memscore evaluate`, the report and the demo.
"""
from __future__ import annotations

import numpy as np

from .data import read_id_list
from .evaluate import evaluate_scores
from .store import ScoreStore


def membership(store: ScoreStore, members_file: str | None) -> np.ndarray:
    """1/0/-1 per row, from a file of member ids or the store's `member` column."""
    if members_file:
        members = read_id_list(members_file)
        return np.isin(store.column("id"), list(members)).astype(np.int8)
    return store.column("member").astype(np.int8)


def evaluate_store(store: ScoreStore, members_file: str | None = None, n_boot: int = 0) -> dict:
    """Metrics for lrec and lmem of a finished store (lower score = member)."""
    labels = membership(store, members_file)
    known = labels >= 0
    if not known.any():
        raise ValueError("no membership known: the store has no member column values; pass --members FILE")
    result = {"store": str(store.path), "alpha": store.group.attrs.get("alpha"),
              "direction": "lower score = member", "n_unlabelled_excluded": int((~known).sum())}
    for column in ("lrec", "lmem"):
        scores = store.column(column).astype(np.float64)[known]
        result[column] = evaluate_scores(scores, labels[known] == 1, n_boot=n_boot).to_dict()
    return result


