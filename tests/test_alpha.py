"""Tests for engine/alpha.py: slopes against scipy's linregress and theilslopes, recovery of a known
slope, robustness to outliers, and that reference and auto alpha read only the rows they may."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from memscore import alpha as al


def _synthetic(n: int, slope: float, seed: int, noise: float = 0.02):
    """lrec = 0.1 + slope * ldiff + noise, members shifted down; returns (lrec, ldiff, members)."""
    rng = np.random.default_rng(seed)
    ldiff = rng.uniform(0.05, 0.35, n)
    members = rng.random(n) < 0.5
    lrec = 0.1 + slope * ldiff - 0.01 * members + rng.normal(0, noise, n)
    return lrec, ldiff, members


def test_ols_matches_linregress():
    lrec, ldiff, _ = _synthetic(500, 3.3, 0, noise=0.1)
    fit = al.fit_alpha(lrec, ldiff)
    ref = stats.linregress(ldiff, lrec)
    assert fit.method == "ols" and fit.n_rows == 500
    assert fit.alpha == pytest.approx(ref.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-10)
    assert fit.r2 == pytest.approx(ref.rvalue**2, rel=1e-10)


def test_robust_matches_theilslopes_on_all_pairs():
    lrec, ldiff, _ = _synthetic(800, 2.0, 1, noise=0.1)
    ldiff = np.round(ldiff, 2)  # repeated x values: such pairs carry no slope
    fit = al.fit_alpha(lrec, ldiff, method="robust")
    ref = stats.theilslopes(lrec, ldiff, method="joint")
    assert fit.method == "robust"
    assert fit.alpha == pytest.approx(ref.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-10)


@pytest.mark.parametrize("method, tolerance", [("ols", 0.01), ("robust", 0.01)])
def test_fit_recovers_known_slope(method, tolerance):
    for slope in (0.5, 3.5):
        lrec, ldiff, _ = _synthetic(200_000, slope, 2)
        fit = al.fit_alpha(lrec, ldiff, method)
        assert abs(fit.alpha - slope) < tolerance
        assert fit.r2 > 0.5


def test_robust_is_deterministic_on_sampled_pairs():
    lrec, ldiff, _ = _synthetic(50_000, 3.0, 3)
    assert al.fit_alpha(lrec, ldiff, "robust") == al.fit_alpha(lrec, ldiff, "robust")


def test_outliers_move_ols_a_lot_and_robust_little():
    lrec, ldiff, _ = _synthetic(100_000, 3.0, 4)
    clean = {m: al.fit_alpha(lrec, ldiff, m).alpha for m in ("ols", "robust")}
    rng = np.random.default_rng(4)
    hit = rng.random(lrec.size) < 0.02
    lrec = lrec.copy()
    lrec[hit] += 100 * ldiff[hit]  # 2% huge reconstruction errors, worse on harder images
    dirty = {m: al.fit_alpha(lrec, ldiff, m).alpha for m in ("ols", "robust")}
    assert abs(dirty["ols"] - clean["ols"]) > 1.0
    assert abs(dirty["robust"] - clean["robust"]) < 0.1


def test_fit_ignores_non_finite_rows_and_rejects_degenerate_input():
    lrec, ldiff, _ = _synthetic(1000, 2.0, 5)
    spoiled_lrec, spoiled_ldiff = lrec.copy(), ldiff.copy()
    spoiled_lrec[:10], spoiled_ldiff[10:20] = np.nan, np.inf
    fit = al.fit_alpha(spoiled_lrec, spoiled_ldiff)
    assert fit.n_rows == 980
    assert fit.alpha == pytest.approx(al.fit_alpha(lrec[20:], ldiff[20:]).alpha, rel=1e-12)
    with pytest.raises(ValueError, match="distinct"):
        al.fit_alpha(lrec, np.ones_like(ldiff))
    with pytest.raises(ValueError, match="rows"):
        al.fit_alpha(lrec, ldiff[:-1])
    with pytest.raises(ValueError, match="'ols' or 'robust'"):
        al.fit_alpha(lrec, ldiff, "median")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0.5", al.AlphaSpec("fixed", 0.5)),
        (" 2 ", al.AlphaSpec("fixed", 2.0)),
        (1, al.AlphaSpec("fixed", 1.0)),
        (0.25, al.AlphaSpec("fixed", 0.25)),
        ("fit", al.AlphaSpec("fit")),
        ("FIT:robust", al.AlphaSpec("fit:robust")),
        ("fit:reference", al.AlphaSpec("fit:reference")),
        ("auto", al.AlphaSpec("auto")),
    ],
)
def test_parse_alpha_accepts(spec, expected):
    assert al.parse_alpha(spec) == expected


@pytest.mark.parametrize("spec", ["fixed", "fit:ols", "", "nan", "inf", float("nan"), True, None, [1.0]])
def test_parse_alpha_rejects(spec):
    with pytest.raises(ValueError, match="alpha"):
        al.parse_alpha(spec)


def test_resolve_fixed_fit_and_robust():
    lrec, ldiff, _ = _synthetic(3000, 3.0, 6)
    assert al.resolve_alpha("0.5", lrec, ldiff) == al.AlphaFit(0.5, "fixed", 0, None, None)
    fit = al.resolve_alpha("fit", lrec, ldiff)
    assert fit.method == "fit" and fit.alpha == al.fit_alpha(lrec, ldiff).alpha
    robust = al.resolve_alpha(al.AlphaSpec("fit:robust"), lrec, ldiff)
    assert robust.method == "fit:robust" and robust.alpha == al.fit_alpha(lrec, ldiff, "robust").alpha


def test_fit_reference_uses_only_masked_rows():
    lrec, ldiff, _ = _synthetic(4000, 2.0, 7)
    reference = np.random.default_rng(7).random(4000) < 0.3
    steep = lrec.copy()
    steep[~reference] = 5 + 9 * ldiff[~reference]  # a different slope off the reference rows
    fit = al.resolve_alpha("fit:reference", steep, ldiff, reference_mask=reference)
    assert fit.method == "fit:reference" and fit.n_rows == reference.sum()
    assert fit.alpha == pytest.approx(al.fit_alpha(lrec[reference], ldiff[reference]).alpha, rel=1e-12)
    assert abs(fit.alpha - 2.0) < 0.05
    with pytest.raises(ValueError, match="no rows"):
        al.resolve_alpha("fit:reference", lrec, ldiff, reference_mask=np.zeros(4000, bool))
    with pytest.raises(ValueError, match="reference_mask is required"):
        al.resolve_alpha("fit:reference", lrec, ldiff)
    with pytest.raises(ValueError, match="boolean"):
        al.resolve_alpha("fit:reference", lrec, ldiff, reference_mask=reference.astype(int))


def test_auto_maximises_calibration_auc_over_the_grid():
    lrec, ldiff, members = _synthetic(600, 3.0, 8, noise=0.03)
    calibration = np.arange(600) < 300
    fit = al.resolve_alpha("auto", lrec, ldiff, is_member=members, calibration_mask=calibration)
    x, y, m = ldiff[calibration], lrec[calibration], members[calibration]
    grid = np.r_[np.arange(201) * 0.05, stats.linregress(x, y).slope]
    best = max(roc_auc_score(m, -(y - a * x)) for a in grid)
    assert fit.method == "auto" and fit.n_rows == 300
    assert fit.auc == pytest.approx(best, rel=1e-12)
    assert roc_auc_score(m, -(y - fit.alpha * x)) == pytest.approx(best, rel=1e-12)
    assert 1.5 < fit.alpha < 4.5


def test_auto_considers_the_fitted_slope_between_grid_points():
    # Noiseless: only alphas within ~0.001 of 3.337 separate the classes perfectly, and the
    # nearest grid points (3.30, 3.35) do not; the OLS slope of the calibration rows does.
    rng = np.random.default_rng(12)
    ldiff = rng.random(600)
    members = rng.random(600) < 0.5
    lrec = 0.1 + 3.337 * ldiff - 0.001 * members
    calibration = np.arange(600) < 300
    fit = al.resolve_alpha("auto", lrec, ldiff, is_member=members, calibration_mask=calibration)
    assert fit.auc == 1.0 and fit.alpha == pytest.approx(3.337, abs=1e-3)


def test_auto_never_reads_rows_outside_calibration_mask():
    lrec, ldiff, members = _synthetic(2000, 3.0, 9, noise=0.03)
    calibration = np.random.default_rng(9).random(2000) < 0.5
    before = al.resolve_alpha("auto", lrec, ldiff, is_member=members, calibration_mask=calibration)
    rng = np.random.default_rng(10)
    outside = ~calibration
    scrambled_members, scrambled_lrec, scrambled_ldiff = members.copy(), lrec.copy(), ldiff.copy()
    scrambled_members[outside] = rng.random(outside.sum()) < 0.5
    scrambled_lrec[outside] = rng.normal(size=outside.sum())
    scrambled_ldiff[outside] = np.nan
    after = al.resolve_alpha(
        "auto", scrambled_lrec, scrambled_ldiff, is_member=scrambled_members, calibration_mask=calibration
    )
    assert after == before


def test_auto_requires_labels_and_a_proper_calibration_subset():
    lrec, ldiff, members = _synthetic(100, 3.0, 11)
    with pytest.raises(ValueError, match="calibration_mask is required"):
        al.resolve_alpha("auto", lrec, ldiff, is_member=members)
    with pytest.raises(ValueError, match="is_member"):
        al.resolve_alpha("auto", lrec, ldiff, calibration_mask=np.arange(100) < 50)
    with pytest.raises(ValueError, match="proper subset"):
        al.resolve_alpha("auto", lrec, ldiff, is_member=members, calibration_mask=np.ones(100, bool))


def test_membership_error():
    out = al.membership_error([1.0, np.nan, 3.0], [0.5, 1.0, np.nan], 2.0)
    np.testing.assert_array_equal(out, [0.0, np.nan, np.nan])
    with pytest.raises(ValueError, match="rows"):
        al.membership_error([1.0, 2.0], [1.0], 1.0)
