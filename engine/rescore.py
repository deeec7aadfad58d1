"""Lmem from the stored Lrec and Ldiff: the alpha pass at the end of a run, and `rescore` afterwards.

Alpha may be fitted over the whole store, so Lmem is written once every shard is done, as one whole
column together with the record of how alpha was chosen (`memscore.store.AlphaRecord`); a reader sees the
old column and record or the new ones, never a mix. Every option is checked before the store is touched.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .alpha import membership_error, parse_alpha, resolve_alpha
from .data import match_ids, read_id_list
from .errors import UsageError
from .store import AlphaRecord, ScoreStore, StoreError


def check_alpha_options(alpha: str, reference: str | None) -> None:
    """Refuse an alpha spec that cannot be resolved, before anything is scored or written."""
    kind = parse_alpha(alpha).kind
    if kind == "auto":
        raise UsageError("alpha 'auto' needs membership labels; it is for `memscore evaluate --alpha auto`, "
                         "not for a stored lmem")
    if kind == "fit:reference":
        if not reference:
            raise UsageError("--alpha fit:reference needs --reference FILE (ids of known non-members)")
        if not os.path.isfile(reference):
            raise UsageError(f"--reference {reference}: no such file")


def alpha_pass(store: ScoreStore, alpha: str, reference: str | None = None, *, strict: bool = False) -> AlphaRecord:
    """Resolve alpha over the whole store (fixed or fitted) and write Lmem for every row. For fit:reference the
    record says how the `reference` file matched the store; `strict` refuses it when the store lacks some of
    its ids."""
    check_alpha_options(alpha, reference)
    lrec, ldiff = store.column("lrec").astype(np.float64), store.column("ldiff").astype(np.float64)
    reference_mask, reference_ids = reference_rows(store, alpha, reference, strict=strict)
    fit = resolve_alpha(alpha, lrec, ldiff, reference_mask=reference_mask)
    record = AlphaRecord(spec=alpha, value=float(fit.alpha), method=fit.method, n_rows=int(fit.n_rows),
                         r2=None if fit.r2 is None or not np.isfinite(fit.r2) else float(fit.r2),
                         reference_ids=reference_ids)
    return store.write_lmem(membership_error(lrec, ldiff, fit.alpha), record)


def reference_rows(store: ScoreStore, alpha: str, reference: str | None, *, strict: bool = False
                   ) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """For alpha fit:reference: the store rows of the known non-members in the file `reference`, and how the
    file matched the store (`IdMatch.to_dict`, for the alpha record); (None, None) for any other alpha."""
    if parse_alpha(alpha).kind != "fit:reference":
        return None, None
    match = match_ids(read_id_list(reference), store.column("id"), "reference", strict=strict)
    return match.rows, match.to_dict()


def rescore(store_path: str | os.PathLike, alpha: str, reference: str | None = None, *,
            strict: bool = False) -> AlphaRecord:
    """Rewrite `lmem` of a finished store at another alpha (the previous record goes to the history); `strict`:
    as `alpha_pass`."""
    check_alpha_options(alpha, reference)
    store = ScoreStore.open(store_path, mode="r+")
    with store.lock():
        if not store.done_shards().all():
            raise StoreError(f"{store_path} is not fully scored yet; rerun `memscore score` to finish it first")
        problems = [p for p in store.verify() if p.array != "lmem"]  # a damaged lmem is what rescore repairs
        if problems:
            raise StoreError(f"{store_path} is damaged ({problems[0]}); `memscore verify` lists every problem and "
                             "rerunning `memscore score` rescores the damaged shards")
        return alpha_pass(store, alpha, reference, strict=strict)
