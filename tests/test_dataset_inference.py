"""Tests for engine/dataset_inference.py: calibrated under the null (suspect sets drawn from non-members give
uniform p-values), powerful against member-like sets, and the size curve."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from memscore import rescore
from memscore.calibration import calibrate_per_image
from memscore.dataset_inference import dataset_test, dataset_test_store, default_sizes, p_value_by_size
from test_calibration import synthetic
from test_lcal import calibration_store, write_ids


def _skewed(rng: np.random.Generator, size: int, shift: float = 0.0) -> np.ndarray:
    """Lrec-like scores: positive, right-skewed, heavy-ish tailed; `shift` in units of their spread."""
    return rng.lognormal(-1.5, 0.5, size) - shift * 0.12


def test_nonmember_suspect_sets_give_uniform_p_values():
    rng = np.random.default_rng(0)
    draws = 400
    p_values = np.array([dataset_test(_skewed(rng, 30), _skewed(rng, 300), n_boot=0).p_value for _ in range(draws)])
    # False-positive rate at p < 0.05 within binomial error (3 standard deviations) of 5%.
    rate = np.mean(p_values < 0.05)
    assert abs(rate - 0.05) < 3 * np.sqrt(0.05 * 0.95 / draws), rate
    assert stats.kstest(p_values, "uniform").pvalue > 0.01


def test_cross_fitted_lcal_is_calibrated_under_the_null():
    # The store's use: suspects are non-reference rows (scored by the all-reference model), the reference is
    # the calibration's own reference rows (scored out of fold). With no members anywhere, p is uniform.
    draws = 400
    p_values = []
    for draw in range(draws):
        data = synthetic(n=500, member_fraction=0.0, reference_fraction=0.6, seed=1000 + draw)
        lcal = calibrate_per_image(data.lrec, data.ldiff, data.features, data.reference, seed=draw).lcal
        suspects = np.flatnonzero(~data.reference)[:30]
        p_values.append(dataset_test(lcal[suspects], lcal[data.reference], n_boot=0).p_value)
    p_values = np.array(p_values)
    assert abs(np.mean(p_values < 0.05) - 0.05) < 3 * np.sqrt(0.05 * 0.95 / draws)
    assert stats.kstest(p_values, "uniform").pvalue > 0.01


def test_ties_and_tiny_sets_stay_calibrated():
    # Quantised scores (many ties) and 5 suspects: the exact/tie-corrected p-value must not be anti-conservative.
    rng = np.random.default_rng(1)
    draws = 400
    p_values = np.array([dataset_test(np.round(_skewed(rng, 5), 2), np.round(_skewed(rng, 200), 2),
                                      n_boot=0).p_value for _ in range(draws)])
    assert np.mean(p_values < 0.05) < 0.05 + 3 * np.sqrt(0.05 * 0.95 / draws)


def test_member_like_sets_reach_small_p_values():
    rng = np.random.default_rng(2)
    suspect, reference = _skewed(rng, 60, shift=0.8), _skewed(rng, 500)
    result = dataset_test(suspect, reference, n_boot=200, seed=3)
    assert result.p_value < 1e-4
    assert 0.65 < result.auc < 0.95
    assert result.auc_ci[0] < result.auc < result.auc_ci[1] and result.auc_ci[0] > 0.5
    assert result.u_statistic == pytest.approx(result.auc * 60 * 500)
    # AUC is P(suspect below reference) + ties / 2, counted directly.
    pairs = suspect[:, None] - reference[None, :]
    assert result.auc == pytest.approx(np.mean(pairs < 0) + np.mean(pairs == 0) / 2)
    # The opposite direction (suspects score HIGHER) is not evidence of membership.
    assert dataset_test(reference[:60] + 0.5, reference[60:], n_boot=0).p_value > 0.99


def test_nan_scores_are_left_out_and_counted():
    rng = np.random.default_rng(4)
    suspect, reference = _skewed(rng, 20), _skewed(rng, 100)
    with_nan = dataset_test(np.r_[suspect, np.nan], np.r_[reference, np.nan, np.nan], n_boot=0)
    clean = dataset_test(suspect, reference, n_boot=0)
    assert with_nan.p_value == clean.p_value and with_nan.n_excluded_nan == 3
    assert (with_nan.n_suspect, with_nan.n_reference) == (20, 100)
    assert with_nan.to_dict()["auc_ci"] is None
    with pytest.raises(ValueError, match="suspect_scores has no finite score"):
        dataset_test([np.nan], reference)


def test_p_value_falls_with_suspect_set_size():
    rng = np.random.default_rng(5)
    suspect, reference = _skewed(rng, 200, shift=0.5), _skewed(rng, 800)
    curve = p_value_by_size(suspect, reference, draws=50, seed=6)
    assert curve.sizes == default_sizes(200) and curve.sizes[0] == 2 and curve.sizes[-1] == 200
    assert curve.median_p[-1] < 1e-6 and curve.median_p[0] > 0.05
    assert curve.median_p[-1] == pytest.approx(dataset_test(suspect, reference, n_boot=0).p_value)
    # The smallest size reaching p < 0.01 is the first size where the median crosses it.
    first = curve.sizes.index(curve.smallest_size)
    assert curve.median_p[first] < 0.01 and all(p >= 0.01 for p in curve.median_p[:first])
    assert curve.power[-1] == 1.0 and curve.power[0] < 0.5
    again = p_value_by_size(suspect, reference, draws=50, seed=6)
    assert again == curve
    nonmembers = p_value_by_size(_skewed(rng, 200), reference, sizes=[10, 50, 200], draws=50, seed=6)
    assert nonmembers.smallest_size is None and min(nonmembers.median_p) > 0.01
    with pytest.raises(ValueError, match=r"sizes must lie in \[1, 200\]"):
        p_value_by_size(suspect, reference, sizes=[500])


def test_default_sizes():
    assert default_sizes(400) == [2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 400]
    assert default_sizes(7) == [2, 3, 5, 7]
    assert default_sizes(1) == [1]


def test_dataset_test_on_a_store(tmp_path):
    data = synthetic(n=800, member_fraction=0.25, reference_fraction=0.6, seed=9)
    store = calibration_store(tmp_path / "s.zarr", data)
    rescore(store.path, "per-image", reference=write_ids(tmp_path / "reference.txt", data.reference))
    members = write_ids(tmp_path / "members.txt", data.member)
    result = dataset_test_store(store.path, members, n_boot=100, draws=20)
    assert result["score"] == "lcal" and result["reference"].startswith("lcal's reference")
    assert result["test"]["n_suspect"] == data.member.sum()
    assert result["test"]["n_reference"] == data.reference.sum()
    assert result["test"]["p_value"] < 1e-10 and result["by_size"]["smallest_size"] <= 30
    assert result["calibration"]["model"] == "gaussian"
    # Non-members outside the reference: no evidence.
    fresh = write_ids(tmp_path / "fresh.txt", data.fresh_nonmembers)
    assert dataset_test_store(store.path, fresh, n_boot=0, draws=5)["test"]["p_value"] > 0.01
    # Suspects among the calibration's reference are left out of the default reference ...
    some_reference = data.reference & (np.cumsum(data.reference) <= 50)
    overlap = write_ids(tmp_path / "overlap.txt", some_reference)
    left = dataset_test_store(store.path, overlap, n_boot=0, draws=5)["test"]["n_reference"]
    assert left == data.reference.sum() - 50
    # ... and refused when the reference is given explicitly.
    with pytest.raises(ValueError, match="50 ids are both suspect .* and reference"):
        dataset_test_store(store.path, overlap, tmp_path / "reference.txt")
    # Other scores need an explicit reference.
    with pytest.raises(ValueError, match="score lrec needs reference ids"):
        dataset_test_store(store.path, members, score="lrec")
    lrec = dataset_test_store(store.path, members, tmp_path / "reference.txt", score="lrec", n_boot=0, draws=5)
    assert lrec["test"]["auc"] < result["test"]["auc"]  # calibration makes the members stand out more
    # A score the store does not hold is refused, saying how it is made.
    with pytest.raises(ValueError, match="has no score 'lira'; it has lrec, lmem, lcal .*--method lira"):
        dataset_test_store(store.path, members, tmp_path / "reference.txt", score="lira")


def test_default_reference_refused_once_its_file_changed(tmp_path):
    data = synthetic(n=300, seed=10)
    store = calibration_store(tmp_path / "s.zarr", data)
    reference = write_ids(tmp_path / "reference.txt", data.reference)
    rescore(store.path, "per-image", reference=reference)
    suspects = write_ids(tmp_path / "members.txt", data.member)
    assert dataset_test_store(store.path, suspects, n_boot=0, draws=2)["test"]["n_reference"] == data.reference.sum()
    reference.write_text("0\n")
    with pytest.raises(ValueError, match="lcal's reference, is gone or changed .* pass --reference"):
        dataset_test_store(store.path, suspects)
