"""memscore.report: the page's figures exist and are real images, its numbers are memscore.metrics',
unlabelled stores degrade to plots plus a note, and the page renders in headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memscore.data import AlignedFolder
from memscore.metrics import evaluate_scores
from memscore.report import write_report
from memscore.store import ScoreStore, StoreError
from memscore.synthetic import write_aligned_dataset
from stores_for_tests import synthetic_store

N, SHARD = 60, 25
FAILED = (7, 33)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _make_store(path: Path, labelled: bool) -> ScoreStore:
    """Synthetic scores: Lrec grows with Ldiff, members sit lower; two failed rows; ids "0".."59"."""
    return synthetic_store(path, N, SHARD, labelled=labelled, failed=FAILED)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> ScoreStore:
    return _make_store(tmp_path_factory.mktemp("labelled") / "s.zarr", labelled=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> AlignedFolder:
    # synthetic files are photo | label map, like Facades: the photo (target) is the left half
    return AlignedFolder(write_aligned_dataset(tmp_path_factory.mktemp("data"), N, size=32), direction="BtoA")


@pytest.fixture(scope="module")
def report(labelled, dataset, tmp_path_factory) -> Path:
    return write_report(labelled.path, tmp_path_factory.mktemp("report"), dataset=dataset, n_boot=40, thumbnails=5)


def _cell(page: str, cell_id: str) -> str:
    match = re.search(rf'<td id="{re.escape(cell_id)}">(.*?)</td>', page, re.S)
    assert match, f"no cell {cell_id} in the page"
    return match.group(1)


def _png_srcs(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def _assert_real_image(path: Path, min_colours: int = 8) -> None:
    assert path.is_file(), f"{path} is referenced but missing"
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200, f"{path.name} is tiny: {pixels.shape}"
    assert pixels.std() > 10, f"{path.name} is (nearly) blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) >= min_colours, f"{path.name} has too few colours"


def test_every_referenced_png_exists_and_is_a_real_image(report):
    page = report.read_text()
    srcs = _png_srcs(page)
    assert sorted(srcs) == ["alpha.png", "histograms.png", "roc.png", "scatter.png", "thumbnails.png"]
    for src in srcs:
        assert not Path(src).is_absolute() and "/" not in src  # beside index.html: opens from disk
        _assert_real_image(report.parent / src)


def test_metric_numbers_equal_engine_evaluate(labelled, report):
    page = report.read_text()
    member = labelled.column("member")
    embedded = json.loads(re.search(r'id="memscore-metrics">(.*?)</script>', page, re.S).group(1))
    for column in ("lrec", "lmem"):
        expected = evaluate_scores(labelled.column(column).astype(np.float64), member == 1, n_boot=40).to_dict()
        assert embedded[column] == expected
        assert _cell(page, f"{column}-auc").startswith(f"{expected['auc']:.4f}")
        assert f"{expected['auc_ci'][0]:.4f}, {expected['auc_ci'][1]:.4f}" in _cell(page, f"{column}-auc")
        assert _cell(page, f"{column}-ba").startswith(f"{expected['balanced_accuracy']:.4f}")
        assert f"{expected['balanced_accuracy_threshold']:.5g}" in _cell(page, f"{column}-ba")
        at_10 = expected["tpr_at_fpr"][0]
        cell = _cell(page, f"{column}-tpr-0.1")
        assert cell.startswith(f"{at_10['tpr']:.4f}")
        assert f"achieved FPR {at_10['achieved_fpr']:.4f}" in cell and f"{at_10['threshold']:.5g}" in cell
        for exact in (at_10["tpr_exact_ci"], at_10["fpr_exact_ci"]):  # Clopper-Pearson, beside the bootstrap
            assert f"exact [{exact[0]:.4f}, {exact[1]:.4f}]" in cell
        assert f"{at_10['true_positives']}/{expected['n_members']} members" in cell
        # 25 scored non-members cannot resolve 1% or 0.1%: shown as refused, with the reason
        for target in ("0.01", "0.001"):
            assert "refused" in _cell(page, f"{column}-tpr-{target}")
            assert "cannot be resolved with 25 non-members" in _cell(page, f"{column}-tpr-{target}")
    assert "lower score = member" in page and "FPR &lt;= target" in page
    n_members = int(((member == 1) & (labelled.column("status") == "ok")).sum())
    assert f"<th>members (scored)</th><td>{n_members}</td>" in page
    assert "<th>failed (excluded)</th><td>2</td>" in page


def test_thumbnails_are_the_lowest_and_highest_ldiff(labelled, report):
    page = report.read_text()
    ldiff, ids = labelled.column("ldiff"), labelled.column("id")
    order = ids[np.argsort(np.where(np.isnan(ldiff), np.inf, ldiff), kind="stable")][: N - len(FAILED)]
    assert re.search(r'id="easiest-ids">(.*?)<', page).group(1) == ", ".join(order[:5])
    assert re.search(r'id="hardest-ids">(.*?)<', page).group(1) == ", ".join(order[::-1][:5])
    assert "Not found in the dataset" not in page


def test_unlabelled_store_gets_plots_and_a_note_and_members_file_adds_metrics(tmp_path, labelled):
    store = _make_store(tmp_path / "u.zarr", labelled=False)
    page = write_report(store.path, tmp_path / "plain", n_boot=0).read_text()
    assert sorted(_png_srcs(page)) == ["histograms.png", "scatter.png"]
    assert "Metrics need membership labels" in page and 'id="lmem-auc"' not in page
    assert "No thumbnails" in page
    for src in _png_srcs(page):
        _assert_real_image(tmp_path / "plain" / src)

    members = tmp_path / "members.txt"
    members.write_text("\n".join(labelled.column("id")[labelled.column("member") == 1]) + "\n")
    page = write_report(store.path, tmp_path / "with_file", members_file=str(members), n_boot=0).read_text()
    expected = evaluate_scores(store.column("lmem").astype(np.float64), labelled.column("member") == 1)
    assert _cell(page, "lmem-auc") == f"{expected.auc:.4f}"
    assert "roc.png" in _png_srcs(page)


def test_unfinished_store_is_refused_unless_partial_and_then_the_page_says_so(tmp_path):
    path = synthetic_store(tmp_path / "s.zarr", N, SHARD, failed=FAILED, pending_shards=(1,), alpha=None).path
    with pytest.raises(StoreError, match="25 of 60 rows are still pending"):
        write_report(path, tmp_path / "out")
    writer = ScoreStore.open(path, mode="r+")
    with writer.lock():
        writer.set_failed_shards({1: "RuntimeError: worker died"})
    page = write_report(path, tmp_path / "out", n_boot=0, partial=True).read_text()
    assert 'id="partial">Partial store:</b> 25 of 60 rows' in page
    assert "<th>pending (excluded)</th><td>25</td>" in page
    assert '<h2>Failed shards</h2>' in page and '<td id="shard-1">RuntimeError: worker died</td>' in page
    assert "<td>25–49</td>" in page  # the rows of shard 1
    assert "fitted on the rows scored so far" in page  # no lmem yet: alpha from the scored rows, said so


def test_page_renders_in_headless_chromium(report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium); cannot render the page")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
         report.resolve().as_uri()],
        check=True, capture_output=True, timeout=90)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels.std() > 20, "the screenshot is (nearly) blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    # The figures' colours appear only if the PNGs loaded: Lmem's ROC line and the members' histogram.
    for colour in ((0x00, 0x9E, 0x73), (0xD5, 0x5E, 0x00)):
        assert (np.abs(pixels - colour).sum(axis=2) < 30).sum() > 200, f"no pixels of figure colour {colour}"


def test_the_blind_baseline_section_shows_its_numbers_warning_and_strata(tmp_path, report):
    assert "no per-image features column" in re.search(r'id="blind-unavailable">(.*?)</span>', report.read_text()).group(1)
    store = synthetic_store(tmp_path / "shifted.zarr", 400, 100, features=8, feature_shift=0.5)
    page = write_report(store.path, tmp_path / "out", n_boot=50).read_text()
    embedded = json.loads(re.search(r'id="memscore-metrics">(.*?)</script>', page, re.S).group(1))["blind_baseline"]
    assert _cell(page, "blind-auc").startswith(f"{embedded['metrics']['auc']:.4f}")
    assert "differ as images" in page and 'id="blind-warning"' in page and 'id="blind-fair"' not in page
    for name in ("lrec", "lmem"):
        for stratum in embedded["strata"][name]:
            assert _cell(page, f"{name}-stratum-{stratum['stratum']}").startswith(
                "—" if stratum["auc"] is None else f"{stratum['auc']:.4f}")


def test_held_out_thresholds_are_shown_when_asked(labelled, tmp_path):
    page = write_report(labelled.path, tmp_path / "out", n_boot=0, holdout=0.5).read_text()
    record = json.loads(re.search(r'id="memscore-metrics">(.*?)</script>', page, re.S).group(1))["holdout"]
    point = record["scores"]["lmem"][0]
    cell = _cell(page, "lmem-holdout-0.1")
    assert f"held-out FPR {point['fpr']:.4f}" in cell and f"held-out TPR {point['tpr']:.4f}" in cell
    assert f"chosen FPR {point['chosen_fpr']:.4f}" in cell and f"{point['false_positives']}/{point['n_nonmembers']}" in cell
    assert "refused" in _cell(page, "lrec-holdout-0.01")
    assert "Held-out thresholds" not in write_report(labelled.path, tmp_path / "plain", n_boot=0).read_text()


def test_the_report_command_reads_every_chunk_once(labelled, tmp_path, monkeypatch):
    """verify reads every chunk of the store: the command, the report's numbers and its metrics share one
    read-only handle, so it runs once; a writable handle verifies again on every call."""
    from memscore.cli import main
    calls = []
    real_verify = ScoreStore.verify
    monkeypatch.setattr(ScoreStore, "verify", lambda self: calls.append(self.path) or real_verify(self))
    assert main(["report", str(labelled.path), "--out", str(tmp_path / "r"), "--bootstrap", "0"]) == 0
    assert len(calls) == 1
    writable = ScoreStore.open(labelled.path, mode="r+")
    writable.require_readable()
    writable.require_readable()
    assert len(calls) == 3
