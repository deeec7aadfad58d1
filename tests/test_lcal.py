"""Tests for engine/lcal.py: lcal written to a store through `memscore.rescore(store, "per-image", ...)` equals the
pure calibration of the store's columns, carries the record of how it was made, is refused once anything it came
from changed, and its per-image thresholds reproduce it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memscore import rescore
from memscore.calibration import calibrate_per_image
from memscore.config import ScoreConfig
from memscore.data import ids_digest
from memscore.lcal import per_image_thresholds, require_current_lcal
from memscore.lmem import alpha_pass
from memscore.store import ScoreStore, StoreError
from stores_for_tests import synthetic_store
from test_calibration import Synthetic, synthetic


def calibration_store(path: Path, data: Synthetic, shard_size: int = 250) -> ScoreStore:
    """A finished store holding `data` (ids "0".."n-1", the member labels, features) written through the store's
    own API, with lmem at the fitted alpha."""
    n, width = data.features.shape
    store = ScoreStore.create(path, n, shard_size, ScoreConfig(victim="recon:synthetic"),
                              extra_columns={"features": width})
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
    rescored = rescore(store.path, "per-image", reference=reference_file, model="gaussian", folds=4, seed=3,
                       modelled="raw")
    record = rescored.record
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
    assert (rescored.column, rescored.reference_ids) == ("lcal", record["reference_ids"])


def test_the_lmem_statistic_follows_the_stores_alpha(tmp_path, small):
    store = calibration_store(tmp_path / "s.zarr", small)
    reference_file = write_ids(tmp_path / "reference.txt", small.reference)
    record = rescore(store.path, "per-image", reference=reference_file, folds=4, seed=3).record  # modelled: lmem
    store = ScoreStore.open(store.path)
    expected = calibrate_per_image(store.column("lrec"), store.column("ldiff"), store.column("features"),
                                   small.reference, folds=4, seed=3, alpha=store.alpha.value)
    np.testing.assert_array_equal(store.column("lcal"), expected.lcal.astype(np.float32))
    assert record["alpha"] == store.alpha.value and set(record["inputs_fingerprint"]) == {"lrec", "ldiff", "features",
                                                                                          "lmem"}
    rescore(store.path, alpha="0.5")
    with pytest.raises(StoreError, match="lmem changed after lcal was computed"):
        require_current_lcal(ScoreStore.open(store.path))


def test_lcal_is_refused_once_the_store_changed_after_it(tmp_path, small):
    store = calibration_store(tmp_path / "s.zarr", small)
    rescore(store.path, "per-image", reference=write_ids(tmp_path / "reference.txt", small.reference))
    writer = ScoreStore.open(store.path, mode="r+")
    with writer.lock():
        write_rows(writer, 1, small, lrec=small.lrec + 0.01)  # a shard scored again, with other values
    with pytest.raises(StoreError, match="lrec changed after lcal was computed .* rescore --method per-image"):
        require_current_lcal(ScoreStore.open(store.path))
    rescore(store.path, "per-image", reference=tmp_path / "reference.txt")
    assert require_current_lcal(ScoreStore.open(store.path))["n_reference"] == small.reference.sum()


def test_rescore_per_image_refusals(tmp_path, small):
    store = calibration_store(tmp_path / "s.zarr", small)
    with pytest.raises(ValueError, match="--method per-image needs --reference FILE"):
        rescore(store.path, "per-image")
    with pytest.raises(ValueError, match="no such file"):
        rescore(store.path, "per-image", reference=tmp_path / "missing.txt")
    members = write_ids(tmp_path / "members.txt", small.member | small.reference)
    with pytest.raises(ValueError, match=r"reference ids are labelled members in .* known non-members"):
        rescore(store.path, "per-image", reference=members)
    (tmp_path / "strangers.txt").write_text("x1\nx2\n")
    with pytest.raises(ValueError, match="none of the 2 ids in .*strangers.txt is in"):
        rescore(store.path, "per-image", reference=tmp_path / "strangers.txt")
    with pytest.raises(StoreError, match="has no per-image calibrated score yet: run `memscore rescore"):
        require_current_lcal(store)
    old = synthetic_store(tmp_path / "old.zarr")  # a store without features
    with pytest.raises(StoreError, match="has no per-image features column"):
        rescore(old.path, "per-image", reference=write_ids(tmp_path / "r.txt", old.column("member") == 0))


def test_per_image_thresholds_of_a_store_reproduce_its_calibration(tmp_path, small):
    store = calibration_store(tmp_path / "s.zarr", small)
    reference_file = write_ids(tmp_path / "reference.txt", small.reference)
    rescore(store.path, "per-image", reference=reference_file, folds=3, seed=2)
    found = per_image_thresholds(store.path, 0.1)
    expected = calibrate_per_image(small.lrec.astype(np.float32), small.ldiff.astype(np.float32), small.features,
                                   small.reference, folds=3, seed=2,
                                   alpha=ScoreStore.open(store.path).alpha.value).thresholds_at(0.1)
    np.testing.assert_array_equal(found.lrec_threshold, expected)
    assert found.ids.tolist() == [str(i) for i in range(small.lrec.size)] and found.calibration["seed"] == 2
    fresh = small.fresh_nonmembers
    assert abs(np.mean(small.lrec[fresh] <= found.lrec_threshold[fresh]) - 0.1) < 0.05
    reference_file.write_text("1\n")
    with pytest.raises(ValueError, match="lcal's reference, is gone or changed .* per-image` again"):
        per_image_thresholds(store.path, 0.1)
