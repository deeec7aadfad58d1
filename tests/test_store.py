"""memscore.store: layout readable by xarray, shard writes with digests, verification, column switches,
read-only handles, locking and the typed records."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from memscore import rescore
from memscore.attack import evaluate, predict
from memscore.config import ScoreConfig
from memscore.lmem import alpha_pass
from memscore.scores import Row
from memscore.store import (COLUMNS, SHARD_COLUMNS, EXTRA_COLUMNS, AlphaRecord, ScoreStore, StoreError, disk_full_guard,
                          shard_columns, store_lock, extra_column)
from stores_for_tests import synthetic_store


def _rows(ids, lrec, status=None) -> dict[str, np.ndarray]:
    status = status or ["ok"] * len(ids)
    return shard_columns([Row(i, 1, lrec=v, ldiff=0.5, status=s, reason="" if s == "ok" else f"{i}: broken",
                              out_height=64, out_width=64) for i, v, s in zip(ids, lrec, status)])


def _alpha(value: float, spec: str = "fixed") -> AlphaRecord:
    return AlphaRecord(spec=spec, value=value, method="fixed", n_rows=0)


def _finished(path, n=6, shard=2) -> ScoreStore:
    store = ScoreStore.create(path, n, shard, ScoreConfig(victim="recon:x", alpha="0.5"))
    for index in range(store.n_shards):
        start, stop = store.shard_range(index)
        store.write_shard(index, _rows([f"i{k}" for k in range(start, stop)], [0.1 * k for k in range(start, stop)]))
    store.write_lmem(store.column("lrec") - 0.5 * store.column("ldiff"), _alpha(0.5, "0.5"))
    return store


def test_the_row_and_the_store_schema_are_one():
    assert {f.name for f in dataclasses.fields(Row)} == {c.name for c in SHARD_COLUMNS} | set(EXTRA_COLUMNS)
    assert {c.name for c in COLUMNS} - {c.name for c in SHARD_COLUMNS} == {"lmem"}


def test_create_write_and_read_back_with_xarray(tmp_path):
    path = tmp_path / "s.zarr"
    config = ScoreConfig(victim="recon:x", alpha="0.5")
    store = ScoreStore.create(path, 5, 2, config)
    assert store.n_shards == 3 and store.shard_range(2) == (4, 5)
    store.write_shard(2, _rows(["e"], [0.3]))
    assert store.done_shards().tolist() == [False, False, True]
    store.write_shard(0, _rows(["a", "b"], [0.1, np.nan], ["ok", "failed"]))
    store.write_lmem(np.array([1, 2, 3, 4, 5.0]), _alpha(0.5, "0.5"))
    ds = xr.open_zarr(path)
    assert ds.sizes["image"] == 5 and ds.sizes["shard"] == 3
    assert list(ds["id"].values[:2]) == ["a", "b"] and ds["id"].values[4] == "e"
    assert np.isnan(ds["lrec"].values[1]) and np.isnan(ds["lrec"].values[2])  # failed, and pending
    assert ds["status"].values.tolist() == ["ok", "failed", "", "", "ok"]
    assert ds["reason"].values[1] == "b: broken"
    assert ds.attrs["memscore"]["config"]["alpha"] == "0.5"
    assert ds["lmem"].attrs["alpha"]["value"] == 0.5
    reopened = ScoreStore.open(path)
    assert reopened.config == config and reopened.record == store.record
    assert reopened.counts() == dataclasses.replace(reopened.counts(), n_images=5, ok=2, failed=1, pending=2)
    assert list(reopened.to_frame().columns) == [c.name for c in COLUMNS]


def test_read_only_handles_refuse_every_write(tmp_path):
    store = _finished(tmp_path / "s.zarr")
    reader = ScoreStore.open(store.path)
    for write in (lambda: reader.write_shard(0, _rows(["i0", "i1"], [0, 0])),
                  lambda: reader.write_lmem(np.zeros(6), _alpha(1.0)),
                  lambda: reader.write_column("predicted_member", np.zeros(6, np.int8), -1, {}),
                  lambda: reader.reset_shards([0])):
        with pytest.raises(StoreError, match="read-only"):
            write()
    assert ScoreStore.open(store.path).verify() == []


def test_wrong_row_count_and_existing_store_are_refused(tmp_path):
    store = ScoreStore.create(tmp_path / "s.zarr", 4, 2, ScoreConfig())
    with pytest.raises(StoreError, match="expected 2"):
        store.write_shard(0, _rows(["a"], [0.1]))
    with pytest.raises(StoreError, match="already exists"):
        ScoreStore.create(tmp_path / "s.zarr", 4, 2, ScoreConfig())
    assert ScoreStore.create(tmp_path / "s.zarr", 4, 2, ScoreConfig(), overwrite=True).done_shards().sum() == 0


def test_lock_refuses_another_process_and_clears_stale_locks(tmp_path):
    path = tmp_path / "s.zarr"
    store = _finished(path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "s.zarr.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid}))
        with pytest.raises(StoreError, match="being written by another run"):
            with store.lock():
                pass
        with pytest.raises(StoreError, match="being written by another run"):  # the lock comes before the delete
            ScoreStore.create(path, 6, 2, ScoreConfig(), overwrite=True)
        assert ScoreStore.open(path).verify() == [] and ScoreStore.open(path).counts().ok == 6
    finally:
        holder.kill()
        holder.wait()
    with store.lock():  # the recorded process is gone: the stale lock is taken over
        with store_lock(path):  # re-entrant within one process
            pass
    assert not (tmp_path / "s.zarr.lock").exists()


def test_rewriting_lmem_keeps_history_and_the_record_with_the_column(tmp_path):
    store = ScoreStore.create(tmp_path / "s.zarr", 2, 2, ScoreConfig())
    store.write_lmem(np.zeros(2), _alpha(3.0, "fit"))
    first = store.fingerprint("lmem")
    store.write_lmem(np.ones(2), _alpha(0.5, "0.5"))
    reopened = ScoreStore.open(store.path)
    assert reopened.alpha.value == 0.5 and [r.spec for r in reopened.alpha_history] == ["fit"]
    np.testing.assert_array_equal(reopened.column("lmem"), [1, 1])
    assert reopened.fingerprint("lmem") != first and reopened.fingerprint("lmem")["alpha"]["value"] == 0.5
    assert not (tmp_path / "s.zarr.staging").exists()


def test_verify_names_deleted_and_corrupt_chunks_and_a_changed_lmem(tmp_path):
    store = _finished(tmp_path / "s.zarr")
    assert store.verify() == []
    os.remove(tmp_path / "s.zarr" / "lrec" / "c" / "1")               # a deleted chunk reads as fill values
    (tmp_path / "s.zarr" / "member" / "c" / "2").write_bytes(b"\x28\xb5\x2f\xfd garbage")  # a corrupt zstd frame
    zarr.open_array(str(tmp_path / "s.zarr" / "lmem"), mode="r+")[0] = 9.0  # lmem no longer what its record says
    problems = ScoreStore.open(store.path).verify()
    found = {(p.shard, p.array) for p in problems}
    assert found == {(1, "lrec"), (2, "member"), (None, "lmem")}
    messages = {(p.shard, p.array): str(p) for p in problems}
    assert "shard 1 array lrec: content differs from the digest" in messages[(1, "lrec")]
    assert "cannot be read" in messages[(2, "member")]
    assert ScoreStore.open(store.path).damaged_shards() == [1, 2]
    with pytest.raises(StoreError, match="damaged: .*shard 1 array lrec"):
        ScoreStore.open(store.path).require_readable()
    with pytest.raises(StoreError, match="array member cannot be read.*memscore verify"):
        ScoreStore.open(store.path).column("member")


def test_unfinished_stores_are_refused_unless_partial(tmp_path):
    store = ScoreStore.create(tmp_path / "s.zarr", 4, 2, ScoreConfig())
    store.write_shard(0, _rows(["a", "b"], [0.1, 0.2]))
    with pytest.raises(StoreError, match="2 of 4 rows are still pending.*--partial"):
        store.require_readable()
    assert store.require_readable(partial=True).pending == 2
    store.write_shard(1, _rows(["c", "d"], [0.1, 0.2]))
    with pytest.raises(StoreError, match="no alpha pass"):
        store.require_readable()


def test_scored_means_every_shard_done_and_intact_except_lmem(tmp_path):
    """What the end of a run and `rescore` both require before an alpha pass: lmem may be missing or damaged (the
    pass rewrites it whole), a pending shard or damage anywhere else may not."""
    store = ScoreStore.create(tmp_path / "s.zarr", 4, 2, ScoreConfig())
    store.write_shard(0, _rows(["a", "b"], [0.1, 0.2]))
    with pytest.raises(StoreError, match=r"1 shard\(s\) are not scored yet; rerun the same `memscore score`"):
        store.require_scored()
    store.write_shard(1, _rows(["c", "d"], [0.1, 0.2]))
    store.require_scored()  # no lmem yet: the alpha pass writes it
    finished = _finished(tmp_path / "f.zarr")
    zarr.open_array(str(finished.path / "lmem"), mode="r+")[0] = 9.0
    ScoreStore.open(finished.path).require_scored()  # a damaged lmem is what `rescore` repairs
    os.remove(finished.path / "lrec" / "c" / "1")
    with pytest.raises(StoreError, match=r"damaged \(shard 1 array lrec: .*`memscore verify .*f.zarr` lists"):
        ScoreStore.open(finished.path).require_scored()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["disk-full", "quota"])
def test_a_full_disk_under_the_guard_is_one_store_error_and_other_os_errors_pass(tmp_path, code):
    with pytest.raises(StoreError, match=r"s.zarr: the disk is full while writing shard 3 \(.+\)\. Nothing already "
                                         "finished is lost: free some space and rerun the same command") as raised:
        with disk_full_guard(tmp_path / "s.zarr", "shard 3"):
            raise OSError(code, os.strerror(code))
    assert raised.value.__cause__.errno == code
    with pytest.raises(PermissionError):
        with disk_full_guard(tmp_path / "s.zarr", "shard 3"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))


def test_an_interrupted_column_switch_reads_as_old_or_new_and_is_completed_under_the_lock(tmp_path):
    store = _finished(tmp_path / "s.zarr")
    old = store.column("lmem")
    staging = tmp_path / "s.zarr.staging"
    # 1. killed while the new column was being staged: readers see the old one, the next lock clears it
    store.write_lmem(old + 1, _alpha(7.0))
    shutil.copytree(tmp_path / "s.zarr" / "lmem", staging / "lmem")
    store.write_lmem(old, _alpha(0.5, "0.5"))
    staging.mkdir(exist_ok=True)
    shutil.copytree(tmp_path / "s.zarr" / "lmem", staging / "lmem", dirs_exist_ok=True)
    document = json.loads((staging / "lmem" / "zarr.json").read_text())
    document["attributes"].pop("complete", None)
    (staging / "lmem" / "zarr.json").write_text(json.dumps(document))
    assert ScoreStore.open(store.path).alpha.value == 0.5
    with store.lock():
        pass
    assert not staging.exists() and ScoreStore.open(store.path).verify() == []
    # 2. killed between the two renames: the old column is out, the new one complete beside the store
    store.write_lmem(old + 2, _alpha(2.0))
    staging.mkdir()
    shutil.copytree(tmp_path / "s.zarr" / "lmem", staging / "lmem")
    document = json.loads((staging / "lmem" / "zarr.json").read_text())
    document["attributes"]["complete"] = True
    (staging / "lmem" / "zarr.json").write_text(json.dumps(document))
    shutil.rmtree(tmp_path / "s.zarr" / "lmem")
    reader = ScoreStore.open(store.path)
    assert reader.alpha.value == 2.0 and reader.verify() == []
    np.testing.assert_array_equal(reader.column("lmem"), (old + 2).astype(np.float32))
    with store.lock():
        pass
    assert (tmp_path / "s.zarr" / "lmem").is_dir() and not staging.exists()
    assert ScoreStore.open(store.path).alpha.value == 2.0


def test_record_updates_are_atomic_documents_and_derived_columns_are_listed(tmp_path):
    store = _finished(tmp_path / "s.zarr")
    store.update_record(layouts=({"threads": 2, "workers": 0},))
    store.set_failed_shards({1: "RuntimeError: boom"})
    store.write_column("predicted_member", np.ones(6, np.int8), -1, {"tau": 0.1})
    reopened = ScoreStore.open(store.path)
    assert reopened.record.layouts == ({"threads": 2, "workers": 0},)
    assert reopened.failed_shards == {1: "RuntimeError: boom"}
    assert reopened.derived_columns() == ["predicted_member"]
    assert reopened.column_attrs("predicted_member")["tau"] == 0.1
    assert "predicted_member" in reopened.to_frame().columns
    assert xr.open_zarr(store.path).attrs["memscore"]["layouts"] == [{"threads": 2, "workers": 0}]
    with pytest.raises(StoreError, match="scored column"):
        store.write_column("lrec", np.zeros(6), np.nan, {})


def test_stores_of_another_format_are_refused(tmp_path):
    store = _finished(tmp_path / "s.zarr")
    store.update_record(format_version=1)
    with pytest.raises(StoreError, match="format 1"):
        ScoreStore.open(store.path)


def test_config_differences_name_the_keys():
    a, b = ScoreConfig(alpha="fit"), ScoreConfig(alpha="0.5", backbone="wide_resnet50_2")
    assert set(a.differences(b)) == {"alpha", "backbone"}
    assert ScoreConfig.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="alpha 'garbage' not understood"):
        ScoreConfig(alpha="garbage")


def test_two_dimensional_columns_are_written_per_shard_verified_and_exported(tmp_path):
    store = ScoreStore.create(tmp_path / "s.zarr", 4, 2, ScoreConfig(), extra_columns={"features": 3, "in_shadow": 2})
    columns = (*SHARD_COLUMNS, extra_column("features", 3), extra_column("in_shadow", 2))
    rows = [Row(f"i{k}", 0, lrec=0.1, ldiff=0.2, features=np.array([k, k + 0.5, -k]), in_shadow=np.array([1, 0]))
            for k in range(2)]
    rows.append(Row("i2", 0, status="failed", reason="i2: broken"))  # not scored: fill values
    rows.append(Row("i3", 0, lrec=0.3, ldiff=0.2, features=np.zeros(3), in_shadow=np.array([0, 1])))
    store.write_shard(0, shard_columns(rows[:2], columns))
    store.write_shard(1, shard_columns(rows[2:], columns))
    features = store.column("features")
    assert features.shape == (4, 3) and features.dtype == np.float16
    np.testing.assert_array_equal(features[1], [1, 1.5, -1])
    assert np.isnan(features[2]).all() and store.column("in_shadow")[2].tolist() == [-1, -1]
    ds = xr.open_zarr(store.path)
    assert ds["features"].dims == ("image", "feature") and ds["in_shadow"].dims == ("image", "shadow")
    frame = store.to_frame()
    assert {"features_0", "features_2", "in_shadow_1"} <= set(frame.columns) and frame["in_shadow_1"].tolist()[3] == 1
    assert store.verify() == []
    zarr.open_array(str(tmp_path / "s.zarr" / "features"), mode="r+")[3, 1] = 7.0
    assert [(p.shard, p.array) for p in store.verify()] == [(1, "features")]


def _edit_by_hand(path: Path, array: str, edit) -> None:
    """Edit the attributes in a zarr.json as a text editor would: the record changes, its digest does not."""
    document_path = path / array / "zarr.json"
    document = json.loads(document_path.read_text())
    edit(document["attributes"])
    document_path.write_text(json.dumps(document))


def _store_through_every_writer(path: Path) -> Path:
    """A store whose every record was written by memscore: scored, interrupted before its last shard and resumed
    (layouts grows, failed shards rewritten), its alpha pass, a rescore (lmem's history) and a predict."""
    synthetic_store(path)
    store = ScoreStore.open(path, mode="r+")
    last = store.n_shards - 1
    rows = slice(*store.shard_range(last))
    shard = {c.name: store.column(c.name)[rows].tolist() for c in store.shard_columns}
    store.reset_shards([last])  # as a resumed run finds it
    store.update_record(layouts=store.record.layouts + ({"device": "cpu", "threads": 1},))
    store.write_shard(last, shard)
    store.set_failed_shards({})
    alpha_pass(store, "fit")
    rescore(path, alpha="0.5")
    predict(path, tau=0.2)
    return path


@pytest.mark.parametrize("array, edit, record", [
    ("lmem", lambda attrs: attrs["alpha"].update(value=3.903), "alpha record of lmem"),
    ("lmem", lambda attrs: attrs["history"][0].update(spec="2.0"), "alpha history of lmem"),
    ("", lambda attrs: attrs["memscore"]["config"].update(seed=7), "run record"),
    ("", lambda attrs: attrs["memscore"]["config"].update(preset="reference"), "run record"),
    ("", lambda attrs: attrs["memscore"].update(members_sha256="0" * 64), "run record"),
    ("", lambda attrs: attrs["memscore"]["layouts"].pop(), "run record"),
    ("", lambda attrs: attrs["record_sha256"].pop("memscore"), "run record"),
    ("", lambda attrs: attrs.update(failed_shards={"1": "RuntimeError: boom"}), "record of failed shards"),
    ("predicted_member", lambda attrs: attrs.update(tau=9.0), "record of column predicted_member"),
], ids=["alpha", "alpha-history", "seed", "preset", "members", "layouts", "digest", "failed-shards", "derived"])
def test_a_record_edited_by_hand_is_named_by_verify_and_refused_by_readers_and_writers(tmp_path, array, edit,
                                                                                       record):
    path = _store_through_every_writer(tmp_path / "s.zarr")
    assert ScoreStore.open(path).verify() == []
    _edit_by_hand(path, array, edit)
    named = [str(p).split(" (")[0] for p in ScoreStore.open(path).verify()]
    assert f"{record} was edited after memscore wrote it" in named
    with pytest.raises(StoreError, match=f"damaged: {record} was edited"):
        evaluate(path)
    with pytest.raises(StoreError, match=f"{record} was edited"):
        rescore(path, alpha="0.5")
    with pytest.raises(StoreError, match=f"{record} was edited"):  # a new digest would make the edit look genuine
        ScoreStore.open(path, mode="r+").update_record(layouts=())


def test_a_derived_column_is_verified_by_its_values_and_the_store_it_was_made_for(tmp_path):
    a, b = _finished(tmp_path / "a.zarr"), _finished(tmp_path / "b.zarr")
    a.write_column("predicted_member", np.ones(6, np.int8), -1, {"tau": 0.1})
    zarr.open_array(str(a.path / "predicted_member"), mode="r+")[0] = 0
    assert [(p.array, p.message.split(" (")[0]) for p in ScoreStore.open(a.path).verify()] == [
        ("predicted_member", "content differs from its record")]
    shutil.copytree(a.path / "predicted_member", b.path / "predicted_member")
    assert any("record of column predicted_member was made for another store" in str(p)
               for p in ScoreStore.open(b.path).verify())


def test_a_staged_column_is_adopted_only_by_its_own_store_with_its_record_intact(tmp_path):
    a, b = _finished(tmp_path / "a.zarr"), _finished(tmp_path / "b.zarr")
    a.write_column("predicted_member", np.ones(6, np.int8), -1, {"tau": 0.1})
    b.write_column("predicted_member", np.zeros(6, np.int8), -1, {"tau": 0.2})
    own = tmp_path / "own"
    os.rename(b.path / "predicted_member", own)  # b's column is out: as if killed between the two renames
    staging = tmp_path / "b.zarr.staging"
    edited = lambda attrs: attrs.update(tau=9.0)  # noqa: E731
    for leftover, edit in ((a.path / "predicted_member", None), (own, edited)):  # made for a; b's own, edited
        shutil.copytree(leftover, staging / "predicted_member")
        if edit:
            _edit_by_hand(staging, "predicted_member", edit)
        with pytest.raises(StoreError, match="no array 'predicted_member'"):
            ScoreStore.open(b.path).column_attrs("predicted_member")
        with b.lock():
            pass
        assert not staging.exists() and ScoreStore.open(b.path).derived_columns() == []
    shutil.copytree(own, staging / "predicted_member")  # b's own, intact: read, then switched in
    assert ScoreStore.open(b.path).column_attrs("predicted_member")["tau"] == 0.2
    with b.lock():
        pass
    assert ScoreStore.open(b.path).derived_columns() == ["predicted_member"] and ScoreStore.open(b.path).verify() == []


def test_a_store_read_only_on_disk_refuses_a_whole_column_before_staging_it(tmp_path, monkeypatch):
    store = _finished(tmp_path / "s.zarr")
    real_access = os.access
    # root writes through chmod, so the answer of a read-only folder or mount is given here
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: real_access(path, mode, **kw)
                        and not (Path(path) == store.path and mode & os.W_OK))
    for write in (lambda: store.write_column("predicted_member", np.zeros(6, np.int8), -1, {}),
                  lambda: store.write_lmem(np.zeros(6), _alpha(1.0))):
        with pytest.raises(StoreError, match="read-only on disk"):
            write()
        assert not (tmp_path / "s.zarr.staging").exists()
    assert ScoreStore.open(store.path).derived_columns() == [] and ScoreStore.open(store.path).alpha.value == 0.5
