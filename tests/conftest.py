"""Shared fixtures: the real Facades folder (skipped with a reason when absent), thread limits."""
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
