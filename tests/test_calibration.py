"""Tests for engine/calibration.py on synthetic data whose per-image non-member distribution is known:
Lrec = a(x) + b(x) * noise for non-members, members shifted down by 2.5 b(x); a(x) linear or not in the
features, log b(x) linear."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy.special import ndtri

from memscore import calibration
from memscore.calibration import NOT_SCORED, calibrate_per_image
from memscore.metrics import evaluate_scores, tpr_at_fpr


@dataclass(frozen=True)
class Synthetic:
    lrec: np.ndarray
    ldiff: np.ndarray
    features: np.ndarray
    member: np.ndarray
    reference: np.ndarray
    mean: np.ndarray
    """a(x): a non-member's mean Lrec."""
    scale: np.ndarray
    """b(x): a non-member's Lrec standard deviation."""

    @property
    def fresh_nonmembers(self) -> np.ndarray:
        return ~self.member & ~self.reference


def synthetic(n: int = 2000, n_features: int = 6, member_fraction: float = 0.2, reference_fraction: float = 0.5,
              seed: int = 0, nonlinear: bool = True) -> Synthetic:
    """Scale log-linear in the features, mean linear plus (when `nonlinear`) a tanh term no ridge can fit;
    Ldiff a noisy view of the first feature."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, n_features))
    ldiff = 0.1 + 0.02 * features[:, 0] + 0.005 * rng.normal(size=n)
    mean = 0.3 + 0.06 * features[:, 0] + 0.04 * (np.tanh(2 * features[:, 1]) if nonlinear else features[:, 1])
    scale = 0.02 * np.exp(0.4 * features[:, 2])
    member = rng.random(n) < member_fraction
    lrec = mean + scale * rng.normal(size=n) - 2.5 * scale * member
    reference = ~member & (rng.random(n) < reference_fraction)
    return Synthetic(lrec, ldiff, features.astype(np.float16), member, reference, mean, scale)


@pytest.fixture(scope="module")
def data() -> Synthetic:
    return synthetic()


@pytest.fixture(scope="module")
def gaussian(data):
    return calibrate_per_image(data.lrec, data.ldiff, data.features, data.reference, model="gaussian")


@pytest.fixture(scope="module")
def linear_data() -> Synthetic:
    return synthetic(n=4000, nonlinear=False, seed=1)


@pytest.fixture(scope="module")
def quantile(data):
    return calibrate_per_image(data.lrec, data.ldiff, data.features, data.reference, model="quantile", level=0.05)


def test_gaussian_model_recovers_the_mean_and_scale(linear_data):
    data = linear_data  # the model's own family: linear mean, log-linear scale
    gaussian = calibrate_per_image(data.lrec, data.ldiff, data.features, data.reference, model="gaussian")
    for rows in (data.fresh_nonmembers, data.reference):  # reference rows are scored out of fold
        assert np.median(np.abs(gaussian.center[rows] - data.mean[rows]) / data.scale[rows]) < 0.1
        assert np.corrcoef(np.log(gaussian.scale[rows]), np.log(data.scale[rows]))[0, 1] > 0.95
        assert np.median(np.abs(gaussian.scale[rows] / data.scale[rows] - 1)) < 0.1


def test_gaussian_model_tracks_a_mean_it_cannot_fit_exactly(data, gaussian):
    fresh = data.fresh_nonmembers
    assert np.corrcoef(gaussian.center[fresh], data.mean[fresh])[0, 1] > 0.97
    assert np.corrcoef(np.log(gaussian.scale[fresh]), np.log(data.scale[fresh]))[0, 1] > 0.85


@pytest.mark.parametrize("fpr", [0.05, 0.2])
def test_gaussian_threshold_covers_its_fpr_on_fresh_nonmembers(data, gaussian, fpr):
    fresh = data.fresh_nonmembers
    achieved = np.mean(data.lrec[fresh] <= gaussian.thresholds_at(fpr)[fresh])
    tolerance = 4 * np.sqrt(fpr * (1 - fpr) / fresh.sum()) + 0.01
    assert abs(achieved - fpr) < tolerance
    np.testing.assert_allclose(gaussian.thresholds_at(fpr), gaussian.center + gaussian.scale * ndtri(fpr))


def test_quantile_model_covers_its_level_on_fresh_nonmembers(data, quantile):
    fresh = data.fresh_nonmembers
    threshold = quantile.thresholds_at(0.05)
    achieved = np.mean(data.lrec[fresh] <= threshold[fresh])
    assert 0.03 <= achieved <= 0.075, achieved
    # ... and it learnt the shape of the true 5% quantile, not a constant.
    true_quantile = data.mean + data.scale * ndtri(0.05)
    assert np.corrcoef(threshold[fresh], true_quantile[fresh])[0, 1] > 0.9
    with pytest.raises(ValueError, match="fitted at level 0.05"):
        quantile.thresholds_at(0.01)


@pytest.mark.parametrize("model", ["gaussian", "quantile"])
def test_reference_rule_is_a_cut_on_lcal_within_its_fpr(data, gaussian, quantile, model):
    scores = {"gaussian": gaussian, "quantile": quantile}[model]
    threshold = scores.thresholds_at(0.05, rule="reference")
    reference = scores.reference
    assert np.mean(data.lrec[reference] <= threshold[reference]) <= 0.05
    fresh = data.fresh_nonmembers
    assert abs(np.mean(data.lrec[fresh] <= threshold[fresh]) - 0.05) < 0.02


@pytest.mark.parametrize("model", ["gaussian", "quantile"])
def test_lcal_beats_raw_lrec_at_low_fpr(data, gaussian, quantile, model):
    lcal = {"gaussian": gaussian, "quantile": quantile}[model].lcal
    # Evaluated on every row: reference rows are scored out of fold.
    raw = tpr_at_fpr(data.lrec, data.member, 0.01).tpr
    calibrated = tpr_at_fpr(lcal, data.member, 0.01).tpr
    assert calibrated > 2 * raw + 0.1, (raw, calibrated)
    assert evaluate_scores(lcal, data.member).auc > evaluate_scores(data.lrec, data.member).auc + 0.1


def test_no_row_is_scored_by_a_model_that_saw_it(monkeypatch):
    data = synthetic(n=400, seed=3)
    n = data.lrec.size
    features = np.column_stack([data.features.astype(np.float64), np.arange(n)])  # last column: the row id
    fits = []
    real_fit = calibration.fit_model

    class Watched:
        def __init__(self, fitted, trained_on):
            self.fitted, self.trained_on, self.predicted = fitted, trained_on, []
            self.hyperparameters = fitted.hyperparameters

        def predict(self, x):
            self.predicted.append(x[:, -2].astype(int))  # the design is the features, then ldiff
            return self.fitted.predict(x)

    def watched_fit(model, x, y, level, seed):
        fits.append(Watched(real_fit(model, x, y, level, seed), set(x[:, -2].astype(int).tolist())))
        return fits[-1]

    monkeypatch.setattr(calibration, "fit_model", watched_fit)
    result = calibrate_per_image(data.lrec, data.ldiff, features, data.reference, folds=4, seed=7)
    assert len(fits) == 4  # one model per fold
    scored_by = {}
    for index, fit in enumerate(fits):
        for rows in fit.predicted:
            assert not set(rows.tolist()) & fit.trained_on, f"model {index} scored rows it was fitted on"
            for row in rows.tolist():
                assert row not in scored_by, f"row {row} scored twice"
                scored_by[row] = index
    assert sorted(scored_by) == list(range(n))  # every row scored exactly once
    reference = np.flatnonzero(data.reference)
    for row in range(n):  # each row is scored by the model of its fold: the reference rows outside that fold
        assert scored_by[row] == result.fold[row]
        assert fits[scored_by[row]].trained_on == set(reference[result.fold[reference] != result.fold[row]].tolist())


def test_folds_are_seeded_and_balanced():
    small = synthetic(n=300, seed=4)
    first = calibrate_per_image(small.lrec, small.ldiff, small.features, small.reference, folds=5, seed=1)
    again = calibrate_per_image(small.lrec, small.ldiff, small.features, small.reference, folds=5, seed=1)
    other = calibrate_per_image(small.lrec, small.ldiff, small.features, small.reference, folds=5, seed=2)
    np.testing.assert_array_equal(first.fold, again.fold)
    np.testing.assert_array_equal(first.lcal, again.lcal)
    assert not np.array_equal(first.fold, other.fold)
    for group in (small.reference, ~small.reference):  # reference and other rows: balanced over the folds
        counts = np.bincount(first.fold[group], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert first.record["folds"] == 5 and first.record["seed"] == 1 and len(first.record["fits"]) == 5


def test_rows_with_a_missing_input_are_not_scored_nor_used():
    data = synthetic(n=300, seed=5)
    features = data.features.astype(np.float64)
    reference_rows = np.flatnonzero(data.reference)
    other_rows = np.flatnonzero(~data.reference)
    features[reference_rows[:3], 1] = np.nan
    ldiff = data.ldiff.copy()
    ldiff[other_rows[:2]] = np.nan
    result = calibrate_per_image(data.lrec, ldiff, features, data.reference)
    broken = np.r_[reference_rows[:3], other_rows[:2]]
    assert np.all(np.isnan(result.lcal[broken])) and np.all(result.fold[broken] == NOT_SCORED)
    assert not result.reference[reference_rows[:3]].any()
    assert result.record["n_reference"] == reference_rows.size - 3
    assert result.record["n_reference_not_scorable"] == 3 and result.record["n_not_scored"] == 5
    assert np.isfinite(np.delete(result.lcal, broken)).all()


def test_options_and_small_references_are_refused():
    data = synthetic(n=200, seed=6)
    args = (data.lrec, data.ldiff, data.features)
    with pytest.raises(ValueError, match="model must be one of"):
        calibrate_per_image(*args, data.reference, model="lira")
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        calibrate_per_image(*args, data.reference, folds=1)
    with pytest.raises(ValueError, match=r"level must be in \(0, 0.5\)"):
        calibrate_per_image(*args, data.reference, model="quantile", level=0.6)
    few = data.reference & (np.cumsum(data.reference) <= 12)
    with pytest.raises(ValueError, match="12 usable reference rows .* needs at least 20: give more known non-members"):
        calibrate_per_image(*args, few)
    with pytest.raises(ValueError, match=r"features must have shape \[200, F\]"):
        calibrate_per_image(data.lrec, data.ldiff, data.features[:-1], data.reference)
    with pytest.raises(ValueError, match="reference_mask must be a bool array"):
        calibrate_per_image(*args, data.reference.astype(int))


def test_the_lmem_statistic_models_lrec_less_alpha_ldiff(data):
    shifted = calibrate_per_image(data.lrec - 2.0 * data.ldiff, data.ldiff, data.features, data.reference)
    with_alpha = calibrate_per_image(data.lrec, data.ldiff, data.features, data.reference, alpha=2.0)
    np.testing.assert_allclose(with_alpha.lcal, shifted.lcal, rtol=1e-9, atol=1e-12)  # the same model of lmem
    np.testing.assert_allclose(with_alpha.center, shifted.center + 2.0 * data.ldiff, rtol=1e-9)  # on Lrec's scale
    assert with_alpha.record["alpha"] == 2.0 and "lmem" in with_alpha.record["modelled"]
