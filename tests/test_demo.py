"""engine.demo: the README's main job runs end to end on its embedded default and leaves a full store."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from engine.demo import QUICK, run_demo


@pytest.mark.slow
def test_quick_demo_scores_everything_and_writes_metrics(tmp_path):
    metrics = run_demo(tmp_path, quick=True)
    ds = xr.open_zarr(tmp_path / "scores.zarr")
    assert ds.sizes["image"] == QUICK["n_pairs"] and (ds["status"].values == "ok").all()
    assert np.isfinite(ds["lmem"].values).all() and int(ds["member"].values.sum()) == QUICK["n_pairs"] // 2
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["lrec"]["auc"] == pytest.approx(metrics["lrec"]["auc"]) and 0.0 <= saved["lmem"]["auc"] <= 1.0
    assert saved["alpha"]["spec"] == "fit"
