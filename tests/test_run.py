"""memscore.run end to end on generated data: scores, determinism, bad inputs, resume, refusals."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import zarr
from PIL import Image

from memscore.cli import main
from memscore.config import ScoreConfig
from memscore.run import RunOptions, default_shard_size, run_scoring
from memscore.schedule import ClusterPlan
from memscore.store import ScoreStore, StoreError
from memscore.synthetic import write_aligned_dataset
from memscore.work import DatasetSpec

N = 14


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_aligned_dataset(root, N, size=32)
    return root


def _split_halves(aligned, out):
    """The aligned files as two folders (label maps in x/, photos in y/) with the same ids."""
    for folder in ("x", "y"):
        (out / folder).mkdir(parents=True)
    for path in aligned.glob("*.png"):
        image = Image.open(path)
        width, height = image.size
        image.crop((width // 2, 0, width, height)).save(out / "x" / path.name)
        image.crop((0, 0, width // 2, height)).save(out / "y" / path.name)
    return out / "x", out / "y"


def _scores(path) -> dict[str, tuple[float, float, str]]:
    ds = xr.open_zarr(path)
    return {i: (a, b, s) for i, a, b, s in zip(ds["id"].values, ds["lrec"].values, ds["ldiff"].values, ds["status"].values)}


def _run(dataset, out, **kwargs):
    config = ScoreConfig(victim=kwargs.pop("victim", "python:victims_for_tests:blur"), alpha=kwargs.pop("alpha", "fit"),
                         seed=kwargs.pop("seed", 0))
    spec = kwargs.pop("spec", DatasetSpec(str(dataset)))
    overwrite = kwargs.pop("overwrite", False)
    return run_scoring(spec, config, out, RunOptions(**kwargs), overwrite=overwrite, progress=False)


def test_scores_are_complete_and_independent_of_batch_size_order_and_form(dataset, tmp_path):
    _run(dataset, tmp_path / "a.zarr", batch_size=32, spec=DatasetSpec(str(dataset), direction="BtoA"))
    _run(dataset, tmp_path / "b.zarr", batch_size=3, shard_size=4, spec=DatasetSpec(str(dataset), direction="BtoA"))
    inputs, targets = _split_halves(dataset, tmp_path)
    manifest = tmp_path / "reversed.csv"  # the same pairs as separate files, in reverse order
    rows = sorted(((p.stem, p.name) for p in inputs.glob("*.png")), reverse=True)
    manifest.write_text("id,input,target\n" + "".join(f"{i},x/{name},y/{name}\n" for i, name in rows))
    _run(None, tmp_path / "c.zarr", batch_size=5, spec=DatasetSpec(str(manifest)))
    a, b, c = (_scores(tmp_path / f"{k}.zarr") for k in "abc")
    assert len(a) == N and all(s == "ok" for *_, s in a.values())
    assert all(np.isfinite(v[0]) and np.isfinite(v[1]) and v[1] > 0 for v in a.values())
    assert list(xr.open_zarr(tmp_path / "c.zarr")["id"].values) == [i for i, _ in rows]
    for other in (b, c):
        assert set(other) == set(a)
        for key in a:
            assert other[key][:2] == pytest.approx(a[key][:2], rel=1e-5)


def test_lmem_uses_the_fitted_alpha(dataset, tmp_path):
    _run(dataset, tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    lrec, ldiff = ds["lrec"].values.astype(float), ds["ldiff"].values.astype(float)
    slope = np.polyfit(ldiff, lrec, 1)[0]
    alpha = ds["lmem"].attrs["alpha"]
    assert alpha["spec"] == "fit" and alpha["value"] == pytest.approx(slope, rel=1e-4)
    np.testing.assert_allclose(ds["lmem"].values, lrec - slope * ldiff, rtol=1e-4, atol=1e-6)


def test_bad_inputs_are_recorded_and_the_rest_scored(tmp_path, capsys):
    inputs, targets = tmp_path / "x", tmp_path / "y"
    write_aligned_dataset(inputs, 8, size=32)
    write_aligned_dataset(targets, 8, size=32)
    (inputs / "0.png").write_bytes(b"")                                   # empty
    (inputs / "1.png").write_bytes(b"garbage bytes, not an image")          # corrupt
    (targets / "2.png").write_bytes((targets / "2.png").read_bytes()[:60])  # truncated
    (targets / "3.png").unlink()                                           # missing partner
    Image.new("RGB", (64, 32), (0, 0, 0)).save(inputs / "4.png")           # dark: this victim returns NaN
    code = main(["score", "--inputs", str(inputs), "--targets", str(targets), "--out", str(tmp_path / "s.zarr"),
                 "--victim", "python:victims_for_tests:broken_on_dark", "--no-progress"])
    assert code == 0
    ds = xr.open_zarr(tmp_path / "s.zarr")
    by_id = dict(zip(ds["id"].values, zip(ds["status"].values, ds["reason"].values, ds["lrec"].values)))
    assert by_id["0"][0] == "failed" and "empty file" in by_id["0"][1]
    assert "not a readable image" in by_id["1"][1]
    assert "2.png" in by_id["2"][1]
    assert "missing target" in by_id["3"][1]
    assert "NaN or inf" in by_id["4"][1]
    assert all(by_id[str(i)][0] == "ok" and np.isfinite(by_id[str(i)][2]) for i in (5, 6, 7))
    assert all(np.isnan(by_id[str(i)][2]) for i in range(5))
    assert "failed 5" in capsys.readouterr().out


def test_wrong_channel_output_fails_every_image_and_the_command_says_so(dataset, tmp_path, capsys):
    code = main(["score", str(dataset), "--out", str(tmp_path / "s.zarr"), "--victim",
                 "python:victims_for_tests:gray", "--no-progress"])
    assert code != 0
    assert "nothing could be scored" in capsys.readouterr().err
    reasons = ScoreStore.open(tmp_path / "s.zarr").column("reason")
    assert all("expected 3 channels" in r for r in reasons)


def test_rerun_resumes_only_unfinished_shards_and_refuses_a_changed_config(dataset, tmp_path):
    out = tmp_path / "s.zarr"
    first = _run(dataset, out, shard_size=4)
    reference = _scores(out)
    store = ScoreStore.open(out, mode="r+")
    store.reset_shards([1])                        # as if the run had died inside shard 1
    store.group["lrec"][4:8] = np.float32(np.nan)
    again = _run(dataset, out, shard_size=4)
    assert first.scored == N and again.scored == 4 and again.skipped_done == N - 4
    resumed = _scores(out)
    assert resumed.keys() == reference.keys()
    for key, values in reference.items():
        assert resumed[key][:2] == pytest.approx(values[:2])
    with pytest.raises(StoreError, match="seed: store has 0, asked 1"):
        _run(dataset, out, shard_size=4, seed=1)
    layouts = ScoreStore.open(out).record.layouts  # each run's process layout is on record
    assert len(layouts) == 2 and layouts[0]["precision"] in ("fp32", "bf16") and layouts[0]["threads"] >= 1


def test_rescore_changes_alpha_without_touching_images_and_is_idempotent(dataset, tmp_path):
    out = tmp_path / "s.zarr"
    _run(dataset, out)
    lrec, ldiff = (ScoreStore.open(out).column(c).astype(float) for c in ("lrec", "ldiff"))
    assert main(["rescore", str(out), "--alpha", "0.5"]) == 0
    once = ScoreStore.open(out).column("lmem")
    assert main(["rescore", str(out), "--alpha", "0.5"]) == 0
    store = ScoreStore.open(out)
    np.testing.assert_array_equal(store.column("lmem"), once)
    np.testing.assert_allclose(once, lrec - 0.5 * ldiff, rtol=1e-5)
    assert store.alpha.value == 0.5 and store.alpha.spec == "0.5"
    assert [h.spec for h in store.alpha_history] == ["fit", "0.5"]


def test_a_run_interrupted_before_the_alpha_pass_finishes_it_on_rerun(dataset, tmp_path):
    reference, out = tmp_path / "ref.zarr", tmp_path / "s.zarr"
    _run(dataset, reference)
    _run(dataset, out)
    lmem = zarr.open_array(str(out / "lmem"), mode="r+")  # as if killed after the last shard, before the alpha pass
    lmem.attrs.put({})
    lmem[:] = np.float32(np.nan)
    again = _run(dataset, out)
    assert again.scored == 0 and again.skipped_done == N
    a, b = ScoreStore.open(reference), ScoreStore.open(out)
    np.testing.assert_array_equal(a.column("lmem"), b.column("lmem"))
    assert dataclasses.replace(a.alpha, created="") == dataclasses.replace(b.alpha, created="")


def test_label_map_victims_get_class_ids_and_rgb_label_files_are_refused(tmp_path):
    """pix2pixHD with label_nc > 0 is fed integer id maps (nearest-resized), as the public code feeds it."""
    import torch
    from memscore.victims.pix2pixhd import build_generator, one_hot
    rng = np.random.default_rng(0)
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 4, (32, 32), dtype=np.uint8), mode="L").save(tmp_path / "x" / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "y" / f"{i}.png")
    Image.new("RGB", (32, 32)).save(tmp_path / "x" / "3.png")  # a colour-coded map: no class ids in it
    torch.manual_seed(0)
    generator = build_generator("global", input_nc=4, ngf=8, n_downsample_global=2, n_blocks_global=1)
    torch.save(generator.state_dict(), tmp_path / "g.pth")
    options = ["label_nc=4", "no_instance=true", "ngf=8", "n_downsample_global=2", "n_blocks_global=1"]
    assert main(["score", "--inputs", str(tmp_path / "x"), "--targets", str(tmp_path / "y"), "--out",
                 str(tmp_path / "s.zarr"), "--victim", f"pix2pixhd:{tmp_path / 'g.pth'}", "--no-progress",
                 *[arg for option in options for arg in ("--victim-opt", option)]]) == 0
    store = ScoreStore.open(tmp_path / "s.zarr")
    status, reason, lrec = store.column("status"), store.column("reason"), store.column("lrec")
    assert list(status) == ["ok", "ok", "ok", "failed"] and "one class id per pixel" in reason[3]
    generator.eval()
    for i in range(3):
        labels = torch.from_numpy(np.asarray(Image.open(tmp_path / "x" / f"{i}.png"), dtype=np.int64))[None, None]
        with torch.no_grad():
            out = (generator(one_hot(labels, 4)) + 1) / 2
        target = torch.from_numpy(np.asarray(Image.open(tmp_path / "y" / f"{i}.png"), dtype=np.float32) / 255)
        expected = (out[0].clamp(0, 1) - target.permute(2, 0, 1)).abs().mean().item()
        assert lrec[i] == pytest.approx(expected, rel=1e-4)


def test_default_shard_size_gives_each_local_worker_about_16_shards(tmp_path):
    assert default_shard_size(1_000_000) == 1024  # one process
    assert default_shard_size(4096, ClusterPlan(workers=2)) == 128
    assert default_shard_size(1000, ClusterPlan(workers=2)) == 64  # never under 64
    assert default_shard_size(1_000_000, ClusterPlan(workers=4)) == 1024  # never over 1024
    assert default_shard_size(4096, ClusterPlan(scheduler="tcp://127.0.0.1:8786")) == 1024  # workers unknown
    with pytest.raises(StoreError, match="shard size must be at least 1"):
        ScoreStore.create(tmp_path / "s.zarr", 10, 0, ScoreConfig(victim="recon:x"))


def test_damaged_shards_are_named_and_scored_again_on_rerun(dataset, tmp_path):
    out = tmp_path / "s.zarr"
    _run(dataset, out, shard_size=4)
    reference = ScoreStore.open(out).to_frame()
    os.remove(out / "lrec" / "c" / "1")                                 # a deleted chunk
    (out / "ldiff" / "c" / "2").write_bytes(b"\x28\xb5\x2f\xfd not zstd")  # a corrupt one
    assert ScoreStore.open(out).damaged_shards() == [1, 2]
    again = _run(dataset, out, shard_size=4)
    assert again.rescored_damaged == (1, 2) and again.scored == 8 and "damaged shard(s) scored again" in again.line()
    repaired = ScoreStore.open(out)
    assert repaired.verify() == []
    for column in ("lrec", "ldiff", "lmem"):
        np.testing.assert_allclose(repaired.column(column), reference[column], rtol=1e-6)


def test_a_failed_fresh_run_leaves_no_store_and_bad_options_touch_nothing(dataset, tmp_path):
    out = tmp_path / "s.zarr"
    with pytest.raises(Exception, match="no_such_factory"):
        _run(dataset, out, victim="python:victims_for_tests:no_such_factory")
    assert not out.exists()
    with pytest.raises(ValueError, match="alpha 'garbage' not understood"):
        _run(dataset, out, alpha="garbage")
    assert not out.exists()
    _run(dataset, out)
    before = ScoreStore.open(out).fingerprint("lmem")
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        _run(dataset, out, batch_size=0)
    assert ScoreStore.open(out).fingerprint("lmem") == before


def test_overwrite_while_another_run_writes_is_refused_before_anything_is_deleted(dataset, tmp_path):
    out = tmp_path / "s.zarr"
    _run(dataset, out)
    before = ScoreStore.open(out).fingerprint("lrec")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "s.zarr.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": other.pid}))
        with pytest.raises(StoreError, match="being written by another run"):
            _run(dataset, out, overwrite=True)
    finally:
        other.kill()
        other.wait()
    assert ScoreStore.open(out).fingerprint("lrec") == before
    ScoreStore.open(out).require_readable()  # still finished and intact, or raises


def test_a_resume_with_other_member_labels_is_refused(dataset, tmp_path):
    members = tmp_path / "members.txt"
    members.write_text("0\n1\n2\n")
    out = tmp_path / "s.zarr"
    _run(dataset, out, spec=DatasetSpec(str(dataset), members_file=str(members)), shard_size=4)
    ScoreStore.open(out, mode="r+").reset_shards([2])
    with pytest.raises(StoreError, match="another --members file, this run gives none"):
        _run(dataset, out, shard_size=4)
    members.write_text("0\n1\n")
    with pytest.raises(StoreError, match="this run gives a different one"):
        _run(dataset, out, spec=DatasetSpec(str(dataset), members_file=str(members)), shard_size=4)
    members.write_text("2\n1\n0\n")  # the same set in another order is the same labelling
    assert _run(dataset, out, spec=DatasetSpec(str(dataset), members_file=str(members)), shard_size=4).scored == 4


def test_resume_is_refused_when_the_dataset_size_or_the_backbone_weights_change(dataset, tmp_path):
    import shutil

    import torch
    from memscore.backbones import embedded_lite0_weights
    weights = tmp_path / "lite0.pth"
    shutil.copy(embedded_lite0_weights(), weights)
    out = tmp_path / "s.zarr"
    config = ScoreConfig(victim="python:victims_for_tests:blur", backbone_weights=str(weights))
    run_scoring(DatasetSpec(str(dataset)), config, out, RunOptions(shard_size=4), progress=False)
    ScoreStore.open(out, mode="r+").reset_shards([0])
    state = torch.load(weights, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1e-3                       # the same file name, other weights
    torch.save(state, weights)
    with pytest.raises(StoreError, match="weights_sha256: store has"):
        run_scoring(DatasetSpec(str(dataset)), config, out, progress=False)
    bigger = tmp_path / "bigger"
    shutil.copytree(dataset, bigger)
    shutil.copy(bigger / "0.png", bigger / "extra.png")
    with pytest.raises(StoreError, match=f"holds {N} images but the dataset now has {N + 1}"):
        run_scoring(DatasetSpec(str(bigger)), config, out, progress=False)


def test_fit_reference_fits_alpha_on_the_reference_rows_only(dataset, tmp_path):
    reference = tmp_path / "reference.txt"
    reference.write_text("".join(f"{i}\n" for i in range(0, N, 2)))
    out = tmp_path / "s.zarr"
    config = ScoreConfig(victim="python:victims_for_tests:blur", alpha="fit:reference", reference_ids=str(reference))
    run_scoring(DatasetSpec(str(dataset)), config, out, progress=False)
    store = ScoreStore.open(out)
    ids = store.column("id")
    rows = np.isin(ids, [str(i) for i in range(0, N, 2)])
    lrec, ldiff = store.column("lrec").astype(float), store.column("ldiff").astype(float)
    slope = np.polyfit(ldiff[rows], lrec[rows], 1)[0]
    assert store.alpha.method == "fit:reference" and store.alpha.value == pytest.approx(slope, rel=1e-6)
    assert store.alpha.value != pytest.approx(np.polyfit(ldiff, lrec, 1)[0], rel=1e-3)  # not the all-rows fit
    with pytest.raises(ValueError, match="needs --reference FILE"):
        _run(dataset, tmp_path / "t.zarr", alpha="fit:reference")
    assert not (tmp_path / "t.zarr").exists()
