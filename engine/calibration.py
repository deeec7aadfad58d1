"""Per-image calibrated membership scores (`lcal`): from known non-members (the reference), learn what a
NON-member's Lrec looks like for each image given its features, and score how far below that the image's
Lrec falls. Lower `lcal` = more likely a member, as for every score of memscore. Plain arrays in, scores out (no
I/O): `memscore.lcal` reads a store's columns, writes `lcal` and checks it is current.

Why: Lmem subtracts one multiple of Ldiff from every image; asking per image "how unusual is this Lrec for
THIS image if it were a non-member?" is what raises TPR at 1% and 0.1% FPR (difficulty calibration, Watson et
al. 2022; quantile-regression attacks, Bertran et al. 2023). See docs/ALGORITHM.md, "Beyond one global alpha".

Both models describe a non-member's Lrec at x by a centre and a scale, and ``lcal = (Lrec - centre) / scale``:
- `gaussian`: centre = mu(x), a ridge regression of Lrec; scale = sigma(x), a ridge regression of
  log|residual| plus E log|Z| = -0.635 for Z ~ N(0, 1) (the standard correction). The residuals it learns
  from are mu's exact leave-one-out residuals, i.e. the errors mu makes on images it did not see, which is
  what it is applied to. ``lcal`` is then a z-score.
- `quantile`: gradient-boosted quantile regressions (scikit-learn's HistGradientBoostingRegressor) of the
  median q_0.5(x) and of q_level(x); centre = q_0.5(x), scale = (q_0.5(x) - q_level(x)) / -Phi^-1(level),
  so that ``lcal = Phi^-1(level)`` exactly at Lrec = q_level(x): the two models' scores read alike.
The inputs are the image's `features` (pooled backbone stage statistics) and Ldiff, standardised on each
model's own training rows. Regularisation is chosen on the training rows only: the ridge penalty by exact
leave-one-out (closed form, no randomness), the boosted model's size by a seeded inner K-fold CV.

Cross-fitting (`FOLD_POLICY`): reference rows are split into K seeded folds and each is scored by the model
fitted on the other K-1 folds. Every other row is assigned to a seeded fold too and scored by that fold's
model, not by one model fitted on all reference rows: then a suspect image and the reference rows of its fold
are scored by the same model, which saw neither, so under the null (the suspect is a non-member) their scores
are exchangeable and the dataset test stays calibrated. With one all-reference model, that model's own error
shifts every suspect alike but no reference row: measured with the quantile model on synthetic non-members
(500 suspects against 500 reference rows), the suspects' AUC varied over null draws with a standard deviation
of 0.033 (one draw of 7 gave p = 0.0002) against 0.018 expected; with fold models, 0.020 over 10 draws. No row
is ever scored by a model that saw it, so reference rows can be evaluated alongside the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.special import ndtri

from .errors import UsageError
from .metrics import calibrate_threshold, float_vector

MODELS = ("gaussian", "quantile")
"""The non-member models; the first is the default."""
MODELLED = ("lmem", "raw")
"""What the models describe: `lmem` (the store's statistic less its alpha times Ldiff; the default, measured better
on a real victim: bench/results/calibration.json) or `raw` (the statistic itself: lrec or ldenoise)."""
LCAL_DIRECTION = "lower lcal = member; an image is called a member iff lcal <= threshold"
DEFAULT_FOLDS = 5
DEFAULT_LEVEL = 0.05
"""The quantile the `quantile` model fits besides the median (the 5% quantile regression of issue #16)."""
MIN_REFERENCE = 20
"""Fewest usable reference rows accepted: below this neither model can be fitted, let alone cross-fitted."""
RIDGE_PENALTIES = np.logspace(-4, 4, 17)
"""Ridge penalties tried, in units of the training-row count (the features are standardised, so the
penalty's scale is the data's: trace(X'X) = rows x columns)."""
LOG_ABS_NORMAL_MEAN = -(np.euler_gamma + np.log(2.0)) / 2.0
"""E log|Z| for Z ~ N(0, 1) (-0.635): a ridge fit of log|residual| estimates log sigma + this."""
QUANTILE_COMPONENTS = 32
"""The boosted model's inputs when there are more feature columns than this: standardised Ldiff and this many
leading principal components of the standardised design (trees need few, informative inputs at the hundreds
to thousands of reference rows an audit has); with fewer columns, the standardised design itself."""
QUANTILE_LEAVES = (4, 16)
QUANTILE_ITERATIONS = (25, 50, 100, 200)
QUANTILE_LEARNING_RATE = 0.1
QUANTILE_MIN_LEAF = 20
QUANTILE_INNER_FOLDS = 3
SPREAD_FLOOR = 0.1
"""The quantile model's spread q_0.5 - q_level is kept at least this fraction of its median over the training
rows: where the two boosted quantiles cross, a near-zero spread would call any Lrec below the median a member."""
FOLD_POLICY = ("reference rows: K seeded folds, each scored by the model fitted on the other K-1 folds; "
               "other rows: each assigned a seeded fold and scored by that fold's model")
PREDICT_CHUNK = 65_536
"""Rows widened to float64 at a time when scoring: a million images' features stay float16 in memory."""
NOT_SCORED = -2
"""`PerImageScores.fold` of a row with a missing Lrec, Ldiff or feature (its lcal is NaN)."""


# ---------------------------------------------------------------- fitted models


class FittedModel(Protocol):
    """A non-member model fitted on some rows: the centre and scale of a non-member's Lrec at new rows."""

    hyperparameters: dict[str, Any]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class _Standardiser:
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> _Standardiser:
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 0, std, 1.0))  # a constant column stays 0 after centring

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class _Ridge:
    coef: np.ndarray
    intercept: float
    penalty: float
    """Relative to the training-row count (see RIDGE_PENALTIES)."""

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return z @ self.coef + self.intercept


def _ridge_loo(u: np.ndarray, s: np.ndarray, vt: np.ndarray, y: np.ndarray) -> tuple[_Ridge, np.ndarray]:
    """Ridge of y on the centred design U diag(s) Vt with an unpenalised intercept, its penalty chosen by
    exact leave-one-out error over RIDGE_PENALTIES; also returns the leave-one-out residuals at that penalty."""
    n = y.shape[0]
    centre = float(y.mean())
    uty = u.T @ (y - centre)
    squared = s ** 2
    best = None
    for relative in RIDGE_PENALTIES:
        shrink = squared / (squared + relative * n)
        residual = (y - centre) - u @ (shrink * uty)
        leverage = 1.0 / n + (u ** 2) @ shrink  # the intercept's 1/n: the design is centred
        loo = residual / (1.0 - leverage)
        error = float(np.mean(loo ** 2))
        if best is None or error < best[0]:
            best = (error, float(relative), loo)
    _, relative, loo = best
    coef = vt.T @ (s / (squared + relative * n) * uty)
    return _Ridge(coef, centre, relative), loo


@dataclass(frozen=True)
class GaussianModel:
    """mu(x) and sigma(x) of a non-member's Lrec (see the module docstring)."""

    standardise: _Standardiser
    mean: _Ridge
    log_scale: _Ridge
    hyperparameters: dict[str, Any]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = self.standardise(x)
        return self.mean(z), np.exp(self.log_scale(z) - LOG_ABS_NORMAL_MEAN)


def fit_gaussian(x: np.ndarray, y: np.ndarray) -> GaussianModel:
    """Ridge of Lrec on the standardised design, then ridge of log|leave-one-out residual| (one SVD for both)."""
    standardise = _Standardiser.fit(x)
    u, s, vt = np.linalg.svd(standardise(x), full_matrices=False)
    mean, residual = _ridge_loo(u, s, vt, y)
    magnitude = np.abs(residual)
    floor = 1e-3 * float(np.median(magnitude)) or 1e-12  # log 0: an exact fit of one row is not a zero scale
    log_scale, _ = _ridge_loo(u, s, vt, np.log(np.maximum(magnitude, floor)))
    return GaussianModel(standardise, mean, log_scale,
                         {"mean_penalty": mean.penalty, "log_scale_penalty": log_scale.penalty})


def _pinball(y: np.ndarray, predicted: np.ndarray, quantile: float) -> float:
    error = y - predicted
    return float(np.mean(np.maximum(quantile * error, (quantile - 1.0) * error)))


@dataclass(frozen=True)
class _ShiftedQuantile:
    """A boosted quantile regression plus the shift that makes its coverage right on rows it did not see."""

    regressor: Any
    shift: float

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return self.regressor.predict(inputs) + self.shift


def _boosted_quantile(inputs: np.ndarray, y: np.ndarray, quantile: float, seed: int) -> tuple[_ShiftedQuantile, dict]:
    """A HistGradientBoostingRegressor of the `quantile` of y, its leaves and iterations chosen by a seeded
    inner K-fold CV on these rows (pinball loss; every iteration count read off one fit by staged prediction).

    Boosted quantiles fit their training rows too closely in the tails (measured: a 5% quantile covered 8% of
    fresh rows), so the prediction is shifted by the `quantile` of the inner folds' held-out residuals at the
    chosen size, the split-conformal correction of conformalized quantile regression (Romano et al. 2019),
    computed on these training rows only.
    """
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.model_selection import KFold
    from threadpoolctl import threadpool_limits

    def regressor(leaves: int, iterations: int) -> HistGradientBoostingRegressor:
        return HistGradientBoostingRegressor(
            loss="quantile", quantile=quantile, learning_rate=QUANTILE_LEARNING_RATE, max_iter=iterations,
            max_leaf_nodes=leaves, min_samples_leaf=QUANTILE_MIN_LEAF, early_stopping=False, random_state=seed)

    # One thread: at thousands of rows, OpenMP's per-iteration synchronisation costs more than it saves, and
    # on a machine whose cores are busy its spin-waiting made these fits about 100 times slower.
    with threadpool_limits(1, user_api="openmp"):
        held_out_predictions = np.zeros((len(QUANTILE_LEAVES), len(QUANTILE_ITERATIONS), y.shape[0]))
        for train, held_out in KFold(QUANTILE_INNER_FOLDS, shuffle=True, random_state=seed).split(inputs):
            for row, leaves in enumerate(QUANTILE_LEAVES):
                fitted = regressor(leaves, max(QUANTILE_ITERATIONS)).fit(inputs[train], y[train])
                for iteration, predicted in enumerate(fitted.staged_predict(inputs[held_out]), start=1):
                    if iteration in QUANTILE_ITERATIONS:
                        held_out_predictions[row, QUANTILE_ITERATIONS.index(iteration), held_out] = predicted
        losses = np.array([[_pinball(y, predicted, quantile) for predicted in by_size]
                           for by_size in held_out_predictions])
        row, column = np.unravel_index(int(np.argmin(losses)), losses.shape)
        shift = float(np.quantile(y - held_out_predictions[row, column], quantile))
        leaves, iterations = QUANTILE_LEAVES[row], QUANTILE_ITERATIONS[column]
        chosen = {"leaves": leaves, "iterations": iterations, "inner_pinball": float(losses[row, column]),
                  "conformal_shift": shift}
        return _ShiftedQuantile(regressor(leaves, iterations).fit(inputs, y), shift), chosen


def _quantile_inputs(z: np.ndarray, components: np.ndarray | None) -> np.ndarray:
    """The boosted model's inputs from the standardised design (see QUANTILE_COMPONENTS)."""
    return z if components is None else np.column_stack([z[:, -1], z @ components.T])


@dataclass(frozen=True)
class QuantileModel:
    """q_0.5(x) and q_level(x) of a non-member's Lrec (see the module docstring)."""

    standardise: _Standardiser
    components: np.ndarray | None
    """Rows: leading principal directions of the standardised design (None: the design itself is the input)."""
    median: Any
    low: Any
    level: float
    spread_floor: float
    hyperparameters: dict[str, Any]

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inputs = _quantile_inputs(self.standardise(x), self.components)
        median, low = self.median.predict(inputs), self.low.predict(inputs)
        return median, np.maximum(median - low, self.spread_floor) / -ndtri(self.level)


def fit_quantile(x: np.ndarray, y: np.ndarray, level: float, seed: int) -> QuantileModel:
    """Boosted regressions of the median and the `level` quantile of Lrec, on the standardised design or its
    leading principal components (QUANTILE_COMPONENTS); the spread floor is set on these training rows."""
    standardise = _Standardiser.fit(x)
    z = standardise(x)
    components = np.linalg.svd(z, full_matrices=False)[2][:QUANTILE_COMPONENTS] \
        if z.shape[1] > QUANTILE_COMPONENTS else None
    inputs = _quantile_inputs(z, components)
    median, median_choice = _boosted_quantile(inputs, y, 0.5, seed)
    low, low_choice = _boosted_quantile(inputs, y, level, seed)
    spread = float(np.median(median.predict(inputs) - low.predict(inputs)))
    return QuantileModel(standardise, components, median, low, level, SPREAD_FLOOR * max(spread, 1e-12),
                         {"median": median_choice, f"q{level:g}": low_choice})


def fit_model(model: str, x: np.ndarray, y: np.ndarray, level: float, seed: int) -> FittedModel:
    """The one place a non-member model (`MODELS`) is fitted, so a test can watch which rows every fit saw."""
    return fit_gaussian(x, y) if model == "gaussian" else fit_quantile(x, y, level, seed)


# ---------------------------------------------------------------- cross-fitted scores


@dataclass(frozen=True)
class PerImageScores:
    """Cross-fitted per-image scores, one entry per input row.

    ``lcal = (lrec - center) / scale`` (lower = member); NaN where the row could not be scored (`fold` ==
    NOT_SCORED). `fold`: the fold k whose model (fitted on the reference rows outside fold k) scored the row;
    a reference row is in its fold, another row only assigned to it. `record`: how it was made (JSON-ready).
    """

    lcal: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    fold: np.ndarray
    reference: np.ndarray
    """The reference rows actually used (given, and scorable)."""
    model: str
    level: float
    record: dict[str, Any]

    def thresholds_at(self, fpr: float, rule: str = "model") -> np.ndarray:
        """Per-image Lrec thresholds for a target FPR: call row i a member iff ``lrec[i] <= threshold[i]``.

        rule `model`: the model's own `fpr` quantile of a non-member's Lrec at x: mu(x) + sigma(x) Phi^-1(fpr)
        for `gaussian`; q_level(x) for `quantile`, which only knows the level it was fitted at (refit with
        ``level=fpr`` for another). rule `reference`: centre + scale * t, with t the largest cut on the
        reference rows' out-of-fold lcal that calls at most `fpr` of them members
        (`memscore.metrics.calibrate_threshold`), which corrects a misspecified tail at the price of needing
        at least 1/fpr reference rows. NaN where the row was not scored.
        """
        if not 0.0 < fpr < 1.0:
            raise UsageError(f"fpr must be in (0, 1), got {fpr}")
        if rule == "model":
            if self.model == "quantile" and not np.isclose(fpr, self.level, rtol=1e-9, atol=0.0):
                raise UsageError(f"the quantile model was fitted at level {self.level:g}, not at FPR {fpr:g}: "
                                 f"calibrate again with level={fpr:g} (--fpr), or use rule 'reference'")
            cut = float(ndtri(fpr))
        elif rule == "reference":
            cut = calibrate_threshold(self.lcal[self.reference], fpr)
        else:
            raise UsageError(f"rule must be 'model' or 'reference', got {rule!r}")
        return self.center + self.scale * cut


def check_model_options(model: str, folds: int, level: float) -> None:
    """Refuse a model, a fold count or a quantile level `calibrate_per_image` cannot use."""
    if model not in MODELS:
        raise UsageError(f"model must be one of {MODELS}, got {model!r}")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise UsageError(f"folds must be an integer >= 2 (cross-fitting needs a held-out fold), got {folds!r}")
    if not 0.0 < level < 0.5:
        raise UsageError(f"level must be in (0, 0.5) (a lower quantile of a non-member's Lrec), got {level}")


def calibrate_per_image(lrec, ldiff, features, reference_mask, *, model: str = MODELS[0], folds: int = DEFAULT_FOLDS,
                        seed: int = 0, level: float = DEFAULT_LEVEL, alpha: float = 0.0) -> PerImageScores:
    """Cross-fitted calibrated scores from plain arrays (no store): see the module docstring.

    lrec, ldiff: [n]; features: [n, F] (any float dtype; a row with a NaN is not scored); reference_mask:
    [n] bool, True for known non-members. `seed` decides the folds and the boosted model's inner CV; `level`
    is the quantile the `quantile` model fits besides the median (ignored by `gaussian`). `alpha`: the models
    describe a non-member's ``lrec - alpha * ldiff`` (`alpha` = the store's alpha: its Lmem) instead of Lrec,
    so the difficulty trend that Lmem already removes is not shrunk with the other inputs; `center` and the
    thresholds stay on the Lrec scale.
    """
    check_model_options(model, folds, level)
    lrec = float_vector("lrec", lrec)
    n = lrec.shape[0]
    ldiff = float_vector("ldiff", ldiff, n, other="lrec")
    if not np.isfinite(alpha):
        raise UsageError(f"alpha must be finite, got {alpha}")
    statistic = lrec - alpha * ldiff
    features = np.asarray(features)  # kept in its dtype (float16 in a store): rows are widened as they are used
    if features.dtype.kind != "f":
        features = features.astype(np.float64)
    if features.ndim != 2 or features.shape[0] != n:
        raise UsageError(f"features must have shape [{n}, F] (one row per image), got {features.shape}")
    reference_mask = np.asarray(reference_mask)
    if reference_mask.dtype != bool or reference_mask.shape != (n,):
        raise UsageError(f"reference_mask must be a bool array of shape ({n},), got {reference_mask.dtype} "
                         f"{reference_mask.shape}")

    def design(at: np.ndarray) -> np.ndarray:
        return np.column_stack([features[at].astype(np.float64), ldiff[at]])

    scorable = np.isfinite(lrec) & np.isfinite(ldiff)
    for start in range(0, n, PREDICT_CHUNK):
        scorable[start:start + PREDICT_CHUNK] &= np.isfinite(features[start:start + PREDICT_CHUNK]).all(axis=1)
    reference = reference_mask & scorable
    rows = np.flatnonzero(reference)
    needed = max(MIN_REFERENCE, 2 * folds)
    if rows.size < needed:
        raise UsageError(f"{rows.size} usable reference rows ({int(reference_mask.sum())} given, "
                         f"{int((reference_mask & ~scorable).sum())} with a missing lrec, ldiff or feature); "
                         f"per-image calibration with {folds} folds needs at least {needed}: give more known "
                         "non-members")

    fold = np.full(n, NOT_SCORED, dtype=np.int64)
    generator = np.random.default_rng(seed)
    for group in (rows, np.flatnonzero(scorable & ~reference)):  # balanced folds within each group
        fold[group[generator.permutation(group.size)]] = np.arange(group.size) % folds
    center, scale = np.full(n, np.nan), np.full(n, np.nan)
    chosen = []

    for k in range(folds):
        train, scored = rows[fold[rows] != k], np.flatnonzero(fold == k)
        fitted = fit_model(model, design(train), statistic[train], level, seed)
        for start in range(0, scored.size, PREDICT_CHUNK):
            chunk = scored[start:start + PREDICT_CHUNK]
            center[chunk], scale[chunk] = fitted.predict(design(chunk))
        chosen.append({"fold": k, "trained_on": int(train.size), "scored": int(scored.size),
                       **fitted.hyperparameters})
    record = {
        "method": "per-image", "model": model, "folds": int(folds), "seed": int(seed), "alpha": float(alpha),
        "modelled": "raw" if alpha == 0.0 else f"raw - {alpha:.6g} * ldiff (lmem)",
        **({"level": float(level)} if model == "quantile" else {}),
        "fold_policy": FOLD_POLICY, "n_reference": int(rows.size),
        "n_reference_not_scorable": int((reference_mask & ~scorable).sum()),
        "n_scored": int(scorable.sum()), "n_not_scored": int(n - scorable.sum()),
        "inputs": f"{features.shape[1]} feature columns + ldiff, standardised on each model's training rows",
        "fits": chosen, "direction": LCAL_DIRECTION,
    }
    center = center + alpha * ldiff  # on the Lrec scale: lrec - center = statistic - its predicted centre
    return PerImageScores(lcal=(lrec - center) / scale, center=center, scale=scale, fold=fold, reference=reference,
                          model=model, level=float(level), record=record)
