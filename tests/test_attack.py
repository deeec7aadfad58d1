"""memscore.attack: metrics of a store equal memscore.metrics on its columns; unfinished and damaged stores are refused
unless asked for (and then say so); a calibration is bound to the exact score it was set on."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from memscore import rescore
from memscore.attack import Calibration, calibrate, calibration_split, evaluate, predict
from memscore.metrics import calibrate_threshold, evaluate_scores, held_out_rates, holdout_split
from memscore.store import ScoreStore, StoreError
from stores_for_tests import synthetic_store


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> ScoreStore:
    return synthetic_store(tmp_path_factory.mktemp("finished") / "s.zarr", failed=(7, 33))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> ScoreStore:
    """Shard 1 (rows 25..49) never written and no alpha pass: what a killed run leaves."""
    return synthetic_store(tmp_path_factory.mktemp("interrupted") / "s.zarr", pending_shards=(1,), alpha=None)


def _nonmembers_file(store: ScoreStore, path) -> str:
    ids = store.column("id")[store.column("member") == 0]
    path.write_text("".join(f"{i}\n" for i in ids))
    return str(path)


def test_evaluate_is_engine_metrics_on_the_stored_columns(finished):
    result = evaluate(finished.path, n_boot=0)
    member = finished.column("member") == 1
    for column in ("lrec", "lmem"):
        assert result[column] == evaluate_scores(finished.column(column).astype(np.float64), member).to_dict()
    assert result["partial"] is False and result["pending"] == 0 and result["failed"] == 2
    assert result["alpha"]["spec"] == "fit" and result["alpha"]["value"] == finished.alpha.value


def test_alpha_auto_reports_only_on_rows_it_did_not_choose_alpha_on(finished):
    result = evaluate(finished, alpha="auto")
    chosen = calibration_split(finished.column("id"), 0.5, finished.config.seed)
    assert result["alpha"]["calibration_rows"] == int(chosen.sum()) > 0
    assert result["lmem"]["n_members"] + result["lmem"]["n_nonmembers"] + result["lmem"]["n_excluded_nan"] \
        == int((~chosen).sum())


def test_an_interrupted_store_is_refused_unless_partial_and_then_says_so(interrupted, tmp_path):
    with pytest.raises(StoreError, match="25 of 60 rows are still pending.*--partial"):
        evaluate(interrupted.path)
    result = evaluate(interrupted.path, partial=True)
    assert result["partial"] is True and result["pending"] == 25
    scored = interrupted.column("status") == "ok"
    assert result["lrec"]["n_members"] + result["lrec"]["n_nonmembers"] == int(scored.sum())
    # no lmem yet: the store's own alpha spec, fitted on the rows scored so far, and labelled as such
    assert result["alpha"]["spec"] == str(interrupted.config.alpha) and result["alpha"]["n_rows"] == int(scored.sum())
    assert "scored so far" in result["alpha"]["fitted_on"]
    assert result["n_unlabelled_excluded"] == 0 and result["lrec"]["n_excluded_nan"] == 0
    # labels from a file: the pending rows (no id yet) are neither members nor non-members
    members = tmp_path / "members.txt"
    members.write_text("".join(f"{i}\n" for i in range(0, 60, 2)))
    by_file = evaluate(interrupted.path, members, partial=True)
    assert by_file["lrec"]["n_members"] + by_file["lrec"]["n_nonmembers"] == int(scored.sum())
    assert by_file["lrec"]["n_excluded_nan"] == 0 and by_file["n_unlabelled_excluded"] == 0
    with pytest.raises(StoreError, match="still pending"):
        calibrate(interrupted.path, "unused.txt", column="lrec")


def test_a_damaged_store_is_refused_naming_the_shard_and_array(finished, tmp_path):
    copy = tmp_path / "s.zarr"
    shutil.copytree(finished.path, copy)
    chunk = next(p for p in (copy / "lrec").rglob("*") if p.is_file() and p.name != "zarr.json" and "1" in p.name)
    chunk.unlink()
    with pytest.raises(StoreError, match="shard 1.*lrec"):
        evaluate(copy, partial=True)


def test_calibrate_then_predict_writes_the_decisions(finished, tmp_path):
    store = tmp_path / "s.zarr"
    shutil.copytree(finished.path, store)
    calibration = calibrate(store, _nonmembers_file(finished, tmp_path / "non.txt"), fpr=0.1)
    scores = finished.column("lmem").astype(np.float64)
    nonmember = finished.column("member") == 0
    assert (scores[nonmember & np.isfinite(scores)] <= calibration.tau).mean() <= 0.1
    assert calibration.fingerprint == ScoreStore.open(store).fingerprint("lmem")
    calibration.save(tmp_path / "c.json")
    prediction = predict(store, calibration=tmp_path / "c.json")
    decision = ScoreStore.open(store).column("predicted_member")
    expected = np.where(np.isfinite(scores), scores <= calibration.tau, -1)
    np.testing.assert_array_equal(decision, expected)
    assert (prediction.members, prediction.not_scored) == (int((expected == 1).sum()), 2)


def test_a_calibration_is_refused_once_the_score_changed(finished, tmp_path):
    """#15 item 2: rescore at another alpha after calibrating; the old tau would call far more members."""
    store = tmp_path / "s.zarr"
    shutil.copytree(finished.path, store)
    calibration = calibrate(store, _nonmembers_file(finished, tmp_path / "non.txt"), fpr=0.25)
    rescore(store, alpha="3")
    with pytest.raises(StoreError, match="alpha: calibrated on .*'value': 3.0.*calibrate` again"):
        predict(store, calibration=calibration)
    assert "predicted_member" not in ScoreStore.open(store).derived_columns()
    # equal values in another store are another score too (the fingerprint carries the store's identity)
    twin = synthetic_store(tmp_path / "twin.zarr", failed=(7, 33))
    np.testing.assert_array_equal(twin.column("lmem"), finished.column("lmem"))
    with pytest.raises(StoreError, match="store_id"):
        predict(twin.path, calibration=calibrate(finished.path, _nonmembers_file(finished, tmp_path / "n2.txt"),
                                                fpr=0.25))


def test_a_calibration_file_without_its_fingerprint_is_refused(tmp_path, finished):
    old = {"store": str(finished.path), "column": "lmem", "tau": 0.1, "target_fpr": 0.1, "n_nonmembers": 20,
           "nonmembers_file": "x", "rule": "member if score <= tau"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="lacks .*fingerprint.*run it again"):
        Calibration.load(tmp_path / "old.json")


@pytest.mark.parametrize("options, message", [
    ({"alpha": "garbage"}, "not understood"),
    ({"calibration_fraction": 1.0}, r"calibration_fraction must be in \(0, 1\)"),
    ({"n_boot": -1}, "n_boot must be >= 0"),
])
def test_bad_options_are_refused_before_the_store_is_opened(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        evaluate(tmp_path / "does-not-exist.zarr", **options)


def test_the_blind_baseline_passes_a_fair_split_and_flags_a_shifted_one(tmp_path):
    """Features independent of membership: no warning, AUC interval around 0.5. Features shifted for members:
    the members differ as images, and evaluate says the attack's figures are inflated by it."""
    fair = evaluate(synthetic_store(tmp_path / "fair.zarr", n=400, shard_size=100, features=8))["blind_baseline"]
    assert fair["available"] and fair["label"] == "blind baseline (no victim query)"
    low, high = fair["metrics"]["auc_ci"]
    assert low <= 0.5 <= high and fair["warning"] is None
    assert fair["metrics"]["n_members"] + fair["metrics"]["n_nonmembers"] == 400
    assert set(fair["strata"]) == {"lrec", "lmem"} and len(fair["strata"]["lmem"]) == 5
    shifted = evaluate(synthetic_store(tmp_path / "shifted.zarr", n=400, shard_size=100, features=8,
                                       feature_shift=0.5))["blind_baseline"]
    assert shifted["metrics"]["auc_ci"][0] > 0.5
    assert "differ as images" in shifted["warning"] and "inflated" in shifted["warning"]
    json.dumps(shifted, allow_nan=False)


def test_without_features_the_blind_baseline_is_unavailable(finished):
    record = evaluate(finished)["blind_baseline"]
    assert record["available"] is False and record["warning"] is None
    assert "no per-image features" in record["reason"] and "unavailable" in record["reason"]


def test_holdout_chooses_thresholds_on_one_part_and_measures_them_on_the_other(finished):
    result = evaluate(finished, holdout=0.5)
    assert evaluate(finished)["holdout"] is None
    record = result["holdout"]
    member = finished.column("member") == 1
    held_out = holdout_split(member, 0.5, finished.config.seed)
    assert (record["n_held_out"], record["n_choosing"]) == (int(held_out.sum()), int((~held_out).sum()))
    lmem = finished.column("lmem").astype(np.float64)
    expected = held_out_rates(lmem, member, held_out)
    point = record["scores"]["lmem"][0]
    assert point["threshold"] == expected[0].threshold == calibrate_threshold(lmem[~held_out & ~member], 0.1)
    assert (point["fpr"], point["tpr"], point["chosen_fpr"]) == (expected[0].fpr, expected[0].tpr,
                                                                 expected[0].chosen_fpr)
    assert "choosing part" in record["scores"]["lrec"][1]["refused"]  # ~13 choosing non-members cannot show 1%
    json.dumps(result, allow_nan=False)
    with pytest.raises(ValueError, match=r"holdout must be in \(0, 1\)"):
        evaluate(finished, holdout=0.0)
