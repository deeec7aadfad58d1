"""Tests for engine/calibration.py on synthetic data whose per-image non-member distribution is known:
Lrec = a(x) + b(x) * noise for non-members, members shifted down by 2.5 b(x); a(x) linear or not in the
features, log b(x) linear."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy.special import ndtri

from memscore import calibration
from memscore.calibration import (NOT_SCORED, calibrate_per_image, ids_digest, per_image_thresholds,
                                require_current_lcal, rescore_per_image)
from memscore.config import ScoreConfig
from memscore.metrics import evaluate_scores, tpr_at_fpr
from memscore.rescore import alpha_pass
from memscore.store import ScoreStore, StoreError
from stores_for_tests import synthetic_store


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
    real_fit = calibration._fit_model

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

    monkeypatch.setattr(calibration, "_fit_model", watched_fit)
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


# ---------------------------------------------------------------- on a store


def calibration_store(path: Path, data: Synthetic, shard_size: int = 250) -> ScoreStore:
    """A finished store holding `data` (ids "0".."n-1", the member labels, features) written through the store's
    own API, with lmem at the fitted alpha."""
    n, width = data.features.shape
    store = ScoreStore.create(path, n, shard_size, ScoreConfig(victim="recon:synthetic"),
                              wide_columns={"features": width})
    for index in range(store.n_shards):
        write_rows(store, index, data)
    alpha_pass(store, "fit")
    return ScoreStore.open(path)


def write_rows(store: ScoreStore, index: int, data: Synthetic, lrec: np.ndarray | None = None) -> None:
    rows = slice(*store.shard_range(index))
    size = rows.stop - rows.start
    store.write_shard(index, {
        "id": [str(i) for i in range(rows.start, rows.stop)], "lrec": (data.lrec if lrec is None else lrec)[rows],
        "ldiff": data.ldiff[rows], "features": data.features[rows], "status": ["ok"] * size, "reason": [""] * size,
        "member": data.member[rows].astype(np.int8), "out_height": np.full(size, 32, np.int32),
        "out_width": np.full(size, 32, np.int32), "out_of_range": np.zeros(size, np.float32)})


def write_ids(path: Path, rows: np.ndarray) -> Path:
    path.write_text("".join(f"{row}\n" for row in np.flatnonzero(rows)))
    return path


@pytest.fixture(scope="module")
def small() -> Synthetic:
    return synthetic(n=600, seed=8)


def test_rescore_per_image_writes_lcal_and_its_record(tmp_path, small):
    store = calibration_store(tmp_path / "s.zarr", small)
    reference_file = write_ids(tmp_path / "reference.txt", small.reference)
    record = rescore_per_image(store.path, reference_file, model="gaussian", folds=4, seed=3, statistic="lrec")
    expected = calibrate_per_image(small.lrec.astype(np.float32), small.ldiff.astype(np.float32), small.features,
                                   small.reference, folds=4, seed=3)
    store = ScoreStore.open(store.path)
    np.testing.assert_array_equal(store.column("lcal"), expected.lcal.astype(np.float32))
    assert store.column_attrs("lcal")["calibration"] == record == require_current_lcal(store)
    assert (record["method"], record["model"], record["folds"], record["seed"]) == ("per-image", "gaussian", 4, 3)
    assert record["reference_ids_file"] == str(reference_file.resolve())
    assert record["reference_sha256"] == ids_digest(str(i) for i in np.flatnonzero(small.reference))
    assert record["n_reference"] == small.reference.sum() and record["reference_ids_not_in_store"] == 0
    assert set(record["inputs_fingerprint"]) == {"lrec", "ldiff", "features"}
    assert record["inputs_fingerprint"]["features"] == store.fingerprint("features")
    assert "lcal" in store.derived_columns() and store.verify() == []


def test_the_lmem_statistic_models_lrec_less_alpha_ldiff_and_follows_the_stores_alpha(tmp_path, small, data):
    shifted = calibrate_per_image(data.lrec - 2.0 * data.ldiff, data.ldiff, data.features, data.reference)
    with_alpha = calibrate_per_image(data.lrec, data.ldiff, data.features, data.reference, alpha=2.0)
    np.testing.assert_allclose(with_alpha.lcal, shifted.lcal, rtol=1e-9, atol=1e-12)  # the same model of lmem
    np.testing.assert_allclose(with_alpha.center, shifted.center + 2.0 * data.ldiff, rtol=1e-9)  # on Lrec's scale
    assert with_alpha.record["alpha"] == 2.0 and "lmem" in with_alpha.record["statistic"]
    store = calibration_store(tmp_path / "s.zarr", small)
    reference_file = write_ids(tmp_path / "reference.txt", small.reference)
    record = rescore_per_image(store.path, reference_file, folds=4, seed=3)  # the default statistic: lmem
    store = ScoreStore.open(store.path)
    expected = calibrate_per_image(store.column("lrec"), store.column("ldiff"), store.column("features"),
                                   small.reference, folds=4, seed=3, alpha=store.alpha.value)
    np.testing.assert_array_equal(store.column("lcal"), expected.lcal.astype(np.float32))
    assert record["alpha"] == store.alpha.value and set(record["inputs_fingerprint"]) == {"lrec", "ldiff", "features",
                                                                                          "lmem"}
    from memscore.rescore import rescore
    rescore(store.path, "0.5")
    with pytest.raises(StoreError, match="lmem changed after lcal was computed"):
        require_current_lcal(ScoreStore.open(store.path))


def test_lcal_is_refused_once_the_store_changed_after_it(tmp_path, small):
    store = calibration_store(tmp_path / "s.zarr", small)
    rescore_per_image(store.path, write_ids(tmp_path / "reference.txt", small.reference))
    writer = ScoreStore.open(store.path, mode="r+")
    with writer.lock():
        write_rows(writer, 1, small, lrec=small.lrec + 0.01)  # a shard scored again, with other values
    with pytest.raises(StoreError, match="lrec changed after lcal was computed .* rescore --method per-image"):
        require_current_lcal(ScoreStore.open(store.path))
    rescore_per_image(store.path, tmp_path / "reference.txt")
    assert require_current_lcal(ScoreStore.open(store.path))["n_reference"] == small.reference.sum()


def test_rescore_per_image_refusals(tmp_path, small):
    store = calibration_store(tmp_path / "s.zarr", small)
    with pytest.raises(ValueError, match="no such file"):
        rescore_per_image(store.path, tmp_path / "missing.txt")
    members = write_ids(tmp_path / "members.txt", small.member | small.reference)
    with pytest.raises(ValueError, match=r"reference ids are labelled members in .* known non-members"):
        rescore_per_image(store.path, members)
    (tmp_path / "strangers.txt").write_text("x1\nx2\n")
    with pytest.raises(ValueError, match="none of the 2 ids in .*strangers.txt is in"):
        rescore_per_image(store.path, tmp_path / "strangers.txt")
    with pytest.raises(StoreError, match="has no per-image calibrated score yet: run `memscore rescore"):
        require_current_lcal(store)
    old = synthetic_store(tmp_path / "old.zarr")  # a store without features
    with pytest.raises(StoreError, match="has no per-image features column"):
        rescore_per_image(old.path, write_ids(tmp_path / "r.txt", old.column("member") == 0))


def test_per_image_thresholds_of_a_store_reproduce_its_calibration(tmp_path, small):
    store = calibration_store(tmp_path / "s.zarr", small)
    reference_file = write_ids(tmp_path / "reference.txt", small.reference)
    rescore_per_image(store.path, reference_file, folds=3, seed=2)
    found = per_image_thresholds(store.path, 0.1)
    expected = calibrate_per_image(small.lrec.astype(np.float32), small.ldiff.astype(np.float32), small.features,
                                   small.reference, folds=3, seed=2,
                                   alpha=ScoreStore.open(store.path).alpha.value).thresholds_at(0.1)
    np.testing.assert_array_equal(found.lrec_threshold, expected)
    assert found.ids.tolist() == [str(i) for i in range(small.lrec.size)] and found.calibration["seed"] == 2
    fresh = small.fresh_nonmembers
    assert abs(np.mean(small.lrec[fresh] <= found.lrec_threshold[fresh]) - 0.1) < 0.05
    reference_file.write_text("1\n")
    with pytest.raises(ValueError, match="the reference lcal was computed from, is gone or changed"):
        per_image_thresholds(store.path, 0.1)
