"""Datasets -> pair records (id, input file, target file), in a stable order.

Three forms: a pix2pix "aligned" folder (A|B side by side in one file), two folders paired by
relative path, or a manifest (CSV or Parquet, streamed in pieces). Ids are stable: the path
relative to the dataset root without extension (e.g. `train/17`), or the manifest's `id`.

Everything that can be known without decoding an image is checked when the dataset is opened, so
a run fails before it scores anything, naming the file, row or id: ids that two files map to, manifest
rows with a missing or repeated id or a `member` cell other than 0/1/empty. What a folder holds but
cannot be scored is left out and counted in `Dataset.skipped` (files of other types, and files whose
names are not valid UTF-8: ids are stored as text, and such a name has no text form to store);
member ids the dataset does not hold are counted in `Dataset.unknown_members`. `Dataset.notes()`
words both for the run to print. Folder links inside a dataset are followed, each real folder once.

Id files (members, non-members, suspects, reference, population) have one reader, `read_id_list`, one digest,
`ids_digest`, and one way to be matched against a store's ids, `match_ids`, whose `IdMatch` every command prints
and records.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
EXAMPLES = 5  # items quoted per reason in counts and errors
Half = Literal["left", "right"] | None
DIRECTIONS = ("AtoB", "BtoA")
"""Which half of an aligned pix2pix file is the conditioning input x (the other is the ground truth)."""


class DatasetError(UsageError):
    """A dataset that cannot be scored as given; the message names the file, row or id and what to change."""


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


@dataclass
class Tally:
    """How many items one reason covers, and the first few of them."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    def quoted(self) -> str:
        more = ", ..." if self.count > len(self.examples) else ""
        return ", ".join(self.examples) + more


class Dataset:
    """An ordered, sliceable collection of pairs. `len()` is known up front; slices are streamed.

    `skipped` maps a reason to the files left out for it when the dataset was opened;
    `unknown_members` counts the ids of the members list that the dataset does not hold.
    """

    def __init__(self, members: set[str] | None) -> None:
        self.members = members
        self.skipped: dict[str, Tally] = {}
        self.unknown_members = Tally()

    def __len__(self) -> int:
        raise NotImplementedError

    def pairs(self, start: int = 0, stop: int | None = None) -> Iterator[Pair]:
        raise NotImplementedError

    def ids(self) -> Iterator[str]:
        return (pair.id for pair in self.pairs())

    def notes(self) -> list[str]:
        """One line per thing opening the dataset left out or could not match, for the run to print."""
        lines = [f"skipped {tally.count} file(s): {reason}: {tally.quoted()}" for reason, tally in self.skipped.items()]
        if self.unknown_members.count:
            lines.append(f"{self.unknown_members.count} member id(s) are not in the dataset and are ignored: "
                         f"{self.unknown_members.quoted()}; the members list must use this dataset's ids "
                         "(relative path without extension, or the manifest's id)")
        return lines

    def _count_unknown_members(self, ids: set[str] | dict[str, Any]) -> None:
        for image_id in sorted(self.members or ()):
            if image_id not in ids:
                self.unknown_members.add(repr(image_id))

    def _membership(self, image_id: str) -> int:
        if self.members is None:
            return -1
        return int(image_id in self.members)


def _natural_key(text: str) -> list:
    """Sort `train/2` before `train/10`."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _is_text(name: str) -> bool:
    """False for a name with bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _image_index(root: Path, skipped: dict[str, Tally]) -> dict[str, str]:
    """id -> file for the images under `root`, in natural order of ids; what is left out goes to `skipped`.

    Folder links are followed (a dataset may link its splits in), each real folder listed once: the
    real tree under `root` first, then the links found in it, in name order (and links found in those),
    so a link to an ancestor or to a folder listed already adds nothing and cannot loop.
    Two files with one id (`a.jpg`, `a.png`) are refused.
    """
    files: dict[str, list[str]] = {}
    listed: set[tuple[int, int]] = set()
    pending = [str(root)]  # the real tree first, then each folder link found, in the order found
    while pending:
        for dirpath, dirnames, names in os.walk(pending.pop(0)):  # links show in dirnames but are not entered
            dirnames.sort()
            info = os.stat(dirpath)
            if (info.st_dev, info.st_ino) in listed:
                dirnames.clear()
                skipped.setdefault("folder link to a folder listed already", Tally()).add(dirpath)
                continue
            listed.add((info.st_dev, info.st_ino))
            pending += [os.path.join(dirpath, name) for name in dirnames if os.path.islink(os.path.join(dirpath, name))]
            for name in names:
                path = os.path.join(dirpath, name)
                relative = Path(path).relative_to(root)
                if not _is_text(relative.as_posix()):
                    reason = "name is not valid UTF-8 (ids are stored as text; rename the file to score it)"
                    skipped.setdefault(reason, Tally()).add(repr(os.fsencode(path)))
                elif not name.lower().endswith(IMAGE_SUFFIXES):
                    suffix = os.path.splitext(name)[1].lower() or "no extension"
                    reason = f"not an image type memscore reads ({suffix}; it reads {' '.join(IMAGE_SUFFIXES)})"
                    skipped.setdefault(reason, Tally()).add(path)
                else:
                    files.setdefault(relative.with_suffix("").as_posix(), []).append(path)
    clashes = {image_id: paths for image_id, paths in files.items() if len(paths) > 1}
    if clashes:
        quoted = "; ".join(f"{image_id!r}: {', '.join(sorted(paths))}" for image_id, paths in list(clashes.items())[:EXAMPLES])
        raise DatasetError(f"{root}: {len(clashes)} id(s) name more than one file ({quoted}); an id is the path "
                           "without its extension, so keep one file per id (rename or remove the others)")
    return {image_id: files[image_id][0] for image_id in sorted(files, key=_natural_key)}


def _folder(path: str | os.PathLike) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist")
    return folder


class AlignedFolder(Dataset):
    """pix2pix aligned layout: each file is A|B; `direction` says which half is the input x."""

    def __init__(self, root: str | os.PathLike, direction: Literal["AtoB", "BtoA"] = "AtoB",
                 members: set[str] | None = None) -> None:
        super().__init__(members)
        if direction not in DIRECTIONS:
            raise UsageError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        self.root = _folder(root)
        self.files = _image_index(self.root, self.skipped)
        if not self.files:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")
        self.ids_sorted = list(self.files)
        self.input_half: Half = "left" if direction == "AtoB" else "right"
        self.target_half: Half = "right" if direction == "AtoB" else "left"
        self._count_unknown_members(self.files)

    def __len__(self) -> int:
        return len(self.ids_sorted)

    def pairs(self, start: int = 0, stop: int | None = None) -> Iterator[Pair]:
        for image_id in self.ids_sorted[start:stop]:
            path = self.files[image_id]
            yield Pair(image_id, path, path, self.input_half, self.target_half, member=self._membership(image_id))


class PairedFolders(Dataset):
    """`--inputs DIR --targets DIR`, paired by relative path (extension may differ)."""

    def __init__(self, inputs: str | os.PathLike, targets: str | os.PathLike,
                 members: set[str] | None = None) -> None:
        super().__init__(members)
        self.inputs, self.targets = _folder(inputs), _folder(targets)
        self.by_id_in = _image_index(self.inputs, self.skipped)
        self.by_id_tg = _image_index(self.targets, self.skipped)
        self.ids_sorted = sorted(self.by_id_in.keys() | self.by_id_tg.keys(), key=_natural_key)
        if not self.ids_sorted:
            raise DatasetError(f"no images under {self.inputs} or {self.targets}")
        self._count_unknown_members(self.by_id_in.keys() | self.by_id_tg.keys())

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
            yield Pair(image_id, x or "", y or "", member=self._membership(image_id), problem=problem)


def _member_flag(value: Any) -> int | None:
    """A manifest `member` cell as 1 or 0, None when empty; ValueError for anything else (2, 0.7, "yes")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = float(value)
        except ValueError:
            raise UsageError(value) from None
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return int(value)
    raise UsageError(value)


class Manifest(Dataset):
    """CSV or Parquet with columns `id,input,target` and an optional `member` (1, 0 or empty).

    Read in record batches, never as one Python list: a 1M-row manifest streams in bounded memory.
    Opening reads it once to check every row. Relative paths are resolved against the manifest's folder.
    """

    REQUIRED = ("id", "input", "target")

    def __init__(self, path: str | os.PathLike, members: set[str] | None = None, batch_rows: int = 8192) -> None:
        super().__init__(members)
        self.path = Path(path)
        if not self.path.is_file():
            raise DatasetError(f"manifest {self.path} does not exist")
        self.base = self.path.parent
        self.batch_rows = batch_rows
        columns = self._columns()
        missing = [c for c in self.REQUIRED if c not in columns]
        if missing:
            raise DatasetError(f"manifest {self.path} lacks column(s) {missing}; it needs {list(self.REQUIRED)}"
                               " and optionally 'member'")
        self.has_member = "member" in columns
        self._length = self._check_rows()

    def _is_parquet(self) -> bool:
        return self.path.suffix.lower() in (".parquet", ".pq")

    def _columns(self) -> list[str]:
        if self._is_parquet():
            import pyarrow.parquet as pq
            return pq.ParquetFile(self.path).schema_arrow.names
        # utf-8-sig: a byte order mark (Excel writes one) is not part of the first column's name
        with open(self.path, newline="", encoding="utf-8-sig", errors="replace") as handle:
            return [c.strip() for c in handle.readline().strip().split(",")]

    def _batches(self, wanted: list[str] | None = None):
        """Record batches of the `wanted` columns (default: all the manifest's); `id` always as text."""
        import pyarrow as pa
        wanted = wanted or list(self.REQUIRED) + (["member"] if self.has_member else [])
        if self._is_parquet():
            import pyarrow.parquet as pq
            batches = pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_rows, columns=wanted)
        else:
            import pyarrow.csv as pacsv
            # member as text too, so that "yes" or "0.7" reach the check as written instead of failing type inference
            types = {name: pa.string() for name in wanted}
            batches = pacsv.open_csv(
                self.path,
                read_options=pacsv.ReadOptions(block_size=1 << 22),
                convert_options=pacsv.ConvertOptions(column_types=types, include_columns=wanted),
            )
        for block in batches:
            ids = block.column("id")
            if ids.type != pa.string():  # Parquet ids may be numbers
                block = block.set_column(block.schema.get_field_index("id"), "id", ids.cast(pa.string()))
            # CSV blocks run to ~10^5 rows; smaller zero-copy slices bound the Python objects made from one
            for start in range(0, block.num_rows, self.batch_rows):
                yield block.slice(start, self.batch_rows)

    def _where(self, row: int) -> str:
        """Row `row` (0-based, header not counted) as the user finds it: 1-based, and the CSV line."""
        return f"{self.path} row {row + 1}" + ("" if self._is_parquet() else f" (line {row + 2})")

    def _check_rows(self) -> int:
        """One pass before anything is scored: every id present, text and unique, every member cell 0, 1
        or empty; counts member ids the manifest lacks. Returns the number of rows.

        Uniqueness is checked on 64-bit hashes of the ids (8 bytes a row; a set of a million ids would
        hold ~150 MB), and ids whose hashes repeat are confirmed and named in a second pass.
        """
        import pyarrow as pa
        import pyarrow.compute as pc
        hashes: list[np.ndarray] = []
        wanted = pa.array(sorted(self.members), pa.string()) if self.members else None
        found: set[str] = set()
        row = 0
        try:
            for batch in self._batches(["id", "member"] if self.has_member else ["id"]):
                ids = batch.column("id")
                ids.validate(full=True)  # Parquet text is not checked for UTF-8 on read
                if ids.null_count or pc.min(pc.utf8_length(ids)).as_py() == 0:
                    offset = pc.index(pc.fill_null(pc.utf8_length(ids), 0), 0).as_py()
                    raise DatasetError(f"{self._where(row + offset)}, column 'id': empty; every row needs an id")
                if self.has_member:
                    self._check_members(batch.column("member"), row)
                hashes.append(np.fromiter(map(hash, ids.to_pylist()), dtype=np.int64, count=len(ids)))
                if wanted is not None:
                    found.update(ids.filter(pc.is_in(ids, value_set=wanted)).to_pylist())
                row += batch.num_rows
        except pa.ArrowInvalid as error:
            raise DatasetError(f"{self.path}: cannot read the manifest ({error}); it must be UTF-8 CSV with "
                               "one value per column on every row, or Parquet") from None
        ordered = np.sort(np.concatenate(hashes)) if hashes else np.empty(0, np.int64)
        suspects = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
        if suspects:
            self._refuse_repeated_ids(suspects)
        self._count_unknown_members(found)
        return row

    def _refuse_repeated_ids(self, suspects: set[int]) -> None:
        """Second pass over the rows whose id hashes repeat: name the repeated ids (equal hashes of
        different ids pass)."""
        first_row: dict[str, int] = {}
        repeated = Tally()
        row = 0
        for batch in self._batches(["id"]):
            for offset, image_id in enumerate(batch.column("id").to_pylist()):
                if hash(image_id) in suspects:
                    if image_id in first_row:
                        repeated.add(f"{image_id!r} ({self._where(row + offset)}, first in row {first_row[image_id] + 1})")
                    else:
                        first_row[image_id] = row + offset
            row += batch.num_rows
        if repeated.count:
            raise DatasetError(f"{self.path}: {repeated.count} row(s) repeat the id of an earlier row: "
                               f"{repeated.quoted()}; ids key the scores, so each must be unique")

    def _check_members(self, cells, row: int) -> None:
        import pyarrow.compute as pc
        for value in pc.unique(cells).to_pylist():
            try:
                _member_flag(value)
            except ValueError:
                offset = pc.index(cells, value).as_py()
                raise DatasetError(f"{self._where(row + offset)}, column 'member': {value!r} is not 1 (member), "
                                   "0 (non-member) or empty (unknown, or from --members)") from None

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
            columns = batch.slice(lo, hi - lo).to_pydict()
            for k in range(hi - lo):
                image_id = columns["id"][k]
                flag = _member_flag(columns["member"][k]) if self.has_member else None
                yield Pair(image_id, self._resolve(columns["input"][k]), self._resolve(columns["target"][k]),
                           member=self._membership(image_id) if flag is None else flag)
            row += n

    def _resolve(self, path: str | None) -> str:
        if not path:
            return ""
        return path if os.path.isabs(path) else str(self.base / path)


def confined_path(root: str | os.PathLike, relative: str) -> Path:
    """`root/relative`, refused with a DatasetError when it would leave `root`.

    For file names made from ids, which come from manifests and may be hostile (`../../etc/passwd`,
    `/etc/passwd`). The check is on the normalised text, not on resolved links: links the user placed
    inside `root` keep working. Paths a manifest gives for inputs and targets are not confined.
    """
    base = os.path.abspath(root)
    candidate = os.path.abspath(os.path.join(base, relative))
    if "\0" in relative or candidate == base or os.path.commonpath([base, candidate]) != base:
        raise DatasetError(f"{relative!r} leads outside {root}: a file name made from an id must stay inside its "
                           "folder, so ids with '..' parts or a leading '/' cannot name files")
    return Path(candidate)


COMMENT = re.compile(r"(?:^|\s)#.*")
"""A comment in an id file: from a `#` that starts the line or follows whitespace, to the end of the line."""


def _id_on_line(line: str) -> str:
    """The id on one line of an id file, '' for none. A byte order mark is dropped wherever it is: files joined
    with `cat` carry one at the start of each part."""
    return COMMENT.sub("", line.replace("\ufeff", "")).strip()


@dataclass(frozen=True)
class IdList:
    """The ids of one id file (`read_id_list`)."""

    file: str
    ids: frozenset[str]
    repeated: int
    """Lines that repeat an id given earlier in the file (each id counts once)."""


def read_id_list(path: str | os.PathLike) -> IdList:
    """The one reader of id files (members, non-members, suspects, reference, population): UTF-8 text, one id
    per line, so that an id file saved by any editor means the same ids everywhere.

    A byte order mark is dropped, LF, CRLF and CR all end a line, whitespace around an id is dropped, blank lines
    are skipped, and a `#` at the start of a line or after whitespace starts a comment (`train/2  # second` is
    the id `train/2`; `a#b` is the id `a#b`), so an id cannot hold whitespace followed by `#`. A repeated id
    counts once; `IdList.repeated` says how often.
    """
    try:
        with open(path, encoding="utf-8") as handle:  # newline=None: CRLF and CR read as LF
            lines = handle.read().split("\n")
    except UnicodeDecodeError as error:
        raise UsageError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); an id file holds one id "
                         "per line as UTF-8 text") from None
    ids = [image_id for image_id in map(_id_on_line, lines) if image_id]
    unique = frozenset(ids)
    return IdList(str(path), unique, len(ids) - len(unique))


def ids_digest(ids: Iterable[str]) -> str:
    """sha256 of a set of ids, order and repeats ignored: what a store records of its members file, a shadows
    folder of its population and a calibration of its reference set, so the same ids give the same digest in all
    three. An id that is not valid UTF-8 (a file name's bytes, kept by Python as lone surrogates) is digested by
    those bytes' surrogate code points instead of failing."""
    return hashlib.sha256("\n".join(sorted(set(ids))).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class IdMatch:
    """How the ids of one id file matched a store's ids: what a command used and what it ignored, for its
    console line (`line`) and its JSON (`to_dict`)."""

    role: str
    """What the ids are for: members, non-members, suspect, reference."""
    file: str
    n_ids: int
    n_in_store: int
    not_in_store: tuple[str, ...]
    """The first few ids (sorted) that are not in the store."""
    n_repeated: int
    rows: np.ndarray = field(repr=False, compare=False)
    """True for the store rows whose id is in the file."""

    @property
    def n_not_in_store(self) -> int:
        return self.n_ids - self.n_in_store

    def line(self) -> str:
        """One line for the console: how many ids the file gave, used and ignored."""
        more = ", ..." if self.n_not_in_store > len(self.not_in_store) else ""
        unknown = f" ({', '.join(map(repr, self.not_in_store))}{more})" if self.not_in_store else ""
        repeated = f"; {self.n_repeated} repeated line(s) counted once" if self.n_repeated else ""
        return (f"{self.role} file {self.file}: {self.n_ids} ids, {self.n_in_store} in the store, "
                f"{self.n_not_in_store} not in the store{unknown}{repeated}")

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "file": self.file, "n_ids": self.n_ids, "n_in_store": self.n_in_store,
                "n_not_in_store": self.n_not_in_store, "not_in_store_examples": list(self.not_in_store),
                "n_repeated": self.n_repeated, "summary": self.line()}


def match_ids(id_list: IdList, store_ids: np.ndarray, role: str, *, strict: bool = False) -> IdMatch:
    """The one way a command matches an id file against a store's `id` column. Ids the store lacks are
    ignored and counted, or, when `strict`, refused (UsageError naming the file and a few of them)."""
    rows = np.isin(store_ids, sorted(id_list.ids))
    unknown = sorted(id_list.ids - set(store_ids[rows].tolist()))
    match = IdMatch(role, id_list.file, len(id_list.ids), len(id_list.ids) - len(unknown), tuple(unknown[:EXAMPLES]),
                    id_list.repeated, rows)
    if strict and unknown:
        raise UsageError(f"{match.line()}; --strict refuses ids the store does not hold: correct the file (ids are "
                         "the dataset's: relative path without extension, or the manifest's id)")
    return match


def open_dataset(data: str | None = None, *, inputs: str | None = None, targets: str | None = None,
                 direction: str = "AtoB", members: set[str] | None = None) -> Dataset:
    """Pick the dataset form from the arguments: a manifest file, an aligned folder, or two folders."""
    if inputs or targets:
        if not (inputs and targets):
            raise UsageError("--inputs and --targets go together")
        return PairedFolders(inputs, targets, members)
    if data is None:
        raise UsageError("give a dataset: an aligned folder, a manifest, or --inputs/--targets")
    path = Path(data)
    if path.is_file():
        return Manifest(path, members)
    return AlignedFolder(path, direction, members)  # type: ignore[arg-type]
