"""`memscore demo`: the main job end to end on an embedded default, with no network and no user data.

Generates a small paired dataset, trains a pix2pix victim on half of it (the members), scores every
pair with the embedded EfficientNet-Lite0 backbone, and evaluates the attack.
"""
from __future__ import annotations

import json
from pathlib import Path

from .attack import evaluate
from .config import ScoreConfig
from .data import AlignedFolder, read_id_list
from .metrics import format_metrics
from .outputs import claim_folder
from .run import RunOptions, run_scoring
from .synthetic import write_aligned_dataset
from .train import TrainingRecipe, train_pix2pix
from .work import DatasetSpec

FULL = {"n_pairs": 96, "epochs": 25}
QUICK = {"n_pairs": 48, "epochs": 8}


def run_demo(out: Path, *, quick: bool = False, size: int = 64) -> dict:
    """Run the demo under `out`; returns the metrics (also written to `out/metrics.json`)."""
    plan = QUICK if quick else FULL
    n = plan["n_pairs"]
    claim_folder(out, "demo")  # an existing folder is used only if an earlier demo made it
    data = write_aligned_dataset(out / "data", n, size=size,
                                 split={"train": range(n // 2), "test": range(n // 2, n)})
    members_file = out / "members.txt"
    members_file.write_text("".join(f"train/{i}\n" for i in range(n // 2)))
    print(f"[1/3] dataset: {n} generated pairs in {data} ({n // 2} members in {members_file})")

    checkpoint = out / "victim" / "latest_net_G.pth"
    # no random jitter: a small victim trained briefly must memorise its members to be worth attacking
    recipe = TrainingRecipe(netG="unet_64", ngf=16, norm="instance", size=size, use_jitter=False,
                            epochs=plan["epochs"])
    train_pix2pix(AlignedFolder(data, "BtoA"), checkpoint, recipe, members=set(read_id_list(members_file).ids),
                  overwrite=True)
    print(f"[2/3] victim: pix2pix {recipe.netG} trained {recipe.epochs} epochs on the members -> {checkpoint}")

    store_path = out / "scores.zarr"
    config = ScoreConfig(victim=f"pix2pix:{checkpoint}")  # the checkpoint carries its model and its size
    summary = run_scoring(DatasetSpec(str(data), direction="BtoA", members_file=str(members_file)), config,
                          store_path, RunOptions(batch_size=16), overwrite=True)
    print(f"[3/3] scores: {summary.line()} -> {store_path}")

    metrics = evaluate(store_path)
    for column in ("lrec", "lmem"):
        print(format_metrics(column, metrics[column]))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(f"store: {store_path}\nmetrics: {out / 'metrics.json'}\n"
          f"open it: python -c \"import xarray; print(xarray.open_zarr('{store_path}'))\"")
    return metrics
