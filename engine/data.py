"""Datasets -> pair records (id, input file, target file), in a stable order.

Three forms: a pix2pix "aligned" folder (A|B side by side in one file), two folders paired by
relative path, or a manifest (CSV or Parquet, streamed in pieces). Ids are stable: the path
relative to the dataset root without extension (e.g. `train/17`), or the manifest's `id`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
Half = Literal["left", "right"] | None


@dataclass(frozen=True)
class Pair:
    """One (conditioning input, ground truth) pair. `*_half` selects a side of an aligned file."""

    id: str
    input_path: str
    target_path: str
    input_half: Half = None
    target_half: Half = None
    member: int = -1
    """1 member, 0 non-member, -1 unknown."""
    problem: str = ""
    """Non-empty when the pair is known to be unusable before decoding (e.g. a missing partner)."""


class Dataset:
    """An ordered, sliceable collection of pairs. `len()` is known up front; slices are streamed."""

    def __len__(self) -> int:
        raise NotImplementedError

    def pairs(self, start: int = 0, stop: int | None = None) -> Iterator[Pair]:
        raise NotImplementedError

    def ids(self) -> Iterator[str]:
        return (pair.id for pair in self.pairs())


def _image_files(root: Path) -> list[Path]:
    files = [Path(dirpath) / name for dirpath, _, names in os.walk(root) for name in names
             if name.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(files, key=lambda p: _natural_key(str(p.relative_to(root))))


def _natural_key(text: str) -> list:
    """Sort `train/2` before `train/10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _stable_id(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


class AlignedFolder(Dataset):
    """pix2pix aligned layout: each file is A|B; `direction` says which half is the input x."""

    def __init__(self, root: str | os.PathLike, direction: Literal["AtoB", "BtoA"] = "AtoB",
                 members: set[str] | None = None) -> None:
        if direction not in ("AtoB", "BtoA"):
            raise ValueError(f"direction must be AtoB or BtoA, got {direction!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {self.root} does not exist")
        self.files = _image_files(self.root)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        self.input_half: Half = "left" if direction == "AtoB" else "right"
        self.target_half: Half = "right" if direction == "AtoB" else "left"
        self.members = members

    def __len__(self) -> int:
        return len(self.files)

    def pairs(self, start: int = 0, stop: int | None = None) -> Iterator[Pair]:
        for path in self.files[start:stop]:
            image_id = _stable_id(path, self.root)
            yield Pair(image_id, str(path), str(path), self.input_half, self.target_half,
                       member=_membership(image_id, self.members))


class PairedFolders(Dataset):
    """`--inputs DIR --targets DIR`, paired by relative path (extension may differ)."""

    def __init__(self, inputs: str | os.PathLike, targets: str | os.PathLike,
                 members: set[str] | None = None) -> None:
        self.inputs, self.targets = Path(inputs), Path(targets)
        for folder in (self.inputs, self.targets):
            if not folder.is_dir():
                raise FileNotFoundError(f"folder {folder} does not exist")
        by_id_in = {_stable_id(p, self.inputs): p for p in _image_files(self.inputs)}
        by_id_tg = {_stable_id(p, self.targets): p for p in _image_files(self.targets)}
        self.ids_sorted = sorted(set(by_id_in) | set(by_id_tg), key=_natural_key)
        if not self.ids_sorted:
            raise ValueError(f"no images under {self.inputs} or {self.targets}")
        self.by_id_in, self.by_id_tg = by_id_in, by_id_tg
        self.members = members

    def __len__(self) -> int:
        return len(self.ids_sorted)

    def pairs(self, start: int = 0, stop: int | None = None) -> Iterator[Pair]:
        for image_id in self.ids_sorted[start:stop]:
            x, y = self.by_id_in.get(image_id), self.by_id_tg.get(image_id)
            problem = ""
            if x is None:
                problem = f"missing input: no file for id {image_id!r} under {self.inputs}"
            elif y is None:
                problem = f"missing target: no file for id {image_id!r} under {self.targets}"
            yield Pair(image_id, str(x or ""), str(y or ""), member=_membership(image_id, self.members),
                       problem=problem)


class Manifest(Dataset):
    """CSV or Parquet with columns `id,input,target` and an optional `member` (0/1).

    Read in record batches, never as one Python list: a 1M-row manifest streams in bounded memory.
    Relative paths are resolved against the manifest's folder.
    """

    REQUIRED = ("id", "input", "target")

    def __init__(self, path: str | os.PathLike, members: set[str] | None = None, batch_rows: int = 65536) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest {self.path} does not exist")
        self.base = self.path.parent
        self.members = members
        self.batch_rows = batch_rows
        columns = self._columns()
        missing = [c for c in self.REQUIRED if c not in columns]
        if missing:
            raise ValueError(f"manifest {self.path} lacks column(s) {missing}; it needs {list(self.REQUIRED)}"
                             " and optionally 'member'")
        self.has_member = "member" in columns
        self._length = sum(batch.num_rows for batch in self._batches())

    def _is_parquet(self) -> bool:
        return self.path.suffix.lower() in (".parquet", ".pq")

    def _columns(self) -> list[str]:
        if self._is_parquet():
            import pyarrow.parquet as pq
            return pq.ParquetFile(self.path).schema_arrow.names
        with open(self.path, newline="", encoding="utf-8") as handle:
            return [c.strip() for c in handle.readline().strip().split(",")]

    def _batches(self):
        wanted = list(self.REQUIRED) + (["member"] if self.has_member else [])
        if self._is_parquet():
            import pyarrow.parquet as pq
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_rows, columns=wanted)
            return
        import pyarrow as pa
        import pyarrow.csv as pacsv
        types = {"id": pa.string(), "input": pa.string(), "target": pa.string()}
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=wanted),
        )
        yield from reader

    def __len__(self) -> int:
        return self._length

    def pairs(self, start: int = 0, stop: int | None = None) -> Iterator[Pair]:
        stop = self._length if stop is None else min(stop, self._length)
        row = 0
        for batch in self._batches():
            n = batch.num_rows
            if row + n <= start:
                row += n
                continue
            if row >= stop:
                return
            lo, hi = max(start - row, 0), min(stop - row, n)
            columns = {name: batch.column(name).to_pylist()[lo:hi] for name in batch.schema.names}
            for k in range(hi - lo):
                image_id = str(columns["id"][k])
                member = columns["member"][k] if self.has_member else None
                member = _membership(image_id, self.members) if member is None else int(member)
                yield Pair(image_id, self._resolve(columns["input"][k]), self._resolve(columns["target"][k]),
                           member=member)
            row += n

    def _resolve(self, path: str | None) -> str:
        if not path:
            return ""
        return path if os.path.isabs(path) else str(self.base / path)


def _membership(image_id: str, members: set[str] | None) -> int:
    if members is None:
        return -1
    return int(image_id in members)


def read_id_list(path: str | os.PathLike) -> set[str]:
    """A file of ids, one per line (blank lines and `#` comments ignored)."""
    with open(path, encoding="utf-8") as handle:
        return {line.strip() for line in handle if line.strip() and not line.startswith("#")}


def open_dataset(data: str | None = None, *, inputs: str | None = None, targets: str | None = None,
                 direction: str = "AtoB", members: set[str] | None = None) -> Dataset:
    """Pick the dataset form from the arguments: a manifest file, an aligned folder, or two folders."""
    if inputs or targets:
        if not (inputs and targets):
            raise ValueError("--inputs and --targets go together")
        return PairedFolders(inputs, targets, members)
    if data is None:
        raise ValueError("give a dataset: an aligned folder, a manifest, or --inputs/--targets")
    path = Path(data)
    if path.is_file():
        return Manifest(path, members)
    return AlignedFolder(path, direction, members)  # type: ignore[arg-type]
