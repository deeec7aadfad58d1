"""Lmem from the stored Lrec and Ldiff: the alpha pass at the end of a run, and rewriting it at another alpha
afterwards (`rewrite_lmem`, the `alpha` method of `memscore.rescore`).

Alpha may be fitted over the whole store, so Lmem is written once every shard is done, as one whole
column together with the record of how alpha was chosen (`memscore.store.AlphaRecord`); a reader sees the
old column and record or the new ones, never a mix. Every option is checked before the store is touched.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .alpha import AlphaSpec, label_free_alpha, membership_error, parse_alpha, resolve_alpha
from .data import match_ids, read_id_list
from .errors import UsageError
from .store import AlphaRecord, ScoreStore

Alpha = str | float | AlphaSpec
"""An alpha as the user wrote it (`memscore.alpha.parse_alpha`), or parsed."""


def check_alpha_options(alpha: Alpha, reference: str | None) -> AlphaSpec:
    """The parsed alpha; refused when it cannot be resolved without labels (`auto`) or lacks its reference file,
    before anything is scored or written."""
    spec = label_free_alpha(alpha)
    if spec.needs_reference:
        if not reference:
            raise UsageError("--alpha fit:reference needs --reference FILE (ids of known non-members)")
        if not os.path.isfile(reference):
            raise UsageError(f"--reference {reference}: no such file")
    return spec


def alpha_pass(store: ScoreStore, alpha: Alpha, reference: str | None = None, *, strict: bool = False) -> AlphaRecord:
    """Resolve alpha over the whole store (fixed or fitted) and write Lmem for every row. For fit:reference the
    record says how the `reference` file matched the store; `strict` refuses it when the store lacks some of
    its ids."""
    spec = check_alpha_options(alpha, reference)
    raw, ldiff = store.column(store.statistic).astype(np.float64), store.column("ldiff").astype(np.float64)
    reference_mask, reference_ids = reference_rows(store, spec, reference, strict=strict)
    fit = resolve_alpha(spec, raw, ldiff, reference_mask=reference_mask)
    record = AlphaRecord(spec=spec.text, value=float(fit.alpha), method=fit.method, n_rows=int(fit.n_rows),
                         r2=None if fit.r2 is None or not np.isfinite(fit.r2) else float(fit.r2),
                         reference_ids=reference_ids)
    return store.write_lmem(membership_error(raw, ldiff, fit.alpha), record)


def reference_rows(store: ScoreStore, alpha: Alpha, reference: str | None, *, strict: bool = False
                   ) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    """For alpha fit:reference: the store rows of the known non-members in the file `reference`, and how the
    file matched the store (`IdMatch.to_dict`, for the alpha record); (None, None) for any other alpha."""
    if not parse_alpha(alpha).needs_reference:
        return None, None
    match = match_ids(read_id_list(reference), store.column("id"), "reference", strict=strict)
    return match.rows, match.to_dict()


def rewrite_lmem(store_path: str | os.PathLike, alpha: Alpha, reference: str | None = None, *,
                 strict: bool = False) -> AlphaRecord:
    """Rewrite `lmem` of a finished store at another alpha (the previous record goes to the history); `strict`:
    as `alpha_pass`."""
    check_alpha_options(alpha, reference)
    store = ScoreStore.open(store_path, mode="r+")
    with store.lock():
        store.require_scored()
        return alpha_pass(store, alpha, reference, strict=strict)
