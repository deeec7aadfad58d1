"""The memscore command: every subcommand on a real scored store, and the command as a thin shell: options
checked before anything runs, user errors as one line with exit code 2, unfinished and damaged stores refused
unless asked for, every reader stating pending rows."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from memscore.attack import calibration_split
from memscore.cli import main
from memscore.metrics import auc
from memscore.store import ScoreStore
from memscore.synthetic import write_aligned_dataset
from stores_for_tests import synthetic_store


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_aligned_dataset(root / "data", 24, size=32)
    members = root / "members.txt"
    members.write_text("".join(f"{i}\n" for i in range(12)))
    store = root / "s.zarr"
    assert main(["score", str(data), "--direction", "BtoA", "--members", str(members), "--out", str(store),
                 "--victim", "python:victims_for_tests:blur", "--no-progress"]) == 0
    return root, data, members, store


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Shard 1 (rows 25..49) never written and no alpha pass: what a killed run leaves."""
    return synthetic_store(tmp_path_factory.mktemp("interrupted") / "s.zarr", pending_shards=(1,), alpha=None).path


def _copy(store, tmp_path):
    shutil.copytree(store, tmp_path / "copy.zarr")
    return tmp_path / "copy.zarr"


def _error_line(capsys, command: str) -> str:
    """The one stderr line of a refused command (and that it is one line, with no traceback)."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"memscore {command}: error: ")
    return err


def test_evaluate_prints_and_writes_the_metrics(scored, capsys):
    root, _, _, store = scored
    assert main(["evaluate", str(store), "--json", str(root / "m.json")]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((root / "m.json").read_text())
    s = ScoreStore.open(store)
    member = s.column("member") == 1
    assert metrics["lrec"]["auc"] == pytest.approx(auc(s.column("lrec").astype(float), member))
    assert metrics["lrec"]["n_members"] == 12 and metrics["lrec"]["n_nonmembers"] == 12
    assert metrics["partial"] is False and metrics["pending"] == 0
    assert f"lrec: AUC {metrics['lrec']['auc']:.4f}" in printed and "refused" in printed  # 0.1% FPR of 12
    assert "PARTIAL" not in printed and "0 pending" in printed
    at_10 = metrics["lrec"]["tpr_at_fpr"][0]
    low, high = at_10["tpr_exact_ci"]
    assert f"({at_10['true_positives']}/12; exact 95% [{low:.4f}, {high:.4f}])" in printed
    blind = metrics["blind_baseline"]
    assert blind["label"] in printed and ("WARNING" in printed) == bool(blind["warning"])


def test_evaluate_holdout_prints_chosen_and_held_out_rates(tmp_path, capsys):
    store = synthetic_store(tmp_path / "s.zarr", n=400, shard_size=100)
    assert main(["evaluate", str(store.path), "--holdout", "0.5", "--json", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    point = json.loads((tmp_path / "m.json").read_text())["holdout"]["scores"]["lmem"][0]
    assert "lmem, thresholds chosen on one part, measured on the held-out part:" in printed
    assert (f"  FPR 0.1: chosen FPR {point['chosen_fpr']:.4f}, held-out FPR {point['fpr']:.4f} "
            f"({point['false_positives']}/{point['n_nonmembers']}; exact 95%") in printed


def test_evaluate_warns_when_members_differ_as_images(tmp_path, capsys):
    store = synthetic_store(tmp_path / "s.zarr", n=400, shard_size=100, features=8, feature_shift=0.5)
    assert main(["evaluate", str(store.path), "--json", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    blind = json.loads((tmp_path / "m.json").read_text())["blind_baseline"]
    assert f"blind baseline (no victim query): AUC {blind['metrics']['auc']:.4f}" in printed
    assert f"WARNING: {blind['warning']}" in printed and "inflated" in blind["warning"]


def test_calibrate_then_predict_writes_decisions_into_the_store(scored, tmp_path, capsys):
    root, _, _, store = scored
    store = _copy(store, tmp_path)
    nonmembers = root / "nonmembers.txt"
    nonmembers.write_text("".join(f"{i}\n" for i in range(12, 24)))
    calibration = root / "calibration.json"
    assert main(["calibrate", str(store), "--nonmembers", str(nonmembers), "--fpr", "0.1",
                 "--out", str(calibration)]) == 0
    record = json.loads(calibration.read_text())
    s = ScoreStore.open(store)
    assert record["fingerprint"] == s.fingerprint("lmem")
    nonmember_scores = s.column("lmem")[12:].astype(float)
    assert (nonmember_scores <= record["tau"]).mean() <= 0.1
    assert main(["predict", str(store), "--calibration", str(calibration)]) == 0
    decision = ScoreStore.open(store).column("predicted_member")
    np.testing.assert_array_equal(decision, (s.column("lmem") <= record["tau"]).astype(np.int8))
    capsys.readouterr()
    assert main(["predict", str(store)]) == 2  # neither --tau nor --calibration
    assert "exactly one of tau or calibration (--tau or --calibration FILE)" in _error_line(capsys, "predict")


def test_predict_refuses_a_calibration_made_before_a_rescore(scored, tmp_path, capsys):
    """#15 item 2: calibrated at the fitted alpha, then `rescore --alpha 3`: the old tau must not be applied."""
    root, _, _, store = scored
    store = _copy(store, tmp_path)
    nonmembers = tmp_path / "nonmembers.txt"
    nonmembers.write_text("".join(f"{i}\n" for i in range(12, 24)))
    assert main(["calibrate", str(store), "--nonmembers", str(nonmembers), "--fpr", "0.25",
                 "--out", str(tmp_path / "c.json")]) == 0
    assert main(["rescore", str(store), "--alpha", "3"]) == 0
    capsys.readouterr()
    assert main(["predict", str(store), "--calibration", str(tmp_path / "c.json")]) == 2
    line = _error_line(capsys, "predict")
    assert "another score" in line and "'value': 3.0" in line and "memscore calibrate` again" in line
    assert "predicted_member" not in ScoreStore.open(store).derived_columns()


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_round_trips_the_table(scored, fmt):
    root, _, _, store = scored
    out = root / f"scores.{fmt}"
    assert main(["export", str(store), "--format", fmt, "--out", str(out)]) == 0
    frame = pd.read_parquet(out) if fmt == "parquet" else pd.read_csv(out, keep_default_na=False)
    s = ScoreStore.open(store)
    assert list(frame["id"].astype(str)) == list(s.column("id"))
    np.testing.assert_allclose(frame["lmem"].astype(float), s.column("lmem"), rtol=1e-6)


def test_report_command_writes_a_page_with_thumbnails(scored):
    root, data, _, store = scored
    assert main(["report", str(store), str(data), "--direction", "BtoA", "--out", str(root / "report"),
                 "--bootstrap", "20"]) == 0
    page = (root / "report" / "index.html").read_text()
    assert "thumbnails.png" in page and (root / "report" / "thumbnails.png").stat().st_size > 1000


def test_evaluate_alpha_auto_reports_only_on_rows_it_did_not_calibrate_on(scored, capsys):
    root, _, _, store = scored
    assert main(["evaluate", str(store), "--alpha", "auto", "--json", str(root / "auto.json")]) == 0
    metrics = json.loads((root / "auto.json").read_text())
    s = ScoreStore.open(store)
    calibration = calibration_split(s.column("id"), 0.5, 0)
    assert metrics["alpha"]["calibration_rows"] == int(calibration.sum()) > 0
    held_out = ~calibration
    member = s.column("member") == 1
    assert metrics["lmem"]["n_members"] + metrics["lmem"]["n_nonmembers"] == int(held_out.sum())
    lmem = s.column("lrec").astype(float) - metrics["alpha"]["value"] * s.column("ldiff").astype(float)
    assert metrics["lmem"]["auc"] == pytest.approx(auc(lmem[held_out], member[held_out]))
    assert "calibration rows" in capsys.readouterr().out


# ---------------------------------------------------------------- id files: read alike, matched aloud


def test_evaluate_counts_every_member_of_a_file_saved_with_a_bom_and_crlf(scored, tmp_path, capsys):
    _, _, _, store = scored
    members = tmp_path / "bom.txt"
    members.write_bytes(("\ufeff" + "".join(f"{i}\r\n" for i in range(8))).encode("utf-8"))  # as Notepad saves it
    assert main(["evaluate", str(store), "--members", str(members), "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["lrec"]["n_members"] == 8 and metrics["lrec"]["n_nonmembers"] == 16
    assert metrics["members_ids"]["n_in_store"] == 8 and metrics["members_ids"]["n_not_in_store"] == 0
    assert f"members file {members}: 8 ids, 8 in the store, 0 not in the store\n" in capsys.readouterr().out


@pytest.mark.parametrize("argv, written", [
    (["evaluate", "{store}", "--members", "{ids}", "--json", "{tmp}/m.json"], "m.json"),
    (["calibrate", "{store}", "--nonmembers", "{ids}", "--fpr", "0.5", "--out", "{tmp}/c.json"], "c.json"),
    (["dataset-test", "{store}", "--suspect", "{suspects}", "--reference", "{ids}", "--score", "lrec",
      "--bootstrap", "0", "--json", "{tmp}/d.json"], "d.json"),
    (["rescore", "{copy}", "--alpha", "fit:reference", "--reference", "{ids}"], None),
    (["report", "{store}", "--members", "{ids}", "--out", "{tmp}/report", "--bootstrap", "0"], "report"),
])
def test_ids_the_store_lacks_are_counted_aloud_and_refused_with_strict(argv, written, scored, tmp_path, capsys):
    _, _, _, store = scored
    ids, suspects = tmp_path / "ids.txt", tmp_path / "suspects.txt"
    ids.write_text("12\n13\n14\n15\n16\n17\nnot/an/id\n13\n")
    suspects.write_text("0\n1\n2\n3\n")
    copy = _copy(store, tmp_path)
    argv = [a.format(store=store, copy=copy, ids=ids, suspects=suspects, tmp=tmp_path) for a in argv]
    line = f"file {ids}: 7 ids, 6 in the store, 1 not in the store ('not/an/id'); 1 repeated line(s) counted once"
    lmem = ScoreStore.open(copy).fingerprint("lmem")

    assert main([*argv, "--strict"]) == 2
    error = _error_line(capsys, argv[0])
    assert line in error and "--strict refuses ids the store does not hold" in error
    assert written is None or not (tmp_path / written).exists()
    assert ScoreStore.open(copy).fingerprint("lmem") == lmem

    assert main(argv) == 0
    assert line in capsys.readouterr().out
    if written and written.endswith(".json"):
        document = json.loads((tmp_path / written).read_text())
        match = document.get("members_ids") or document.get("nonmember_ids") or document["reference_ids"]
        assert (match["n_ids"], match["n_in_store"], match["n_not_in_store"]) == (7, 6, 1)
    if written is None:
        assert ScoreStore.open(copy).alpha.reference_ids["not_in_store_examples"] == ["not/an/id"]


# ---------------------------------------------------------------- options checked before anything runs


@pytest.mark.parametrize("option, message", [
    (["--workers", "-1"], "--workers: must be a whole number >= 0"),
    (["--batch-size", "0"], "--batch-size: must be a whole number >= 1"),
    (["--shard-size", "0"], "--shard-size: must be a whole number >= 1"),
    (["--threads", "-2"], "--threads: must be a whole number >= 0"),
    (["--augment", "0"], "--augment: must be a whole number >= 1"),
    (["--fit-fraction", "1"], "--fit-fraction: must be strictly between 0 and 1"),
    (["--ridge=-1e-6"], "--ridge: must be a finite number >= 0"),
    (["--alpha", "garbage"], "--alpha: alpha 'garbage' not understood"),
    (["--alpha", "auto"], "--alpha: alpha 'auto' chooses alpha with member labels"),
    (["--victim-opt", "ngf"], "--victim-opt: expected KEY=VALUE"),
])
def test_score_options_are_refused_by_the_parser_before_anything_runs(option, message, tmp_path, capsys):
    out = tmp_path / "new.zarr"
    with pytest.raises(SystemExit) as exit_:
        main(["score", str(tmp_path), "--out", str(out), "--victim", "python:victims_for_tests:blur", *option])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "STORE", "--bootstrap", "-1"], "--bootstrap: must be a whole number >= 0"),
    (["evaluate", "STORE", "--calibration-fraction", "0"], "--calibration-fraction: must be strictly between"),
    (["evaluate", "STORE", "--holdout", "1"], "--holdout: must be strictly between 0 and 1"),
    (["report", "STORE", "--out", "x", "--holdout", "0"], "--holdout: must be strictly between 0 and 1"),
    (["calibrate", "STORE", "--nonmembers", "x", "--fpr", "1.5"], "--fpr: must be strictly between 0 and 1"),
    (["calibrate", "STORE", "--nonmembers", "x", "--fpr", "0"], "--fpr: must be strictly between 0 and 1"),
    (["rescore", "STORE", "--alpha", "garbage"], "--alpha: alpha 'garbage' not understood"),
    (["rescore", "STORE", "--alpha", "nan"], "--alpha: alpha must be finite"),
    (["train-victim", "DATA", "--out", "x", "--epochs", "0"], "--epochs: must be a whole number >= 1"),
])
def test_reader_options_are_refused_and_the_store_stays_as_it_was(argv, message, scored, capsys):
    store = scored[3]
    before = ScoreStore.open(store)
    fingerprint, alpha = before.fingerprint("lmem"), before.alpha
    with pytest.raises(SystemExit) as exit_:
        main([str(store) if a == "STORE" else a for a in argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    after = ScoreStore.open(store)
    assert after.fingerprint("lmem") == fingerprint and after.alpha == alpha and after.config == before.config


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "{tmp}/missing.zarr"], "no store at"),
    (["score", "{tmp}/no-such-data", "--out", "{tmp}/s.zarr", "--victim", "python:victims_for_tests:blur"],
     "no-such-data"),
    (["score", "{data}", "--out", "{tmp}/s.zarr", "--victim", "nonsense"], "'nonsense'"),
    (["score", "{data}", "--out", "{tmp}/s.zarr", "--victim", "python:victims_for_tests:blur", "--weights",
      "{tmp}/missing.pth"], "missing.pth"),
    (["calibrate", "{store}", "--nonmembers", "{tmp}/missing.txt"], "missing.txt"),
    (["predict", "{store}", "--calibration", "{tmp}/missing.json"], "missing.json"),
])
def test_user_errors_are_one_line_and_exit_code_2(argv, message, scored, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, data=scored[1], store=scored[3]) for a in argv]
    assert main(argv) == 2
    assert message in _error_line(capsys, argv[0])
    assert not (tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------- unfinished, damaged and failed


def test_readers_refuse_an_interrupted_store_unless_partial_and_then_say_so(interrupted, tmp_path, capsys):
    for argv in (["evaluate"], ["export", "--out", str(tmp_path / "x.csv"), "--format", "csv"],
                 ["report", "--out", str(tmp_path / "r")], ["calibrate", "--nonmembers", "x", "--score", "lrec"],
                 ["predict", "--tau", "0.5", "--score", "lrec"]):
        assert main([argv[0], str(interrupted), *argv[1:]]) == 2, argv
        assert "25 of 60 rows are still pending" in _error_line(capsys, argv[0])
    assert main(["evaluate", str(interrupted), "--partial", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"PARTIAL: 25 rows of {interrupted} are still pending")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["partial"] is True and metrics["pending"] == 25
    assert main(["export", str(interrupted), "--partial", "--out", str(tmp_path / "x.csv"), "--format", "csv"]) == 0
    assert "PARTIAL: 25 rows" in capsys.readouterr().out
    assert main(["failures", str(interrupted)]) == 0
    assert "0 failed, 25 pending" in capsys.readouterr().err


def test_failures_lists_each_failed_id_with_its_reason(tmp_path, capsys):
    store = synthetic_store(tmp_path / "s.zarr", failed=(7, 33)).path
    assert main(["failures", str(store)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["7\tbroken file", "33\tbroken file"]
    assert captured.err.strip() == "2 failed of 60"


def test_verify_names_each_damaged_shard_and_array(tmp_path, capsys):
    store = synthetic_store(tmp_path / "s.zarr", failed=(7,)).path
    assert main(["verify", str(store)]) == 0
    assert "3 shards verified, no problems" in capsys.readouterr().out
    for array, shard in (("ldiff", "1"), ("status", "2")):
        (store / array / "c" / shard).unlink()
    assert main(["verify", str(store)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any("shard 1" in line and "array ldiff" in line for line in lines), lines
    assert any("shard 2" in line and "array status" in line for line in lines), lines
    assert main(["evaluate", str(store), "--partial"]) == 2
    assert "is damaged" in _error_line(capsys, "evaluate")


def test_a_shard_that_fails_on_every_try_is_reported_by_score_and_report(tmp_path, capsys):
    """One Dask worker; the victim runs out of memory on the one black input (a fault of the process, not of the
    image), so its shard fails after every retry."""
    data = write_aligned_dataset(tmp_path / "data", 12, size=32)
    Image.new("RGB", (64, 32), (0, 0, 0)).save(data / "9.png")  # shard 2 (ids 8 to 11) holds a black input
    store = tmp_path / "s.zarr"
    assert main(["score", str(data), "--direction", "BtoA", "--out", str(store), "--shard-size", "4",
                 "--workers", "1", "--victim", "python:victims_for_tests:out_of_memory_on_dark", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "1 shard(s) failed and stay pending (shard 2:" in captured.out
    assert "shard 2 failed after every retry" in captured.out and "4 pending" in captured.out
    assert ScoreStore.open(store).failed_shards.keys() == {2}
    members = tmp_path / "members.txt"
    members.write_text("".join(f"{i}\n" for i in range(0, 12, 2)))
    assert main(["report", str(store), "--out", str(tmp_path / "r"), "--members", str(members)]) == 2
    assert "still pending" in _error_line(capsys, "report")
    assert main(["report", str(store), "--out", str(tmp_path / "r"), "--members", str(members), "--partial",
                 "--bootstrap", "0"]) == 0
    page = (tmp_path / "r" / "index.html").read_text()
    assert "<h2>Failed shards</h2>" in page and 'id="shard-2">MemoryError: this victim runs out' in page
    assert 'id="partial"' in page
