"""memscore.errors: every error memscore raises for a user is one family, which the command prints as one line with
exit code 2; Ctrl-C is one line and exit code 130, and the store it leaves resumes."""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import signal
import subprocess
import sys
import time

import pytest

import memscore
from memscore.cli import main
from memscore.errors import MemscoreError
from memscore.store import ScoreStore
from memscore.synthetic import write_aligned_dataset


def test_every_error_class_of_memscore_is_a_memscore_error():
    found = []
    for module in pkgutil.walk_packages(memscore.__path__, "memscore."):
        for name, value in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(value, Exception) and value.__module__.startswith("memscore"):
                found.append(value)
    assert len(found) >= 8
    outside = [f"{c.__module__}.{c.__name__}" for c in found if not issubclass(c, MemscoreError)]
    assert not outside, f"user errors outside the family: {outside}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    data = write_aligned_dataset(root / "data", 6, size=32)
    (root / "population.txt").write_text("".join(f"train/{i}\n" for i in range(6)))
    return data


def _one_line_error(capsys, code, *expected):
    error = capsys.readouterr().err
    assert code == 2, error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    for text in expected:
        assert text in error, error


def test_shadow_errors_are_one_line_and_exit_2(data, tmp_path, capsys):
    population = data.parent / "population.txt"
    score = ["score", str(data), "--out", str(tmp_path / "s.zarr"), "--victim", "python:victims_for_tests:blur",
             "--no-progress"]
    _one_line_error(capsys, main(score + ["--shadows", str(tmp_path / "nowhere")]), "shadows.json")
    strangers = tmp_path / "strangers.txt"
    strangers.write_text("train/0\nnot/an/id\n")
    _one_line_error(capsys, main(["shadows", "train", str(data), "--population", str(strangers), "--k", "2",
                                  "--out", str(tmp_path / "sh")]), "not in the dataset")
    with pytest.raises(SystemExit) as stopped:  # the parser applies the rule the help states
        main(["shadows", "train", str(data), "--population", str(population), "--k", "3", "--out", str(tmp_path / "sh")])
    assert stopped.value.code == 2 and "even number of shadows" in capsys.readouterr().err
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "shadows.json").write_text(json.dumps({"format": 1, "k": 2}))
    _one_line_error(capsys, main(score + ["--shadows", str(truncated)]), "incomplete")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "shadows.json").write_text('{"format": 1, "k"')
    _one_line_error(capsys, main(score + ["--shadows", str(broken)]), "not valid JSON")
    assert not (tmp_path / "s.zarr").exists()


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes(data, tmp_path, env):
    out = tmp_path / "s.zarr"
    args = ["score", str(data), "--out", str(out), "--victim", "python:victims_for_tests:slow_blur",
            "--shard-size", "2", "--batch-size", "1", "--threads", "1", "--no-progress"]
    process = subprocess.Popen([sys.executable, "-m", "memscore.cli", *args],
                               env={**env, "MEMSCORE_TEST_DELAY": "0.3"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ((out / "zarr.json").exists() and
                                               ScoreStore.open(out).done_shards().any()):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 130, error
    assert "interrupted; rerun the same command to resume" in error and "Traceback" not in error
    store = ScoreStore.open(out)
    assert store.verify() == [] and store.counts().pending > 0
    assert main(args) == 0
    assert ScoreStore.open(out).require_readable().ok == 6
