"""The calibrated scores through the command line, end to end: per-image calibration (lcal) and dataset
inference on a store with features; shadow victims trained, scored beside the victim and turned into LiRA; dataset
inference on a shadow score."""
from __future__ import annotations

import json

import numpy as np

from memscore.cli import main
from memscore.store import ScoreStore
from memscore.synthetic import write_aligned_dataset
from stores_for_tests import store_with_shadow_columns, synthetic_store


def test_per_image_calibration_dataset_test_report_and_export(tmp_path, capsys):
    store = synthetic_store(tmp_path / "s.zarr", n=400, shard_size=100, features=4, seed=3).path
    ids, member = ScoreStore.open(store).column("id"), ScoreStore.open(store).column("member")
    nonmembers, members = ids[member == 0], ids[member == 1]
    (tmp_path / "reference.txt").write_text("\n".join(nonmembers[: len(nonmembers) // 2]) + "\n")
    (tmp_path / "suspects.txt").write_text("\n".join(members[:40]) + "\n")
    (tmp_path / "innocent.txt").write_text("\n".join(nonmembers[len(nonmembers) // 2:][:40]) + "\n")
    assert main(["rescore", str(store), "--method", "per-image", "--reference", str(tmp_path / "reference.txt")]) == 0
    assert "lcal written (gaussian model of lmem, 5 folds" in capsys.readouterr().out
    assert main(["evaluate", str(store), "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["scores"] == ["lrec", "lmem", "lcal"]
    assert metrics["lcal"]["auc"] > metrics["lrec"]["auc"]  # the spread the features explain is calibrated away
    assert metrics["lcal"]["made_by"]["calibration"]["reference_ids_file"].endswith("reference.txt")
    assert main(["dataset-test", str(store), "--suspect", str(tmp_path / "suspects.txt"), "--json",
                 str(tmp_path / "t.json")]) == 0
    guilty = json.loads((tmp_path / "t.json").read_text())
    assert guilty["test"]["p_value"] < 0.01 and guilty["by_size"]["smallest_size"] is not None
    assert main(["dataset-test", str(store), "--suspect", str(tmp_path / "innocent.txt"), "--json",
                 str(tmp_path / "n.json")]) == 0
    assert json.loads((tmp_path / "n.json").read_text())["test"]["p_value"] > 0.01
    assert main(["calibrate", str(store), "--nonmembers", str(tmp_path / "reference.txt"), "--score", "lcal",
                 "--fpr", "0.1", "--out", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["column"] == "lcal"
    assert main(["report", str(store), "--out", str(tmp_path / "report"), "--bootstrap", "0"]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'id="lcal-auc"' in page and 'id="lcal-reference"' in page and "reference.txt" in page
    assert main(["export", str(store), "--format", "csv", "--score", "lcal", "--out", str(tmp_path / "e.csv")]) == 0
    header = (tmp_path / "e.csv").read_text().splitlines()[0].split(",")
    assert "lcal" in header and "lmem" not in header and "lrec" not in header and "features_0" in header
    assert main(["evaluate", str(store), "--score", "lira"]) == 2
    assert "has no score 'lira'" in capsys.readouterr().err


def test_shadow_victims_are_trained_scored_beside_the_victim_and_give_lira(tmp_path, capsys):
    data = write_aligned_dataset(tmp_path / "data", 12, size=32)
    ids = [str(i) for i in range(12)]
    (tmp_path / "population.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "members.txt").write_text("\n".join(ids[:6]) + "\n")
    recipe = ["--netG", "unet_64", "--size", "64", "--ngf", "4", "--epochs", "1", "--device", "cpu"]
    assert main(["train-victim", str(data), "--members", str(tmp_path / "members.txt"), "--out",
                 str(tmp_path / "victim.pth"), *recipe]) == 0
    assert main(["shadows", "train", str(data), "--population", str(tmp_path / "population.txt"), "--k", "2",
                 "--out", str(tmp_path / "shadows"), *recipe]) == 0
    store = tmp_path / "s.zarr"
    assert main(["score", str(data), "--members", str(tmp_path / "members.txt"), "--victim",
                 f"pix2pix:{tmp_path / 'victim.pth'}", "--shadows", str(tmp_path / "shadows"), "--out", str(store),
                 "--no-progress"]) == 0
    scored = ScoreStore.open(store)
    lrec_shadow, in_shadow = scored.column("lrec_shadow"), scored.column("in_shadow")
    assert lrec_shadow.shape == (12, 2) and (in_shadow.sum(axis=1) == 1).all()  # complementary halves
    for k in range(2):  # each shadow's column is that shadow scored as a victim on its own
        alone = tmp_path / f"alone{k}.zarr"
        assert main(["score", str(data), "--victim", f"pix2pix:{tmp_path / 'shadows' / f'shadow_{k:02d}' / 'generator.pth'}",
                     "--out", str(alone), "--no-progress"]) == 0
        np.testing.assert_allclose(lrec_shadow[:, k], ScoreStore.open(alone).column("lrec"), rtol=1e-6)
    assert main(["rescore", str(store), "--method", "lira", "--offline"]) == 0
    assert "lira_offline written (lira, offline, 2 shadows)" in capsys.readouterr().out
    assert main(["evaluate", str(store), "--score", "lira_offline", "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["lira_offline"]["made_by"]["k"] == 2
    assert np.isfinite(ScoreStore.open(store).column("lira_offline")).all()


def test_dataset_test_takes_a_shadow_score_with_a_reference(tmp_path, capsys):
    store = tmp_path / "s.zarr"
    store_with_shadow_columns(store, n=200, k=4)
    ids, member = ScoreStore.open(store).column("id"), ScoreStore.open(store).column("member")
    (tmp_path / "suspects.txt").write_text("\n".join(ids[member == 1][:40]) + "\n")
    (tmp_path / "heldout.txt").write_text("\n".join(ids[member == 0][:40]) + "\n")
    for method, column in (("lira", "lira"), ("rmia", "rmia_offline")):
        extra = [] if method == "lira" else ["--offline"]
        assert main(["rescore", str(store), "--method", method, *extra]) == 0
        assert f"{column} written ({method}" in capsys.readouterr().out
        test = ["dataset-test", str(store), "--suspect", str(tmp_path / "suspects.txt"), "--score", column,
                "--bootstrap", "0"]
        assert main(test) == 2  # no reference is recorded with a shadow score: it must be given
        assert f"score {column} needs reference ids (--reference FILE" in capsys.readouterr().err
        written = tmp_path / f"{column}.json"
        assert main([*test, "--reference", str(tmp_path / "heldout.txt"), "--json", str(written)]) == 0
        assert f"40 suspect vs 40 reference images on {column}" in capsys.readouterr().out
        result = json.loads(written.read_text())
        assert result["score"] == column and result["test"]["p_value"] < 0.01
