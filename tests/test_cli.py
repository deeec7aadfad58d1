"""The memscore command: evaluate, calibrate, predict, export and report on a real scored store."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.metrics import auc
from engine.store import ScoreStore
from engine.synthetic import write_aligned_dataset


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


def test_evaluate_prints_and_writes_the_metrics(scored, capsys):
    root, _, _, store = scored
    assert main(["evaluate", str(store), "--json", str(root / "m.json")]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((root / "m.json").read_text())
    s = ScoreStore.open(store)
    member = s.column("member") == 1
    assert metrics["lrec"]["auc"] == pytest.approx(auc(s.column("lrec").astype(float), member))
    assert metrics["lrec"]["n_members"] == 12 and metrics["lrec"]["n_nonmembers"] == 12
    assert f"lrec: AUC {metrics['lrec']['auc']:.4f}" in printed and "refused" in printed  # 0.1% FPR of 12


def test_calibrate_then_predict_writes_decisions_into_the_store(scored):
    root, _, _, store = scored
    nonmembers = root / "nonmembers.txt"
    nonmembers.write_text("".join(f"{i}\n" for i in range(12, 24)))
    calibration = root / "calibration.json"
    assert main(["calibrate", str(store), "--nonmembers", str(nonmembers), "--fpr", "0.1",
                 "--out", str(calibration)]) == 0
    record = json.loads(calibration.read_text())
    s = ScoreStore.open(store)
    nonmember_scores = s.column("lmem")[12:].astype(float)
    assert (nonmember_scores <= record["tau"]).mean() <= 0.1
    assert main(["predict", str(store), "--calibration", str(calibration)]) == 0
    decision = ScoreStore.open(store).column("predicted_member")
    np.testing.assert_array_equal(decision, (s.column("lmem") <= record["tau"]).astype(np.int8))
    assert main(["predict", str(store)]) == 2  # neither --tau nor --calibration


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
    from engine.attack import calibration_split
    s = ScoreStore.open(store)
    calibration = calibration_split(s.column("id"), 0.5, 0)
    assert metrics["alpha"]["calibration_rows"] == int(calibration.sum()) > 0
    held_out = ~calibration
    member = s.column("member") == 1
    assert metrics["lmem"]["n_members"] + metrics["lmem"]["n_nonmembers"] == int(held_out.sum())
    lmem = s.column("lrec").astype(float) - metrics["alpha"]["value"] * s.column("ldiff").astype(float)
    assert metrics["lmem"]["auc"] == pytest.approx(auc(lmem[held_out], member[held_out]))
    assert "calibration rows" in capsys.readouterr().out
