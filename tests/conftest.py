"""Shared fixtures: the real Facades folder (skipped with a reason when absent), thread limits, the environment
of subprocesses and Dask workers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

FACADES = Path(os.environ.get("MEMSCORE_FACADES", Path(__file__).resolve().parents[2] / "shared" / "datasets" / "facades"))


@pytest.fixture(scope="session")
def facades() -> Path:
    if not (FACADES / "train").is_dir():
        pytest.skip(f"real Facades data not found at {FACADES} (set MEMSCORE_FACADES to its folder)")
    return FACADES


@pytest.fixture
def env(monkeypatch) -> dict[str, str]:
    """The environment for subprocesses and Dask workers, which import the test victims from tests/."""
    tests = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
    return dict(os.environ)
