"""memscore.demo: the README's main job runs end to end on its embedded default, leaves a full store, and the
attack works: members score lower than non-members far beyond what chance gives."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from scipy.stats import mannwhitneyu

from memscore.demo import QUICK, run_demo
from memscore.metrics import auc


@pytest.mark.slow
def test_quick_demo_scores_everything_and_the_attack_works(tmp_path):
    metrics = run_demo(tmp_path, quick=True)
    ds = xr.open_zarr(tmp_path / "scores.zarr")
    assert ds.sizes["image"] == QUICK["n_pairs"] and (ds["status"].values == "ok").all()
    member = ds["member"].values == 1
    assert np.isfinite(ds["lmem"].values).all() and int(member.sum()) == QUICK["n_pairs"] // 2
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics)) and saved["alpha"]["spec"] == "fit" and not saved["partial"]
    lmem = ds["lmem"].values.astype(np.float64)
    assert saved["lmem"]["auc"] == pytest.approx(auc(lmem, member))
    # The victim memorised its members: their Lmem is lower, with a one-sided Mann-Whitney p < 1% (24 vs 24
    # images: an AUC above about 0.69, where chance would sit at 0.5).
    assert mannwhitneyu(lmem[member], lmem[~member], alternative="less").pvalue < 0.01
    assert saved["lmem"]["auc"] > 0.65
