"""The notebook API (`engine.score`, `engine.open_store`, `engine.evaluate`, `engine.calibrate`, `engine.predict`,
`engine.rescore_store`) on generated data: the same functions the `memscore` command calls. And no public name of
the package hides a submodule (`from engine import metrics` must be the module)."""
from __future__ import annotations

import importlib
import pkgutil
import types

import numpy as np

import engine
from engine import cli
from engine.metrics import auc
from engine.synthetic import write_manifest_dataset


def test_no_public_name_hides_a_submodule():
    for module in pkgutil.walk_packages(engine.__path__, "engine."):
        imported = importlib.import_module(module.name)
        parent, _, short = module.name.rpartition(".")
        assert getattr(importlib.import_module(parent), short) is imported, module.name
    for name in engine.__all__:
        assert not isinstance(getattr(engine, name), types.ModuleType), name


def test_the_command_calls_the_api_functions():
    for name in ("evaluate", "calibrate", "predict"):
        assert getattr(cli, name) is getattr(engine, name)
    assert cli.rescore is engine.rescore_store and cli.run_scoring is engine.score


def test_score_evaluate_rescore_calibrate_predict(tmp_path):
    manifest = write_manifest_dataset(tmp_path / "data", 12, distinct=12, size=32)
    config = engine.ScoreConfig(victim="python:victims_for_tests:blur")
    path = tmp_path / "s.zarr"
    summary = engine.score(engine.DatasetSpec(str(manifest)), config, path, progress=False)
    assert summary.scored == 12
    store = engine.open_store(path)
    members = np.asarray(store.column("member"))
    metrics = engine.evaluate(path)
    assert metrics["lmem"]["auc"] == auc(np.asarray(store.column("lmem")), members == 1)
    record = engine.rescore_store(path, "0.5")
    assert isinstance(record, engine.AlphaRecord) and engine.open_store(path).alpha.value == 0.5
    nonmembers = tmp_path / "nonmembers.txt"
    nonmembers.write_text("".join(f"{i}\n" for i in store.column("id")[members == 0]))
    calibration = engine.calibrate(path, nonmembers, fpr=0.2)
    assert calibration.fingerprint == engine.open_store(path).fingerprint("lmem")
    prediction = engine.predict(path, calibration=calibration)
    decisions = engine.open_store(path).column("predicted_member")
    assert prediction.members == int((decisions == 1).sum()) and prediction.not_scored == 0
