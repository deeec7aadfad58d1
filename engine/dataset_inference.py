"""Dataset inference: was a set of suspect images, as a whole, in the victim's training data? A one-sided
two-sample test that the suspects' scores are lower than those of held-out non-members (the reference).

The statistic is the one-sided Mann-Whitney U (scipy): under the null (the suspects are non-members, so their
scores and the reference's are exchangeable) its p-value is valid whatever the scores' distribution, which
matters because Lrec and even calibrated z-scores are skewed and heavy-tailed, so Welch's t is only
approximately calibrated at the tens of suspects an audit has. Its power against a downward shift is at least
0.864 of the t-test's for any distribution (0.955 at the normal) and higher under heavy tails. The effect size is
the AUC of calling suspects members, P(suspect score < reference score) + ties / 2 = U / (n_suspect n_reference),
the common-language effect size, with a stratified bootstrap CI (`memscore.metrics.bootstrap_ci`).

Scores: any membership score the store holds (`memscore.score_names`: lrec, lmem, lcal, lira*, rmia*; lower =
member). A score whose record names the known non-members it was calibrated on (`lcal`) can use them as the
reference: each was scored by a model that did not see it, and each suspect by one of the same fold models
(`memscore.calibration.FOLD_POLICY`), so under the null the two sets are exchangeable. Every other score needs
held-out non-members given as the reference. Suspects must not be among the reference rows.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from .data import match_ids, read_id_list
from .errors import UsageError
from .lcal import lcal_reference, require_current_lcal
from .metrics import jsonable, auc, bootstrap_ci, float_vector
from .score_names import LCAL_COLUMN, SCORES, require_score
from .store import ScoreStore

STATISTIC = "one-sided Mann-Whitney U (scipy.stats.mannwhitneyu, alternative 'less': suspects score lower)"
SIGNIFICANCE = 0.01
"""The p-value the size curve reports the smallest suspect-set size for."""


@dataclass(frozen=True)
class DatasetTestResult:
    """The test of one suspect set against one reference set (print-ready; `to_dict` is JSON-ready)."""

    p_value: float
    auc: float
    """P(a suspect scores below a reference image) + ties / 2: 0.5 when the suspects are non-members."""
    auc_ci: tuple[float, float] | None
    """None when `n_boot` is 0."""
    u_statistic: float
    """U of the suspects (the count of suspect-below-reference pairs, ties one half)."""
    n_suspect: int
    n_reference: int
    n_excluded_nan: int
    ci_level: float
    n_boot: int
    seed: int
    statistic: str = STATISTIC

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))


@dataclass(frozen=True)
class SizeCurve:
    """How the p-value falls with the number of suspects used: for each size, `draws` seeded random subsets of
    the suspects, each tested against the whole reference."""

    sizes: list[int]
    median_p: list[float]
    power: list[float]
    """The fraction of draws with p < `significance`, per size."""
    smallest_size: int | None
    """The smallest size whose median p-value is below `significance` (None: none of them)."""
    significance: float
    draws: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))


def _finite_vector(name: str, values) -> tuple[np.ndarray, int]:
    array = float_vector(name, values)
    keep = np.isfinite(array)
    if not keep.any():
        raise UsageError(f"{name} has no finite score; a dataset test needs scored images on both sides")
    return array[keep], int(array.size - keep.sum())


def dataset_test(suspect_scores, reference_scores, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> DatasetTestResult:
    """Are the suspects' scores lower than the reference's (lower = member)? NaN scores are left out and counted.

    Returns the one-sided Mann-Whitney p-value, the AUC effect size with its `level` bootstrap CI (`n_boot`
    stratified resamples, seeded; none when 0), U and the counts.
    """
    suspect, nan_suspect = _finite_vector("suspect_scores", suspect_scores)
    reference, nan_reference = _finite_vector("reference_scores", reference_scores)
    test = mannwhitneyu(suspect, reference, alternative="less")
    scores = np.r_[suspect, reference]
    is_suspect = np.r_[np.ones(suspect.size, bool), np.zeros(reference.size, bool)]
    ci = tuple(map(float, bootstrap_ci(scores, is_suspect, auc, n_boot=n_boot, seed=seed, level=level))) \
        if n_boot else None
    return DatasetTestResult(
        p_value=float(test.pvalue), auc=auc(scores, is_suspect), auc_ci=ci,
        u_statistic=float(suspect.size * reference.size - test.statistic), n_suspect=int(suspect.size),
        n_reference=int(reference.size), n_excluded_nan=nan_suspect + nan_reference, ci_level=level,
        n_boot=n_boot, seed=seed)


def default_sizes(n_suspect: int) -> list[int]:
    """Suspect-set sizes for the curve: 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, ... up to and with `n_suspect`."""
    steps = [1, 1.5, 2, 3, 5, 7]
    sizes = sorted({int(round(step * 10 ** power)) for power in range(int(math.log10(max(n_suspect, 1))) + 2)
                    for step in steps})
    return [size for size in sizes if 2 <= size < n_suspect] + [n_suspect]


def p_value_by_size(suspect_scores, reference_scores, sizes: Sequence[int] | None = None, *, draws: int = 100,
                    seed: int = 0, significance: float = SIGNIFICANCE) -> SizeCurve:
    """The median one-sided Mann-Whitney p-value when only n suspects are used, for each n in `sizes`
    (default: `default_sizes`), over `draws` seeded subsets each; and the smallest n whose median p-value is
    below `significance`. The full suspect set is drawn once, however many draws."""
    suspect, _ = _finite_vector("suspect_scores", suspect_scores)
    reference, _ = _finite_vector("reference_scores", reference_scores)
    sizes = default_sizes(suspect.size) if sizes is None else sorted({int(size) for size in sizes})
    if draws < 1:
        raise UsageError(f"draws must be >= 1, got {draws}")
    if not sizes or sizes[0] < 1 or sizes[-1] > suspect.size:
        raise UsageError(f"sizes must lie in [1, {suspect.size}] (the finite suspect scores), got {sizes}")
    rng = np.random.default_rng(seed)
    median_p, power = [], []
    for size in sizes:
        repeats = 1 if size == suspect.size else draws
        subsets = np.stack([rng.choice(suspect, size, replace=False) for _ in range(repeats)])
        p_values = mannwhitneyu(subsets, reference[np.newaxis, :], axis=1, alternative="less").pvalue
        median_p.append(float(np.median(p_values)))
        power.append(float(np.mean(p_values < significance)))
    smallest = next((size for size, p in zip(sizes, median_p) if p < significance), None)
    return SizeCurve(sizes=sizes, median_p=median_p, power=power, smallest_size=smallest,
                     significance=significance, draws=draws, seed=seed)


# ---------------------------------------------------------------- on a store


def dataset_test_store(store: str | os.PathLike | ScoreStore, suspect_ids_file: str | os.PathLike,
                       reference_ids_file: str | os.PathLike | None = None, *, score: str = LCAL_COLUMN,
                       n_boot: int = 1000, draws: int = 100, seed: int = 0,
                       sizes: Sequence[int] | None = None, strict: bool = False) -> dict[str, Any]:
    """`dataset_test` and `p_value_by_size` of a finished store's `score` column, JSON-ready.

    `score`: any membership score the store holds (`memscore.score_names.score_names`). Suspects: the ids in
    `suspect_ids_file`. Reference: the ids in `reference_ids_file`; without one (score `lcal` only), the
    calibration's own reference ids, which it scored out of fold, less any suspect. A suspect id given as
    reference too is refused; `lcal` is refused once its inputs changed (`memscore.lcal.require_current_lcal`).
    Ids the store lacks are ignored and counted (`suspect_ids`, `reference_ids`: `IdMatch.to_dict`), or refused
    when `strict`.
    """
    store = store if isinstance(store, ScoreStore) else ScoreStore.open(store, mode="r")
    store.require_readable()
    require_score(store, score)
    calibration = require_current_lcal(store) if score == LCAL_COLUMN else None
    suspects = read_id_list(suspect_ids_file)
    if reference_ids_file is not None:
        reference_ids = read_id_list(reference_ids_file)
        both = suspects.ids & reference_ids.ids
        if both:
            raise UsageError(f"{len(both)} ids are both suspect ({suspect_ids_file}) and reference "
                             f"({reference_ids_file}), e.g. {sorted(both)[0]!r}; the two sets must be disjoint")
        reference_source = str(reference_ids_file)
    elif calibration is not None:
        reference_ids = lcal_reference(calibration, "pass --reference IDS (held-out non-members)")
        reference_source = f"lcal's reference ({calibration['reference_ids_file']}), suspects excluded"
        reference_ids = dataclasses.replace(reference_ids, file=reference_source,
                                            ids=reference_ids.ids - suspects.ids)
    else:
        recorded = ", ".join(name for name, known in SCORES.items() if known.has_reference)
        raise UsageError(f"score {score} needs reference ids (--reference FILE of held-out non-members); only "
                         f"{recorded} can default to the reference it was calibrated on")
    ids = store.column("id")
    values = store.column(score).astype(np.float64)
    suspect = match_ids(suspects, ids, "suspect", strict=strict)
    reference = match_ids(reference_ids, ids, "reference", strict=strict)
    for match in (suspect, reference):
        if not match.rows.any():
            raise UsageError(f"none of the {match.n_ids} {match.role} ids ({match.file}) is in {store.path}")
    result = dataset_test(values[suspect.rows], values[reference.rows], n_boot=n_boot, seed=seed)
    curve = p_value_by_size(values[suspect.rows], values[reference.rows], sizes, draws=draws, seed=seed)
    return {"store": str(store.path), "score": score, "suspect_ids_file": str(suspect_ids_file),
            "suspect_ids": suspect.to_dict(), "reference": reference_source, "reference_ids": reference.to_dict(),
            **({"calibration": {key: calibration[key] for key in ("model", "folds", "seed", "created")}}
               if calibration else {}),
            "test": result.to_dict(), "by_size": curve.to_dict()}
