"""memscore.outputs through the commands: nothing is replaced or deleted that memscore did not make, existing files
are refused unless --overwrite, and every output is written whole (beside, then renamed in)."""
from __future__ import annotations

import shutil

import pytest

from memscore.cli import main
from memscore.errors import PathError
from memscore.outputs import build_folder, folder_kind, write_file
from memscore.store import ScoreStore
from memscore.synthetic import write_aligned_dataset

N = 8


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A dataset and a finished store of it."""
    root = tmp_path_factory.mktemp("outputs")
    data = write_aligned_dataset(root / "data", N, size=32, split={"train": range(N // 2), "test": range(N // 2, N)})
    members = root / "members.txt"
    members.write_text("".join(f"train/{i}\n" for i in range(N // 2)))
    store = root / "s.zarr"
    assert main(_score(data, store, "--members", str(members))) == 0
    return data, store


def _score(data, out, *extra):
    return ["score", str(data), "--out", str(out), "--victim", "python:victims_for_tests:blur", "--threads", "1",
            "--no-progress", *extra]


def _tree(path):
    return sorted((p.relative_to(path).as_posix(), p.read_bytes() if p.is_file() else b"") for p in path.rglob("*"))


def test_overwrite_never_empties_a_folder_of_the_users(scored, tmp_path, env, capsys):
    data, _ = scored
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("three years of work")
    assert main(_score(data, notes, "--overwrite")) == 2
    error = capsys.readouterr().err
    assert str(notes) in error and "not made by memscore" in error and "Traceback" not in error
    assert (notes / "thesis.txt").read_text() == "three years of work"


def test_overwrite_never_deletes_the_dataset_it_is_asked_to_score(tmp_path, env, capsys):
    sandbox = tmp_path / "sandbox"
    data = write_aligned_dataset(sandbox / "data", 4, size=32)
    before = _tree(sandbox)
    assert main(_score(data, sandbox, "--overwrite")) == 2
    assert "not made by memscore" in capsys.readouterr().err
    assert _tree(sandbox) == before


def test_a_store_holding_a_file_of_the_users_or_an_input_is_not_replaced(scored, tmp_path, env, capsys):
    data, store = scored
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    (copy / "my_notes.txt").write_text("mine")
    assert main(_score(data, copy, "--overwrite")) == 2
    assert "my_notes.txt" in capsys.readouterr().err and (copy / "my_notes.txt").exists()
    (copy / "my_notes.txt").unlink()
    members_inside = copy / "members"
    members_inside.mkdir()
    (members_inside / "zarr.json").write_text("{}")  # shaped like an array, but it is the run's members folder
    (members_inside / "ids.txt").write_text("train/0\n")
    assert main(_score(data, copy, "--overwrite", "--members", str(members_inside / "ids.txt"))) == 2
    assert "an input of this run" in capsys.readouterr().err and (members_inside / "ids.txt").exists()


def test_overwrite_of_a_file_is_refused_before_anything_is_scored(scored, tmp_path, env, capsys):
    data, _ = scored
    target = tmp_path / "results.csv"
    target.write_text("id,score\n")
    assert main(_score(data, target, "--overwrite")) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "id,score\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no results.csv.creating left behind


def test_overwrite_replaces_a_store_memscore_made(scored, tmp_path, env):
    data, store = scored
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    old_id = ScoreStore.open(copy).store_id
    assert main(_score(data, copy, "--overwrite")) == 0
    assert ScoreStore.open(copy).store_id != old_id and ScoreStore.open(copy).verify() == []


def test_export_refuses_an_existing_file_unless_overwrite(scored, tmp_path, capsys):
    _, store = scored
    out = tmp_path / "table.csv"
    out.write_text("my own table\n")
    assert main(["export", str(store), "--format", "csv", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "my own table\n"
    assert main(["export", str(store), "--format", "csv", "--out", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("id,") and len(out.read_text().splitlines()) == N + 1
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # written beside, renamed in: no leftovers


def test_json_outputs_refuse_an_existing_file_unless_overwrite(scored, tmp_path, capsys):
    _, store = scored
    out = tmp_path / "metrics.json"
    out.write_text("keep me")
    assert main(["evaluate", str(store), "--json", str(out)]) == 2
    assert out.read_text() == "keep me"
    calibration = tmp_path / "calibration.json"
    nonmembers = tmp_path / "nonmembers.txt"
    nonmembers.write_text("".join(f"test/{i}\n" for i in range(N // 2, N)))
    assert main(["calibrate", str(store), "--nonmembers", str(nonmembers), "--fpr", "0.5", "--out",
                 str(calibration)]) == 0
    assert main(["calibrate", str(store), "--nonmembers", str(nonmembers), "--fpr", "0.5", "--out",
                 str(calibration)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_report_never_writes_into_a_folder_of_the_users_or_a_store(scored, tmp_path, capsys):
    _, store = scored
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>my homepage</p>")
    assert main(["report", str(store), "--out", str(site), "--bootstrap", "0"]) == 2
    assert (site / "index.html").read_text() == "<p>my homepage</p>" and len(list(site.iterdir())) == 1
    before = _tree(store)
    assert main(["report", str(store), "--out", str(store), "--bootstrap", "0", "--overwrite"]) == 2
    assert "a memscore store, not a memscore report" in capsys.readouterr().err
    assert _tree(store) == before and ScoreStore.open(store).verify() == []


def test_a_report_is_replaced_only_with_overwrite_and_only_whole(scored, tmp_path, capsys):
    _, store = scored
    out = tmp_path / "report"
    assert main(["report", str(store), "--out", str(out), "--bootstrap", "0"]) == 0
    assert folder_kind(out) == "report" and (out / "index.html").exists()
    assert main(["report", str(store), "--out", str(out), "--bootstrap", "0"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["report", str(store), "--out", str(out), "--bootstrap", "0", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no .partial or .old left


def _write_then_fail(path):
    path.write_text("half")
    raise RuntimeError("the disk went away")


def test_a_failed_build_leaves_the_old_folder_and_a_failed_write_the_old_file(tmp_path):
    out = build_folder(tmp_path / "r", "report", lambda folder: (folder / "index.html").write_text("v1"))
    with pytest.raises(RuntimeError):
        build_folder(out, "report", lambda folder: _write_then_fail(folder / "index.html"), overwrite=True)
    assert (out / "index.html").read_text() == "v1"
    target = write_file(tmp_path / "t.txt", lambda path: path.write_text("v1"))
    with pytest.raises(RuntimeError):
        write_file(target, _write_then_fail, overwrite=True)
    assert target.read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "r.partial", "t.txt"]  # the failed build stays aside
    with pytest.raises(PathError, match="is a folder"):
        write_file(out, lambda path: path.write_text("x"), overwrite=True)


def test_train_victim_refuses_to_replace_a_checkpoint_before_training(scored, tmp_path, capsys):
    data, _ = scored
    checkpoint = tmp_path / "g.pth"
    checkpoint.write_bytes(b"weights of a month of training")
    assert main(["train-victim", str(data), "--out", str(checkpoint), "--epochs", "1", "--netG", "unet_64",
                 "--size", "32"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert checkpoint.read_bytes() == b"weights of a month of training"


def test_the_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "members.txt").write_text("my members")
    assert main(["demo", "--out", str(folder), "--quick"]) == 2
    assert "not made by memscore" in capsys.readouterr().err
    assert (folder / "members.txt").read_text() == "my members"


def test_a_folder_of_the_users_beside_a_new_store_under_its_building_name_is_left_alone(scored, tmp_path, capsys):
    data, _ = scored
    beside = tmp_path / "s.zarr.creating"
    beside.mkdir()
    (beside / "mine.txt").write_text("mine")
    assert main(_score(data, tmp_path / "s.zarr")) == 2
    assert "not a store memscore was building" in capsys.readouterr().err
    assert (beside / "mine.txt").read_text() == "mine"
