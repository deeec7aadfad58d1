"""The notebook API (`engine.score`, `engine.open_store`, `engine.attack_metrics`) on generated data,
and no public name of the package hiding a submodule (`from engine import evaluate` must be the module)."""
from __future__ import annotations

import importlib
import pkgutil
import types

import numpy as np

import engine
from engine.metrics import auc
from engine.synthetic import write_manifest_dataset


def test_no_public_name_hides_a_submodule():
    for module in pkgutil.walk_packages(engine.__path__, "engine."):
        imported = importlib.import_module(module.name)
        parent, _, short = module.name.rpartition(".")
        assert getattr(importlib.import_module(parent), short) is imported, module.name
    for name in engine.__all__:
        assert not isinstance(getattr(engine, name), types.ModuleType), name


def test_score_then_attack_metrics(tmp_path):
    manifest = write_manifest_dataset(tmp_path / "data", 12, distinct=12, size=32)
    config = engine.ScoreConfig(victim="python:victims_for_tests:blur")
    summary = engine.score(engine.DatasetSpec(str(manifest)), config, tmp_path / "s.zarr", progress=False)
    assert summary.scored == 12
    store = engine.open_store(str(tmp_path / "s.zarr"))
    members = np.asarray(store.column("member"))
    lmem = np.asarray(store.column("lmem"))
    metrics = engine.attack_metrics(str(tmp_path / "s.zarr"))
    assert metrics["lmem"]["auc"] == auc(lmem, members == 1)
