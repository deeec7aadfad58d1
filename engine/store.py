"""The Zarr v3 score store: created once at full size, written shard by shard, verified by every reader.

Layout (one group; `xarray.open_zarr` opens it as a Dataset):
- along `image`: the columns of `COLUMNS` (`id`, `lrec`, `ldiff`, `lmem`, `status`, `reason`, `member`,
  `out_height`, `out_width`, `out_of_range`) plus derived columns such as `predicted_member`;
- along `shard`: `shard_digest` (a digest of each of the shard's arrays) and `shard_done`, written in that order
  after the shard's data (one chunk per shard), so a finished shard carries what verifies it;
- group attribute `memscore`: the `RunRecord` (configuration, sizes, store id, versions, process layouts);
- `lmem` carries its own `AlphaRecord` (and the earlier ones) in its array attributes, so the column and the
  alpha that made it are replaced together, in one directory rename;
- every record (the group's attributes, each whole-written column's) has its digest beside it, in the same
  metadata write (`RECORD_DIGESTS`), so `verify`, and with it every reader, refuses a record edited by hand.
A shard is exactly one chunk of every `image` array, so shards write disjoint, chunk-aligned regions: the only
concurrent Zarr writes that are safe. Whole-column rewrites (`lmem`, derived columns) are written beside the
store first and switched in by renaming: a reader sees the old column or the new one, never a mix.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
import socket
import threading
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .config import ScoreConfig
from .errors import PathError, StoreError
from .outputs import remove_folder, require_replaceable, write_json
from .timing import utc_now

FORMAT_VERSION = 4
"""2: shards carry digests; 3: the `out_of_range` column; 4: the membership statistic (`lrec` or `ldenoise`) and
per-sample errors. An older store lacks what this one writes and verifies."""
LOCK_SUFFIX = ".lock"  # beside the store, not inside: zarr warns about foreign files
STAGING_SUFFIX = ".staging"  # beside the store too: whole columns are written here, then renamed in
CREATING_SUFFIX = ".creating"  # a new store is built here, then renamed into place
SHARD_ARRAYS = ("shard_digest", "shard_done")


@dataclass(frozen=True)
class Column:
    """One per-image array of the store: its dtype, the value of rows not written, and who writes it."""

    name: str
    dtype: str
    """`float16`, `float32`, `int8`, `int32` or `str`."""
    fill: Any
    written_by: str
    """`shard`: every shard writes it; `alpha`: the alpha pass rewrites it whole."""
    width: int = 0
    """Values per image of a 2-D column ([image, width]); 0 for one value per image."""
    inner_dimension: str = ""
    """Name of the second dimension of a 2-D column (for xarray)."""

    def values(self, data: Any) -> np.ndarray:
        """`data` as this column's numpy array."""
        return np.asarray(data, dtype=str if self.dtype == "str" else self.dtype)

    def rows(self, per_row: Sequence[Any]) -> np.ndarray:
        """One row per image from per-image values; None (an image that was not scored) becomes the fill."""
        if not self.width:
            return self.values(per_row)
        out = np.full((len(per_row), self.width), self.fill, dtype=self.dtype)
        for index, value in enumerate(per_row):
            if value is not None:
                out[index] = value
        return out


COLUMNS: tuple[Column, ...] = (
    Column("id", "str", "", "shard"),
    Column("lrec", "float32", float("nan"), "shard"),
    Column("ldiff", "float32", float("nan"), "shard"),
    Column("lmem", "float32", float("nan"), "alpha"),
    Column("status", "str", "", "shard"),
    Column("reason", "str", "", "shard"),
    Column("member", "int8", -1, "shard"),
    Column("out_height", "int32", 0, "shard"),
    Column("out_width", "int32", 0, "shard"),
    Column("out_of_range", "float32", float("nan"), "shard"),
)
"""The per-image schema: creation, shard writes, verification, reading and export all iterate it."""
SHARD_COLUMNS: tuple[Column, ...] = tuple(c for c in COLUMNS if c.written_by == "shard")
COLUMN_BY_NAME = {c.name: c for c in COLUMNS}

EXTRA_COLUMNS: dict[str, Column] = {c.name: c for c in (
    Column("ldenoise", "float32", float("nan"), "shard"),
    Column("lrec_samples", "float32", float("nan"), "shard", inner_dimension="sample"),
    Column("features", "float16", float("nan"), "shard", inner_dimension="feature"),
    Column("lrec_shadow", "float32", float("nan"), "shard", inner_dimension="shadow"),
    Column("ldenoise_shadow", "float32", float("nan"), "shard", inner_dimension="shadow"),
    Column("in_shadow", "int8", -1, "shard", inner_dimension="shadow"),
)}
"""Per-image columns a store holds by its configuration, their widths fixed when it is created (0: one value per
image): `ldenoise` (a white-box statistic), `lrec_samples` (Lrec of each of the K samples), `features` (per
backbone stage, the per-channel mean then std over space of the difficulty image's maps, for per-image
calibration), `lrec_shadow` / `ldenoise_shadow` (each shadow victim's value of the store's statistic) and
`in_shadow` (whether the image was in that shadow's training half)."""


def extra_column(name: str, width: int) -> Column:
    """The extra column `name` at `width` values per image (0: one value)."""
    return dataclasses.replace(EXTRA_COLUMNS[name], width=width)


def shard_columns(rows: Sequence[Any], columns: Sequence[Column] = SHARD_COLUMNS) -> dict[str, np.ndarray]:
    """A shard's arrays from per-image rows that have one attribute per shard column (`memscore.scores.Row`)."""
    return {c.name: c.rows([getattr(row, c.name) for row in rows]) for c in columns}


def column_digest(values: np.ndarray, *, full: bool = False) -> str:
    """sha256 of a column's values as stored, independent of how strings are held (width, numpy string dtype)."""
    values = np.asarray(values)
    if values.dtype.kind in "UOT":
        data = "\x00".join(str(v) for v in values.tolist()).encode("utf-8", "surrogatepass")
    else:
        data = np.ascontiguousarray(values).tobytes()
    digest = hashlib.sha256(data).hexdigest()
    return digest if full else digest[:16]


RECORD_DIGESTS = "record_sha256"
"""Attribute beside the records memscore writes (the group's `memscore` and `failed_shards`; every attribute of a
column written whole: lmem's `alpha` and `history`, a derived column's record, its `store_id` and values' `sha256`):
each record's `record_digest`, written in the same metadata write. `verify` recomputes them, so a record edited by
hand is named and refused, never believed."""
_EDITED = ("was edited after memscore wrote it (it differs from its digest); memscore believes no record edited by "
           "hand: rescore the store with `memscore score ... --overwrite`")
_RECORD_NAMES = {(None, "memscore"): "run record", (None, "failed_shards"): "record of failed shards",
                 ("lmem", "alpha"): "alpha record of lmem", ("lmem", "history"): "alpha history of lmem"}


def record_digest(record: Any) -> str:
    """sha256 of a record's canonical JSON (sorted keys, as zarr.json gives it back), so the record written and the
    record read digest alike whatever containers it was built from (tuples, int keys)."""
    canonical = json.loads(json.dumps(record, allow_nan=True))
    text = json.dumps(canonical, sort_keys=True, allow_nan=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _digests(attributes: dict[str, Any]) -> dict[str, str]:
    """The digests recorded among `attributes` (none when the attribute is missing or is not a mapping)."""
    found = attributes.get(RECORD_DIGESTS)
    return dict(found) if isinstance(found, dict) else {}


def _with_digests(attributes: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`attributes` updated by `changes`, each changed record beside its digest: the document of one metadata write."""
    digests = {**_digests(attributes), **{key: record_digest(value) for key, value in changes.items()}}
    return {**attributes, **changes, RECORD_DIGESTS: digests}


def _edited_records(attributes: dict[str, Any]) -> list[str]:
    """The records among `attributes` that differ from their digest, have none, or lost their value (sorted)."""
    digests = _digests(attributes)
    keys = (set(attributes) | set(digests)) - {RECORD_DIGESTS}
    return sorted(key for key in keys if key not in attributes or digests.get(key) != record_digest(attributes[key]))


def _record_name(column: str | None, key: str) -> str:
    """What a problem calls the record under attribute `key` of the group (`column` None) or of a column."""
    default = f"group attribute {key}" if column is None else f"record of column {column}"
    return _RECORD_NAMES.get((column, key), default)


def versions() -> dict[str, str]:
    import importlib.metadata as md
    found = {}
    for name in ("memscore", "torch", "torchvision", "numpy", "zarr"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "not installed"
    return found


@dataclass(frozen=True)
class RunRecord:
    """What a store was made for and by: recorded at creation; `layouts` grows by one entry per run."""

    config: ScoreConfig
    n_images: int
    shard_size: int
    n_shards: int
    store_id: str
    created: str
    versions: dict[str, str]
    members_sha256: str | None = None
    """Digest of the member labels the store was scored with (None: no labels given)."""
    extra_columns: dict[str, int] = field(default_factory=dict)
    """The extra columns (`EXTRA_COLUMNS`) this store holds, with their widths (0: one value per image)."""
    layouts: tuple[dict[str, Any], ...] = ()
    """Each run's process layout (device, threads, workers, precision): scores agree across layouts to float32
    rounding, not bit for bit, so a store resumed under another layout says so here."""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        out["layouts"] = list(self.layouts)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["config"] = ScoreConfig.from_dict(data["config"])
        kwargs["layouts"] = tuple(data.get("layouts", ()))
        return cls(**kwargs)


@dataclass(frozen=True)
class AlphaRecord:
    """How `lmem` was made: alpha's spec and value and how it was chosen (the digest of the lmem it wrote is the
    column's `sha256`, beside every whole-written column's record)."""

    spec: str
    value: float
    method: str
    n_rows: int
    r2: float | None = None
    created: str = ""
    reference_ids: dict[str, Any] | None = None
    """fit:reference: how the reference ids file matched the store (`memscore.data.IdMatch.to_dict`)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlphaRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class StatusCounts:
    n_images: int
    ok: int
    failed: int
    pending: int


@dataclass(frozen=True)
class Problem:
    """One thing `verify` found wrong; `shard`/`array` say where, when it is that local."""

    message: str
    shard: int | None = None
    array: str | None = None

    def __str__(self) -> str:
        where = " ".join(part for part in (f"shard {self.shard}" if self.shard is not None else "",
                                           f"array {self.array}" if self.array else "") if part)
        return f"{where}: {self.message}" if where else self.message


# --- exclusive access -------------------------------------------------------------------------------

_HELD_LOCKS: dict[Path, int] = {}
_HELD_LOCKS_GUARD = threading.Lock()


@contextmanager
def store_lock(path: str | os.PathLike) -> Iterator[None]:
    """One writer per store: a second process is refused with who holds it. Take it BEFORE creating,
    overwriting or resuming a store; re-entrant within this process."""
    lock_path = _beside(Path(path), LOCK_SUFFIX).resolve()
    with _HELD_LOCKS_GUARD:
        if lock_path in _HELD_LOCKS:
            _HELD_LOCKS[lock_path] += 1
            held = True
        else:
            held = False
    if not held:
        _acquire(lock_path)
        with _HELD_LOCKS_GUARD:
            _HELD_LOCKS[lock_path] = 1
    try:
        yield
    finally:
        with _HELD_LOCKS_GUARD:
            _HELD_LOCKS[lock_path] -= 1
            last = _HELD_LOCKS[lock_path] == 0
            if last:
                del _HELD_LOCKS[lock_path]
        if last:
            lock_path.unlink(missing_ok=True)


def _acquire(lock_path: Path) -> None:
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "since": utc_now()}
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            holder = _read_json(lock_path)
            if holder and holder.get("host") == owner["host"] and not _alive(int(holder.get("pid", -1))):
                lock_path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            store = lock_path.name[: -len(LOCK_SUFFIX)]
            raise StoreError(f"{store} is being written by another run ({holder}); "
                             f"wait for it, or remove {lock_path} if that run is dead") from None
    with os.fdopen(fd, "w") as handle:
        json.dump(owner, handle)
    _finish_interrupted_switches(lock_path.with_name(lock_path.name[: -len(LOCK_SUFFIX)]))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


@contextmanager
def disk_full_guard(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a full disk or quota (ENOSPC, EDQUOT) while writing `what` under `path` into a StoreError that says
    nothing finished is lost and how to resume, instead of a traceback; other OS errors pass unchanged. One guard
    for every store write, so a full disk reads the same whether a run's set-up or one shard's write hit it."""
    try:
        yield
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StoreError(f"{path}: the disk is full while writing {what} ({error.strerror}). Nothing already "
                         "finished is lost: free some space and rerun the same command to resume") from error


class ScoreStore:
    """Handle on a score store at `path` (a local folder). Open with mode `r` to read: writes are refused."""

    def __init__(self, path: str | os.PathLike, mode: str = "r") -> None:
        self.path = Path(path)
        self.read_only = mode == "r"
        if not (self.path / "zarr.json").exists():
            raise StoreError(f"no store at {self.path}")
        try:
            self.group = zarr.open_group(str(self.path), mode=mode, use_consolidated=False)
        except Exception as error:
            raise StoreError(f"{self.path} is not a readable Zarr store: {error}") from error
        meta = self.group.attrs.get("memscore")
        if not meta:
            raise StoreError(f"{self.path} is a Zarr group but not a memscore store (no 'memscore' attribute)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{self.path} has store format {meta.get('format_version')}; this memscore reads format "
                             f"{FORMAT_VERSION} (shards carry digests and out_of_range): rescore it with "
                             "`memscore score ... --overwrite`")
        self.record = RunRecord.from_dict(meta)
        self._intact: StatusCounts | None = None
        """The counts of a read-only handle whose store `verify` found intact (see `require_readable`)."""

    # --- creation and opening --------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, n_images: int, shard_size: int, config: ScoreConfig, *,
               overwrite: bool = False, members_sha256: str | None = None,
               extra_columns: dict[str, int] | None = None, inputs: Sequence[str | None] = ()) -> ScoreStore:
        """A new, empty store of `n_images` rows in shards of `shard_size`. With `overwrite`, an existing store is
        replaced (under its lock) only if memscore made it and none of the run's `inputs` lies inside it
        (`memscore.outputs.require_replaceable`)."""
        path = Path(path)
        if n_images < 1:
            raise StoreError("nothing to score: the dataset is empty")
        if shard_size < 1:
            raise StoreError(f"shard size must be at least 1 image, got {shard_size}")
        with store_lock(path):
            if path.exists() and not overwrite:
                raise StoreError(f"{path} already exists (rerun to resume, or pass --overwrite)")
            require_replaceable(path, "store", inputs)
            building = _beside(path, CREATING_SUFFIX)  # built aside, then renamed in: a kill never leaves half a store
            if building.exists() and not (building / "zarr.json").is_file():
                raise PathError(f"{building} exists and is not a store memscore was building; move it away")
            shutil.rmtree(building, ignore_errors=True)  # a creation that was killed: a Zarr group of this store's
            group = zarr.open_group(str(building), mode="w")
            extra_columns = dict(extra_columns or {})
            for column in COLUMNS + tuple(extra_column(name, width) for name, width in extra_columns.items()):
                _create_column(group, column.name, column.dtype, column.fill, n_images, shard_size, column.width,
                               column.inner_dimension)
            n_shards = -(-n_images // shard_size)
            group.create_array("shard_digest", shape=(n_shards,), chunks=(1,), dtype=str, fill_value="",
                               dimension_names=["shard"])
            group.create_array("shard_done", shape=(n_shards,), chunks=(1,), dtype=bool, fill_value=False,
                               dimension_names=["shard"])
            record = RunRecord(config=config, n_images=n_images, shard_size=shard_size, n_shards=n_shards,
                               store_id=uuid.uuid4().hex, created=utc_now(), versions=versions(),
                               members_sha256=members_sha256, extra_columns=extra_columns)
            group.attrs.put(_with_digests({}, {"memscore": record.to_dict()}))
            if path.exists():
                remove_folder(path, "store")
                shutil.rmtree(_beside(path, STAGING_SUFFIX), ignore_errors=True)
            os.rename(building, path)
            store = cls(path, mode="r+")
            store.consolidate()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> ScoreStore:
        """An existing store; `mode="r+"` to write (take `lock()` first)."""
        return cls(path, mode=mode)

    # --- shape and records -----------------------------------------------------------------------

    @property
    def config(self) -> ScoreConfig:
        return self.record.config

    @property
    def statistic(self) -> str:
        """The membership statistic this store is built on (`memscore.config.STATISTICS`): its column's name."""
        return self.config.statistic

    @property
    def n_images(self) -> int:
        return self.record.n_images

    @property
    def shard_size(self) -> int:
        return self.record.shard_size

    @property
    def n_shards(self) -> int:
        return self.record.n_shards

    @property
    def store_id(self) -> str:
        return self.record.store_id

    @property
    def shard_columns(self) -> tuple[Column, ...]:
        """The columns each shard writes: the schema's, then this store's extra ones."""
        return SHARD_COLUMNS + tuple(extra_column(n, w) for n, w in self.record.extra_columns.items())

    def shard_range(self, index: int) -> tuple[int, int]:
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.n_images)

    def done_shards(self) -> np.ndarray:
        return np.asarray(self._array("shard_done")[:], dtype=bool)

    @property
    def alpha(self) -> AlphaRecord | None:
        """How the current `lmem` was made; None before the first alpha pass."""
        record = self._array("lmem").attrs.get("alpha")
        return AlphaRecord.from_dict(record) if record else None

    @property
    def alpha_history(self) -> list[AlphaRecord]:
        """Earlier alpha choices, oldest first."""
        return [AlphaRecord.from_dict(r) for r in self._array("lmem").attrs.get("history", [])]

    @property
    def failed_shards(self) -> dict[int, str]:
        """Shards the last run could not score after every retry (they stay pending), with the error."""
        return {int(k): v for k, v in self.group.attrs.get("failed_shards", {}).items()}

    def derived_columns(self) -> list[str]:
        """Per-image columns added after scoring (e.g. `predicted_member`)."""
        fixed = {c.name for c in COLUMNS} | set(SHARD_ARRAYS) | set(self.record.extra_columns)
        return sorted(name for name in self.group.array_keys() if name not in fixed)

    def column_attrs(self, name: str) -> dict[str, Any]:
        """The record of a column written whole (without the digests `verify` checks it by)."""
        return {key: value for key, value in self._array(name).attrs.items() if key != RECORD_DIGESTS}

    # --- writing ---------------------------------------------------------------------------------

    def write_shard(self, index: int, columns: dict[str, np.ndarray]) -> None:
        """Write one shard's rows, then its digest, then its done-mark (the last write)."""
        self._require_writable()
        start, stop = self.shard_range(index)
        digests = {}
        for column in self.shard_columns:
            values = column.values(columns[column.name])
            if len(values) != stop - start:
                raise StoreError(f"shard {index} has {len(values)} {column.name} values, expected {stop - start}")
            self.group[column.name][start:stop] = values
            digests[column.name] = column_digest(values)
        self.group["shard_digest"][index] = json.dumps(digests, sort_keys=True)
        self.group["shard_done"][index] = True

    def reset_shards(self, indices: Sequence[int]) -> None:
        """Mark shards as not done (damaged ones, to be scored again)."""
        self._require_writable()
        for index in indices:
            self.group["shard_done"][index] = False

    def write_lmem(self, lmem: np.ndarray, alpha: AlphaRecord) -> AlphaRecord:
        """Replace `lmem` and its alpha record together (older records go to its `history`)."""
        self._require_records_intact()
        values = COLUMN_BY_NAME["lmem"].values(lmem)
        alpha = dataclasses.replace(alpha, created=alpha.created or utc_now())
        history = [r.to_dict() for r in self.alpha_history]
        if self.alpha is not None:
            history.append(self.alpha.to_dict())
        self._replace_column("lmem", values, COLUMN_BY_NAME["lmem"].fill, {"alpha": alpha.to_dict(), "history": history})
        return alpha

    def write_column(self, name: str, values: np.ndarray, fill_value: Any, attrs: dict[str, Any]) -> None:
        """Add or replace a derived per-image column (e.g. a member decision) and record how it was made."""
        if name in COLUMN_BY_NAME or name in SHARD_ARRAYS or name in self.record.extra_columns:
            raise StoreError(f"{name!r} is a scored column of the store; derived columns need another name")
        self._replace_column(name, np.asarray(values), fill_value, attrs)

    def update_record(self, **changes: Any) -> None:
        """Change the run record's fields (`layouts`, ...) in one atomic metadata write."""
        self._require_writable()
        self._require_records_intact()
        self.record = dataclasses.replace(self.record, **changes)
        self._update_group_attrs({"memscore": self.record.to_dict()})

    def set_failed_shards(self, failed: dict[int, str]) -> None:
        """Record the shards the last run could not score (an empty dict clears the record)."""
        self._require_writable()
        self._update_group_attrs({"failed_shards": {str(k): v for k, v in failed.items()}})

    def consolidate(self) -> None:
        """Refresh the consolidated metadata xarray reads (a zarr-python extension to v3)."""
        self._require_writable()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(str(self.path))

    # --- reading ---------------------------------------------------------------------------------

    def column(self, name: str) -> np.ndarray:
        """A whole per-image column; a chunk that cannot be decoded is a StoreError naming its shard."""
        array = self._array(name)
        try:
            return np.asarray(array[:])
        except Exception as error:
            raise StoreError(f"{self.path}: array {name} cannot be read ({type(error).__name__}: {error}); "
                             "`memscore verify` names the damaged shards, and rerunning `memscore score` "
                             "rescores them") from error

    def to_frame(self):
        """Every per-image column (the schema's, then derived ones) as a pandas DataFrame; a 2-D column of width
        k becomes k columns `NAME_0` ... `NAME_{k-1}`."""
        import pandas as pd
        frame = {}
        for name in [c.name for c in COLUMNS] + list(self.record.extra_columns) + self.derived_columns():
            values = self.column(name)
            if values.ndim == 2:
                frame.update({f"{name}_{k}": values[:, k] for k in range(values.shape[1])})
            else:
                frame[name] = values
        return pd.DataFrame(frame)

    def counts(self) -> StatusCounts:
        status = self.column("status")
        return StatusCounts(self.n_images, int((status == "ok").sum()), int((status == "failed").sum()),
                            int((status == "").sum()))

    def fingerprint(self, column: str) -> dict[str, Any]:
        """What identifies one score exactly: equal fingerprints <=> the same values in the same store."""
        found = {"store_id": self.store_id, "column": column, "sha256": column_digest(self.column(column), full=True)}
        if column == "lmem" and self.alpha is not None:
            found["alpha"] = {"spec": self.alpha.spec, "value": self.alpha.value}
        return found

    # --- verification ----------------------------------------------------------------------------

    def verify(self) -> list[Problem]:
        """Every problem with the stored data: unreadable chunks, shards whose content differs from the digest
        in their done-mark (a chunk deleted or changed), a record edited by hand (`RECORD_DIGESTS`), a column made
        for another store, an lmem or derived column whose values differ from its record."""
        problems = self._record_problems()  # first: an edited record explains what follows
        done = self.done_shards()
        digests = np.asarray(self._array("shard_digest")[:]).tolist()
        expected = {}
        for index in np.flatnonzero(done):
            try:
                expected[int(index)] = json.loads(digests[index])
            except ValueError:
                problems.append(Problem("done but its digest is missing or unreadable", int(index), "shard_digest"))
        for column in self.shard_columns:
            values, unreadable = self._read_by_shard(column)
            for index in unreadable:
                problems.append(Problem(unreadable[index], index, column.name))
            for index, digests_of_shard in expected.items():
                if index in unreadable:
                    continue
                start, stop = self.shard_range(index)
                if column_digest(values[start:stop]) != digests_of_shard.get(column.name):
                    problems.append(Problem("content differs from the digest in its done-mark (a chunk was deleted "
                                            "or changed)", index, column.name))
        for name, attrs in self._recorded_columns().items():
            problems += self._recorded_values_problems(name, attrs)
        return problems

    def _record_problems(self) -> list[Problem]:
        """Records edited since memscore wrote them (the group's, each recorded column's) and columns recorded for
        another store. Only tiny documents are read: cheap enough for every write that carries a record forward."""
        edited = [_record_name(None, key) for key in _edited_records(dict(self.group.attrs))]
        foreign = []
        for name, attrs in self._recorded_columns().items():
            edited += [_record_name(name, key) for key in _edited_records(attrs)]
            if attrs.get("store_id") != self.store_id:
                foreign.append(Problem(f"record of column {name} was made for another store (store id "
                                       f"{attrs.get('store_id')!r}, this one is {self.store_id}): rescore the store "
                                       "with `memscore score ... --overwrite`"))
        return [Problem(f"{name} {_EDITED}") for name in dict.fromkeys(edited)] + foreign

    def _recorded_columns(self) -> dict[str, dict[str, Any]]:
        """The attributes of each column written whole that carries a record: lmem after its first alpha pass, and
        derived columns. An array with no attributes records nothing, and readers take nothing from it but values."""
        found = {name: dict(self._array(name).attrs) for name in ["lmem", *self.derived_columns()]}
        return {name: attrs for name, attrs in found.items() if attrs}

    def _recorded_values_problems(self, name: str, attrs: dict[str, Any]) -> list[Problem]:
        """A recorded column that cannot be read, or whose values differ from the digest in its record."""
        try:
            values = self._array(name)[:]
        except Exception as error:
            return [Problem(f"cannot be read ({type(error).__name__}: {error})", None, name)]
        if column_digest(values, full=True) == attrs.get("sha256"):
            return []
        if name == "lmem":
            return [Problem("content differs from its alpha record: rerun `memscore rescore` or `memscore score`",
                            None, name)]
        return [Problem("content differs from its record (changed or damaged after it was written)", None, name)]

    def _require_records_intact(self) -> None:
        """Refuse to carry an edited record forward: writing its digest anew would make the edit look genuine."""
        problems = self._record_problems()
        if problems:
            raise StoreError(f"{self.path}: {problems[0]}")

    def damaged_shards(self) -> list[int]:
        """Done shards that `verify` finds damaged (to be scored again)."""
        return sorted({p.shard for p in self.verify() if p.shard is not None})

    def require_readable(self, partial: bool = False) -> StatusCounts:
        """Refuse a damaged store, and an unfinished one unless `partial`; returns the status counts. A read-only
        handle is verified once: it cannot write, so the readers it is passed on to (a report computes its metrics
        with `evaluate`) do not read every chunk again."""
        counts = self._intact or self._verified_counts()
        if not partial and (counts.pending or self.alpha is None):
            what = f"{counts.pending} of {counts.n_images} rows are still pending" if counts.pending \
                else "lmem has not been written (no alpha pass)"
            raise StoreError(f"{self.path} is not finished: {what}. Rerun the same `memscore score` command to "
                             "finish it, or pass --partial to use the rows scored so far")
        return counts

    def _verified_counts(self) -> StatusCounts:
        """The status counts of a store `verify` finds intact (remembered by a read-only handle); else refused."""
        problems = self.verify()
        if problems:
            listed = "; ".join(str(p) for p in problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise StoreError(f"{self.path} is damaged: {listed}. `memscore verify {self.path}` lists every problem; "
                             "rerunning the same `memscore score` command rescores damaged shards")
        counts = self.counts()
        if self.read_only:
            self._intact = counts
        return counts

    def require_scored(self) -> None:
        """Refuse a store an alpha pass cannot write Lmem into: a shard not done, or a problem `verify` finds in
        anything but lmem. Lmem is left out because the alpha pass rewrites it whole (a damaged lmem is what
        `memscore rescore` repairs). The end of a run and `memscore rescore` both check this before writing Lmem."""
        pending = int((~self.done_shards()).sum())
        if pending:
            raise StoreError(f"{self.path}: {pending} shard(s) are not scored yet; rerun the same `memscore score` "
                             "command to finish it")
        problems = [p for p in self.verify() if p.array != "lmem"]
        if problems:
            raise StoreError(f"{self.path} is damaged ({problems[0]}); `memscore verify {self.path}` lists every "
                             "problem, and rerunning the same `memscore score` command scores the damaged shards again")

    # --- internals -------------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.path} was opened read-only; open it with mode='r+' (and take its lock) to write")
        if not os.access(self.path, os.W_OK):  # else a column would be staged beside it, then fail to switch in
            raise StoreError(f"{self.path} is read-only on disk (its folder or file system): make it writable to "
                             "write to it; reading needs no write access")

    def _array(self, name: str) -> zarr.Array:
        try:
            return self.group[name]
        except KeyError:
            staged = _beside(self.path, STAGING_SUFFIX) / name  # between the two renames of a column switch
            if _staged_for(staged, self.store_id):
                return zarr.open_array(str(staged), mode="r")
            raise StoreError(f"{self.path} has no array {name!r}") from None

    def _read_by_shard(self, column: Column) -> tuple[np.ndarray, dict[int, str]]:
        """A whole column, and the shards whose chunks could not be decoded (with why)."""
        array = self._array(column.name)
        try:
            return np.asarray(array[:]), {}
        except Exception:
            pass
        shape = (self.n_images, column.width) if column.width else (self.n_images,)
        values = np.full(shape, column.fill, dtype=object if column.dtype == "str" else column.dtype)
        unreadable = {}
        for index in range(self.n_shards):
            start, stop = self.shard_range(index)
            try:
                values[start:stop] = array[start:stop]
            except Exception as error:
                unreadable[index] = f"cannot be read ({type(error).__name__}: {error})"
        return values, unreadable

    def _update_group_attrs(self, changes: dict[str, Any]) -> None:
        document_path = self.path / "zarr.json"
        document = json.loads(document_path.read_text())
        document["attributes"] = _with_digests(document.get("attributes", {}), changes)
        document.pop("consolidated_metadata", None)
        write_json(document_path, document, overwrite=True)  # one rename: a kill never leaves half a zarr.json
        self.group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
        self.consolidate()

    def _replace_column(self, name: str, values: np.ndarray, fill_value: Any, attrs: dict[str, Any]) -> None:
        """Write a whole column beside the store, then switch it in: rename the old one out, the new one in."""
        self._require_writable()
        if len(values) != self.n_images:
            raise StoreError(f"column {name} needs {self.n_images} values, got {len(values)}")
        staging = _beside(self.path, STAGING_SUFFIX)
        staged, retired = staging / name, staging / f"{name}.old"
        shutil.rmtree(staged, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
        staging.mkdir(exist_ok=True)
        dtype = "str" if values.dtype.kind in "UOT" else str(values.dtype)
        array = _create_column(zarr.open_group(str(staging), mode="a"), name, dtype, fill_value, self.n_images,
                               self.shard_size, values.shape[1] if values.ndim == 2 else 0, f"{name}_index")
        array[:] = values
        record = {**attrs, "store_id": self.store_id, "sha256": column_digest(values, full=True), "complete": True}
        array.attrs.put(_with_digests({}, record))  # one write: whole, and adoptable by this store only, from here on
        current = self.path / name
        if current.exists():
            os.rename(current, retired)
        os.rename(staged, current)
        shutil.rmtree(staging, ignore_errors=True)
        self.group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
        self.consolidate()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """This store's writer lock (see `store_lock`)."""
        with store_lock(self.path):
            yield


def _create_column(group: zarr.Group, name: str, dtype: str, fill: Any, n_images: int, shard_size: int,
                   width: int = 0, inner_dimension: str = "") -> zarr.Array:
    """A per-image array, one chunk per shard ([image] or [image, width])."""
    compressors = [] if dtype == "str" else [zarr.codecs.ZstdCodec(level=3)]
    kwargs = {"compressors": compressors} if compressors else {}
    shape, chunks, dims = (n_images,), (shard_size,), ["image"]
    if width:
        shape, chunks, dims = (n_images, width), (shard_size, width), ["image", inner_dimension]
    return group.create_array(name, shape=shape, chunks=chunks, dtype=str if dtype == "str" else dtype,
                              fill_value=fill, dimension_names=dims, **kwargs)


def _finish_interrupted_switches(path: Path) -> None:
    """Complete a column switch that a kill interrupted (the whole staged column in, leftovers out); runs
    whenever a process takes the store's lock, so no other writer is mid-switch. A staged column made for
    another store, or whose record was edited, is a leftover too: discarded, never adopted."""
    staging = _beside(path, STAGING_SUFFIX)
    if not staging.is_dir():
        return
    store_id = ((_read_json(path / "zarr.json") or {}).get("attributes", {}).get("memscore") or {}).get("store_id")
    for staged in staging.iterdir():
        if staged.is_dir() and not staged.name.endswith(".old") and not (path / staged.name).exists() \
                and _staged_for(staged, store_id):
            os.rename(staged, path / staged.name)
    shutil.rmtree(staging, ignore_errors=True)


def _staged_for(staged: Path, store_id: str | None) -> bool:
    """Whether a staged column is whole, was made for the store `store_id`, and carries its record unedited."""
    attributes = ((_read_json(staged / "zarr.json") or {}).get("attributes")) or {}
    return bool(store_id and attributes.get("complete") and attributes.get("store_id") == store_id
                and not _edited_records(attributes))
