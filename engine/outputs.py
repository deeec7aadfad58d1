"""Where memscore writes: it replaces or deletes only what it made, and it never leaves half a file.

One mechanism for every command:
- a file (export, JSON result, calibration, checkpoint) is written beside its path and renamed in; an existing
  file is refused unless the caller allows replacing it (`--overwrite`);
- a folder memscore makes carries its marker: a store is a Zarr group whose `zarr.json` has the `memscore`
  attribute and holds nothing but Zarr arrays; a report, demo, trained victim or training-state folder holds a `.memscore` file naming its kind.
  A folder is replaced or deleted only when it carries the marker of the kind asked for, holds nothing else of
  the user's (a store), and contains none of the run's inputs (dataset, victim, id files, weights).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import PathError, UsageError

MARKER = ".memscore"
"""The file inside a folder memscore made (`FOLDER_KINDS`) that says memscore made it, and for what."""
FOLDER_KINDS = ("report", "demo", "victim", "training")


def write_file(path: str | os.PathLike, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Call `write(temporary)` beside `path`, then rename the finished file into place. An existing `path` is
    refused unless `overwrite`; a folder is always refused."""
    path = Path(path)
    if path.is_dir():
        raise PathError(f"{path} is a folder; give the name of a file to write")
    if path.exists() and not overwrite:
        raise PathError(f"{path} already exists; pass --overwrite to replace it, or choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """UTF-8 text written as `write_file` writes files."""
    return write_file(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), overwrite=overwrite)


def write_json(path: str | os.PathLike, document: object, *, overwrite: bool = False, indent: int = 2) -> Path:
    """A JSON document written as `write_file` writes files."""
    return write_text(path, json.dumps(document, indent=indent) + "\n", overwrite=overwrite)


def is_store(path: Path) -> bool:
    """Whether `path` is a folder memscore made as a score store (its `zarr.json` has the `memscore` attribute)."""
    try:
        document = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and "memscore" in document.get("attributes", {})


def folder_kind(path: Path) -> str | None:
    """The kind of folder memscore made at `path` (`store`, or one of `FOLDER_KINDS`), or None for anything else."""
    if is_store(path):
        return "store"
    try:
        kind = json.loads((path / MARKER).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if kind in FOLDER_KINDS else None


def require_replaceable(path: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike | None] = ()) -> None:
    """Refuse, naming the reason, to replace or delete the folder `path` unless memscore made it as a `kind`,
    a store holds only Zarr arrays, and none of `inputs` lies inside it."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise PathError(f"{path} is a file, not a memscore {kind}; memscore replaces only what it made: "
                        "choose another path")
    found = folder_kind(path)
    if found != kind:
        what = f"a memscore {found}" if found else "not made by memscore"
        raise PathError(f"{path} is {what}, not a memscore {kind}: memscore replaces only a {kind} it made. "
                        "Choose another path, or move it away yourself")
    if kind == "store":
        foreign = [entry.name for entry in path.iterdir()
                   if entry.name != "zarr.json" and not (entry.is_dir() and (entry / "zarr.json").is_file())]
        if foreign:
            raise PathError(f"{path} holds files memscore did not write ({', '.join(sorted(foreign)[:3])}); "
                            "it will not replace the store: move them away, or choose another path")
    resolved = path.resolve()
    for given in inputs:
        if given and (resolved == Path(given).resolve() or resolved in Path(given).resolve().parents):
            raise PathError(f"{path} contains {given}, an input of this run; memscore will not replace it")


def remove_folder(path: str | os.PathLike, kind: str) -> None:
    """Delete a folder memscore made as a `kind` (refused otherwise, see `require_replaceable`)."""
    path = Path(path)
    if path.exists():
        require_replaceable(path, kind)
        shutil.rmtree(path)


def build_folder(path: str | os.PathLike, kind: str, build: Callable[[Path], None], *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Make the folder `path` by `build(folder)` on a marked folder beside it, then switch it in. An existing
    empty folder is filled; an existing `kind` folder is replaced only with `overwrite` (the old one stays until
    the new one is whole); anything else is refused."""
    path = Path(path)
    if _empty_folder(path):
        path.rmdir()
    elif path.exists():
        require_replaceable(path, kind, inputs)
        if not overwrite:
            raise PathError(f"{path} already holds a memscore {kind}; pass --overwrite to replace it")
    building, retired = path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")
    for leftover in (building, retired):
        remove_folder(leftover, kind)
    building.mkdir(parents=True)
    mark_folder(building, kind)
    build(building)
    if path.exists():
        os.rename(path, retired)
    os.rename(building, path)
    if retired.exists():
        remove_folder(retired, kind)
    return path


def claim_folder(path: str | os.PathLike, kind: str) -> Path:
    """A folder memscore fills in place (the demo's): created and marked when absent or empty, reused when it is
    already a `kind` folder, refused when it holds anything else."""
    path = Path(path)
    if path.exists() and not _empty_folder(path):
        require_replaceable(path, kind)
        return path
    path.mkdir(parents=True, exist_ok=True)
    mark_folder(path, kind)
    return path


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def mark_folder(path: Path, kind: str) -> None:
    """Write the marker that lets memscore replace this folder later (and nothing else)."""
    if kind not in FOLDER_KINDS:
        raise UsageError(f"folder kind must be one of {FOLDER_KINDS}, got {kind!r}")
    (path / MARKER).write_text(json.dumps({"made_by": "memscore", "kind": kind}) + "\n", encoding="utf-8")
