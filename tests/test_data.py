"""engine.data: the three dataset forms, stable ids, missing partners, streamed manifests."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.data import AlignedFolder, Manifest, PairedFolders, open_dataset
from engine.synthetic import write_aligned_dataset


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
        from engine.data import Manifest
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
