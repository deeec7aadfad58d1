"""A diffusion victim end to end on generated data: `train-victim --kind diffusion` writes a `diffusers:` folder
(resumable), `score` builds the store on ldenoise (white-box) or on sampled Lrec (`--samples K`), every command
that reads a statistic reads the store's, and sampled outputs do not depend on batching, workers or resumes."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from memscore import rescore
from memscore.cli import main
from memscore.config import ScoreConfig
from memscore.data import AlignedFolder
from memscore.errors import UsageError
from memscore.pipeline import batches
from memscore.run import RunOptions, run_scoring
from memscore.score_names import score_names
from memscore.scores import Scorer
from memscore.seeding import noise_seed, sample_seed
from memscore.store import ScoreStore
from memscore.synthetic import write_aligned_dataset
from memscore.train_diffusion import DiffusionRecipe, TrainingStateError, train_diffusion
from memscore.victims import at_size, load
from memscore.work import DatasetSpec

N = 44
RECIPE = DiffusionRecipe(size=16, width=8, epochs=2, batch_size=4, use_jitter=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny diffusion victim trained through the command on the first half of a generated dataset."""
    root = tmp_path_factory.mktemp("diffusion")
    data = write_aligned_dataset(root / "data", N, size=32)
    members = root / "members.txt"
    members.write_text("".join(f"{i}\n" for i in range(N // 2)))
    assert main(["train-victim", str(data), "--kind", "diffusion", "--members", str(members), "--out",
                 str(root / "victim"), "--size", "16", "--width", "8", "--epochs", "2", "--batch-size", "4",
                 "--no-jitter", "--device", "cpu"]) == 0
    return root, data, members


def _score(trained, out, *arguments):
    root, data, members = trained
    return main(["score", str(data), "--victim", f"diffusers:{root / 'victim'}", "--members", str(members),
                 "--out", str(out), "--device", "cpu", "--no-progress", *arguments])


def test_trainer_writes_a_diffusers_folder_that_resumes_bit_identically(trained, tmp_path):
    root, data, members = trained
    assert sorted(os.listdir(root / "victim" / "unet")) == ["config.json", "diffusion_pytorch_model.safetensors"]
    record = json.loads((root / "victim" / "memscore_training.json").read_text())
    assert record["epochs_done"] == 2 and record["recipe"]["width"] == 8
    assert not (root / "victim.training").exists()  # the state goes once the model is whole
    dataset, ids = AlignedFolder(data, "AtoB"), {str(i) for i in range(N // 2)}
    recipe = DiffusionRecipe(size=16, width=8, epochs=4, batch_size=4, use_jitter=True)
    whole = train_diffusion(dataset, tmp_path / "whole", recipe, members=ids, device="cpu", progress=False)

    class Interrupt(Exception):
        pass

    def stop_after_three(epoch, epochs, loss, left):
        if epoch == 3:
            raise Interrupt
    with pytest.raises(Interrupt):
        train_diffusion(dataset, tmp_path / "resumed", recipe, members=ids, device="cpu", progress=False,
                        checkpoint_every=2, on_epoch=stop_after_three)
    assert (tmp_path / "resumed.training" / "state.pt").is_file() and not (tmp_path / "resumed").exists()
    with pytest.raises(TrainingStateError, match="recipe"):  # another recipe does not resume that state
        train_diffusion(dataset, tmp_path / "resumed", DiffusionRecipe(size=16, width=8, epochs=5, batch_size=4),
                        members=ids, device="cpu", progress=False)
    with pytest.raises(TrainingStateError, match="data_sha256"):  # nor the same recipe on other pairs
        train_diffusion(AlignedFolder(data, "BtoA"), tmp_path / "resumed", recipe, members=ids, device="cpu",
                        progress=False)
    train_diffusion(dataset, tmp_path / "resumed", recipe, members=ids, device="cpu", progress=False)
    a = load(f"diffusers:{whole}").unet.state_dict()
    b = load(f"diffusers:{tmp_path / 'resumed'}").unet.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_ldenoise_store_is_the_loop_by_loop_error_and_flows_through_every_reader(trained, tmp_path):
    root, data, members = trained
    out = tmp_path / "white.zarr"
    assert _score(trained, out, "--precision", "fp32") == 0
    store = ScoreStore.open(out)
    assert store.statistic == "ldenoise" and store.config.samples == 0 and score_names(store) == ["ldenoise", "lmem"]
    ldenoise, ids = store.column("ldenoise").astype(np.float64), store.column("id")
    assert np.isfinite(ldenoise).all() and np.isnan(store.column("lrec")).all()
    # the first image again, as the run prepares it, one (t, draw) at a time with diffusers' own scheduler
    scorer = Scorer(store.config)
    item = next(iter(batches(AlignedFolder(data, "AtoB").pairs(0, 1), scorer.view, 1, threads=1))).items[0]
    x = item.x * 2 - 1
    y = at_size(item.y, tuple(x.shape[-2:])) * 2 - 1
    victim = load(f"diffusers:{root / 'victim'}")
    scheduler = DDPMScheduler.from_pretrained(root / "victim" / "scheduler")
    errors = []
    with torch.no_grad():
        for t in (50, 100, 200, 300, 500):
            for draw in range(4):
                generator = torch.Generator().manual_seed(noise_seed(sample_seed(0, ids[0], 0), t, draw))
                noise = torch.randn((1, 3, 16, 16), generator=generator)
                noisy = scheduler.add_noise(y[None], noise, torch.tensor([t]))
                predicted = victim.unet(torch.cat([noisy, x[None]], 1), t).sample
                errors.append(float(((predicted - noise) ** 2).mean()))
    assert x.shape[-1] == 16 and ldenoise[0] == pytest.approx(np.mean(errors), rel=1e-5)
    alpha = store.alpha.value
    np.testing.assert_allclose(store.column("lmem"), ldenoise - alpha * store.column("ldiff"), rtol=1e-5, atol=1e-6)
    assert main(["evaluate", str(out), "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["scores"][:2] == ["ldenoise", "lmem"] and metrics["ldenoise"]["n_members"] == N // 2
    assert main(["export", str(out), "--format", "csv", "--score", "ldenoise"]) == 0
    assert main(["report", str(out), "--out", str(tmp_path / "report"), "--bootstrap", "0"]) == 0
    assert "Ldenoise" in (tmp_path / "report" / "index.html").read_text()
    nonmembers = tmp_path / "nonmembers.txt"
    nonmembers.write_text("".join(f"{i}\n" for i in range(N // 2, N)))
    record = rescore(out, "per-image", reference=str(nonmembers), folds=2, modelled="raw").record
    assert record["statistic"] == "ldenoise" and "ldenoise" in record["inputs_fingerprint"]


def test_sampled_lrec_is_independent_of_batching_and_workers_and_resumes_bit_identically(trained, tmp_path, env):
    root, data, members = trained
    config = ScoreConfig(victim=f"diffusers:{root / 'victim'}", statistic="lrec", samples=3,
                         victim_options=(("steps", 4),), precision="fp32")
    spec = DatasetSpec(str(data), members_file=str(members))
    run_scoring(spec, config, tmp_path / "a.zarr", RunOptions(batch_size=5, shard_size=16), progress=False)
    a = ScoreStore.open(tmp_path / "a.zarr")
    samples = a.column("lrec_samples")
    assert samples.shape == (N, 3) and np.isfinite(samples).all()
    np.testing.assert_allclose(a.column("lrec"), samples.astype(np.float64).mean(axis=1), rtol=1e-6)
    assert (np.ptp(samples, axis=1) > 0).all()  # the samples differ: each has its own seed
    run_scoring(spec, config, tmp_path / "b.zarr", RunOptions(batch_size=3, shard_size=16, workers=2), progress=False)
    np.testing.assert_allclose(ScoreStore.open(tmp_path / "b.zarr").column("lrec_samples"), samples, atol=1e-5)
    # an interrupted run: its second shard's chunks are gone and the store unfinished; the rerun scores it again
    resumed = tmp_path / "c.zarr"
    shutil.copytree(tmp_path / "a.zarr", resumed)
    store = ScoreStore.open(resumed, mode="r+")
    with store.lock():
        store.reset_shards([1])
    run_scoring(spec, config, resumed, RunOptions(batch_size=5, shard_size=16), progress=False)
    assert np.array_equal(ScoreStore.open(resumed).column("lrec_samples"), samples)


def test_a_statistic_the_victim_cannot_give_is_refused_before_a_store_exists(trained, tmp_path, capsys):
    root, data, members = trained
    with pytest.raises(UsageError, match="--samples"):
        ScoreConfig(victim="diffusers:x", statistic="lrec", samples=0)
    with pytest.raises(UsageError, match="--defense-noise"):
        ScoreConfig(victim="diffusers:x", defense_noise=0.1)
    for victim, wrong in (("python:victims_for_tests:blur", ["--statistic", "ldenoise"]),
                          (f"recon:{data}", ["--samples", "2"])):
        assert main(["score", str(data), "--victim", victim, *wrong, "--out", str(tmp_path / "s.zarr"),
                     "--no-progress"]) == 2
        assert not (tmp_path / "s.zarr").exists()
    errors = capsys.readouterr().err
    assert "needs white-box victims" in errors and "one output per image" in errors


def test_recipes_the_unet_cannot_build_are_refused_while_parsing(trained, tmp_path, capsys):
    root, data, members = trained
    with pytest.raises(SystemExit):  # an option of this kind alone: refused by argparse
        main(["train-victim", str(data), "--kind", "diffusion", "--out", str(tmp_path / "v"), "--width", "12"])
    assert "--width: must be a whole number from 1 to 8, or a multiple of 8" in capsys.readouterr().err
    # an option both kinds take: refused by the chosen kind's recipe, before anything is read
    assert main(["train-victim", str(data), "--kind", "diffusion", "--out", str(tmp_path / "v"), "--size", "36"]) == 2
    assert "size must be a multiple of 8" in capsys.readouterr().err
    assert main(["train-victim", str(data), "--kind", "diffusion", "--ngf", "8", "--out", str(tmp_path / "v")]) == 2
    assert "--ngf does not apply to --kind diffusion" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()
