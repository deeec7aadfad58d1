"""Tests for engine/metrics.py against independent references: sklearn's roc_curve and
roc_auc_score, brute-force loops over thresholds, and binomial bounds for label-free calibration."""

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from memscore import metrics as ev


def _inputs(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, is_member) with members scoring lower on average; `kind` controls ties."""
    rng = np.random.default_rng(seed)
    members = rng.random(n) < 0.4
    members[:2] = [True, False]
    if kind == "continuous":
        scores = rng.normal(size=n) - 0.8 * members
    elif kind == "ties":
        scores = rng.integers(0, 6, size=n) - members * rng.integers(0, 2, size=n)
    else:  # all equal
        scores = np.full(n, 0.25)
    return scores.astype(float), members


def _brute_force(scores, members, target):
    """Largest TPR over every threshold with FPR <= target, and the lowest FPR reaching it."""
    best = (-1.0, 2.0)
    for tau in np.r_[-np.inf, np.unique(scores)]:
        called = scores <= tau
        tpr, fpr = called[members].mean(), called[~members].mean()
        if fpr <= target and (tpr > best[0] or (tpr == best[0] and fpr < best[1])):
            best = (tpr, fpr)
    return best


def _fields(result: ev.TprAtFpr) -> tuple:
    return (result.target_fpr, result.tpr, result.achieved_fpr, result.threshold)


@pytest.mark.parametrize("kind", ["continuous", "ties", "equal"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_and_auc_match_sklearn(kind, seed):
    scores, members = _inputs(kind, 3000, seed)
    curve = ev.roc(scores, members)
    fpr, tpr, thresholds = roc_curve(members, -scores, drop_intermediate=False)
    np.testing.assert_array_equal(curve.fpr, fpr)
    np.testing.assert_array_equal(curve.tpr, tpr)
    np.testing.assert_array_equal(curve.thresholds, -thresholds)
    assert ev.auc(scores, members) == pytest.approx(roc_auc_score(members, -scores), rel=1e-13, abs=1e-15)


def test_threshold_semantics_member_iff_score_at_most_threshold():
    scores, members = _inputs("ties", 500, 3)
    curve = ev.roc(scores, members)
    for fpr, tpr, tau in zip(curve.fpr, curve.tpr, curve.thresholds):
        called = ev.predict_members(scores, tau)
        assert called[members].mean() == tpr and called[~members].mean() == fpr


def test_auc_direction_lower_score_is_member():
    members = np.array([True, True, False, False])
    assert ev.auc([0.1, 0.2, 0.8, 0.9], members) == 1.0
    assert ev.auc([0.8, 0.9, 0.1, 0.2], members) == 0.0


def test_nan_rows_excluded_and_counted():
    scores, members = _inputs("continuous", 2000, 4)
    with_nan = scores.copy()
    with_nan[::7] = np.nan
    keep = ~np.isnan(with_nan)
    curve = ev.roc(with_nan, members)
    assert curve.n_excluded_nan == int((~keep).sum())
    assert curve.n_members + curve.n_nonmembers == int(keep.sum())
    assert ev.auc(with_nan, members) == pytest.approx(roc_auc_score(members[keep], -scores[keep]), rel=1e-13)
    report = ev.evaluate_scores(with_nan, members, fprs=(0.1,))
    assert report.n_excluded_nan == int((~keep).sum())


@pytest.mark.parametrize("labels, missing", [([True] * 4, "no non-members"), ([False] * 4, "no members")])
def test_one_class_empty_raises_naming_it(labels, missing):
    for fn in (ev.roc, ev.auc, ev.balanced_accuracy, ev.evaluate_scores):
        with pytest.raises(ValueError, match=missing):
            fn([0.1, 0.2, 0.3, 0.4], labels)


def test_class_emptied_by_nan_raises():
    with pytest.raises(ValueError, match="no members"):
        ev.auc([np.nan, 0.2, 0.3], [True, False, False])


def test_shape_and_label_errors():
    with pytest.raises(ValueError, match="rows"):
        ev.auc([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(ValueError, match="1-D"):
        ev.auc([[0.1, 0.2]], [True, False])
    with pytest.raises(ValueError, match="boolean"):
        ev.auc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="rows"):
        ev.alpha_sweep([0.1, 0.2], [0.1], [True, False], [0.0])


@pytest.mark.parametrize("kind", ["continuous", "ties", "equal"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0.5, 0.1, 0.05, 0.01])
def test_tpr_at_fpr_matches_brute_force(kind, seed, target):
    scores, members = _inputs(kind, 300, seed)
    result = ev.tpr_at_fpr(scores, members, target)
    tpr, fpr = _brute_force(scores, members, target)
    assert (result.tpr, result.achieved_fpr) == (tpr, fpr)
    assert result.achieved_fpr <= target
    called = ev.predict_members(scores, result.threshold)
    assert (called[members].mean(), called[~members].mean()) == (tpr, fpr)


def test_tpr_at_fpr_refuses_too_few_nonmembers():
    scores = np.arange(150.0)
    members = np.r_[np.ones(51, bool), np.zeros(99, bool)]  # 99 non-members < 1 / 0.01
    with pytest.raises(ev.UnresolvableFpr, match="99 non-members"):
        ev.tpr_at_fpr(scores, members, 0.01)
    members = np.r_[np.ones(50, bool), np.zeros(100, bool)]  # exactly 1 / 0.01
    assert ev.tpr_at_fpr(scores, members, 0.01).tpr == 1.0


def test_balanced_accuracy_matches_brute_force():
    for seed in range(3):
        scores, members = _inputs("ties", 400, seed)
        value, tau = ev.balanced_accuracy(scores, members)
        called = scores <= tau
        assert value == pytest.approx((called[members].mean() + (~called[~members]).mean()) / 2)
        brute = max(
            ((scores <= t)[members].mean() + (scores > t)[~members].mean()) / 2
            for t in np.r_[-np.inf, np.unique(scores)]
        )
        assert value == pytest.approx(brute)


def test_bootstrap_ci_is_stratified_deterministic_and_brackets_estimate():
    scores, members = _inputs("continuous", 600, 5)
    fraction = members.mean()
    assert ev.bootstrap_ci(scores, members, lambda s, y: y.mean(), n_boot=50) == (fraction, fraction)
    low, high = ev.bootstrap_ci(scores, members, ev.auc, n_boot=300, seed=1)
    assert low < ev.auc(scores, members) < high
    assert (low, high) == ev.bootstrap_ci(scores, members, ev.auc, n_boot=300, seed=1)
    wide = ev.bootstrap_ci(scores, members, ev.auc, n_boot=300, seed=1, level=0.99)
    assert wide[0] < low and high < wide[1]
    # The width matches the normal-theory standard error of the AUC (Hanley-McNeil) to ~25%.
    a, n_pos, n_neg = ev.auc(scores, members), members.sum(), (~members).sum()
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))
    assert (high - low) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.25)


def test_evaluate_scores_report():
    scores, members = _inputs("continuous", 1500, 6)
    n_nonmembers = int((~members).sum())
    assert 100 <= n_nonmembers < 1000
    report = ev.evaluate_scores(scores, members, n_boot=100, seed=3)
    assert report.auc == ev.auc(scores, members)
    best = ev.balanced_accuracy(scores, members)
    assert (report.balanced_accuracy, report.balanced_accuracy_threshold) == best
    assert (report.n_members, report.n_nonmembers, report.n_excluded_nan) == (members.sum(), n_nonmembers, 0)
    at_10, at_1, at_01 = report.tpr_at_fpr
    assert _fields(at_10) == _fields(ev.tpr_at_fpr(scores, members, 0.1))
    assert _fields(at_1) == _fields(ev.tpr_at_fpr(scores, members, 0.01))
    assert at_01.tpr is None and at_01.ci is None and f"{n_nonmembers} non-members" in at_01.refused
    assert at_10.ci[0] <= at_10.tpr <= at_10.ci[1]
    assert report.auc_ci[0] < report.auc < report.auc_ci[1]
    assert report.auc_ci == ev.bootstrap_ci(scores, members, ev.auc, n_boot=100, seed=3)
    as_dict = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert as_dict["tpr_at_fpr"][2]["refused"] == at_01.refused
    assert as_dict["n_members"] == report.n_members
    assert ev.evaluate_scores(scores, members).auc_ci is None


def test_to_dict_maps_infinite_threshold_to_none():
    members = np.array([True, False] * 50)
    report = ev.evaluate_scores(np.zeros(100), members, fprs=(0.1,))
    assert report.tpr_at_fpr[0].threshold == -np.inf
    assert report.to_dict()["tpr_at_fpr"][0]["threshold"] is None


def test_alpha_sweep_matches_sklearn_per_alpha():
    rng = np.random.default_rng(7)
    n = 2000
    members = rng.random(n) < 0.5
    ldiff = rng.random(n)
    lrec = 0.2 + 3 * ldiff - 0.1 * members + rng.normal(0, 0.2, n)
    lrec[5] = np.nan
    ldiff[9] = np.inf
    alphas = np.linspace(0, 6, 25)
    out_alphas, aucs = ev.alpha_sweep(lrec, ldiff, members, alphas)
    np.testing.assert_array_equal(out_alphas, alphas)
    keep = np.isfinite(lrec) & np.isfinite(ldiff)
    expected = [roc_auc_score(members[keep], -(lrec[keep] - a * ldiff[keep])) for a in alphas]
    np.testing.assert_allclose(aucs, expected, rtol=1e-12)


def test_large_input_matches_sklearn():
    scores, members = _inputs("ties", 300_000, 8)
    scores = scores + np.round(np.random.default_rng(8).normal(size=scores.size), 2)
    assert ev.auc(scores, members) == pytest.approx(roc_auc_score(members, -scores), rel=1e-12)


@pytest.mark.parametrize("fpr", [0.1, 0.01])
@pytest.mark.parametrize("seed", [0, 1])
def test_calibrated_threshold_holds_fpr_on_held_out_nonmembers(fpr, seed):
    rng = np.random.default_rng(seed)
    n_cal, n_held = 5000, 1_000_000
    calibration = rng.normal(size=n_cal)
    tau = ev.calibrate_threshold(calibration, fpr)
    # On its own sample: at most fpr, and the closest count to it.
    assert ev.predict_members(calibration, tau).sum() == math.floor(fpr * n_cal + 1e-9)
    achieved = ev.predict_members(rng.normal(size=n_held), tau).mean()
    bound = 4 * math.sqrt(fpr * (1 - fpr) / n_cal) + 4 * math.sqrt(fpr * (1 - fpr) / n_held)
    assert abs(achieved - fpr) <= bound
    assert abs(stats.norm.cdf(tau) - fpr) <= 4 * math.sqrt(fpr * (1 - fpr) / n_cal)


def test_calibrate_threshold_with_ties_and_refusal():
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 50, size=1000).astype(float)
    for fpr in (0.013, 0.1, 0.37):
        tau = ev.calibrate_threshold(scores, fpr)
        count = (scores <= tau).sum()
        assert count / scores.size <= fpr
        # No larger cut-off stays within fpr: the next distinct score above tau overshoots.
        assert (scores <= scores[scores > tau].min()).sum() / scores.size > fpr
    ties_at_bottom = np.r_[np.zeros(5), np.arange(1.0, 96.0)]
    tau = ev.calibrate_threshold(ties_at_bottom, 0.01)
    assert tau < 0 and not ev.predict_members(ties_at_bottom, tau).any()
    assert ev.calibrate_threshold(np.r_[np.arange(100.0), np.nan], 0.01) == 0.0
    with pytest.raises(ev.UnresolvableFpr, match="99 non-members"):
        ev.calibrate_threshold(np.arange(99.0), 0.01)
    assert not ev.predict_members([np.nan], 1e9).any()


def test_alpha_sweep_needs_both_classes_among_finite_rows():
    with pytest.raises(ValueError, match="no members"):
        ev.alpha_sweep([0.1, 0.2, 0.3], [0.1, np.nan, 0.2], [False, True, False], [0.0, 1.0])


def test_format_metrics_renders_every_number_and_each_refusal_with_its_reason():
    scores, members = _inputs("continuous", 60, seed=5)
    report = ev.evaluate_scores(scores, members, fprs=(0.1, 0.001), n_boot=20).to_dict()
    lines = ev.format_metrics("lmem", report).splitlines()
    low, high = report["auc_ci"]
    assert lines[0] == (f"lmem: AUC {report['auc']:.4f} [{low:.4f}, {high:.4f}], balanced accuracy "
                        f"{report['balanced_accuracy']:.4f} (threshold {report['balanced_accuracy_threshold']:.5g})")
    at_10 = report["tpr_at_fpr"][0]
    tpr_low, tpr_high = at_10["tpr_exact_ci"]
    fpr_low, fpr_high = at_10["fpr_exact_ci"]
    boot_low, boot_high = at_10["ci"]
    assert lines[1] == (f"  TPR @ FPR 0.1: {at_10['tpr']:.4f} ({at_10['true_positives']}/{report['n_members']}; "
                        f"exact 95% [{tpr_low:.4f}, {tpr_high:.4f}]; bootstrap [{boot_low:.4f}, {boot_high:.4f}]), "
                        f"achieved FPR {at_10['achieved_fpr']:.4f} ({at_10['false_positives']}/{report['n_nonmembers']}; "
                        f"exact 95% [{fpr_low:.4f}, {fpr_high:.4f}]), threshold {at_10['threshold']:.5g}")
    assert lines[2] == f"  TPR @ FPR 0.001: refused ({report['tpr_at_fpr'][1]['refused']})"


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (5, 10), (10, 10), (3, 1000), (0, 1000), (997, 1000), (17, 250)])
@pytest.mark.parametrize("level", [0.95, 0.99])
def test_clopper_pearson_equals_scipys_exact_binomial_interval(k, n, level):
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    assert ev.clopper_pearson(k, n, level) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_every_operating_point_carries_exact_intervals_of_its_counts():
    scores, members = _inputs("ties", 1500, 9)
    report = ev.evaluate_scores(scores, members, fprs=(0.1, 0.01, 0.0001), level=0.9)
    for point in report.tpr_at_fpr[:2]:
        called = ev.predict_members(scores, point.threshold)
        tp, fp = int(called[members].sum()), int(called[~members].sum())
        assert (point.true_positives, point.false_positives) == (tp, fp)
        tpr_ci = stats.binomtest(tp, int(members.sum())).proportion_ci(0.9, method="exact")
        fpr_ci = stats.binomtest(fp, int((~members).sum())).proportion_ci(0.9, method="exact")
        assert point.tpr_exact_ci == pytest.approx((tpr_ci.low, tpr_ci.high), abs=1e-12)
        assert point.fpr_exact_ci == pytest.approx((fpr_ci.low, fpr_ci.high), abs=1e-12)
        assert point.tpr_exact_ci[0] <= point.tpr <= point.tpr_exact_ci[1]
    refused = report.tpr_at_fpr[2]
    assert refused.refused and refused.tpr_exact_ci is None and refused.fpr_exact_ci is None
    assert ev.tpr_at_fpr(scores, members, 0.1).tpr_exact_ci == ev.evaluate_scores(
        scores, members, fprs=(0.1,)).tpr_at_fpr[0].tpr_exact_ci


def test_clopper_pearson_refuses_impossible_counts():
    for k, n in ((-1, 10), (11, 10), (0, 0)):
        with pytest.raises(ValueError, match="0 <= k <= n"):
            ev.clopper_pearson(k, n)


def test_holdout_split_is_stratified_seeded_and_the_fraction_asked():
    members = np.r_[np.ones(300, bool), np.zeros(701, bool)]
    held_out = ev.holdout_split(members, 0.3, seed=4)
    assert (held_out[members].sum(), held_out[~members].sum()) == (90, 210)
    np.testing.assert_array_equal(held_out, ev.holdout_split(members, 0.3, seed=4))
    assert not np.array_equal(held_out, ev.holdout_split(members, 0.3, seed=5))
    with pytest.raises(ValueError, match=r"holdout fraction must be in \(0, 1\)"):
        ev.holdout_split(members, 1.0, seed=0)


@pytest.mark.parametrize("target", [0.1, 0.01])
def test_held_out_fpr_is_close_to_the_target_on_average(target):
    """Thresholds chosen on 2000 non-members reach, on 2000 others, the target FPR on average (the k-th of n
    order statistics: k / (n + 1) expected), never reported on the rows that chose them."""
    achieved, chosen = [], []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        members = np.r_[np.ones(1000, bool), np.zeros(4000, bool)]
        scores = rng.normal(size=5000) - 1.0 * members
        point = ev.held_out_rates(scores, members, ev.holdout_split(members, 0.5, seed), fprs=(target,))[0]
        assert point.n_nonmembers == 2000 and point.n_members == 500 and point.chosen_fpr <= target
        achieved.append(point.fpr)
        chosen.append(point.chosen_fpr)
    sd_of_mean = math.sqrt(2 * target * (1 - target) / 2000 / 200)  # choice and measurement each add a binomial
    assert abs(np.mean(achieved) - target) < 4 * sd_of_mean
    assert np.std(achieved) > 0.5 * math.sqrt(target * (1 - target) / 2000)  # measured on rows other than chosen


def test_held_out_rows_never_choose_the_threshold():
    rng = np.random.default_rng(11)
    members = rng.random(3000) < 0.4
    scores = rng.normal(size=3000) - members
    held_out = ev.holdout_split(members, 0.5, seed=2)
    before = ev.held_out_rates(scores, members, held_out, fprs=(0.1, 0.01))
    moved = scores.copy()
    moved[held_out & ~members] -= 5.0  # held-out non-members now all look like members
    after = ev.held_out_rates(moved, members, held_out, fprs=(0.1, 0.01))
    for old, new in zip(before, after):
        assert new.threshold == old.threshold and new.chosen_fpr == old.chosen_fpr
        assert new.fpr > 0.9 > old.fpr  # the held-out rows see the same threshold and report what it does
        tau = ev.calibrate_threshold(scores[~held_out & ~members], old.target_fpr)
        assert old.threshold == tau
        fp = int((scores[held_out & ~members] <= tau).sum())
        interval = stats.binomtest(fp, old.n_nonmembers).proportion_ci(method="exact")
        assert old.false_positives == fp and old.fpr_exact_ci == pytest.approx((interval.low, interval.high))
    # a threshold chosen on all rows (what an in-sample report does) differs from the held-out choice
    assert ev.calibrate_threshold(moved[~members], 0.1) != after[0].threshold


def test_held_out_rates_refuse_a_target_the_choosing_part_cannot_resolve():
    members = np.r_[np.ones(100, bool), np.zeros(300, bool)]
    scores = np.random.default_rng(0).normal(size=400) - members
    points = ev.held_out_rates(scores, members, ev.holdout_split(members, 0.5, 0), fprs=(0.1, 0.001))
    assert points[0].refused is None and "choosing part" in points[1].refused and points[1].fpr is None
    text = ev.format_held_out("lmem", [dataclasses.asdict(p) for p in points])
    assert "FPR 0.1: chosen FPR" in text and "held-out FPR" in text and "FPR 0.001: refused (choosing part" in text
