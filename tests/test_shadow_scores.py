"""Tests for engine/shadow_scores.py: the LiRA and RMIA columns `memscore.rescore(store, "lira" | "rmia", ...)` writes
equal `memscore.likelihood_ratio` on the store's shadow columns, with the record of what they used; a store
without shadow columns is refused."""
from __future__ import annotations

import numpy as np
import pytest

from memscore import rescore
from memscore.likelihood_ratio import lira, rmia
from memscore.store import ScoreStore, StoreError
from stores_for_tests import store_with_shadow_columns, synthetic_store


def test_lira_and_rmia_write_the_score_and_what_it_used(tmp_path):
    lrec, lrec_shadow, in_shadow = store_with_shadow_columns(tmp_path / "s.zarr")
    rescored = rescore(tmp_path / "s.zarr", "lira", offline=True, fixed_variance=True)
    store = ScoreStore.open(tmp_path / "s.zarr")
    assert rescored.column == rescored.record["column"] == "lira_offline_fixed" and rescored.record["k"] == 4
    assert rescored.summary() == f"{tmp_path / 's.zarr'}: lira_offline_fixed written (lira, offline, 4 shadows)"
    np.testing.assert_array_equal(store.column("lira_offline_fixed"),
                                  lira(lrec, lrec_shadow, in_shadow, online=False, fixed_variance=True).scores)
    attrs = store.column_attrs("lira_offline_fixed")
    assert attrs["options"] == {"online": False, "fixed_variance": True, "transform": "log", "prior_dof": None}
    assert attrs["uses"]["lrec"] == store.fingerprint("lrec") and attrs["direction"] == "lower score = member"
    assert attrs["membership_score"] and attrs["reference_file"] is None
    (tmp_path / "ref.txt").write_text("".join(f"{i}\n" for i in range(0, 80, 2)))
    rescored = rescore(tmp_path / "s.zarr", "rmia", gamma=1.5, reference=tmp_path / "ref.txt")
    expected = rmia(lrec, lrec_shadow, in_shadow, gamma=1.5, reference=np.arange(80) % 2 == 0).scores
    np.testing.assert_array_equal(ScoreStore.open(tmp_path / "s.zarr").column("rmia"), expected)
    record = rescored.record
    assert record["options"]["reference_rows"] == 40 and record["fitted"]["temperature"] > 0
    assert record["reference_file"] == str(tmp_path / "ref.txt") and rescored.reference_ids["n_in_store"] == 40
    assert ScoreStore.open(tmp_path / "s.zarr").column_attrs("rmia")["reference_file"] == record["reference_file"]


def test_a_store_without_shadow_columns_and_options_of_another_method_are_refused(tmp_path):
    synthetic_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="no array 'lrec_shadow'"):
        rescore(tmp_path / "s.zarr", "lira")
    with pytest.raises(ValueError, match="--method lira takes no --gamma; its options are --offline"):
        rescore(tmp_path / "s.zarr", "lira", gamma=2.0)
    with pytest.raises(ValueError, match="transform must be one of log, logit, none"):
        rescore(tmp_path / "s.zarr", "lira", transform="sqrt")
