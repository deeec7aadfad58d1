"""memscore.data: the three dataset forms, stable ids, missing partners, streamed manifests, and what opening a
dataset refuses (repeated ids, bad member cells), skips and counts (other file types, non-UTF-8 names), follows
(folder links, each real folder once) and confines (file names made from ids); id files as editors save them."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from PIL import Image

from memscore.data import (AlignedFolder, DatasetError, Manifest, PairedFolders, confined_path, ids_digest,
                           match_ids, open_dataset, read_id_list)
from memscore.errors import UsageError
from memscore.synthetic import write_aligned_dataset


def test_aligned_folder_ids_order_and_halves(tmp_path):
    write_aligned_dataset(tmp_path, 12, size=8, split={"train": range(0, 11), "test": range(11, 12)})
    dataset = AlignedFolder(tmp_path, "BtoA", members={"train/2"})
    pairs = list(dataset.pairs())
    assert len(dataset) == 12
    assert [p.id for p in pairs[:3]] == ["test/11", "train/0", "train/1"]
    assert [p.id for p in pairs[3:5]] == ["train/2", "train/3"]  # natural order: 2 before 10
    assert pairs[3].member == 1 and pairs[4].member == 0
    assert pairs[0].input_half == "right" and pairs[0].target_half == "left"
    assert [p.id for p in dataset.pairs(2, 4)] == ["train/1", "train/2"]


def test_paired_folders_record_a_missing_partner(tmp_path):
    from PIL import Image
    for folder, names in (("x", ["a", "b", "sub/c"]), ("y", ["a", "sub/c", "d"])):
        for name in names:
            (tmp_path / folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(tmp_path / folder / f"{name}.png")
    pairs = {p.id: p for p in PairedFolders(tmp_path / "x", tmp_path / "y").pairs()}
    assert sorted(pairs) == ["a", "b", "d", "sub/c"]
    assert pairs["a"].problem == "" and pairs["sub/c"].target_path.endswith("sub/c.png")
    assert "missing target" in pairs["b"].problem and "'b'" in pairs["b"].problem
    assert "missing input" in pairs["d"].problem


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest_slices_members_and_relative_paths(tmp_path, kind):
    rows = {"id": [f"img{i}" for i in range(10)], "input": [f"in/{i}.png" for i in range(10)],
            "target": [f"/abs/{i}.png" for i in range(10)], "member": [i % 2 for i in range(10)]}
    path = tmp_path / f"m.{kind}"
    if kind == "csv":
        path.write_text("id,input,target,member\n" + "".join(
            f"{a},{b},{c},{d}\n" for a, b, c, d in zip(*rows.values())))
    else:
        pq.write_table(pa.table(rows), path, row_group_size=3)
    manifest = Manifest(path, batch_rows=3)
    assert len(manifest) == 10
    sliced = list(manifest.pairs(4, 8))
    assert [p.id for p in sliced] == ["img4", "img5", "img6", "img7"]
    assert [p.member for p in sliced] == [0, 1, 0, 1]
    assert sliced[0].input_path == str(tmp_path / "in/4.png") and sliced[0].target_path == "/abs/4.png"
    assert open_dataset(str(path)).__class__ is Manifest


def test_manifest_missing_columns_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,input\nx,y\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['target'\]"):
        Manifest(path)


def test_million_row_manifest_streams_in_bounded_memory(tmp_path):
    """A 1M-row manifest: counting and iterating every pair must not hold the rows as Python objects."""
    path = tmp_path / "big.csv"
    with open(path, "w") as handle:
        handle.write("id,input,target\n")
        for start in range(0, 1_000_000, 100_000):
            handle.write("".join(f"img{i:07d},a.png,b.png\n" for i in range(start, start + 100_000)))
    script = textwrap.dedent(f"""
        import resource
        from memscore.data import Manifest
        import pyarrow  # imported before the baseline: its libraries are not the reader's memory
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        manifest = Manifest({str(path)!r})
        count = sum(1 for _ in manifest.pairs())
        growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(len(manifest), count, growth_mb)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) == 1_000_000 and int(out[1]) == 1_000_000
    # 1M Pair objects would take several hundred MB; streaming stays near a few record batches.
    assert float(out[2]) < 150, f"RSS grew by {out[2]} MB while streaming"


def _image(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def _manifest(path, member_cells: list[str], ids: list[str] | None = None):
    ids = ids or [f"img{i}" for i in range(len(member_cells))]
    path.write_text("id,input,target,member\n" + "".join(f"{i},a.png,b.png,{m}\n" for i, m in zip(ids, member_cells)))
    return path


@pytest.mark.parametrize("cell", ["2", "7", "0.7", "yes", "-1"])
def test_manifest_member_cells_other_than_0_1_empty_are_refused_naming_row_and_column(tmp_path, cell):
    path = _manifest(tmp_path / "m.csv", ["1", "", cell, "0"])
    with pytest.raises(DatasetError) as error:
        Manifest(path)
    message = str(error.value)
    assert str(path) in message and "row 3 (line 4)" in message and "'member'" in message and repr(cell) in message


def test_manifest_member_cells_read_as_written(tmp_path):
    path = _manifest(tmp_path / "m.csv", ["1", "", "0", "1.0", " 0 "])
    flags = [pair.member for pair in Manifest(path, members={"img1"}).pairs()]
    assert flags == [1, 1, 0, 1, 0]  # the empty cell takes --members
    table = pa.table({"id": [1, 2, 3], "input": ["a"] * 3, "target": ["b"] * 3, "member": [1.0, None, 0.7]})
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(DatasetError, match=r"row 3, column 'member': 0.7"):
        Manifest(tmp_path / "m.parquet")
    pq.write_table(table.slice(0, 2), tmp_path / "ok.parquet")
    assert [(p.id, p.member) for p in Manifest(tmp_path / "ok.parquet").pairs()] == [("1", 1), ("2", -1)]


def test_manifest_repeated_and_empty_ids_are_refused_when_opened(tmp_path):
    ids = [f"img{i}" for i in range(20)] + ["img3", "img7", "img3"]
    path = _manifest(tmp_path / "m.csv", [""] * len(ids), ids)
    with pytest.raises(DatasetError) as error:
        Manifest(path, batch_rows=4)  # the repeats fall in other record batches than the first rows
    message = str(error.value)
    assert "3 row(s) repeat" in message and "'img3' (" in message and "row 21 (line 22), first in row 4" in message
    assert "'img7'" in message
    with pytest.raises(DatasetError, match=r"row 2 \(line 3\), column 'id': empty"):
        Manifest(_manifest(tmp_path / "e.csv", ["", "", ""], ["a", "", "c"]))


def test_manifest_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"id,input,target\ncaf\xe9,a.png,b.png\n")
    with pytest.raises(DatasetError, match="m.csv.*UTF-8"):
        Manifest(path)


def test_member_ids_the_dataset_lacks_are_counted_and_reported(tmp_path):
    write_aligned_dataset(tmp_path / "data", 4, size=8, split={"train": range(4)})
    members = {"train/1", "train/3", "1", "val/9"}
    dataset = AlignedFolder(tmp_path / "data", members=members)
    assert dataset.unknown_members.count == 2 and dataset.unknown_members.examples == ["'1'", "'val/9'"]
    assert any("2 member id(s) are not in the dataset" in line and "'val/9'" in line for line in dataset.notes())
    manifest = Manifest(_manifest(tmp_path / "m.csv", [""] * 3), members={"img0", "img9"})
    assert manifest.unknown_members.count == 1 and manifest.unknown_members.examples == ["'img9'"]
    assert AlignedFolder(tmp_path / "data", members={"train/0"}).notes() == []


def test_two_files_with_one_id_are_refused_when_the_folder_is_opened(tmp_path):
    _image(tmp_path / "data" / "train" / "a.jpg")
    _image(tmp_path / "data" / "train" / "a.png")
    _image(tmp_path / "data" / "train" / "b.png")
    with pytest.raises(DatasetError) as error:
        AlignedFolder(tmp_path / "data")
    assert "'train/a'" in str(error.value) and "a.jpg" in str(error.value) and "a.png" in str(error.value)
    _image(tmp_path / "y" / "train" / "a.png")
    with pytest.raises(DatasetError, match="'train/a'"):
        PairedFolders(tmp_path / "data", tmp_path / "y")


def test_files_memscore_does_not_read_are_counted_by_type(tmp_path):
    _image(tmp_path / "a.png")
    for name in ("b.gif", "c.gif", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    dataset = AlignedFolder(tmp_path)
    assert [p.id for p in dataset.pairs()] == ["a"]
    by_type = {reason.split("(")[1].split(";")[0]: tally for reason, tally in dataset.skipped.items()}
    assert by_type[".gif"].count == 2 and by_type[".txt"].count == 1
    assert by_type[".gif"].examples == [str(tmp_path / "b.gif"), str(tmp_path / "c.gif")]
    assert any(line.startswith("skipped 2 file(s)") and ".gif" in line for line in dataset.notes())


def test_file_names_that_are_not_utf8_are_skipped_and_reported(tmp_path):
    _image(tmp_path / "ok.png")
    Image.new("RGB", (4, 4)).save(os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.png"))
    dataset = AlignedFolder(tmp_path)
    ids = [pair.id for pair in dataset.pairs()]
    assert ids == ["ok"]
    assert all(image_id.encode("utf-8") for image_id in ids)  # storable as text
    (reason, tally), = dataset.skipped.items()
    assert "UTF-8" in reason and tally.count == 1 and "caf\\xe9.png" in tally.examples[0]


def test_linked_subfolders_are_followed_and_a_link_to_an_ancestor_ends(tmp_path):
    write_aligned_dataset(tmp_path / "elsewhere", 3, size=8, split={"train": range(3)})
    write_aligned_dataset(tmp_path / "data", 1, size=8, split={"val": range(1)})
    (tmp_path / "data" / "train").symlink_to(tmp_path / "elsewhere" / "train", target_is_directory=True)
    (tmp_path / "data" / "loop").symlink_to(tmp_path / "data", target_is_directory=True)
    (tmp_path / "data" / "a").mkdir()
    (tmp_path / "data" / "a" / "alias").symlink_to(tmp_path / "data" / "val", target_is_directory=True)
    dataset = AlignedFolder(tmp_path / "data")
    # the real val/ keeps its ids though a link to it comes first in name order
    assert [p.id for p in dataset.pairs()] == ["train/0", "train/1", "train/2", "val/0"]
    assert next(dataset.pairs()).input_path == str(tmp_path / "data" / "train" / "0.png")
    (reason, tally), = dataset.skipped.items()
    assert "listed already" in reason and tally.examples == [str(tmp_path / "data" / "loop"),
                                                             str(tmp_path / "data" / "a" / "alias")]


def test_paths_made_from_ids_stay_inside_their_folder(tmp_path):
    assert confined_path(tmp_path, "train/1.png") == tmp_path / "train" / "1.png"
    assert confined_path(tmp_path, "a/../b.png") == tmp_path / "b.png"
    for hostile in ("../secret.png", "a/../../secret.png", "/etc/passwd", "", "."):
        with pytest.raises(DatasetError, match="outside"):
            confined_path(tmp_path, hostile)


# Id files: one reader (BOM, CRLF, comments, blank lines, repeats) and one match against a store's ids


def test_an_id_file_as_editors_save_it_gives_exactly_its_ids(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_bytes("\ufeff# members of the victim\r\ntrain/1\r\n\r\n  train/2   # second, indented\r\n"
                     "train/3\t# tab before the comment\r\n   \r\n# train/4 is not a member\r\nphoto#7\r\n"
                     "train/1\r\nold/mac\rlast/line".encode("utf-8"))
    read = read_id_list(path)
    assert read.ids == {"train/1", "train/2", "train/3", "photo#7", "old/mac", "last/line"}
    assert read.repeated == 1 and read.file == str(path)


def test_id_files_joined_with_cat_lose_every_byte_order_mark(tmp_path):
    path = tmp_path / "joined.txt"
    path.write_bytes("\ufeffa\n".encode("utf-8") + "\ufeffb\n".encode("utf-8"))
    assert read_id_list(path).ids == {"a", "b"}


def test_an_id_file_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(UsageError, match=r"latin1.txt is not UTF-8 text"):
        read_id_list(path)


def test_the_ids_digest_ignores_order_and_repeats_keeps_its_recorded_values_and_takes_any_id():
    """One digest for members, population and reference sets. Its value for UTF-8 ids is pinned: stores' members_sha256,
    shadow manifests' population sha256 and calibrations' reference_sha256 were recorded with it and must still match.
    An id that is not UTF-8 (a file name's bytes, kept as lone surrogates) is digested, not refused."""
    assert ids_digest(["b", "a", "b"]) == ids_digest({"a", "b"}) == ids_digest(iter(["a", "b"]))
    assert ids_digest(["train/1", "café"]) == hashlib.sha256("café\ntrain/1".encode("utf-8")).hexdigest()
    assert ids_digest([]) == hashlib.sha256(b"").hexdigest()
    raw = os.fsdecode(b"caf\xe9")  # "caf\udce9"
    assert ids_digest([raw, "a"]) == hashlib.sha256(b"a\ncaf\xed\xb3\xa9").hexdigest()  # the surrogate's own bytes


def test_matching_ids_counts_what_the_store_lacks_and_strict_refuses_it(tmp_path):
    path = tmp_path / "members.txt"
    path.write_text("a\nb\nzz\nb\n")
    store_ids = np.array(["a", "b", "c", ""])
    match = match_ids(read_id_list(path), store_ids, "members")
    assert match.rows.tolist() == [True, True, False, False]
    assert (match.n_ids, match.n_in_store, match.n_not_in_store, match.not_in_store) == (3, 2, 1, ("zz",))
    assert match.line() == (f"members file {path}: 3 ids, 2 in the store, 1 not in the store ('zz'); "
                            "1 repeated line(s) counted once")
    assert match.to_dict()["summary"] == match.line() and match.to_dict()["not_in_store_examples"] == ["zz"]
    with pytest.raises(UsageError, match=r"members file .*members.txt: .*1 not in the store \('zz'\).*--strict"):
        match_ids(read_id_list(path), store_ids, "members", strict=True)


def test_a_manifest_with_a_byte_order_mark_opens(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffid,input,target\r\nimg0,a.png,b.png\r\nimg1,c.png,d.png\r\n".encode("utf-8"))
    manifest = Manifest(path)
    assert [pair.id for pair in manifest.pairs()] == ["img0", "img1"]
