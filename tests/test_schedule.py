"""memscore.schedule with real processes: local Dask workers, an external scheduler, kills and locks."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from memscore.cli import main
from memscore.store import ScoreStore
from memscore.synthetic import write_aligned_dataset

N = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_aligned_dataset(tmp_path_factory.mktemp("data"), N, size=32)


def _score_args(dataset, out, victim="blur", *extra):
    return ["score", str(dataset), "--out", str(out), "--victim", f"python:victims_for_tests:{victim}",
            "--shard-size", "3", "--batch-size", "2", "--no-progress", *extra]


def _columns(path):
    ds = xr.open_zarr(path)
    return {name: ds[name].values for name in ("id", "lrec", "ldiff", "lmem", "status")}


def _assert_same(a, b):
    """Ids and statuses identical; scores equal up to float32 rounding (the last bit of a BLAS or numba
    reduction can depend on thread scheduling, not on how the work was sharded)."""
    for name in a:
        if a[name].dtype.kind == "f":
            np.testing.assert_allclose(a[name], b[name], rtol=2e-6, atol=0, err_msg=name)
        else:
            assert list(a[name]) == list(b[name]), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_local_workers_and_external_scheduler_agree(dataset, tmp_path, env):
    # One thread per process everywhere: float results depend on BLAS thread counts, not on sharding.
    assert main(_score_args(dataset, tmp_path / "one.zarr", "blur", "--threads", "1")) == 0
    assert main(_score_args(dataset, tmp_path / "two.zarr", "blur", "--workers", "2")) == 0
    port = _free_port()
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    scheduler = subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}",
                                "--nworkers", "2", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from distributed import Client
        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        assert main(_score_args(dataset, tmp_path / "ext.zarr", "blur", "--scheduler", f"tcp://127.0.0.1:{port}")) == 0
    finally:
        for process in (workers, scheduler):
            process.terminate()
            process.wait(timeout=60)
    one = _columns(tmp_path / "one.zarr")
    assert (one["status"] == "ok").all()
    _assert_same(one, _columns(tmp_path / "two.zarr"))
    _assert_same(one, _columns(tmp_path / "ext.zarr"))
    alphas = [xr.open_zarr(tmp_path / f"{name}.zarr")["lmem"].attrs["alpha"] for name in ("one", "two", "ext")]
    assert all(a["spec"] == "fit" and a["n_rows"] == N for a in alphas)  # the fitted alpha too
    assert alphas[1]["value"] == pytest.approx(alphas[0]["value"], rel=1e-4)
    assert alphas[2]["value"] == pytest.approx(alphas[0]["value"], rel=1e-4)


def _memscore(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "memscore.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout=180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not reached")


def test_sigkill_part_way_then_rerun_recomputes_only_unfinished_shards(dataset, tmp_path, env):
    reference, out = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    assert main(_score_args(dataset, reference)) == 0
    run = _memscore(*_score_args(dataset, out, "slow_blur"), env={**env, "MEMSCORE_TEST_DELAY": "0.4"})

    def some_shards_done() -> bool:
        try:
            return 1 <= ScoreStore.open(out, mode="r").done_shards().sum()
        except Exception:  # the store is still being created
            return False

    _wait_for(some_shards_done)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    done_at_kill = int(ScoreStore.open(out, mode="r").done_shards().sum())
    assert 1 <= done_at_kill < 4, "the kill should land part-way"
    rerun = _memscore(*_score_args(dataset, out, "slow_blur"), env={**env, "MEMSCORE_TEST_DELAY": "0"})
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    skipped = int(re.search(r"skipped \(already done\) (\d+)", stdout).group(1))
    scored = int(re.search(r"scored (\d+)", stdout).group(1))
    assert skipped == 3 * done_at_kill and scored == N - skipped
    _assert_same(_columns(reference), _columns(out))


def test_a_worker_killed_mid_run_is_retried_and_every_id_scored(dataset, tmp_path, env, monkeypatch):
    marker = tmp_path / "died"
    monkeypatch.setenv("MEMSCORE_TEST_DIE_MARKER", str(marker))
    assert main(_score_args(dataset, tmp_path / "s.zarr", "die_once", "--workers", "2")) == 0
    assert marker.exists(), "a worker should have died"
    columns = _columns(tmp_path / "s.zarr")
    assert (columns["status"] == "ok").all() and np.isfinite(columns["lrec"]).all()
    assert sorted(columns["id"]) == sorted(str(i) for i in range(N))


def test_a_second_concurrent_run_is_refused(dataset, tmp_path, env, capsys):
    out = tmp_path / "s.zarr"
    first = _memscore(*_score_args(dataset, out, "slow_blur"), env={**env, "MEMSCORE_TEST_DELAY": "1"})
    try:
        _wait_for(lambda: Path(f"{out}.lock").exists())
        assert main(_score_args(dataset, out, "slow_blur")) == 2
        assert "being written by another run" in capsys.readouterr().err
    finally:
        first.kill()
        first.wait()


def test_changing_the_backbone_on_resume_is_refused_naming_the_key(dataset, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    assert main(_score_args(dataset, out)) == 0
    assert main(_score_args(dataset, out, "blur", "--backbone", "wide_resnet50_2", "--seed", "3")) == 2
    error = capsys.readouterr().err
    assert "backbone: store has 'efficientnet_lite0', asked 'wide_resnet50_2'" in error and "seed: store has 0" in error


def test_a_shard_that_fails_on_every_try_is_recorded_and_the_store_left_unfinished(tmp_path, env, capsys):
    data = write_aligned_dataset(tmp_path / "data", 6, size=32)
    Image.new("RGB", (64, 32), (0, 0, 0)).save(data / "4.png")  # shard 1 (ids 3 to 5) holds a black input
    out = tmp_path / "s.zarr"
    assert main(_score_args(data, out, "out_of_memory_on_dark", "--workers", "1")) == 1
    printed = capsys.readouterr().out
    assert "1 shard(s) failed and stay pending (shard 1: MemoryError: this victim runs out of memory" in printed
    assert "NOT finished" in printed
    store = ScoreStore.open(out)
    assert list(store.failed_shards) == [1] and "black input" in store.failed_shards[1]
    assert store.done_shards().tolist() == [True, False] and store.alpha is None
    assert store.counts().pending == 3
