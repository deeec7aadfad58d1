"""Shadow victims: K models of one kind (`memscore.recipes.TRAINERS`: pix2pix, diffusion) trained like the victim
on seeded random halves of a population, for LiRA and RMIA (`memscore.likelihood_ratio`; on a store,
`memscore.shadow_scores`).

A folder of shadows holds `shadows.json` (the manifest: kind, recipe, K, seed, population digest, and per shadow
its member ids file, checkpoint and done flag) and one `shadow_NN/` folder per shadow. Shadows are
independent tasks run through `memscore.schedule.execute`, in this process or on Dask workers. A shadow's
checkpoint (the kind's `output_name`: a file, or a folder for diffusion) is written whole or not at all by its
trainer, and the manifest (replaced atomically, only ever by the process that runs `train_shadows`) then marks it
done: a rerun after an interruption trains only the shadows not yet done (an interrupted diffusion shadow resumes
from its training state), and one whose checkpoint was written but not yet marked is adopted, not retrained. A
rerun with another kind, recipe, K, seed, population or direction is refused naming what changed. While a shadow
trains, its task writes `shadow_NN/progress.json` after its epochs, and `train_shadows` shows those files as one
bar per shadow (`memscore.progress_files`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import ids_digest, open_dataset, read_id_list
from .devices import use_threads
from .errors import MemscoreError, UsageError
from .outputs import remove_folder, write_json, write_text
from .progress_files import EpochProgressFile, ProgressWatcher
from .recipes import TRAINERS, TrainerKind
from .schedule import ClusterPlan, execute
from .settings import Rule
from .train_diffusion import state_folder
from .store import store_lock

MANIFEST = "shadows.json"
MANIFEST_FORMAT = 2
"""2 records the kind; a format-1 manifest (before kinds) is read as kind pix2pix."""
EVEN_SHADOWS = Rule(lambda k: isinstance(k, int) and k >= 2 and k % 2 == 0, "an even number of shadows, at least 2")
MANIFEST_KEYS = ("format", "kind", "recipe", "k", "seed", "direction", "population", "data", "shadows")
SHADOW_KEYS = {"index", "members", "checkpoint", "done"}
MEMBERS = "members.txt"
PROGRESS = "progress.json"


class ShadowError(MemscoreError):
    """A shadow folder that cannot be used or resumed as asked; the message says what changed or what to do."""


@dataclass(frozen=True)
class Shadow:
    """One trained shadow: its index, kind, checkpoint (file or folder) and the ids it was trained on."""

    index: int
    kind: str
    checkpoint: Path
    members: frozenset[str]

    @property
    def victim_spec(self) -> str:
        """How `memscore.victims.open_victim` opens it (the checkpoint carries its architecture)."""
        return TRAINERS[self.kind].victim_spec(self.checkpoint)


@dataclass(frozen=True)
class ShadowSet:
    """The finished shadows of a folder, in index order, and how they were made."""

    path: Path
    kind: str
    recipe: Any
    """An instance of `TRAINERS[kind].recipe`."""
    seed: int
    k: int
    population_sha256: str
    shadows: tuple[Shadow, ...]


@dataclass(frozen=True)
class ShadowJob:
    """Everything a process needs to train one shadow: plain data, so it runs here or on a Dask worker."""

    index: int
    kind: str
    data: str
    direction: str
    members_file: str
    checkpoint: str
    progress_file: str
    recipe: Any
    seed: int
    device: str
    threads: int


def membership_plan(population: Sequence[str] | set[str], k: int, seed: int) -> tuple[list[str], np.ndarray]:
    """(sorted ids, bool [n_ids, k]: True where shadow k trains on the id), reproducible from (ids, k, seed).

    Shadows come in complementary pairs: shadow 2p trains on a random half of the population (the first
    n // 2 of a seeded permutation) and shadow 2p + 1 on the other half, so every id is IN for exactly k / 2
    shadows and OUT for k / 2 (what online LiRA and RMIA need); K must therefore be even.
    """
    if not EVEN_SHADOWS.accepts(k):
        raise UsageError(f"K must be {EVEN_SHADOWS.text} (complementary halves: every id is in exactly K/2 of "
                         f"them), got {k}")
    ids = sorted(set(population))
    if len(ids) < 2:
        raise UsageError(f"a population of {len(ids)} ids cannot be split into halves; give at least 2")
    plan = np.zeros((len(ids), k), dtype=bool)
    for pair in range(k // 2):
        half = np.random.default_rng([seed, pair]).permutation(len(ids))[: len(ids) // 2]
        plan[half, 2 * pair] = True
        plan[:, 2 * pair + 1] = ~plan[:, 2 * pair]
    return ids, plan


def shadow_seed(seed: int, index: int) -> int:
    """The training seed of shadow `index` (initialisation, batch order, jitter): distinct per shadow."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint32)[0])


def train_shadows(data: str | os.PathLike, population_file: str | os.PathLike, k: int, out_dir: str | os.PathLike,
                  recipe: Any, *, kind: str = "pix2pix", seed: int = 0, plan: ClusterPlan = ClusterPlan(),
                  direction: str = "AtoB", device: str = "auto", fresh: bool = False,
                  progress: bool = True) -> ShadowSet:
    """Train the `kind` shadows of `out_dir` that are not done yet (all K on the first run) with `recipe` (an
    instance of `TRAINERS[kind].recipe`); return the finished set.

    Refuses, naming what changed, a folder made with another kind, recipe, K, seed, population or direction,
    unless `fresh` (which deletes its shadows and starts over), and a folder another run is training in.
    Shadows that fail on every try of a cluster are named in a ShadowError after the others finished;
    rerunning trains only those. `progress`: one bar per shadow in training on stderr, and one of the finished.
    """
    trainer = _trainer(kind)
    if not isinstance(recipe, trainer.recipe):
        raise UsageError(f"{kind} shadows take a {trainer.recipe.__name__}, got a {type(recipe).__name__}")
    out = Path(out_dir)
    population = read_id_list(population_file).ids
    ids, membership = membership_plan(population, k, seed)
    missing = sorted(population - set(open_dataset(str(data), direction=direction).ids()))
    if missing:
        raise ShadowError(f"{population_file}: {len(missing)} population ids are not in the dataset {data}, e.g. "
                          f"{', '.join(missing[:5])}; give a population of ids the dataset holds")
    wanted = {"format": MANIFEST_FORMAT, "kind": kind, "recipe": dataclasses.asdict(recipe), "k": k, "seed": seed,
              "direction": direction,
              "population": {"file": str(population_file), "n": len(ids), "sha256": ids_digest(ids)}}
    with store_lock(out):  # one training run per folder: a second one is refused naming the first
        manifest = _prepare(out, wanted, str(data), fresh)
        jobs = []
        for entry in manifest["shadows"]:
            members_path, checkpoint = out / entry["members"], out / entry["checkpoint"]
            planned = "".join(f"{i}\n" for i, keep in zip(ids, membership[:, entry["index"]]) if keep)
            if not members_path.is_file():
                members_path.parent.mkdir(parents=True, exist_ok=True)
                write_text(members_path, planned, overwrite=True)
            elif members_path.read_text(encoding="utf-8") != planned:
                raise ShadowError(f"{members_path} is not the member list shadow {entry['index']} gets from this "
                                  "seed and population (it was edited); restore it, or start over with --fresh")
            if not entry["done"] and checkpoint.exists():  # written whole, killed before being marked done
                entry.update(done=True, seconds=None)
                _write_manifest(out, manifest)
            if not entry["done"]:
                progress_file = checkpoint.with_name(PROGRESS)
                progress_file.unlink(missing_ok=True)  # an interrupted run's: not this run's progress
                jobs.append(ShadowJob(entry["index"], kind, str(Path(data).resolve()), direction,
                                      str(members_path.resolve()), str(checkpoint.resolve()),
                                      str(progress_file.resolve()), recipe, shadow_seed(seed, entry["index"]), device,
                                      plan.threads_per_worker()))
        failures = {}
        watcher = ProgressWatcher({f"shadow {job.index:02d}": Path(job.progress_file) for job in jobs}, total=k,
                                  done=k - len(jobs), desc="shadows", unit="shadow", show=progress)
        with watcher:
            for index, outcome in execute(train_shadow, jobs, plan, failed=_failure, name="shadow"):
                if isinstance(outcome, str):
                    failures[index] = outcome
                    continue
                manifest["shadows"][index].update(done=True, seconds=round(outcome, 1))
                _write_manifest(out, manifest)
                watcher.finished(f"shadows: shadow {index} done in {outcome:.0f} s")
        if failures:
            listed = "; ".join(f"shadow {i}: {why}" for i, why in sorted(failures.items()))
            raise ShadowError(f"{len(failures)} of {k} shadows failed ({listed}); rerun the same command to train only "
                              "those")
    return read_shadow_set(out)


def train_shadow(job: ShadowJob) -> tuple[int, float]:
    """Train one shadow into place, writing its progress file as it goes: (index, seconds). Runs on any worker.
    The trainer writes the checkpoint whole or not at all (a file renamed in, a folder switched in)."""
    if job.threads:
        use_threads(job.threads)
    started = time.perf_counter()
    report = EpochProgressFile(job.progress_file)
    report(0, job.recipe.epochs)
    TRAINERS[job.kind].train(open_dataset(job.data, direction=job.direction), Path(job.checkpoint), job.recipe,
                             members=read_id_list(job.members_file).ids, seed=job.seed, device=job.device,
                             progress=False, on_epoch=report,
                             overwrite=True)  # the state an interrupted try left beside it is this folder's own
    return job.index, time.perf_counter() - started


def _failure(job: ShadowJob, error: BaseException) -> tuple[int, str]:
    return job.index, f"{type(error).__name__}: {error}"


def read_shadow_set(out_dir: str | os.PathLike, *, partial: bool = False) -> ShadowSet:
    """The shadows of `out_dir`; refused while some are not done, unless `partial` (then only the done ones)."""
    out = Path(out_dir)
    manifest = _read_manifest(out)
    if manifest is None:
        raise ShadowError(f"{out} has no {MANIFEST}: train shadows there first (`memscore shadows train`)")
    entries = manifest["shadows"]
    unfinished = [e["index"] for e in entries if not e["done"]]
    if unfinished and not partial:
        raise ShadowError(f"{out}: shadows {', '.join(map(str, unfinished))} of {manifest['k']} are not trained yet; "
                          "rerun `memscore shadows train` with the same options to finish them")
    shadows = []
    for entry in entries:
        if not entry["done"]:
            continue
        checkpoint = out / entry["checkpoint"]
        if not checkpoint.exists():
            raise ShadowError(f"{out}: shadow {entry['index']} is marked done but {checkpoint} is missing; rerun "
                              "`memscore shadows train --fresh` (or restore it)")
        shadows.append(Shadow(entry["index"], manifest["kind"], checkpoint, read_id_list(out / entry["members"]).ids))
    return ShadowSet(out, manifest["kind"], TRAINERS[manifest["kind"]].recipe(**manifest["recipe"]), manifest["seed"],
                     manifest["k"], manifest["population"]["sha256"], tuple(shadows))


def in_shadow_matrix(ids: Sequence[str], shadow_set: ShadowSet) -> np.ndarray:
    """int8 [len(ids), K]: 1 where the shadow was trained on the id, 0 where not (ids outside the population
    are 0 for every shadow: never trained on, usable as OUT by every shadow). Set lookups, not a sorted search:
    the scorer calls it for every batch, so its cost follows the batch, not the population."""
    matrix = np.zeros((len(ids), len(shadow_set.shadows)), dtype=np.int8)
    for column, shadow in enumerate(shadow_set.shadows):
        matrix[:, column] = [image_id in shadow.members for image_id in ids]
    return matrix


# --- the manifest ------------------------------------------------------------------------------------------

def _trainer(kind: str) -> TrainerKind:
    if kind not in TRAINERS:
        raise UsageError(f"shadow kind must be one of {', '.join(TRAINERS)}, got {kind!r}")
    return TRAINERS[kind]


def _prepare(out: Path, wanted: dict[str, Any], data: str, fresh: bool) -> dict[str, Any]:
    """The manifest to resume: the existing one when it matches `wanted`, else a new one (only if fresh or none)."""
    existing = _read_manifest(out)
    if existing is not None and not fresh:
        changed = [f"{key}: {_describe(existing.get(key))} -> {_describe(value)}"
                   for key, value in wanted.items() if existing.get(key) != value and key != "population"]
        if existing["population"]["sha256"] != wanted["population"]["sha256"]:
            before, after = existing["population"], wanted["population"]
            changed.append(f"population: {before['n']} ids ({before['sha256'][:12]}) -> {after['n']} ids "
                           f"({after['sha256'][:12]})")
        if changed:
            raise ShadowError(f"{out} holds shadows made differently ({'; '.join(changed)}); use another folder, or "
                              "start over with --fresh (deletes its shadows)")
        return existing
    if fresh and out.exists():
        for entry in (existing or {}).get("shadows", []):
            _delete_shadow(out, entry)
    manifest = {**wanted, "data": data, "shadows": [
        {**_entry_paths(i, wanted["kind"]), "done": False, "seconds": None} for i in range(wanted["k"])]}
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, manifest)
    return manifest


def _delete_shadow(out: Path, entry: dict[str, Any]) -> None:
    """Delete what training a shadow wrote: its checkpoint (a file or a victim folder), the training state beside
    it, its progress file and its member list."""
    checkpoint = out / entry["checkpoint"]
    if checkpoint.is_dir():
        remove_folder(checkpoint, "victim")
    else:
        checkpoint.unlink(missing_ok=True)
    remove_folder(state_folder(checkpoint), "training")
    checkpoint.with_name(PROGRESS).unlink(missing_ok=True)
    (out / entry["members"]).unlink(missing_ok=True)


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
    return str(value)


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise ShadowError(f"{path} is not valid JSON ({error}); start over with --fresh") from error
    if isinstance(manifest, dict) and manifest.get("format") == 1:  # before kinds, every shadow was pix2pix
        manifest = {**manifest, "format": MANIFEST_FORMAT, "kind": "pix2pix"}
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise ShadowError(f"{path} has manifest format {found}, this memscore reads {MANIFEST_FORMAT}; "
                          "start over with --fresh")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    entries = manifest.get("shadows")
    if missing or not isinstance(entries, list) or not all(isinstance(e, dict) and SHADOW_KEYS <= set(e)
                                                            for e in entries):
        raise ShadowError(f"{path} is incomplete (missing {', '.join(missing) or 'fields of its shadows'}); "
                          "start over with --fresh")
    if manifest["kind"] not in TRAINERS:
        raise ShadowError(f"{path} holds shadows of kind {manifest['kind']!r}, which this memscore does not train "
                          f"({', '.join(TRAINERS)}); start over with --fresh")
    for position, entry in enumerate(entries):  # paths come from the file: only the ones memscore writes are used
        if {key: entry[key] for key in ("index", "members", "checkpoint")} != _entry_paths(position, manifest["kind"]):
            raise ShadowError(f"{path}: shadow {position} names other files than memscore gives it ({entry['members']}, "
                              f"{entry['checkpoint']}); restore the manifest, or start over with --fresh")
    return manifest


def _entry_paths(index: int, kind: str) -> dict[str, Any]:
    """Where shadow `index` of a `kind` folder keeps its member list and its result, relative to the folder."""
    return {"index": index, "members": f"shadow_{index:02d}/{MEMBERS}",
            "checkpoint": f"shadow_{index:02d}/{TRAINERS[kind].output_name}"}


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    write_json(out / MANIFEST, manifest, overwrite=True, indent=1)


