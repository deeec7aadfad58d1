"""Shadow victims: K pix2pix models trained like the victim on seeded random halves of a population, for
LiRA and RMIA (`memscore.likelihood_ratio`), and the store-level rescoring that applies those to a store.

A folder of shadows holds `shadows.json` (the manifest: recipe, K, seed, population digest, and per shadow
its member ids file, checkpoint and done flag) and one `shadow_NN/` folder per shadow. Shadows are
independent tasks run through `memscore.schedule.execute`, in this process or on Dask workers. A shadow's
checkpoint is written under a temporary name and renamed when whole, and the manifest (replaced atomically,
only ever by the process that runs `train_shadows`) then marks it done: a rerun after an interruption trains
only the shadows not yet done, and one whose checkpoint was renamed in but not yet marked is adopted, not
retrained. A rerun with another recipe, K, seed, population or direction is refused naming what changed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .attack import SCORE_MARK
from .data import match_ids, open_dataset, read_id_list
from .devices import resolve_device, use_threads
from .errors import MemscoreError, UsageError
from .likelihood_ratio import DEFAULT_TRANSFORM, PRIOR_DOF, Transform, lira, rmia
from .schedule import ClusterPlan, execute
from .store import ScoreStore, StoreError, store_lock
from .train import VictimArch, train_pix2pix

MANIFEST = "shadows.json"
MANIFEST_FORMAT = 1
MANIFEST_KEYS = ("format", "recipe", "k", "seed", "direction", "population", "data", "shadows")
SHADOW_KEYS = {"index", "members", "checkpoint", "done"}
CHECKPOINT = "generator.pth"
MEMBERS = "members.txt"
PARTIAL_SUFFIX = ".partial"


class ShadowError(MemscoreError):
    """A shadow folder that cannot be used or resumed as asked; the message says what changed or what to do."""


@dataclass(frozen=True)
class ShadowRecipe:
    """How every shadow is trained: the `train-victim` options, which should match the victim's."""

    netG: str = "unet_128"
    size: int = 128
    ngf: int = 16
    norm: str = "instance"
    use_dropout: bool = False
    use_jitter: bool = True
    epochs: int = 20
    batch_size: int = 4

    def arch(self) -> VictimArch:
        """The generator architecture `memscore.train.train_pix2pix` takes."""
        return VictimArch(netG=self.netG, ngf=self.ngf, norm=self.norm, use_dropout=self.use_dropout, size=self.size)


@dataclass(frozen=True)
class Shadow:
    """One trained shadow: its index, checkpoint and the ids it was trained on."""

    index: int
    checkpoint: Path
    members: frozenset[str]

    @property
    def victim_spec(self) -> str:
        """How `memscore.victims.open_victim` opens it (the checkpoint carries its architecture)."""
        return f"pix2pix:{self.checkpoint}"


@dataclass(frozen=True)
class ShadowSet:
    """The finished shadows of a folder, in index order, and how they were made."""

    path: Path
    recipe: ShadowRecipe
    seed: int
    k: int
    population_sha256: str
    shadows: tuple[Shadow, ...]


@dataclass(frozen=True)
class ShadowJob:
    """Everything a process needs to train one shadow: plain data, so it runs here or on a Dask worker."""

    index: int
    data: str
    direction: str
    members_file: str
    checkpoint: str
    recipe: ShadowRecipe
    seed: int
    device: str
    threads: int


def population_digest(ids: Sequence[str] | set[str]) -> str:
    """sha256 of the population's ids, sorted: the same set of ids gives the same digest in any order."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


def membership_plan(population: Sequence[str] | set[str], k: int, seed: int) -> tuple[list[str], np.ndarray]:
    """(sorted ids, bool [n_ids, k]: True where shadow k trains on the id), reproducible from (ids, k, seed).

    Shadows come in complementary pairs: shadow 2p trains on a random half of the population (the first
    n // 2 of a seeded permutation) and shadow 2p + 1 on the other half, so every id is IN for exactly k / 2
    shadows and OUT for k / 2 (what online LiRA and RMIA need); K must therefore be even.
    """
    if k < 2 or k % 2:
        raise UsageError(f"K must be an even number of shadows, at least 2 (complementary halves: every id is in "
                         f"exactly K/2 of them), got {k}")
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
                  recipe: ShadowRecipe, *, seed: int = 0, plan: ClusterPlan = ClusterPlan(), direction: str = "AtoB",
                  device: str = "auto", fresh: bool = False) -> ShadowSet:
    """Train the shadows of `out_dir` that are not done yet (all K on the first run); return the finished set.

    Refuses, naming what changed, a folder made with another recipe, K, seed, population or direction,
    unless `fresh` (which deletes its shadows and starts over), and a folder another run is training in.
    Shadows that fail on every try of a cluster are named in a ShadowError after the others finished;
    rerunning trains only those.
    """
    out = Path(out_dir)
    population = read_id_list(population_file).ids
    ids, membership = membership_plan(population, k, seed)
    missing = sorted(population - set(open_dataset(str(data), direction=direction).ids()))
    if missing:
        raise ShadowError(f"{population_file}: {len(missing)} population ids are not in the dataset {data}, e.g. "
                          f"{', '.join(missing[:5])}; give a population of ids the dataset holds")
    wanted = {"format": MANIFEST_FORMAT, "recipe": dataclasses.asdict(recipe), "k": k, "seed": seed,
              "direction": direction,
              "population": {"file": str(population_file), "n": len(ids), "sha256": population_digest(ids)}}
    with store_lock(out):  # one training run per folder: a second one is refused naming the first
        manifest = _prepare(out, wanted, str(data), fresh)
        jobs = []
        for entry in manifest["shadows"]:
            members_path, checkpoint = out / entry["members"], out / entry["checkpoint"]
            planned = "".join(f"{i}\n" for i, keep in zip(ids, membership[:, entry["index"]]) if keep)
            if not members_path.is_file():
                members_path.parent.mkdir(parents=True, exist_ok=True)
                _write_text_atomically(members_path, planned)
            elif members_path.read_text(encoding="utf-8") != planned:
                raise ShadowError(f"{members_path} is not the member list shadow {entry['index']} gets from this "
                                  "seed and population (it was edited); restore it, or start over with --fresh")
            if not entry["done"] and checkpoint.is_file():  # renamed in, killed before being marked done
                entry.update(done=True, seconds=None)
                _write_manifest(out, manifest)
            if not entry["done"]:
                jobs.append(ShadowJob(entry["index"], str(Path(data).resolve()), direction, str(members_path.resolve()),
                                      str(checkpoint.resolve()), recipe, shadow_seed(seed, entry["index"]), device,
                                      plan.threads_per_worker()))
        failures = {}
        for index, outcome in execute(train_shadow, jobs, plan, failed=_failure, name="shadow"):
            if isinstance(outcome, str):
                failures[index] = outcome
                continue
            manifest["shadows"][index].update(done=True, seconds=round(outcome, 1))
            _write_manifest(out, manifest)
            print(f"shadows: shadow {index} done in {outcome:.0f} s", file=sys.stderr)
        if failures:
            listed = "; ".join(f"shadow {i}: {why}" for i, why in sorted(failures.items()))
            raise ShadowError(f"{len(failures)} of {k} shadows failed ({listed}); rerun the same command to train only "
                              "those")
    return read_shadow_set(out)


def train_shadow(job: ShadowJob) -> tuple[int, float]:
    """Train one shadow to a temporary file and rename it into place: (index, seconds). Runs on any worker."""
    if job.threads:
        use_threads(job.threads)
    started = time.perf_counter()
    checkpoint = Path(job.checkpoint)
    partial = checkpoint.with_name(checkpoint.name + PARTIAL_SUFFIX)
    recipe = job.recipe
    train_pix2pix(open_dataset(job.data, direction=job.direction), partial, members=read_id_list(job.members_file).ids,
                  arch=recipe.arch(), epochs=recipe.epochs, batch_size=recipe.batch_size, seed=job.seed,
                  device=str(resolve_device(job.device)), use_jitter=recipe.use_jitter, progress=False,
                  overwrite=True)  # the partial file of an interrupted try is this folder's own
    os.replace(partial, checkpoint)
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
        if not checkpoint.is_file():
            raise ShadowError(f"{out}: shadow {entry['index']} is marked done but {checkpoint} is missing; rerun "
                              "`memscore shadows train --fresh` (or restore the file)")
        shadows.append(Shadow(entry["index"], checkpoint, read_id_list(out / entry["members"]).ids))
    return ShadowSet(out, ShadowRecipe(**manifest["recipe"]), manifest["seed"], manifest["k"],
                     manifest["population"]["sha256"], tuple(shadows))


def in_shadow_matrix(ids: Sequence[str], shadow_set: ShadowSet) -> np.ndarray:
    """int8 [len(ids), K]: 1 where the shadow was trained on the id, 0 where not (ids outside the population
    are 0 for every shadow: never trained on, usable as OUT by every shadow)."""
    matrix = np.zeros((len(ids), len(shadow_set.shadows)), dtype=np.int8)
    ids = np.asarray(ids, dtype=str)
    for column, shadow in enumerate(shadow_set.shadows):
        matrix[:, column] = np.isin(ids, sorted(shadow.members))
    return matrix


# --- scores from shadows, on a store ----------------------------------------------------------------------

def score_column_name(method: str, online: bool = True, fixed_variance: bool = False) -> str:
    """The store column a shadow-calibrated score is written to: lira, lira_fixed, lira_offline,
    lira_offline_fixed, rmia, rmia_offline."""
    if method == "lira":
        return "lira" + ("" if online else "_offline") + ("_fixed" if fixed_variance else "")
    if method == "rmia":
        return "rmia" + ("" if online else "_offline")
    raise UsageError(f"method must be lira or rmia, got {method!r}")


def rescore_with_shadows(store_path: str | os.PathLike, method: str = "lira", *, online: bool = True,
                         fixed_variance: bool = False, transform: Transform = DEFAULT_TRANSFORM,
                         prior_dof: float = PRIOR_DOF, temperature: float | None = None,
                         offline_a: float | None = None, gamma: float = 1.0,
                         reference: str | os.PathLike | None = None, column: str | None = None,
                         strict: bool = False) -> dict[str, Any]:
    """Write a LiRA or RMIA score column (lower = member) from the store's `lrec`, `lrec_shadow` [n, K] and
    `in_shadow` [n, K]; return the record kept in the column's attributes.

    `transform`, `fixed_variance`, `prior_dof`: LiRA's (`memscore.likelihood_ratio.lira`); `temperature`,
    `offline_a` (None: chosen from the shadows), `gamma`, `reference` (a file of ids, the population samples z;
    default every scored image; ids the store lacks are ignored and counted in the record's `reference_ids`, or
    refused when `strict`): RMIA's (`memscore.likelihood_ratio.rmia`). `column`: default `score_column_name`.
    """
    default_name = score_column_name(method, online, fixed_variance)  # refuses an unknown method
    name = column or default_name
    store = ScoreStore.open(store_path, mode="r+")
    with store.lock():
        store.require_readable()  # refuses an unfinished or damaged store, saying how to mend it
        lrec, lrec_shadow, in_shadow = (store.column(c) for c in ("lrec", "lrec_shadow", "in_shadow"))
        if lrec_shadow.ndim != 2 or lrec_shadow.shape != in_shadow.shape or lrec_shadow.shape[0] != lrec.shape[0]:
            raise StoreError(f"{store_path}: lrec_shadow {lrec_shadow.shape} and in_shadow {in_shadow.shape} must both "
                             f"be [{lrec.shape[0]}, K]; rescore the store with `memscore score --shadows DIR`")
        samples = None
        if method == "lira":
            found = lira(lrec, lrec_shadow, in_shadow, online=online, fixed_variance=fixed_variance,
                         transform=transform, prior_dof=prior_dof)
        else:
            if reference is not None:
                samples = match_ids(read_id_list(reference), store.column("id"), "reference", strict=strict)
            found = rmia(lrec, lrec_shadow, in_shadow, online=online, temperature=temperature, offline_a=offline_a,
                         gamma=gamma, reference=None if samples is None else samples.rows)
        record = {**found.record(), "column": name, "k": int(lrec_shadow.shape[1]),
                  "reference_file": None if reference is None else str(reference),
                  "reference_ids": None if samples is None else samples.to_dict(),
                  "uses": {c: store.fingerprint(c) for c in ("lrec", "lrec_shadow", "in_shadow")}}
        store.write_column(name, found.scores, np.nan, {**record, SCORE_MARK: True})
    return record


# --- the manifest ------------------------------------------------------------------------------------------

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
            for name in (entry["checkpoint"], entry["members"]):
                (out / name).unlink(missing_ok=True)
                (out / (name + PARTIAL_SUFFIX)).unlink(missing_ok=True)
    manifest = {**wanted, "data": data, "shadows": [
        {"index": i, "members": f"shadow_{i:02d}/{MEMBERS}", "checkpoint": f"shadow_{i:02d}/{CHECKPOINT}",
         "done": False, "seconds": None} for i in range(wanted["k"])]}
    out.mkdir(parents=True, exist_ok=True)
    _write_manifest(out, manifest)
    return manifest


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
    return manifest


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    _write_text_atomically(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + PARTIAL_SUFFIX)
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
