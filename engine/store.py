"""The Zarr v3 score store: created once at full size, written shard by shard, read by anyone.

Layout (one group; `xarray.open_zarr` opens it as a Dataset):
- along `image`: `id`, `lrec`, `ldiff`, `lmem` (float32, NaN where not scored), `status`
  (`ok` / `failed`, empty while pending), `reason`, `member` (1, 0, or -1 unknown), `out_height`,
  `out_width` (the victim output resolution Lrec was measured at);
- along `shard`: `shard_done`, written last, after the shard's data (one chunk per shard);
- attributes: `memscore` (configuration, versions, sizes), `alpha` (value and how it was chosen),
  `history` (earlier alpha choices).
A shard is exactly one chunk of every `image` array, so shards write disjoint, chunk-aligned
regions: the only concurrent Zarr writes that are safe.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import socket
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr

from .config import ScoreConfig

FORMAT_VERSION = 1
FLOAT_SCORES = ("lrec", "ldiff", "lmem")
STRING_FIELDS = ("id", "status", "reason")
INT_FIELDS = {"member": ("int8", -1), "out_height": ("int32", 0), "out_width": ("int32", 0)}
DERIVED_COLUMNS = ("predicted_member",)
LOCK_SUFFIX = ".lock"  # beside the store, not inside: zarr warns about foreign files


class StoreError(RuntimeError):
    """A store that cannot be used as asked (config mismatch, locked, not a memscore store)."""


@dataclass
class ShardScores:
    """What one shard writes: equal-length columns, one row per image of the shard."""

    id: list[str]
    lrec: np.ndarray
    ldiff: np.ndarray
    status: list[str]
    reason: list[str]
    member: np.ndarray
    out_height: np.ndarray
    out_width: np.ndarray


def versions() -> dict[str, str]:
    import importlib.metadata as md
    found = {}
    for name in ("memscore", "torch", "torchvision", "numpy", "zarr"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "not installed"
    return found


class ScoreStore:
    """Handle on a score store at `path` (a local folder)."""

    def __init__(self, path: str | os.PathLike, group: zarr.Group) -> None:
        self.path = Path(path)
        self.group = group
        meta = group.attrs.get("memscore")
        if not meta:
            raise StoreError(f"{self.path} is a Zarr group but not a memscore store (no 'memscore' attribute)")
        self.meta: dict[str, Any] = dict(meta)

    # --- creation and opening ------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, n_images: int, shard_size: int, config: ScoreConfig,
               *, overwrite: bool = False) -> "ScoreStore":
        path = Path(path)
        if n_images < 1:
            raise StoreError("nothing to score: the dataset is empty")
        if shard_size < 1:
            raise StoreError(f"shard size must be at least 1 image, got {shard_size}")
        if path.exists():
            if not overwrite:
                raise StoreError(f"{path} already exists (rerun to resume, or pass --overwrite)")
            shutil.rmtree(path)
        group = zarr.open_group(str(path), mode="w")
        chunks = (shard_size,)
        compressors = [zarr.codecs.ZstdCodec(level=3)]
        for name in FLOAT_SCORES:
            group.create_array(name, shape=(n_images,), chunks=chunks, dtype="float32", fill_value=np.nan,
                               dimension_names=["image"], compressors=compressors)
        for name in STRING_FIELDS:
            group.create_array(name, shape=(n_images,), chunks=chunks, dtype=str, fill_value="",
                               dimension_names=["image"])
        for name, (dtype, fill) in INT_FIELDS.items():
            group.create_array(name, shape=(n_images,), chunks=chunks, dtype=dtype, fill_value=fill,
                               dimension_names=["image"], compressors=compressors)
        n_shards = -(-n_images // shard_size)
        group.create_array("shard_done", shape=(n_shards,), chunks=(1,), dtype=bool, fill_value=False,
                           dimension_names=["shard"])
        group.attrs["memscore"] = {
            "format_version": FORMAT_VERSION,
            "config": config.to_dict(),
            "n_images": n_images,
            "shard_size": shard_size,
            "n_shards": n_shards,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        }
        return cls(path, group)

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r+") -> "ScoreStore":
        path = Path(path)
        if not path.exists():
            raise StoreError(f"no store at {path}")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except Exception as error:
            raise StoreError(f"{path} is not a readable Zarr store: {error}") from error
        return cls(path, group)

    # --- shape --------------------------------------------------------------------------------

    @property
    def config(self) -> ScoreConfig:
        return ScoreConfig.from_dict(self.meta["config"])

    @property
    def n_images(self) -> int:
        return int(self.meta["n_images"])

    @property
    def shard_size(self) -> int:
        return int(self.meta["shard_size"])

    @property
    def n_shards(self) -> int:
        return int(self.meta["n_shards"])

    def shard_range(self, index: int) -> tuple[int, int]:
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.n_images)

    def done_shards(self) -> np.ndarray:
        return np.asarray(self.group["shard_done"][:], dtype=bool)

    def is_complete(self) -> bool:
        return bool(self.done_shards().all()) and "alpha" in self.group.attrs

    # --- writing ------------------------------------------------------------------------------

    def write_shard(self, index: int, scores: ShardScores) -> None:
        """Write one shard's rows, then mark it done (the mark is the last write)."""
        start, stop = self.shard_range(index)
        if len(scores.id) != stop - start:
            raise StoreError(f"shard {index} has {len(scores.id)} rows, expected {stop - start}")
        region = slice(start, stop)
        self.group["lrec"][region] = np.asarray(scores.lrec, dtype=np.float32)
        self.group["ldiff"][region] = np.asarray(scores.ldiff, dtype=np.float32)
        for name in STRING_FIELDS:
            self.group[name][region] = np.asarray(getattr(scores, name), dtype=str)
        for name, (dtype, _) in INT_FIELDS.items():
            self.group[name][region] = np.asarray(getattr(scores, name), dtype=dtype)
        self.group["shard_done"][index] = True

    def write_lmem(self, lmem: np.ndarray, alpha: dict[str, Any]) -> None:
        """Write Lmem for every row and record how alpha was chosen (older choices go to `history`)."""
        old = self.group.attrs.get("alpha")
        if old is not None:
            history = list(self.group.attrs.get("history", []))
            history.append(old)
            self.group.attrs["history"] = history
        self.group["lmem"][:] = np.asarray(lmem, dtype=np.float32)
        self.group.attrs["alpha"] = alpha
        self.consolidate()

    def consolidate(self) -> None:
        """Refresh the consolidated metadata xarray reads (a zarr-python extension to v3)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(str(self.path))

    def write_column(self, name: str, values: np.ndarray, fill_value: Any, attrs: dict[str, Any]) -> None:
        """Add or replace a derived per-image column (e.g. a member decision) and record how it was made."""
        values = np.asarray(values)
        if name in self.group:
            del self.group[name]
        array = self.group.create_array(name, shape=(self.n_images,), chunks=(self.shard_size,), dtype=values.dtype,
                                        fill_value=fill_value, dimension_names=["image"])
        array[:] = values
        array.attrs.update(attrs)
        self.consolidate()

    # --- reading ------------------------------------------------------------------------------

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.group[name][:])

    def to_frame(self):
        """All per-image columns as a pandas DataFrame."""
        import pandas as pd
        names = ["id", *FLOAT_SCORES, "status", "reason", "member", "out_height", "out_width"]
        names += [name for name in DERIVED_COLUMNS if name in self.group]
        return pd.DataFrame({name: self.column(name) for name in names})

    def summary(self) -> dict[str, int]:
        status = self.column("status")
        return {"n_images": self.n_images, "ok": int((status == "ok").sum()),
                "failed": int((status == "failed").sum()), "pending": int((status == "").sum())}

    # --- exclusive access ---------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time: a second run on the same store is refused with who holds it."""
        lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        owner = {"host": socket.gethostname(), "pid": os.getpid(),
                 "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        while True:
            try:
                fd = os.open(lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                holder = _read_lock(lock_path)
                if holder and holder.get("host") == owner["host"] and not _alive(int(holder.get("pid", -1))):
                    lock_path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise StoreError(f"{self.path} is being written by another run ({holder}); "
                                 f"wait for it, or remove {lock_path} if that run is dead") from None
        with os.fdopen(fd, "w") as handle:
            json.dump(owner, handle)
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def _read_lock(path: Path) -> dict[str, Any] | None:
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
