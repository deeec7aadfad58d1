"""Membership-inference metrics as pure functions of (scores, labels): ROC, AUC, TPR at low FPR,
balanced accuracy, bootstrap and exact (Clopper-Pearson) CIs, alpha sweeps, label-free threshold calibration,
thresholds chosen on one part of the rows and measured on the other, and the plain-text rendering of a metric
report. No I/O: `memscore.attack` applies these to a store.

Direction, everywhere in this module: a LOWER score means "more likely a member", and a threshold
``tau`` calls an image a member iff ``score <= tau``. Rows whose score is NaN are excluded and
counted. The curve is the one sklearn's ``roc_curve`` draws for the member score ``-score``
(ties handled identically), and ``auc`` equals ``roc_auc_score(is_member, -score)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from .errors import UsageError

DIRECTION = "lower score = member; an image is called a member iff score <= threshold"
CUTOFF_RULE = "largest TPR among operating points with FPR <= target; the lowest such FPR"


class UnresolvableFpr(UsageError):
    """A target FPR below 1/n for the n non-members available: no operating point can show it."""


@dataclass(frozen=True)
class RocCurve:
    """Every operating point, thresholds ascending; point i calls members ``score <= thresholds[i]``.

    The first point is (0, 0) at threshold -inf (nothing called a member).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_members: int
    n_nonmembers: int
    n_excluded_nan: int


@dataclass(frozen=True)
class TprAtFpr:
    """TPR at a target FPR under ``CUTOFF_RULE``; ``refused`` says why when n_nonmembers < 1/target.

    ``ci``: the bootstrap interval of the TPR. ``tpr_exact_ci`` / ``fpr_exact_ci``: Clopper-Pearson intervals
    of the true- and false-positive counts at ``threshold`` held fixed (it was chosen on these same rows, so
    they describe this threshold's rates, not the choice; held-out thresholds: ``held_out_rates``).
    """

    target_fpr: float
    tpr: float | None
    achieved_fpr: float | None
    threshold: float | None
    refused: str | None = None
    ci: tuple[float, float] | None = None
    true_positives: int | None = None
    false_positives: int | None = None
    tpr_exact_ci: tuple[float, float] | None = None
    fpr_exact_ci: tuple[float, float] | None = None


@dataclass(frozen=True)
class MetricReport:
    """The reporting set of docs/ALGORITHM.md ("Reporting conventions"); CIs are None unless n_boot > 0."""

    auc: float
    balanced_accuracy: float
    balanced_accuracy_threshold: float
    tpr_at_fpr: list[TprAtFpr]
    n_members: int
    n_nonmembers: int
    n_excluded_nan: int
    auc_ci: tuple[float, float] | None = None
    balanced_accuracy_ci: tuple[float, float] | None = None
    n_boot: int = 0
    seed: int = 0
    ci_level: float = 0.95
    direction: str = DIRECTION
    cutoff_rule: str = CUTOFF_RULE

    def to_dict(self) -> dict:
        """JSON-ready: plain floats and lists; non-finite floats become None (a -inf threshold
        means no image is called a member)."""
        return jsonable(dataclasses.asdict(self))


def jsonable(value):
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---------------------------------------------------------------- input checks


def float_vector(name: str, values, length: int | None = None, other: str = "scores") -> np.ndarray:
    """``values`` as a 1-D float64 array, of ``length`` rows when given (else a ValueError naming
    ``name`` and ``other``, the array it must match)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise UsageError(f"{name} must be 1-D, got shape {array.shape}")
    if length is not None and array.shape[0] != length:
        raise UsageError(
            f"{name} has {array.shape[0]} rows but {other} has {length}; pass one value per image"
        )
    return array


def member_labels(is_member, length: int) -> np.ndarray:
    """``is_member`` as a bool array of ``length`` rows: bools, or numbers that are all 0 or 1."""
    labels = np.asarray(is_member)
    if labels.ndim != 1 or labels.shape[0] != length:
        raise UsageError(
            f"is_member has shape {labels.shape} for {length} scored rows; pass one label per image"
        )
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise UsageError("is_member must be boolean (or 0/1); found other values")
        labels = labels.astype(bool)
    return labels


def _clean(scores, is_member) -> tuple[np.ndarray, np.ndarray, int]:
    """Checked (scores, labels) with NaN-score rows dropped, and how many were dropped.

    Raises when either class is empty after the drop, naming it.
    """
    scores = float_vector("scores", scores)
    labels = member_labels(is_member, scores.shape[0])
    keep = ~np.isnan(scores)
    n_nan = int(scores.shape[0] - keep.sum())
    labels = labels[keep]
    _require_both_classes(labels, f"{n_nan} NaN rows excluded")
    return scores[keep], labels, n_nan


def _require_both_classes(labels: np.ndarray, excluded: str) -> None:
    n_members = int(labels.sum())
    for count, name in ((n_members, "members"), (labels.shape[0] - n_members, "non-members")):
        if count == 0:
            raise UsageError(
                f"no {name} among the scored rows ({excluded}); metrics need both members and non-members"
            )


def _check_resolvable(target_fpr: float, n_nonmembers: int) -> None:
    if not 0.0 < target_fpr <= 1.0:
        raise UsageError(f"target FPR must be in (0, 1], got {target_fpr}")
    if 1.0 / n_nonmembers > target_fpr:
        raise UnresolvableFpr(
            f"FPR {target_fpr:g} cannot be resolved with {n_nonmembers} non-members "
            f"(need at least {math.ceil(1 / target_fpr - 1e-9)}); use a larger FPR or more non-members"
        )


# ---------------------------------------------------------------- curve and metrics


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion with ``k`` successes in ``n`` trials:
    beta quantiles, 0 when k = 0 and 1 when k = n; it covers the true proportion with at least ``level``."""
    if not 0 <= k <= n or n < 1:
        raise UsageError(f"a binomial count needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < level < 1.0:
        raise UsageError(f"level must be in (0, 1), got {level}")
    tail = (1.0 - level) / 2
    low = float(beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0
    high = float(beta.ppf(1.0 - tail, k + 1, n - k)) if k < n else 1.0
    return low, high


def _curve(scores: np.ndarray, labels: np.ndarray, n_nan: int) -> RocCurve:
    """The ROC of clean inputs: one point per distinct score (ties move as one block)."""
    order = np.argsort(scores)  # order within a tie is irrelevant: ties are grouped below
    sorted_scores = scores[order]
    # The last row of each block of equal scores: every tied row flips together.
    last = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    tps = np.cumsum(labels[order], dtype=np.int64)[last]
    fps = last + 1 - tps
    n_members, n_nonmembers = int(tps[-1]), int(fps[-1])
    return RocCurve(
        fpr=np.r_[0, fps] / n_nonmembers,
        tpr=np.r_[0, tps] / n_members,
        thresholds=np.r_[-np.inf, sorted_scores[last]],
        n_members=n_members,
        n_nonmembers=n_nonmembers,
        n_excluded_nan=n_nan,
    )


def _auc_of(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(a member scores below a non-member) + P(tie) / 2 from exact pair counts: the same area
    sklearn integrates by trapezoids under the curve, but cheaper (two sorts, no argsort)."""
    members, nonmembers = np.sort(scores[labels]), np.sort(scores[~labels])
    below = np.searchsorted(members, nonmembers, "left").sum()
    at_or_below = np.searchsorted(members, nonmembers, "right").sum()
    return float((below + at_or_below) / (2 * members.shape[0] * nonmembers.shape[0]))


def _tpr_at_fpr_of(curve: RocCurve, target_fpr: float) -> TprAtFpr:
    _check_resolvable(target_fpr, curve.n_nonmembers)
    # fpr is non-decreasing along the curve, so the admissible points are a prefix; tpr is
    # non-decreasing too, so the prefix's last point has the largest TPR. Report the first point
    # reaching that TPR: same TPR, lowest FPR.
    n_admissible = int(np.searchsorted(curve.fpr, target_fpr, side="right"))
    best = int(np.searchsorted(curve.tpr[:n_admissible], curve.tpr[n_admissible - 1], side="left"))
    return TprAtFpr(
        target_fpr=float(target_fpr),
        tpr=float(curve.tpr[best]),
        achieved_fpr=float(curve.fpr[best]),
        threshold=float(curve.thresholds[best]),
        true_positives=round(float(curve.tpr[best]) * curve.n_members),
        false_positives=round(float(curve.fpr[best]) * curve.n_nonmembers),
    )


def _with_exact_intervals(point: TprAtFpr, curve: RocCurve, level: float) -> TprAtFpr:
    """``point`` with the Clopper-Pearson intervals of its counts (kept out of the bootstrap's inner loop)."""
    return dataclasses.replace(point, tpr_exact_ci=clopper_pearson(point.true_positives, curve.n_members, level),
                               fpr_exact_ci=clopper_pearson(point.false_positives, curve.n_nonmembers, level))


def _balanced_accuracy_of(curve: RocCurve) -> tuple[float, float]:
    values = (curve.tpr + 1.0 - curve.fpr) / 2
    best = int(np.argmax(values))
    return float(values[best]), float(curve.thresholds[best])


def roc(scores, is_member) -> RocCurve:
    """The full ROC curve (lower score = member; member iff ``score <= thresholds[i]``)."""
    return _curve(*_clean(scores, is_member))


def auc(scores, is_member) -> float:
    """ROC-AUC of calling low scores members; ties count one half, as in sklearn."""
    return _auc_of(*_clean(scores, is_member)[:2])


def tpr_at_fpr(scores, is_member, target_fpr: float) -> TprAtFpr:
    """TPR at ``target_fpr`` under ``CUTOFF_RULE``.

    Raises UnresolvableFpr (a ValueError) when there are fewer than 1/target_fpr non-members.
    """
    curve = roc(scores, is_member)
    return _with_exact_intervals(_tpr_at_fpr_of(curve, target_fpr), curve, 0.95)


def balanced_accuracy(scores, is_member) -> tuple[float, float]:
    """(best balanced accuracy over all thresholds, its threshold); the lowest threshold wins ties."""
    return _balanced_accuracy_of(roc(scores, is_member))


def bootstrap_ci(
    scores,
    is_member,
    metric: Callable[[np.ndarray, np.ndarray], float | np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Percentile CI of ``metric(scores, is_member)`` under a stratified bootstrap.

    Members and non-members are resampled with replacement separately, so every resample keeps
    both class counts (and an FPR resolvable on the data stays resolvable). NaN rows are dropped
    first. ``metric`` may return a 1-D array; then low and high are arrays, one entry per value.
    It must not depend on row order: rows reach it sorted by score, which makes its sorts cheap.
    """
    if n_boot < 1:
        raise UsageError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise UsageError(f"level must be in (0, 1), got {level}")
    scores, labels, _ = _clean(scores, is_member)
    order = np.argsort(scores)
    scores, labels = scores[order], labels[order]
    members, nonmembers = np.flatnonzero(labels), np.flatnonzero(~labels)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        rows = np.sort(np.r_[rng.choice(members, members.size), rng.choice(nonmembers, nonmembers.size)])
        values.append(metric(scores[rows], labels[rows]))
    low, high = np.quantile(np.asarray(values, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2], axis=0)
    if np.ndim(low) == 0:
        return float(low), float(high)
    return low, high


def evaluate_scores(
    scores,
    is_member,
    *,
    fprs: Sequence[float] = (0.1, 0.01, 0.001),
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
) -> MetricReport:
    """AUC, best balanced accuracy and TPR at each FPR in ``fprs`` with exact (Clopper-Pearson) intervals
    of its TPR and achieved FPR, and stratified bootstrap CIs when ``n_boot > 0``, all at ``level``. A target
    the non-member count cannot resolve is recorded as refused."""
    scores, labels, n_nan = _clean(scores, is_member)
    curve = _curve(scores, labels, n_nan)
    resolvable, tprs = [], []
    for target in fprs:
        try:
            tprs.append(_with_exact_intervals(_tpr_at_fpr_of(curve, target), curve, level))
            resolvable.append(target)
        except UnresolvableFpr as refusal:
            tprs.append(TprAtFpr(float(target), tpr=None, achieved_fpr=None, threshold=None, refused=str(refusal)))
    ba, ba_threshold = _balanced_accuracy_of(curve)
    report = MetricReport(
        auc=_auc_of(scores, labels),
        balanced_accuracy=ba,
        balanced_accuracy_threshold=ba_threshold,
        tpr_at_fpr=tprs,
        n_members=curve.n_members,
        n_nonmembers=curve.n_nonmembers,
        n_excluded_nan=n_nan,
        n_boot=n_boot,
        seed=seed,
        ci_level=level,
    )
    if n_boot == 0:
        return report

    def summary(s: np.ndarray, y: np.ndarray) -> np.ndarray:
        resample = _curve(s, y, 0)
        return np.array(
            [_auc_of(s, y), _balanced_accuracy_of(resample)[0]]
            + [_tpr_at_fpr_of(resample, target).tpr for target in resolvable]
        )

    low, high = bootstrap_ci(scores, labels, summary, n_boot=n_boot, seed=seed, level=level)
    intervals = iter(zip(low[2:].tolist(), high[2:].tolist()))
    return dataclasses.replace(
        report,
        auc_ci=(float(low[0]), float(high[0])),
        balanced_accuracy_ci=(float(low[1]), float(high[1])),
        tpr_at_fpr=[t if t.refused else dataclasses.replace(t, ci=next(intervals)) for t in tprs],
    )


def alpha_sweep(lrec, ldiff, is_member, alphas) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, AUC of ``lrec - alpha * ldiff`` for each alpha) over rows where both are finite."""
    lrec = float_vector("lrec", lrec)
    ldiff = float_vector("ldiff", ldiff, lrec.shape[0], other="lrec")
    alphas = float_vector("alphas", alphas)
    labels = member_labels(is_member, lrec.shape[0])
    keep = np.isfinite(lrec) & np.isfinite(ldiff)
    lrec, ldiff, labels = lrec[keep], ldiff[keep], labels[keep]
    _require_both_classes(labels, f"{int((~keep).sum())} rows with non-finite lrec or ldiff excluded")
    aucs = np.array([_auc_of(lrec - alpha * ldiff, labels) for alpha in alphas])
    return alphas, aucs


# ---------------------------------------------------------------- label-free threshold


def calibrate_threshold(nonmember_scores, fpr: float) -> float:
    """The threshold a label-free attacker sets on images it knows are non-members.

    Returns the largest tau such that the fraction of those scores with ``score <= tau`` is at
    most ``fpr``: the k-th smallest score for the largest k with k/n <= fpr, or, when ties would
    push the count past k, the largest score below the tied block (just below the minimum when
    there is none). NaN scores are ignored. Raises UnresolvableFpr when n < 1/fpr.
    """
    scores = float_vector("nonmember_scores", nonmember_scores)
    scores = np.sort(scores[~np.isnan(scores)])
    n = scores.shape[0]
    if n == 0:
        raise UsageError("nonmember_scores has no non-NaN score to calibrate on")
    _check_resolvable(fpr, n)
    # k = the largest count with k / n <= fpr, compared the way the ROC compares (fpr * n rounds).
    k = int(fpr * n)
    k += int((k + 1) / n <= fpr)
    k -= int(k / n > fpr)
    tau = scores[k - 1]
    if np.searchsorted(scores, tau, side="right") > k:  # rows tied with tau would exceed k
        below = int(np.searchsorted(scores, tau, side="left"))
        tau = scores[below - 1] if below else np.nextafter(scores[0], -np.inf)
    return float(tau)


def predict_members(scores, tau: float) -> np.ndarray:
    """Membership decisions: True iff ``score <= tau`` (the rule calibrate_threshold uses); NaN -> False."""
    return float_vector("scores", scores) <= tau


# ---------------------------------------------------------------- thresholds chosen on other rows

HOLDOUT_RULE = ("threshold set by calibrate_threshold on the choosing part's non-members (the label-free "
                "attacker's rule), then applied unchanged to the held-out part")


@dataclass(frozen=True)
class HeldOutPoint:
    """A threshold chosen on some rows for ``target_fpr`` and what it reaches on the others: ``chosen_fpr`` on
    the choosing non-members, ``fpr`` / ``tpr`` (with counts and Clopper-Pearson intervals, exact here since
    the threshold is independent of these rows) on the held-out ones; ``refused`` when the choosing part has
    fewer than 1/target non-members."""

    target_fpr: float
    threshold: float | None = None
    chosen_fpr: float | None = None
    fpr: float | None = None
    tpr: float | None = None
    false_positives: int | None = None
    true_positives: int | None = None
    n_nonmembers: int | None = None
    n_members: int | None = None
    fpr_exact_ci: tuple[float, float] | None = None
    tpr_exact_ci: tuple[float, float] | None = None
    refused: str | None = None


def holdout_split(is_member, fraction: float, seed: int) -> np.ndarray:
    """True for the held-out rows: ``round(fraction * n)`` of the members and of the non-members (stratified by
    label), drawn by a permutation seeded with ``seed``."""
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"the holdout fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(is_member, dtype=bool)
    held_out = np.zeros(labels.shape[0], dtype=bool)
    rng = np.random.default_rng(seed)
    for rows in (np.flatnonzero(labels), np.flatnonzero(~labels)):
        held_out[rng.permutation(rows)[:round(fraction * rows.size)]] = True
    return held_out


def held_out_rates(scores, is_member, held_out, *, fprs: Sequence[float] = (0.1, 0.01, 0.001),
                   level: float = 0.95) -> list[HeldOutPoint]:
    """For each target FPR, the threshold ``calibrate_threshold`` sets on the non-members outside ``held_out``
    (a row mask), and the FPR and TPR it reaches on the rows inside. NaN scores count on neither side."""
    scores = float_vector("scores", scores)
    labels = member_labels(is_member, scores.shape[0])
    held_out = member_labels(held_out, scores.shape[0])
    finite = ~np.isnan(scores)
    choosing = scores[finite & ~held_out & ~labels]
    test_members, test_nonmembers = scores[finite & held_out & labels], scores[finite & held_out & ~labels]
    _require_both_classes(np.r_[np.ones(test_members.size, bool), np.zeros(test_nonmembers.size, bool)],
                          "among the held-out rows")
    points = []
    for target in fprs:
        try:
            tau = calibrate_threshold(choosing, target)
        except UnresolvableFpr as refusal:
            points.append(HeldOutPoint(float(target), refused=f"choosing part: {refusal}"))
            continue
        fp, tp = int((test_nonmembers <= tau).sum()), int((test_members <= tau).sum())
        points.append(HeldOutPoint(
            float(target), threshold=tau, chosen_fpr=float((choosing <= tau).mean()), fpr=fp / test_nonmembers.size,
            tpr=tp / test_members.size, false_positives=fp, true_positives=tp, n_nonmembers=test_nonmembers.size,
            n_members=test_members.size, fpr_exact_ci=clopper_pearson(fp, test_nonmembers.size, level),
            tpr_exact_ci=clopper_pearson(tp, test_members.size, level)))
    return points


def format_rate(value: float, count: int, n: int, exact: Sequence[float], level: float,
                bootstrap: Sequence[float] | None = None) -> str:
    """A rate as text with its counts and intervals: ``0.4000 (12/30; exact 95% [0.2266, 0.5940])``, then
    ``; bootstrap [lo, hi]`` when a bootstrap interval is given."""
    boot = f"; bootstrap [{bootstrap[0]:.4f}, {bootstrap[1]:.4f}]" if bootstrap else ""
    return f"{value:.4f} ({count}/{n}; exact {level * 100:g}% [{exact[0]:.4f}, {exact[1]:.4f}]{boot})"


def format_threshold(threshold: float | None) -> str:
    """A threshold as text; None (JSON's -inf) means nothing is called a member."""
    return "none: no image called a member" if threshold is None else f"{threshold:.5g}"


def format_held_out(name: str, points: list[dict], level: float = 0.95) -> str:
    """``held_out_rates`` (as dicts) as text: per target, the FPR chosen on one part and the FPR and TPR its
    threshold reaches on the other."""
    lines = [f"{name}, thresholds chosen on one part, measured on the held-out part:"]
    for point in points:
        if point["refused"]:
            lines.append(f"  FPR {point['target_fpr']:g}: refused ({point['refused']})")
            continue
        fpr = format_rate(point["fpr"], point["false_positives"], point["n_nonmembers"], point["fpr_exact_ci"], level)
        tpr = format_rate(point["tpr"], point["true_positives"], point["n_members"], point["tpr_exact_ci"], level)
        lines.append(f"  FPR {point['target_fpr']:g}: chosen FPR {point['chosen_fpr']:.4f}, held-out FPR {fpr}, "
                     f"held-out TPR {tpr}, threshold {format_threshold(point['threshold'])}")
    return "\n".join(lines)


def format_metrics(name: str, report: dict) -> str:
    """``MetricReport.to_dict()`` as text: AUC (with its CI), balanced accuracy, then one line per
    target FPR with the counts and intervals of its TPR and achieved FPR, refused targets with their reason."""
    auc_ci = f" [{report['auc_ci'][0]:.4f}, {report['auc_ci'][1]:.4f}]" if report.get("auc_ci") else ""
    lines = [f"{name}: AUC {report['auc']:.4f}{auc_ci}, balanced accuracy {report['balanced_accuracy']:.4f}"
             f" (threshold {report['balanced_accuracy_threshold']:.5g})"]
    level = report["ci_level"]
    for point in report["tpr_at_fpr"]:
        if point["refused"]:
            lines.append(f"  TPR @ FPR {point['target_fpr']:g}: refused ({point['refused']})")
        else:
            tpr = format_rate(point["tpr"], point["true_positives"], report["n_members"], point["tpr_exact_ci"],
                              level, point["ci"])
            fpr = format_rate(point["achieved_fpr"], point["false_positives"], report["n_nonmembers"],
                              point["fpr_exact_ci"], level)
            lines.append(f"  TPR @ FPR {point['target_fpr']:g}: {tpr}, achieved FPR {fpr}, "
                         f"threshold {format_threshold(point['threshold'])}")
    return "\n".join(lines)
