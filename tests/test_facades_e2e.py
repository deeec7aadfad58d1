"""End to end on real CMP Facades: train a small pix2pix victim on part of train/, score members and
as many test/ non-members, and check the attack clearly beats chance and the store is complete."""
from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from memscore.cli import main

N_MEMBERS = 32
EPOCHS = 12


@pytest.mark.slow
def test_attack_beats_chance_on_facades(facades, tmp_path):
    data = tmp_path / "data"  # a subset of Facades by links, so ids stay train/N and test/N
    ids = [f"train/{i}" for i in range(1, N_MEMBERS + 1)] + [f"test/{i}" for i in range(1, N_MEMBERS + 1)]
    for image_id in ids:
        (data / image_id).parent.mkdir(parents=True, exist_ok=True)
        (data / f"{image_id}.jpg").symlink_to(facades / f"{image_id}.jpg")
    members = tmp_path / "members.txt"
    members.write_text("".join(f"{i}\n" for i in ids[:N_MEMBERS]))
    checkpoint = tmp_path / "victim" / "latest_net_G.pth"
    assert main(["train-victim", str(data), "--direction", "BtoA", "--members", str(members), "--out", str(checkpoint),
                 "--netG", "unet_64", "--size", "64", "--ngf", "16", "--epochs", str(EPOCHS), "--no-jitter"]) == 0
    store = tmp_path / "facades.zarr"
    assert main(["score", str(data), "--direction", "BtoA", "--members", str(members), "--out", str(store),
                 "--victim", f"pix2pix:{checkpoint}", "--no-progress"]) == 0
    assert main(["evaluate", str(store), "--json", str(tmp_path / "metrics.json")]) == 0
    ds = xr.open_zarr(store)
    assert sorted(ds["id"].values) == sorted(ids)
    assert (ds["status"].values == "ok").all()
    assert np.isfinite(ds["lrec"].values).all() and np.isfinite(ds["ldiff"].values).all()
    assert np.isfinite(ds["lmem"].values).all()
    assert (ds["out_height"].values == 64).all()
    assert int(ds["member"].values.sum()) == N_MEMBERS
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["lrec"]["auc"] > 0.75, metrics["lrec"]
    assert metrics["lrec"]["n_members"] == N_MEMBERS and metrics["lrec"]["n_nonmembers"] == N_MEMBERS
