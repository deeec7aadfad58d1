"""Fault injection with real processes and real files: SIGKILL `score` and `rescore` at seeded random points,
then check that the store is the old state or the new one (never a mix) and that a rerun converges bit for bit;
a full disk gives a clear error and a rerun recovers."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from memscore import rescore
from memscore.cli import main
from memscore.store import ScoreStore
from memscore.synthetic import write_aligned_dataset
from victims_for_tests import CHOSEN_ID

N = 12
KILLS = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_aligned_dataset(tmp_path_factory.mktemp("data"), N, size=32)


def _score_args(dataset, out, victim="slow_blur", shard_size=2, batch_size=1):
    return ["score", str(dataset), "--out", str(out), "--victim", f"python:victims_for_tests:{victim}",
            "--shard-size", str(shard_size), "--batch-size", str(batch_size), "--threads", "1", "--no-progress"]


def _scores(path) -> dict[str, np.ndarray]:
    store = ScoreStore.open(path)
    return {name: store.column(name) for name in ("id", "lrec", "ldiff", "lmem", "status", "member")}


def _assert_bit_identical(a: dict, b: dict) -> None:
    for name in a:
        if a[name].dtype.kind == "f":
            np.testing.assert_array_equal(a[name].view(np.uint32), b[name].view(np.uint32), err_msg=name)
        else:
            assert list(a[name]) == list(b[name]), name


def _assert_old_or_new_lmem(path, allowed: set[float]) -> float:
    """The lmem column and its record agree, and are one whole state."""
    store = ScoreStore.open(path)
    assert store.verify() == []
    alpha = store.alpha.value
    assert alpha in allowed
    lrec, ldiff = store.column("lrec").astype(np.float64), store.column("ldiff").astype(np.float64)
    np.testing.assert_array_equal(store.column("lmem"), (lrec - alpha * ldiff).astype(np.float32))
    return alpha


def test_sigkill_during_rescore_leaves_the_old_or_the_new_alpha_never_a_mix(dataset, tmp_path, env):
    out = tmp_path / "s.zarr"
    assert main(_score_args(dataset, out)) == 0
    fresh = tmp_path / "fresh.zarr"
    shutil.copytree(out, fresh)
    script = ("import itertools, sys\nfrom memscore import rescore\nprint('ready', flush=True)\n"
              "for i in itertools.count():\n    rescore(sys.argv[1], alpha=('0.5', '3')[i % 2])\n")
    rng = random.Random(1234)
    fitted = ScoreStore.open(out).alpha.value
    seen = set()
    for _ in range(KILLS):
        process = subprocess.Popen([sys.executable, "-c", script, str(out)], env=env, stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.8))
        process.send_signal(signal.SIGKILL)
        process.wait()
        seen.add(_assert_old_or_new_lmem(out, {fitted, 0.5, 3.0}))
    assert len(seen) >= 2, "the kills should land at different alphas"
    rescore(out, alpha="3")
    rescore(fresh, alpha="3")
    _assert_bit_identical(_scores(out), _scores(fresh))
    assert not Path(f"{out}.staging").exists() and not Path(f"{out}.lock").exists()


def test_sigkill_during_score_then_rerun_converges_bit_for_bit(dataset, tmp_path, env, monkeypatch):
    monkeypatch.setenv("MEMSCORE_TEST_DELAY", "0")
    reference = tmp_path / "ref.zarr"
    assert main(_score_args(dataset, reference)) == 0
    rng = random.Random(99)
    for attempt in range(3):
        out = tmp_path / f"s{attempt}.zarr"
        process = subprocess.Popen([sys.executable, "-m", "memscore.cli", *_score_args(dataset, out)],
                                   env={**env, "MEMSCORE_TEST_DELAY": "0.15"}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (out / "zarr.json").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if (out / "zarr.json").exists():
            store = ScoreStore.open(out)
            assert store.verify() == []          # what is marked done is whole; the rest is pending
            assert store.counts().pending == N - 2 * int(store.done_shards().sum())
        assert main(_score_args(dataset, out)) == 0
        _assert_bit_identical(_scores(reference), _scores(out))


THREADS_APART = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
"""torch's CPU threads (1, from OMP_NUM_THREADS) unlike numba's (2). numba's OpenMP layer, when it starts, sets the
calling thread's OpenMP threads, torch's included (memscore.devices.start_numba_threads): started by the first
difficulty kernel, it switched torch from 1 thread to 2 after a process's first batch, and oneDNN and torch's
reductions round differently with 2 threads than with 1."""

KILL_AFTER_FIRST_SHARD = """
import os, signal, sys
import memscore.run as run
execute = run.execute
def first_shard_then_sigkill(*args, **kwargs):
    for outcome in execute(*args, **kwargs):
        yield outcome  # the shard is written and marked done
        os.kill(os.getpid(), signal.SIGKILL)
run.execute = first_shard_then_sigkill
from memscore.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_after_its_first_shard_resumes_bit_identical_to_an_uninterrupted_run(tmp_path, env):
    """Every run in its own process, as a user's: uninterrupted; SIGKILLed once its first shard is done; the rerun.
    The rerun's first shard (the uninterrupted run's second) must come out bit for bit the same, so must lmem."""
    data = write_aligned_dataset(tmp_path / "data", 16, size=256)  # large enough for torch to split the Lrec mean
    env = {**env, **THREADS_APART}

    def score(out, *python):
        command = [sys.executable, *(python or ["-m", "memscore.cli"]), "score", str(data), "--out", str(out),
                   "--victim", "python:victims_for_tests:blur", "--shard-size", "8", "--batch-size", "8",
                   "--no-progress"]
        return subprocess.run(command, env=env, capture_output=True, text=True)

    reference, out = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    uninterrupted = score(reference)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    killed = score(out, "-c", KILL_AFTER_FIRST_SHARD)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert ScoreStore.open(out).done_shards().tolist() == [True, False]
    rerun = score(out)
    assert rerun.returncode == 0 and "skipped (already done) 8" in rerun.stdout, rerun.stdout + rerun.stderr
    a, b = ScoreStore.open(reference), ScoreStore.open(out)
    assert (a.column("status") == "ok").all() and (b.column("status") == "ok").all()
    for name in ("lrec", "ldiff", "lmem", "features"):
        assert np.array_equal(a.column(name), b.column(name)), name
        assert a.column(name).tobytes() == b.column(name).tobytes(), name


THREAD_COUNTS = """
import sys, torch
from memscore.devices import use_threads
torch.get_num_threads()  # torch settles this thread's count at its first call, as any torch work before would
if sys.argv[1] == "use_threads":
    use_threads(1)
else:  # a scorer, then the difficulty kernel (which runs numba's parallel kernels)
    from memscore.config import ScoreConfig
    from memscore.kernels.difficulty import predictability_error
    from memscore.scores import Scorer
    Scorer(ScoreConfig(victim="python:victims_for_tests:blur"))
    before = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    stages = [torch.rand(2, 8, 4, 4, generator=generator)]
    mask = torch.rand(2, 16 * 16, generator=generator) < 0.7
    predictability_error(stages, torch.rand(2, 3, 16, 16, generator=generator), mask)
    print(before, end=" ")
print(torch.get_num_threads())
"""


@pytest.mark.parametrize("how", ["use_threads", "scorer"])
def test_torch_keeps_its_threads_when_numba_starts_its_own(env, how):
    """`use_threads(1)` gives torch 1 thread (it gave numba's count, 2, when it started numba's layer); a scorer keeps
    torch's thread count through its first difficulty kernel (that kernel switched torch to numba's count)."""
    done = subprocess.run([sys.executable, "-c", THREAD_COUNTS, how], env={**env, **THREADS_APART},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == (["1"] if how == "use_threads" else ["1", "1"])


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounting a small tmpfs needs root")
def test_a_full_disk_is_a_clear_error_and_a_rerun_recovers(dataset, tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        filler = disk / "filler"
        out = disk / "s.zarr"
        with open(filler, "wb") as handle:  # room for the store's metadata and some shards (tmpfs takes a 4 KiB page per file), not all
            handle.write(b"\0" * (1024 * 1024 - 200 * 1024))
        code = main(_score_args(dataset, out))
        error = capsys.readouterr().err
        assert code != 0 and "disk is full" in error and str(out) in error and "rerun the same command" in error
        assert "Traceback" not in error
        filler.unlink()
        assert main(_score_args(dataset, out)) == 0, capsys.readouterr().err
        assert ScoreStore.open(out).require_readable().ok == N
    finally:
        subprocess.run(["umount", str(disk)])


def test_every_hostile_input_in_one_dataset_fails_or_is_reported_alone_and_the_rest_is_scored(tmp_path, capsys):
    from PIL import Image

    from images_for_tests import write_declared_png, write_frames
    data = write_aligned_dataset(tmp_path / "data", 6, size=32)           # good pairs 0..5
    linked = write_aligned_dataset(tmp_path / "elsewhere", 2, size=32)    # reached through a folder link
    (data / "linked").symlink_to(linked, target_is_directory=True)
    (data / "loop").symlink_to(data, target_is_directory=True)           # a link to an ancestor: no endless walk
    write_declared_png(data / "bomb.png", 30000, 30000)                   # decompression bomb
    write_frames(data / "frames.tif", 3, size=(64, 32))                   # multi-frame TIFF
    Image.new("RGB", (2, 1)).save(data / "tiny.png")                      # 1x1 halves
    (data / "truncated.png").write_bytes((data / "0.png").read_bytes()[:80])
    Image.new("RGB", (64, 32)).save(data / "animation.gif")              # a type memscore does not read
    (data / os.fsdecode(b"bad-\xff-name.png")).write_bytes((data / "1.png").read_bytes())  # not UTF-8
    code = main(["score", str(data), "--victim", "python:victims_for_tests:blur", "--out", str(tmp_path / "s.zarr"),
                 "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    store = ScoreStore.open(tmp_path / "s.zarr")
    status = dict(zip(store.column("id"), store.column("status")))
    reason = dict(zip(store.column("id"), store.column("reason")))
    good = [str(i) for i in range(6)] + ["linked/0", "linked/1"]
    assert all(status[i] == "ok" for i in good), status
    assert all(status[i] == "failed" for i in ("bomb", "frames", "tiny", "truncated"))
    assert "bomb.png: over memscore's limit of 67108864 pixels" in reason["bomb"]
    assert "frames.tif: has 3 frames" in reason["frames"]
    assert "tiny.png: too small to score" in reason["tiny"]
    assert "truncated.png: cannot decode" in reason["truncated"]
    assert set(status) == set(good) | {"bomb", "frames", "tiny", "truncated"}  # skipped files are not rows
    notes = [line for line in printed.splitlines() if line.startswith("note: skipped")]
    assert any("animation.gif" in line for line in notes) and any("UTF-8" in line for line in notes), notes
    assert store.require_readable().ok == len(good)


def _by_id(path, name: str) -> dict:
    store = ScoreStore.open(path)
    return dict(zip(store.column("id"), store.column(name)))


def test_an_exception_for_one_image_fails_it_alone_and_the_rest_scores_bit_for_bit(dataset, tmp_path):
    """One shard in batches of 4: the victim raises whenever its batch holds CHOSEN_ID. That image fails with the
    error in one line; its batch-mates and every other image score exactly as under a victim that never raises."""
    reference, out = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    assert main(_score_args(dataset, reference, "blur", shard_size=N, batch_size=4)) == 0
    assert main(_score_args(dataset, out, "raise_on_chosen", shard_size=N, batch_size=4)) == 0
    status = _by_id(out, "status")
    assert status == {i: "failed" if i == CHOSEN_ID else "ok" for i in _by_id(reference, "id")}
    assert _by_id(out, "reason")[CHOSEN_ID] == (f"{CHOSEN_ID}: scoring raised RuntimeError: this victim cannot "
                                                "reconstruct image 3")
    others = [i for i in status if i != CHOSEN_ID]
    for name in ("lrec", "ldiff", "out_of_range", "features"):
        expected, got = _by_id(reference, name), _by_id(out, name)
        assert np.stack([got[i] for i in others]).tobytes() == np.stack([expected[i] for i in others]).tobytes(), name
    ScoreStore.open(out).require_readable()  # finished (every shard done, lmem written) and intact, or raises


def test_on_dask_an_exception_for_one_image_fails_it_alone_and_the_store_finishes(dataset, tmp_path, env):
    out = tmp_path / "s.zarr"
    assert main(_score_args(dataset, out, "raise_on_chosen", shard_size=4, batch_size=2) + ["--workers", "1"]) == 0
    store = ScoreStore.open(out)
    assert store.failed_shards == {} and store.done_shards().all() and store.alpha is not None
    counts = store.counts()
    assert (counts.ok, counts.failed, counts.pending) == (N - 1, 1, 0)
    assert _by_id(out, "reason")[CHOSEN_ID].startswith(f"{CHOSEN_ID}: scoring raised RuntimeError: this victim")


def test_victim_outputs_out_of_range_are_counted_clamped_within_tolerance_and_fail_beyond(dataset, tmp_path, capsys):
    """Every output has 1 value of 3072 above 1 (clamped, counted); CHOSEN_ID's is 50 times too large (fails,
    naming the fraction and --victim-range). Nothing is changed silently."""
    out = tmp_path / "s.zarr"
    assert main(_score_args(dataset, out, "out_of_range", shard_size=N, batch_size=4)) == 0
    printed = capsys.readouterr().out
    status, reason, fraction = _by_id(out, "status"), _by_id(out, "reason"), _by_id(out, "out_of_range")
    assert status == {i: "failed" if i == CHOSEN_ID else "ok" for i in status} and len(status) == N
    assert fraction[CHOSEN_ID] > 0.5
    assert reason[CHOSEN_ID].startswith(f"{CHOSEN_ID}: {fraction[CHOSEN_ID]:.1%} of the victim's output values lie "
                                        "outside [0, 1]") and "--victim-range -1,1" in reason[CHOSEN_ID]
    assert all(fraction[i] == np.float32(1 / 3072) for i in status if i != CHOSEN_ID)
    assert f"; {N - 1} scored image(s) had victim output values outside [0, 1], clamped" in printed
