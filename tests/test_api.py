"""The notebook API (`memscore.score`, `memscore.open_store`, `memscore.evaluate`, `memscore.calibrate`, `memscore.predict`,
`memscore.rescore`) on generated data: the same functions the `memscore` command calls. And no public name of
the package hides a submodule (`from memscore import metrics` must be the module)."""
from __future__ import annotations

import importlib
import pkgutil
import types

import numpy as np

import memscore
from memscore import cli
from memscore.metrics import auc
from memscore.synthetic import write_manifest_dataset


def test_no_public_name_hides_a_submodule():
    for module in pkgutil.walk_packages(memscore.__path__, "memscore."):
        imported = importlib.import_module(module.name)
        parent, _, short = module.name.rpartition(".")
        assert getattr(importlib.import_module(parent), short) is imported, module.name
    for name in memscore.__all__:
        assert not isinstance(getattr(memscore, name), types.ModuleType), name


def test_the_command_calls_the_api_functions():
    for name in ("evaluate", "calibrate", "predict"):
        assert getattr(cli, name) is getattr(memscore, name)
    assert cli.rescore is memscore.rescore and cli.run_scoring is memscore.score


def test_score_evaluate_rescore_calibrate_predict(tmp_path):
    manifest = write_manifest_dataset(tmp_path / "data", 12, distinct=12, size=32)
    config = memscore.ScoreConfig(victim="python:victims_for_tests:blur")
    path = tmp_path / "s.zarr"
    summary = memscore.score(memscore.DatasetSpec(str(manifest)), config, path, progress=False)
    assert summary.scored == 12
    store = memscore.open_store(path)
    members = np.asarray(store.column("member"))
    metrics = memscore.evaluate(path)
    assert metrics["lmem"]["auc"] == auc(np.asarray(store.column("lmem")), members == 1)
    rescored = memscore.rescore(path, alpha="0.5")
    assert isinstance(rescored, memscore.Rescored) and (rescored.method, rescored.column) == ("alpha", "lmem")
    assert memscore.open_store(path).alpha.to_dict() == rescored.record and rescored.record["value"] == 0.5
    nonmembers = tmp_path / "nonmembers.txt"
    nonmembers.write_text("".join(f"{i}\n" for i in store.column("id")[members == 0]))
    calibration = memscore.calibrate(path, nonmembers, fpr=0.2)
    assert calibration.fingerprint == memscore.open_store(path).fingerprint("lmem")
    prediction = memscore.predict(path, calibration=calibration)
    decisions = memscore.open_store(path).column("predicted_member")
    assert prediction.members == int((decisions == 1).sum()) and prediction.not_scored == 0
