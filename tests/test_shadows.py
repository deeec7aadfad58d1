"""memscore.shadows: the membership plan, training K tiny real shadows of both kinds (resumed after an
interruption without retraining a finished one, refused when the kind or recipe changes, on real Dask processes),
their progress files and the bars that show them, reading them back, and the shadows experiment of the bench on a
store with shadow columns."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from memscore.config import ScoreConfig
from memscore.errors import UsageError
from memscore.likelihood_ratio import lira
from memscore.metrics import auc
from memscore.progress_files import EpochProgressFile, ProgressWatcher
from memscore.recipes import TRAINERS
from memscore.schedule import ClusterPlan
from memscore.scores import Scorer
from memscore.shadows import ShadowError, in_shadow_matrix, membership_plan, read_shadow_set, train_shadows
from memscore.store import ScoreStore, StoreError
from memscore.synthetic import write_aligned_dataset
from memscore.train import TrainingRecipe
from memscore.train_diffusion import DiffusionRecipe
from memscore.victims import open_victim
from tests.stores_for_tests import store_with_shadow_columns

RECIPE = TrainingRecipe(netG="unet_64", size=64, ngf=4, use_jitter=True, epochs=1, batch_size=2)
DIFFUSION_RECIPE = DiffusionRecipe(size=16, width=8, epochs=1, batch_size=2, use_jitter=False)


def test_every_id_is_in_for_half_the_shadows_and_plans_are_reproducible():
    population = [f"img{i}" for i in range(11)]
    ids, plan = membership_plan(population, 4, seed=3)
    assert ids == sorted(population) and plan.shape == (11, 4)
    assert (plan.sum(axis=1) == 2).all()  # exactly K/2 for even K
    assert (plan[:, 0] == ~plan[:, 1]).all() and (plan[:, 2] == ~plan[:, 3]).all()
    assert sorted(plan.sum(axis=0).tolist()) == [5, 5, 6, 6]
    assert not (plan[:, 0] == plan[:, 2]).all()  # the two pairs draw different halves
    again = membership_plan(list(reversed(population)), 4, seed=3)  # the order of the file does not matter
    assert again[0] == ids and np.array_equal(again[1], plan)
    assert not np.array_equal(membership_plan(population, 4, seed=4)[1], plan)
    for odd_or_none in (0, 1, 3):
        with pytest.raises(UsageError, match="even number of shadows"):
            membership_plan(population, odd_or_none, seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shadow_data")
    write_aligned_dataset(root / "data", 6, size=64)
    (root / "population.txt").write_text("".join(f"{i}\n" for i in range(6)))
    return root


def _checkpoint_state(path):
    return path.stat().st_mtime_ns, path.read_bytes()


def _use_trainer(monkeypatch, kind, train):
    """Train the shadows of `kind` with `train` (in this process) for the rest of the test."""
    monkeypatch.setitem(TRAINERS, kind, dataclasses.replace(TRAINERS[kind], train=train))


def test_an_interrupted_run_resumes_without_retraining_finished_shadows(dataset, tmp_path, monkeypatch):
    real_train = TRAINERS["pix2pix"].train
    calls = []

    def interrupted(dataset_, out, *recipe, **options):
        if "shadow_01" in str(out):
            raise KeyboardInterrupt  # the run is killed while shadow 1 trains
        return real_train(dataset_, out, *recipe, **options)

    _use_trainer(monkeypatch, "pix2pix", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_shadows(dataset / "data", dataset / "population.txt", 2, tmp_path / "sh", RECIPE, seed=1)
    manifest = json.loads((tmp_path / "sh" / "shadows.json").read_text())
    assert [s["done"] for s in manifest["shadows"]] == [True, False]
    first = tmp_path / "sh" / "shadow_00" / "generator.pth"
    before = _checkpoint_state(first)
    with pytest.raises(ShadowError, match="shadows 1 of 2 are not trained yet"):
        read_shadow_set(tmp_path / "sh")

    def counted(dataset_, out, *recipe, **options):
        calls.append(str(out))
        return real_train(dataset_, out, *recipe, **options)

    _use_trainer(monkeypatch, "pix2pix", counted)
    finished = train_shadows(dataset / "data", dataset / "population.txt", 2, tmp_path / "sh", RECIPE, seed=1)
    assert len(calls) == 1 and calls[0].endswith("shadow_01/generator.pth")
    assert _checkpoint_state(first) == before
    assert [s.index for s in finished.shadows] == [0, 1] and finished.k == 2 and finished.recipe == RECIPE
    assert finished.kind == "pix2pix" and finished.shadows[0].victim_spec == f"pix2pix:{first}"
    assert not list((tmp_path / "sh").rglob("*.partial"))

    # killed after the checkpoint was renamed in but before the manifest marked it: adopted, not retrained
    manifest = json.loads((tmp_path / "sh" / "shadows.json").read_text())
    manifest["shadows"][0]["done"] = False
    (tmp_path / "sh" / "shadows.json").write_text(json.dumps(manifest))
    train_shadows(dataset / "data", dataset / "population.txt", 2, tmp_path / "sh", RECIPE, seed=1)
    assert len(calls) == 1 and _checkpoint_state(first) == before

    # what the scorer reads
    members = [s.members for s in finished.shadows]
    assert members[0] | members[1] == {str(i) for i in range(6)} and not members[0] & members[1]
    matrix = in_shadow_matrix(["0", "1", "2", "3", "4", "5", "not-in-population"], finished)
    assert matrix.dtype == np.int8 and matrix.shape == (7, 2)
    assert (matrix[:6].sum(axis=1) == 1).all() and (matrix[6] == 0).all()
    assert all(matrix[int(i), 0] == 1 for i in members[0])
    victim = open_victim(finished.shadows[1].victim_spec)  # the checkpoint carries its architecture
    assert victim is not None


def _placeholder_trainer(calls: list):
    """A stand-in for a trainer that records where it was asked to write and writes a placeholder file there."""
    def train(dataset_, out, *recipe, **options):
        calls.append(out)
        out.write_bytes(b"not a trained model")
    return train


def test_a_changed_recipe_seed_k_or_population_is_refused(dataset, tmp_path, monkeypatch):
    trained = []
    _use_trainer(monkeypatch, "pix2pix", _placeholder_trainer(trained))
    out = tmp_path / "sh"
    train_shadows(dataset / "data", dataset / "population.txt", 2, out, RECIPE, seed=1)
    with pytest.raises(ShadowError, match=r"recipe: \{.*epochs=1.*\} -> \{.*epochs=5"):
        train_shadows(dataset / "data", dataset / "population.txt", 2, out, dataclasses.replace(RECIPE, epochs=5), seed=1)
    with pytest.raises(ShadowError, match="seed: 1 -> 2"):
        train_shadows(dataset / "data", dataset / "population.txt", 2, out, RECIPE, seed=2)
    with pytest.raises(ShadowError, match="k: 2 -> 4"):
        train_shadows(dataset / "data", dataset / "population.txt", 4, out, RECIPE, seed=1)
    smaller = tmp_path / "five.txt"
    smaller.write_text("0\n1\n2\n3\n4\n")
    with pytest.raises(ShadowError, match="population: 6 ids .* -> 5 ids"):
        train_shadows(dataset / "data", smaller, 2, out, RECIPE, seed=1)
    assert len(trained) == 2
    train_shadows(dataset / "data", smaller, 4, out, RECIPE, seed=1, fresh=True)  # starting over is allowed
    assert len(trained) == 6 and read_shadow_set(out).k == 4
    with pytest.raises(UsageError, match="diffusion shadows take a DiffusionRecipe, got a TrainingRecipe"):
        train_shadows(dataset / "data", smaller, 4, out, RECIPE, kind="diffusion", seed=1)
    with pytest.raises(UsageError, match="shadow kind must be one of pix2pix, diffusion, got 'gan'"):
        train_shadows(dataset / "data", smaller, 4, out, RECIPE, kind="gan", seed=1)
    missing = tmp_path / "missing.txt"
    missing.write_text("0\nnope\n")
    with pytest.raises(ShadowError, match="1 population ids are not in the dataset .* nope"):
        train_shadows(dataset / "data", missing, 2, tmp_path / "other", RECIPE, seed=1)


def test_shadows_train_on_real_dask_processes_and_a_failing_one_is_named(tmp_path):
    """Two shadows on two worker processes; one image is unreadable, so the shadow whose only member it is fails
    on every try: it is named, the other is done, and a rerun once the image is fixed trains only the failed one."""
    write_aligned_dataset(tmp_path / "data", 2, size=64)
    (tmp_path / "population.txt").write_text("0\n1\n")
    good_png = (tmp_path / "data" / "1.png").read_bytes()
    (tmp_path / "data" / "1.png").write_bytes(good_png[:40])  # truncated: the trainer skips it
    ids, plan = membership_plan(["0", "1"], 2, seed=2)
    failing = int(np.flatnonzero(plan[ids.index("1")])[0])
    with pytest.raises(ShadowError, match=rf"1 of 2 shadows failed \(shadow {failing}: UsageError: no usable member"):
        train_shadows(tmp_path / "data", tmp_path / "population.txt", 2, tmp_path / "sh", RECIPE, seed=2,
                      plan=ClusterPlan(workers=2), device="cpu")
    manifest = json.loads((tmp_path / "sh" / "shadows.json").read_text())
    assert [s["done"] for s in manifest["shadows"]] == [index != failing for index in range(2)]
    trained_on_dask = tmp_path / "sh" / f"shadow_{1 - failing:02d}" / "generator.pth"
    before = _checkpoint_state(trained_on_dask)
    (tmp_path / "data" / "1.png").write_bytes(good_png)
    finished = train_shadows(tmp_path / "data", tmp_path / "population.txt", 2, tmp_path / "sh", RECIPE, seed=2)
    assert [s.index for s in finished.shadows] == [0, 1] and _checkpoint_state(trained_on_dask) == before
    for shadow in finished.shadows:
        assert open_victim(shadow.victim_spec) is not None


def test_an_edited_member_list_is_refused(dataset, tmp_path, monkeypatch):
    _use_trainer(monkeypatch, "pix2pix", _placeholder_trainer([]))
    train_shadows(dataset / "data", dataset / "population.txt", 2, tmp_path / "sh", RECIPE)
    (tmp_path / "sh" / "shadow_01" / "members.txt").write_text("0\n1\n2\n3\n4\n5\n")
    with pytest.raises(ShadowError, match="shadow_01/members.txt is not the member list shadow 1 gets"):
        train_shadows(dataset / "data", dataset / "population.txt", 2, tmp_path / "sh", RECIPE)


def test_a_format_1_manifest_reads_as_pix2pix_shadows(dataset, tmp_path, monkeypatch):
    trained = []
    _use_trainer(monkeypatch, "pix2pix", _placeholder_trainer(trained))
    train_shadows(dataset / "data", dataset / "population.txt", 2, tmp_path / "sh", RECIPE)
    manifest = json.loads((tmp_path / "sh" / "shadows.json").read_text())
    del manifest["kind"]
    (tmp_path / "sh" / "shadows.json").write_text(json.dumps({**manifest, "format": 1}))
    assert read_shadow_set(tmp_path / "sh").kind == "pix2pix"
    train_shadows(dataset / "data", dataset / "population.txt", 2, tmp_path / "sh", RECIPE)  # resumed, not refused
    assert len(trained) == 2
    (tmp_path / "sh" / "shadows.json").write_text(json.dumps({**manifest, "format": 9}))
    with pytest.raises(ShadowError, match="manifest format 9, this memscore reads 2"):
        read_shadow_set(tmp_path / "sh")


def test_diffusion_shadows_train_end_to_end_and_show_their_progress(dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sh"
    finished = train_shadows(dataset / "data", dataset / "population.txt", 2, out, DIFFUSION_RECIPE,
                             kind="diffusion", seed=1, device="cpu")
    manifest = json.loads((out / "shadows.json").read_text())
    assert manifest["format"] == 2 and manifest["kind"] == "diffusion" and all(s["done"] for s in manifest["shadows"])
    assert finished.kind == "diffusion" and finished.recipe == DIFFUSION_RECIPE
    for shadow in read_shadow_set(out).shadows:
        folder = out / f"shadow_{shadow.index:02d}"
        assert shadow.victim_spec == f"diffusers:{folder / 'victim'}" and (folder / "victim" / "unet").is_dir()
        assert not (folder / "victim.training").exists()  # the finished training's state is gone
        progress = json.loads((folder / "progress.json").read_text())
        assert progress["epoch"] == progress["epochs"] == 1 and math.isfinite(progress["loss"])
        assert open_victim(shadow.victim_spec) is not None
    shown = capsys.readouterr().err
    assert "shadow 00" in shown and "shadow 01" in shown and "2/2" in shown and "loss=" in shown and "left=" in shown
    # the shadows are queried as the victim is: its sampler and ldenoise options reach them, its architecture not
    spec = read_shadow_set(out).shadows[0].victim_spec
    scorer = Scorer(ScoreConfig(victim=spec, shadows=str(out), victim_options=(
        ("noises", 2), ("timesteps", "50/100"), ("steps", 3), ("concat", "condition-first"))))
    assert all((v.module.noises, v.module.timesteps, v.module.steps, v.module.concat) == (2, (50, 100), 3, "noisy-first")
               for v in scorer.shadow_victims)
    assert scorer.victim.module.concat == "condition-first"

    # a folder switched in but not yet marked done is adopted, not retrained
    manifest["shadows"][1]["done"] = False
    (out / "shadows.json").write_text(json.dumps(manifest))
    retrained = []
    _use_trainer(monkeypatch, "diffusion", _placeholder_trainer(retrained))
    train_shadows(dataset / "data", dataset / "population.txt", 2, out, DIFFUSION_RECIPE, kind="diffusion", seed=1,
                  progress=False)
    assert not retrained and len(read_shadow_set(out).shadows) == 2
    with pytest.raises(ShadowError, match="kind: diffusion -> pix2pix"):
        train_shadows(dataset / "data", dataset / "population.txt", 2, out, RECIPE, seed=1)
    edited = json.loads((out / "shadows.json").read_text())  # a manifest naming a file outside its shadow's folder
    edited["shadows"][0]["checkpoint"] = "../elsewhere/victim"
    (out / "shadows.json").write_text(json.dumps(edited))
    with pytest.raises(ShadowError, match="names other files than memscore gives it"):
        train_shadows(dataset / "data", dataset / "population.txt", 2, out, DIFFUSION_RECIPE, kind="diffusion", seed=1)
    (out / "shadows.json").write_text(json.dumps(manifest))
    _use_trainer(monkeypatch, "pix2pix", _placeholder_trainer(retrained))
    train_shadows(dataset / "data", dataset / "population.txt", 2, out, RECIPE, seed=1, fresh=True)
    assert not (out / "shadow_00" / "victim").exists() and read_shadow_set(out).kind == "pix2pix"


def test_the_progress_watcher_shows_whole_progress_files_and_skips_the_rest(tmp_path, capsys):
    report = EpochProgressFile(tmp_path / "a.json")
    report(0, 3)
    report(1, 3, 0.5, 20.0)  # within a second of the last write: not written
    (tmp_path / "b.json").write_text('{"epoch": 1, "epo')  # half-written
    files = {"shadow 00": tmp_path / "a.json", "shadow 01": tmp_path / "b.json", "shadow 02": tmp_path / "none.json"}
    with ProgressWatcher(files, total=3, desc="shadows", interval=3600) as watcher:  # polled by hand here
        read = watcher.poll()
        assert set(read) == {"shadow 00"} and read["shadow 00"]["epoch"] == 0 and read["shadow 00"]["loss"] is None
        report(3, 3, 0.25, 0.0)  # the last epoch is always written
        last = watcher.poll()["shadow 00"]
        assert (last["epoch"], last["epochs"], last["loss"], last["seconds_left"]) == (3, 3, 0.25, 0.0)
        watcher.finished("shadow 00 done")
    assert watcher.bars["shadow 00"].n == 3 and watcher.overall.n == 1 and not watcher.thread.is_alive()
    shown = capsys.readouterr().err
    assert "shadow 00 done" in shown and "3/3" in shown and "loss=0.2500" in shown and "shadow 01" not in shown


def test_a_folder_another_run_is_training_in_is_refused(dataset, tmp_path):
    (tmp_path / "sh.lock").write_text(json.dumps({"host": "another-host", "pid": 1, "since": "earlier"}))
    with pytest.raises(StoreError, match="being written by another run .*another-host"):
        train_shadows(dataset / "data", dataset / "population.txt", 2, tmp_path / "sh", RECIPE, seed=1)
    assert not (tmp_path / "sh" / "shadows.json").exists()


def test_the_shadows_experiment_runs_end_to_end_on_a_synthetic_store(dataset, tmp_path, monkeypatch):
    from bench.shadows_experiment import k_values, main, shadow_blocks
    _use_trainer(monkeypatch, "pix2pix", _placeholder_trainer([]))
    train_shadows(dataset / "data", dataset / "population.txt", 2, tmp_path / "sh", RECIPE)  # for its manifest
    lrec, lrec_shadow, in_shadow = store_with_shadow_columns(tmp_path / "s.zarr", n=300, k=6)
    member = ScoreStore.open(tmp_path / "s.zarr").column("member") == 1
    (tmp_path / "members.txt").write_text("".join(f"{i}\n" for i in np.flatnonzero(member)))
    results = main(["--store", str(tmp_path / "s.zarr"), "--members", str(tmp_path / "members.txt"),
                    "--shadows", str(tmp_path / "sh"), "--bootstrap", "20", "--out", str(tmp_path / "shadows.json"),
                    "--plot", str(tmp_path / "k.png")])
    training = results["inputs"]["shadow_training"]
    assert training["recipe"]["epochs"] == 1 and len(training["seconds_per_shadow"]) == 2
    assert k_values(6) == [1, 2, 4, 6] and shadow_blocks(2, 6) == [[0, 1], [2, 3], [4, 5]]
    written = json.loads((tmp_path / "shadows.json").read_text())
    assert written["inputs"]["n_members"] == member.sum() and written["inputs"]["n_nonmembers"] == (~member).sum()
    assert set(written["shadow_methods"]["lira_online"]) == {"1", "2", "4", "6"}
    at_4 = written["shadow_methods"]["lira_offline"]["4"]
    assert at_4["report"]["auc"] == pytest.approx(auc(lira(lrec, lrec_shadow[:, :4], in_shadow[:, :4],
                                                           online=False).scores, member))
    assert at_4["report"]["n_excluded_nan"] == 0 and at_4["report"]["auc_ci"] is not None
    assert "skipped" in written["shadow_methods"]["lira_online"]["1"]["report"]  # one shadow: no image has IN and OUT
    assert len(written["shadow_methods"]["rmia_offline"]["2"]["tpr_at_1pct_per_block"]) == 3
    assert set(written["normality"]) == {"log", "logit", "none"} and (tmp_path / "k.png").stat().st_size > 0
    assert results["baselines"]["lrec"]["auc"] == pytest.approx(auc(lrec, member))
    # shadows remove the images' difficulty, which dominates Lrec here
    assert written["shadow_methods"]["lira_online"]["6"]["report"]["auc"] > results["baselines"]["lrec"]["auc"] + 0.2
