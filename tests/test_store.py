"""engine.store: layout readable by xarray, shard writes, done marks, locking, config records."""
from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from engine.config import ScoreConfig
from engine.store import ScoreStore, ShardScores, StoreError


def _shard(ids, lrec, status=None):
    n = len(ids)
    status = status or ["ok"] * n
    return ShardScores(id=ids, lrec=np.asarray(lrec, dtype=np.float32), ldiff=np.full(n, 0.5, np.float32),
                       status=status, reason=["" if s == "ok" else f"{i}: broken" for i, s in zip(ids, status)],
                       member=np.ones(n, np.int8), out_height=np.full(n, 64, np.int32),
                       out_width=np.full(n, 64, np.int32))


def test_create_write_and_read_back_with_xarray(tmp_path):
    path = tmp_path / "s.zarr"
    config = ScoreConfig(victim="recon:x", alpha="0.5")
    store = ScoreStore.create(path, 5, 2, config)
    assert store.n_shards == 3 and store.shard_range(2) == (4, 5)
    store.write_shard(2, _shard(["e"], [0.3]))
    assert store.done_shards().tolist() == [False, False, True]
    store.write_shard(0, _shard(["a", "b"], [0.1, np.nan], ["ok", "failed"]))
    store.write_lmem(np.array([1, 2, 3, 4, 5.0]), {"spec": "0.5", "value": 0.5})
    ds = xr.open_zarr(path)
    assert ds.sizes["image"] == 5 and ds.sizes["shard"] == 3
    assert list(ds["id"].values[:2]) == ["a", "b"] and ds["id"].values[4] == "e"
    assert np.isnan(ds["lrec"].values[1]) and np.isnan(ds["lrec"].values[2])  # failed, and pending
    assert ds["status"].values.tolist() == ["ok", "failed", "", "", "ok"]
    assert ds["reason"].values[1] == "b: broken"
    assert ds.attrs["memscore"]["config"]["alpha"] == "0.5"
    assert ScoreStore.open(path).config == config
    assert ScoreStore.open(path).summary() == {"n_images": 5, "ok": 2, "failed": 1, "pending": 2}


def test_wrong_row_count_and_existing_store_are_refused(tmp_path):
    store = ScoreStore.create(tmp_path / "s.zarr", 4, 2, ScoreConfig())
    with pytest.raises(StoreError, match="expected 2"):
        store.write_shard(0, _shard(["a"], [0.1]))
    with pytest.raises(StoreError, match="already exists"):
        ScoreStore.create(tmp_path / "s.zarr", 4, 2, ScoreConfig())
    assert ScoreStore.create(tmp_path / "s.zarr", 4, 2, ScoreConfig(), overwrite=True).done_shards().sum() == 0


def test_lock_refuses_a_second_writer_and_clears_stale_locks(tmp_path):
    store = ScoreStore.create(tmp_path / "s.zarr", 2, 2, ScoreConfig())
    with store.lock():
        with pytest.raises(StoreError, match="being written by another run"):
            with ScoreStore.open(tmp_path / "s.zarr").lock():
                pass
    (tmp_path / "s.zarr.lock").write_text('{"host": "%s", "pid": 999999999}' % __import__("socket").gethostname())
    with store.lock():  # the recorded process is gone: stale lock is taken over
        pass


def test_rewriting_lmem_keeps_history(tmp_path):
    store = ScoreStore.create(tmp_path / "s.zarr", 2, 2, ScoreConfig())
    store.write_lmem(np.zeros(2), {"spec": "fit", "value": 3.0})
    store.write_lmem(np.ones(2), {"spec": "0.5", "value": 0.5})
    assert store.group.attrs["alpha"]["value"] == 0.5
    assert store.group.attrs["history"] == [{"spec": "fit", "value": 3.0}]
    np.testing.assert_array_equal(store.column("lmem"), [1, 1])


def test_config_differences_name_the_keys():
    a, b = ScoreConfig(alpha="fit"), ScoreConfig(alpha="0.5", backbone="wide_resnet50_2")
    assert set(a.differences(b)) == {"alpha", "backbone"}
    assert ScoreConfig.from_dict(a.to_dict()) == a
