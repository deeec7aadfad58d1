"""Choosing alpha in Lmem = Lrec - alpha * Ldiff (docs/ALGORITHM.md, "Choosing alpha"): a fixed number,
a label-free slope of Lrec on Ldiff (OLS, robust, or on known non-members), or labelled calibration.

Specs, as a user writes them: "0.5" (fixed), "fit", "fit:robust", "fit:reference", "auto".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .errors import UsageError
from .metrics import alpha_sweep, float_vector, member_labels

SPEC_KINDS = ("fixed", "fit", "fit:robust", "fit:reference", "auto")
# "auto" searches this grid plus the OLS slope of its calibration rows.
AUTO_GRID = np.round(np.arange(201) * 0.05, 2)
# Theil-Sen uses every pair up to this many rows, else this many pairs drawn with this seed.
THEIL_SEN_ALL_PAIRS_MAX_N = 2000
THEIL_SEN_N_PAIRS = 1_000_000
THEIL_SEN_SEED = 0


LABEL_FREE_FORMS = "NUMBER | fit | fit:robust | fit:reference"
"""How a user writes an alpha that needs no membership labels (what a store's lmem is made with)."""


@dataclass(frozen=True)
class AlphaSpec:
    """A parsed alpha: ``kind`` is one of SPEC_KINDS; ``value`` is set only for "fixed". Parsed once, where the
    user's text enters (`parse_alpha`), and passed on typed; `text` is how a store records it."""

    kind: str
    value: float | None = None

    @property
    def text(self) -> str:
        return repr(self.value) if self.kind == "fixed" else self.kind

    @property
    def needs_labels(self) -> bool:
        return self.kind == "auto"

    @property
    def needs_reference(self) -> bool:
        return self.kind == "fit:reference"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class AlphaFit:
    """An alpha and where it came from.

    method: the estimator ("ols", "robust") when made by fit_alpha; the spec kind (SPEC_KINDS)
    when made by resolve_alpha, which is what a store should record. n_rows: rows used (0 for
    "fixed"). r2, intercept: of the line lrec ~ intercept + alpha * ldiff (None for "fixed" and
    "auto"). auc: the calibration AUC at alpha, for "auto" only.
    """

    alpha: float
    method: str
    n_rows: int
    r2: float | None
    intercept: float | None
    auc: float | None = None


def _pair(lrec, ldiff) -> tuple[np.ndarray, np.ndarray]:
    lrec = float_vector("lrec", lrec)
    return lrec, float_vector("ldiff", ldiff, lrec.shape[0], other="lrec")


def _row_mask(name: str, mask, n_rows: int) -> np.ndarray:
    if mask is None:
        raise UsageError(f"{name} is required for this alpha spec")
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n_rows,):
        raise UsageError(
            f"{name} must be a boolean array with one entry per row ({n_rows}), got {mask.dtype} {mask.shape}"
        )
    return mask


def _theil_sen_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Median slope over pairs with distinct x: all pairs for small n, else a fixed-seed sample."""
    n = x.shape[0]
    if n <= THEIL_SEN_ALL_PAIRS_MAX_N:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(THEIL_SEN_SEED)
        i, j = rng.integers(n, size=(2, THEIL_SEN_N_PAIRS))
    dx = x[j] - x[i]
    distinct = dx != 0
    return float(np.median((y[j] - y[i])[distinct] / dx[distinct]))


def fit_alpha(lrec, ldiff, method: str = "ols") -> AlphaFit:
    """Slope of lrec regressed on ldiff, with intercept, over rows where both are finite. No labels.

    method "ols": least squares. method "robust": Theil-Sen (median of pairwise slopes; all pairs
    when n <= THEIL_SEN_ALL_PAIRS_MAX_N, else THEIL_SEN_N_PAIRS pairs drawn with THEIL_SEN_SEED, so
    deterministic), intercept = median(lrec - alpha * ldiff); breakdown point about 29%. r2 is
    1 - SS_res / SS_tot of the fitted line in both cases (outliers lower it for the robust line).
    """
    if method not in ("ols", "robust"):
        raise UsageError(f"fit method must be 'ols' or 'robust', got {method!r}")
    y, x = _pair(lrec, ldiff)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if x.shape[0] < 2 or x.min() == x.max():
        raise UsageError(
            f"fitting alpha needs at least two rows with distinct finite ldiff; got {x.shape[0]} finite rows"
        )
    x_dev, y_dev = x - x.mean(), y - y.mean()
    if method == "ols":
        slope = float(x_dev @ y_dev / (x_dev @ x_dev))
        intercept = float(y.mean() - slope * x.mean())
    else:
        slope = _theil_sen_slope(x, y)
        intercept = float(np.median(y - slope * x))
    residual = y - intercept - slope * x
    total = float(y_dev @ y_dev)
    r2 = 1.0 - float(residual @ residual) / total if total > 0 else 1.0
    return AlphaFit(alpha=slope, method=method, n_rows=int(x.shape[0]), r2=r2, intercept=intercept)


def parse_alpha(spec: str | float | AlphaSpec) -> AlphaSpec:
    """Parse a user's alpha: a finite number (or its text) -> "fixed"; or one of the named specs (an AlphaSpec is
    returned as it is)."""
    usage = "use a number (e.g. 0.5), 'fit', 'fit:robust', 'fit:reference' or 'auto'"
    if isinstance(spec, AlphaSpec):
        return spec
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in SPEC_KINDS[1:]:
            return AlphaSpec(kind=text)
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"alpha {spec!r} not understood; {usage}") from None
    elif isinstance(spec, (int, float, np.integer, np.floating)) and not isinstance(spec, bool):
        value = float(spec)
    else:
        raise UsageError(f"alpha {spec!r} not understood; {usage}")
    if not math.isfinite(value):
        raise UsageError(f"alpha must be finite, got {spec!r}; {usage}")
    return AlphaSpec(kind="fixed", value=value)


def label_free_alpha(spec: str | float | AlphaSpec) -> AlphaSpec:
    """`parse_alpha`, refusing `auto`: it chooses alpha with membership labels, so it is for evaluation
    (`memscore evaluate --alpha auto`), never for the lmem a store holds."""
    parsed = parse_alpha(spec)
    if parsed.needs_labels:
        raise UsageError(f"alpha 'auto' chooses alpha with member labels: use it with `memscore evaluate --alpha "
                         f"auto`; for a store's lmem use {LABEL_FREE_FORMS}")
    return parsed


def _auto_alpha(lrec: np.ndarray, ldiff: np.ndarray, is_member, calibration_mask) -> AlphaFit:
    """The alpha with the best AUC on the calibration rows; no other row is read."""
    n_rows = lrec.shape[0]
    if is_member is None:
        raise UsageError("alpha 'auto' needs is_member (labels for the calibration rows)")
    rows = _row_mask("calibration_mask", calibration_mask, n_rows)
    if not rows.any() or rows.all():
        raise UsageError(
            f"calibration_mask selects {int(rows.sum())} of {n_rows} rows; alpha 'auto' needs some "
            "calibration rows and reports on the rest, so pass a mask of a proper subset"
        )
    is_member = np.asarray(is_member)
    if is_member.shape != (n_rows,):
        raise UsageError(f"is_member has shape {is_member.shape} but lrec has {n_rows} rows")
    x, y, labels = ldiff[rows], lrec[rows], member_labels(is_member[rows], int(rows.sum()))
    grid = np.union1d(AUTO_GRID, [fit_alpha(y, x).alpha])
    alphas, aucs = alpha_sweep(y, x, labels, grid)
    best = int(np.argmax(aucs))
    n_used = int((np.isfinite(x) & np.isfinite(y)).sum())
    return AlphaFit(float(alphas[best]), "auto", n_rows=n_used, r2=None, intercept=None, auc=float(aucs[best]))


def resolve_alpha(
    spec: str | float | AlphaSpec,
    lrec,
    ldiff,
    *,
    reference_mask=None,
    is_member=None,
    calibration_mask=None,
) -> AlphaFit:
    """Turn a spec into an alpha.

    "fixed": the number. "fit": OLS over all finite rows. "fit:robust": Theil-Sen over them.
    "fit:reference": OLS over rows where ``reference_mask`` (known non-members) is True.
    "auto": the alpha maximising AUC (grid AUTO_GRID plus the calibration rows' OLS slope; ties go
    to the smallest alpha) using ``is_member`` on rows where ``calibration_mask`` is True only;
    report on the complement of that mask, never on it.
    """
    spec = parse_alpha(spec)
    if spec.kind == "fixed":
        return AlphaFit(alpha=spec.value, method="fixed", n_rows=0, r2=None, intercept=None)
    lrec, ldiff = _pair(lrec, ldiff)
    if spec.kind == "auto":
        return _auto_alpha(lrec, ldiff, is_member, calibration_mask)
    if spec.kind == "fit:reference":
        rows = _row_mask("reference_mask", reference_mask, lrec.shape[0])
        if not rows.any():
            raise UsageError("reference_mask selects no rows; 'fit:reference' needs known non-members")
        lrec, ldiff = lrec[rows], ldiff[rows]
    fit = fit_alpha(lrec, ldiff, "robust" if spec.kind == "fit:robust" else "ols")
    return dataclasses.replace(fit, method=spec.kind)


def membership_error(lrec, ldiff, alpha: float) -> np.ndarray:
    """Lmem = lrec - alpha * ldiff, row by row (NaN propagates); lower means more likely a member."""
    lrec, ldiff = _pair(lrec, ldiff)
    return lrec - alpha * ldiff
