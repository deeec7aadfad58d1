"""Per-image membership claims a data owner can defend: a conformal p-value per image from held-out non-members'
scores, and the images claimed as members with the false-discovery rate controlled (Benjamini-Hochberg, Storey).

The null of image i is "i is a non-member". With n reference non-members' scores r_j, scored the way the tested
images are (held out from anything fitted), p_i = (1 + #{j : r_j <= s_i}) / (n + 1): lower score = member, so a
small score gives a small p-value. When the image's score and the reference's are exchangeable under the null,
P(p_i <= a) <= a for every a, whatever the score (Lrec, Lmem, lcal, LiRA, RMIA) and its distribution; ties only
make it larger. A reference image gets the leave-one-out p-value (the reference without itself), so its own
p-value stays valid too; it is never claimed, being a known non-member.

Conformal p-values sharing one reference are positively dependent (PRDS; Bates et al. 2023, "Testing for
outliers with conformal p-values"), under which Benjamini-Hochberg controls the FDR at `fdr`. Storey's variant
estimates the share of non-members pi0 and runs BH at fdr / pi0: more claims when many images are members. Its
finite-sample guarantee (Storey, Taylor & Siegmund 2004) is for independent p-values; tests/test_claims.py
measures it under the shared reference.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .attack import completeness, readable_store
from .data import match_ids, read_id_list
from .errors import UsageError
from .lcal import require_current_lcal
from .metrics import float_vector, jsonable
from .score_names import LCAL_COLUMN, require_score
from .store import ScoreStore

PROCEDURES = {"bh": "Benjamini-Hochberg", "storey": "Storey"}
"""The false-discovery procedures, by the name the command takes -> the name printed."""
DEFAULT_FDR = 0.05
STOREY_LAMBDA = 0.5
"""p-values above it count towards Storey's estimate of the share of non-members; none above it is claimed."""
REFERENCE_NOTE = ("the reference images are known non-members: they get leave-one-out p-values but are left out "
                  "of the tested set and never claimed")


def _finite(name: str, values) -> np.ndarray:
    """`values` as a 1-D float array, refused when any is NaN or infinite: a missing score has no rank."""
    array = float_vector(name, values)
    if not np.isfinite(array).all():
        raise UsageError(f"{name} holds {int((~np.isfinite(array)).sum())} non-finite values; leave unscored "
                         "images out before computing p-values")
    return array


def _reference(reference_scores) -> np.ndarray:
    """The reference scores sorted, for counting how many lie at or below a score; at least one is needed."""
    reference = np.sort(_finite("reference_scores", reference_scores))
    if not reference.size:
        raise UsageError("reference_scores is empty; conformal p-values need scored reference non-members")
    return reference


def conformal_p_values(reference_scores, scores) -> np.ndarray:
    """p_i = (1 + #{reference scores <= s_i}) / (n + 1) for images outside the reference: valid under the null
    that image i is a non-member exchangeable with the reference. A NaN score gives a NaN p-value."""
    reference = _reference(reference_scores)
    scores = float_vector("scores", scores)
    at_or_below = np.searchsorted(reference, scores, side="right")
    return np.where(np.isnan(scores), np.nan, (1.0 + at_or_below) / (reference.size + 1.0))


def leave_one_out_p_values(reference_scores) -> np.ndarray:
    """Each reference image's p-value against the other n - 1: (1 + #{k != j : r_k <= r_j}) / n, which is
    #{k : r_k <= r_j} / n because r_j counts itself. In the order given."""
    scores = _finite("reference_scores", reference_scores)
    return np.searchsorted(_reference(scores), scores, side="right") / float(scores.size)


def _p_vector(p_values) -> np.ndarray:
    """p-values as a finite float vector in [0, 1]; anything else is a caller's mistake worth naming."""
    p = _finite("p_values", p_values)
    if ((p < 0) | (p > 1)).any():
        raise UsageError("p_values must lie in [0, 1]")
    return p


def benjamini_hochberg(p_values, fdr: float) -> np.ndarray:
    """True for the p-values BH rejects at level `fdr` (> 0; Storey passes fdr / pi0, which may exceed 1): the
    k smallest, k the largest with p_(k) <= k fdr / m (step-up: a p-value above its own line is still
    rejected when a larger one is below its line)."""
    p = _p_vector(p_values)
    if not fdr > 0:
        raise UsageError(f"the BH level must be > 0, got {fdr}")
    order = np.argsort(p, kind="stable")
    below = np.flatnonzero(p[order] <= fdr * np.arange(1, p.size + 1) / p.size)
    rejected = np.zeros(p.size, bool)
    rejected[order[: below[-1] + 1 if below.size else 0]] = True
    return rejected


def storey_pi0(p_values, lam: float = STOREY_LAMBDA) -> float:
    """Storey's estimate of the share of true nulls (non-members): (#{p > lam} + 1) / ((1 - lam) m), capped at
    1. Non-members' p-values are uniform, so about (1 - lam) of them lie above lam, and members' rarely do;
    the + 1 is what makes the procedure's finite-sample guarantee hold (Storey, Taylor & Siegmund 2004)."""
    p = _p_vector(p_values)
    if not 0 < lam < 1:
        raise UsageError(f"lambda must lie strictly between 0 and 1, got {lam}")
    if not p.size:
        return 1.0
    return min(1.0, (np.count_nonzero(p > lam) + 1.0) / ((1.0 - lam) * p.size))


@dataclass(frozen=True)
class Claims:
    """The images claimed as members among the tested p-values (`claims`; `to_dict` is JSON-ready)."""

    procedure: str
    fdr: float
    n_tested: int
    n_claimed: int
    pi0: float
    """The estimated share of non-members among the tested (Storey); 1 for BH, which assumes all may be."""
    threshold: float
    """The largest p-value claimed (0 when none): every tested p-value at or below it is claimed."""
    expected_false_claims: float
    """fdr * n_claimed: FDR control bounds the expected share of false claims by fdr."""
    estimated_false_claims: float
    """pi0 * n_tested * threshold: the non-members expected below the threshold (Storey's plug-in estimate)."""
    claimed: np.ndarray = field(repr=False, compare=False)
    """True for the p-values claimed, in the order given."""

    def to_dict(self) -> dict[str, Any]:
        document = {item.name: getattr(self, item.name) for item in fields(self) if item.name != "claimed"}
        return jsonable({**document, "procedure_name": PROCEDURES[self.procedure]})


def claims(p_values, *, fdr: float = DEFAULT_FDR, procedure: str = "bh", lam: float = STOREY_LAMBDA) -> Claims:
    """The images to claim as members from their p-values, with the false-discovery rate at most `fdr`:
    `procedure` "bh" (Benjamini-Hochberg) or "storey" (BH at fdr / pi0, pi0 = `storey_pi0(p, lam)`, claiming no
    p-value above `lam`)."""
    if procedure not in PROCEDURES:
        raise UsageError(f"unknown procedure {procedure!r}; choose one of {', '.join(PROCEDURES)}")
    if not 0 < fdr < 1:
        raise UsageError(f"fdr must lie strictly between 0 and 1, got {fdr}")
    p = _p_vector(p_values)
    pi0 = storey_pi0(p, lam) if procedure == "storey" else 1.0
    claimed = benjamini_hochberg(p, fdr / pi0) if p.size else np.zeros(0, bool)
    if procedure == "storey":
        claimed &= p <= lam
    threshold = float(p[claimed].max()) if claimed.any() else 0.0
    n_claimed = int(claimed.sum())
    return Claims(procedure=procedure, fdr=fdr, n_tested=int(p.size), n_claimed=n_claimed, pi0=pi0,
                  threshold=threshold, expected_false_claims=fdr * n_claimed,
                  estimated_false_claims=pi0 * p.size * threshold, claimed=claimed)


# ---------------------------------------------------------------- on a store


def claims_store(store: str | os.PathLike | ScoreStore, reference_file: str | os.PathLike, *,
                 score: str = LCAL_COLUMN, fdr: float = DEFAULT_FDR, procedure: str = "bh",
                 suspect_file: str | os.PathLike | None = None, strict: bool = False,
                 partial: bool = False) -> dict[str, Any]:
    """`claims` on a store's `score` column, JSON-ready: every scored image outside the reference (or only those
    in `suspect_file`: the images a data owner asks about) is tested against the reference non-members in
    `reference_file`. Ids the store lacks are ignored and counted (`reference_ids`, `suspect_ids`:
    `IdMatch.to_dict`), or refused when `strict`. `lcal` is refused once its inputs changed. Fewer tested images
    need fewer discoveries at the smallest p-value, 1/(reference + 1), for the procedure to claim any.

    Returns the counts, the claimed ids (lowest p-value first) and, per image with an id, its score, p-value
    (NaN for an unscored image), whether it is reference and whether it is claimed.
    """
    store, counts = readable_store(store, partial=partial)
    require_score(store, score)
    if score == LCAL_COLUMN:
        require_current_lcal(store)
    ids = store.column("id")
    values = store.column(score).astype(np.float64)
    reference = match_ids(read_id_list(reference_file), ids, "reference", strict=strict)
    scored = np.isfinite(values)
    is_reference = reference.rows & scored
    if not is_reference.any():
        raise UsageError(f"none of the {reference.n_ids} reference ids ({reference.file}) has a {score} score in "
                         f"{store.path}; give held-out non-members the store scored")
    suspects = match_ids(read_id_list(suspect_file), ids, "suspect", strict=strict) if suspect_file else None
    tested = scored & ~reference.rows & (suspects.rows if suspects is not None else True)
    if suspects is not None and (suspects.rows & reference.rows).any():
        raise UsageError(f"{int((suspects.rows & reference.rows).sum())} ids are both suspect ({suspects.file}) and "
                         f"reference ({reference.file}); a reference image is a known non-member")
    p_values = np.full(values.size, np.nan)
    p_values[tested] = conformal_p_values(values[is_reference], values[tested])
    p_values[is_reference] = leave_one_out_p_values(values[is_reference])
    result = claims(p_values[tested], fdr=fdr, procedure=procedure)
    claimed = np.zeros(values.size, bool)
    claimed[np.flatnonzero(tested)[result.claimed]] = True
    # A tested image's p-value grows with its score, so ordering by score orders by p-value, ties lowest score first.
    claimed_rows = np.flatnonzero(claimed)[np.argsort(values[claimed], kind="stable")]
    named = np.flatnonzero(ids != "")  # pending rows have no id yet
    return {"store": str(store.path), **completeness(counts), "score": score, "reference_ids": reference.to_dict(),
            "suspect_ids": suspects.to_dict() if suspects is not None else None,
            "n_reference_scored": int(is_reference.sum()), "n_not_scored": int((~scored[named]).sum()),
            "smallest_p_value": 1.0 / (int(is_reference.sum()) + 1.0), "reference_note": REFERENCE_NOTE,
            "claims": result.to_dict(), "claimed_ids": ids[claimed_rows].tolist(),
            "images": [{"id": str(ids[row]), "score": jsonable(values[row]), "p_value": jsonable(p_values[row]),
                        "reference": bool(reference.rows[row]), "claimed": bool(claimed[row])} for row in named]}
