"""LiRA and RMIA: per-image membership scores calibrated against shadow victims (pure numpy/scipy, no I/O).

Inputs, for n images and K shadow victims trained like the victim on random halves of a population:
`target` [n], the victim's Lrec of each image; `shadow` [n, K], each shadow's Lrec of each image (NaN:
missing, left out); `in_shadow` [n, K], 1 where the image was in that shadow's training data, 0 where not.
`memscore.shadow_scores` reads these from a store and writes the scores back.

Orientation, as everywhere in memscore: a LOWER score means "more likely a member". LiRA online returns
the negated log likelihood ratio, RMIA the negated fraction of population samples dominated; LiRA offline
returns log Pr[Z <= s] under the image's OUT Gaussian (a log p-value against "non-member"), low already.

- LiRA (Carlini et al., S&P 2022) on a transform of Lrec (`transform_statistic`). Per image, Gaussians
  N(mu_in, sd_in) and N(mu_out, sd_out) are fitted to its IN and OUT shadow statistics. `fixed_variance`
  uses one sd per side for every image: the pooled WITHIN-image sd (squared deviations from each image's
  own mean), not the sd of all values together as the reference code does, since the spread of Lrec between
  images (their difficulty) is much larger than a model's shadow-to-shadow spread and is what LiRA removes.
  A side with no within-image degrees of freedom (one value per image, K = 2) takes the other side's sd
  online, and 1 offline; with equal sds the score's ranking does not depend on the value. Per-image
  variances are shrunk towards the global one, which counts as `prior_dof` extra observations:
  (sum of squared deviations + prior_dof x global variance) / (n - 1 + prior_dof), the posterior mean under
  a scaled inverse chi-square prior. An image with one value gets the global variance, and with many its
  own; two nearly equal shadow values cannot make an infinite score. With prior_dof 0 (the plain per-image
  sd of the reference code) TPR at 1% FPR on the synthetic data of tests/test_likelihood_ratio.py (per-image
  sds spread 3x) is 0.02 / 0.07 / 0.22 at K = 4 / 8 / 16; with 4: 0.10 / 0.16 / 0.29; fixed: 0.09 / 0.10 / 0.19.
  Fallbacks: an image with no OUT shadow gets NaN (online and offline; counted in `n_no_out`). Online, an
  image with no IN shadow (it was never in the population the shadows drew from, as for an offline audit
  of new images) borrows its IN Gaussian: mu_in = mu_out + the mean IN-OUT shift of the images that have
  both, and the global IN sd (counted in `n_in_borrowed`); it stays on the same scale as the others.
- RMIA (Zarifzadeh et al., ICML 2024). The likelihood of an image under a model is that of its L1
  reconstruction error under Laplace pixel noise, Pr(x | model) = exp(-Lrec / T) (`temperature` T, by
  default the median shadow Lrec, so that likelihoods spread over (0, 1)). A Gaussian on the transformed
  statistic with per-image moments is LiRA itself, above. Pr(x) is approximated by the mean likelihood
  over reference models: online, the average of the IN mean and the OUT mean (balanced when an image has
  unequal counts); offline (OUT references only), the paper's correction for the missing IN models,
  Pr(x) = ((1 + a) mean_OUT + (1 - a)) / 2 (a = 1: no correction; an image with no IN shadow online uses
  it too), which assumes Pr(x | IN model) = a Pr(x | OUT model) + (1 - a). By default a is chosen as the
  paper does, without the victim (`choose_offline_a`: each shadow in turn plays the victim). LR(x) =
  Pr(x | victim) / Pr(x); the score is the fraction of population samples z (the other scored images, or a
  given reference subset) with LR(x) / LR(z) >= gamma. With one z set for every image it ranks images as
  LR(x) does; the fraction makes it a calibrated, population-relative quantity.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats
from scipy.special import logsumexp

from .errors import UsageError
from .metrics import auc

Transform = Literal["log", "logit", "none"]
TRANSFORMS: tuple[str, ...] = ("log", "logit", "none")
DEFAULT_TRANSFORM: Transform = "log"
"""The transform whose per-image shadow distributions are closest to Gaussian, measured on real pix2pix shadows
(unet_64, ngf 8, 64 px, jitter) trained on complementary halves of `memscore.synthetic` pairs: A = 64 pairs,
12 shadows, 80 epochs (6 IN + 6 OUT values per image); B = 128 pairs, 8 shadows, 60 epochs (4 + 4).
`normality` KS distance IN / OUT (0 = Gaussian), A then B: log 0.079 / 0.064, 0.032 / 0.019; logit 0.082 / 0.065,
0.035 / 0.019; none 0.092 / 0.074, 0.042 / 0.028. Lrec's shadow-to-shadow spread grows with its level, which
fixed-variance LiRA assumes away (Spearman of an image's OUT mean and sd, A, B): log +0.06, +0.26; logit +0.11,
+0.30; none +0.29, +0.48. LiRA AUC with each shadow in turn playing the victim, online / offline: A log 0.677 /
0.724, none 0.667 / 0.721; B log 0.653 / 0.707, none 0.643 / 0.702 (logit between). Small but consistent
differences; bench/shadows_experiment.py measures them again on Facades shadows."""
LREC_FLOOR = 1e-6
"""The statistic is floored at LREC_FLOOR before log, clipped to [LREC_FLOOR, 1 - LREC_FLOOR] before logit (a perfect
reconstruction has Lrec 0)."""
A_GRID: tuple[float, ...] = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())
"""Values of RMIA's offline correction a that `choose_offline_a` tries."""
PRIOR_DOF = 4.0
"""Weight of the global variance in each per-image variance, in observations (see the module doc)."""
GAMMA = 1.0
"""RMIA's default margin: z counts as dominated when LR(x) / LR(z) >= gamma."""
DIRECTION = "lower score = member"


def transform_statistic(lrec: np.ndarray, transform: Transform = DEFAULT_TRANSFORM) -> np.ndarray:
    """The statistic (Lrec in [0, 1], or ldenoise >= 0) as LiRA models it, Gaussian: log, logit (for values in
    [0, 1] only), or unchanged ("none")."""
    values = np.asarray(lrec, dtype=np.float64)
    if transform == "none":
        return values
    if transform == "log":
        return np.log(np.maximum(values, LREC_FLOOR))
    clipped = np.clip(values, LREC_FLOOR, 1.0 - LREC_FLOOR)
    if transform == "logit":
        return np.log(clipped) - np.log1p(-clipped)
    raise UsageError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")


@dataclass(frozen=True)
class ShadowScores:
    """Per-image scores (lower = member; NaN where an image cannot be scored) and how they were made."""

    scores: np.ndarray
    method: str
    options: dict[str, Any]
    n_no_out: int
    """Images with no usable OUT shadow value (scored NaN)."""
    n_in_borrowed: int = 0
    """LiRA online: images with no IN shadow value, scored with a borrowed IN Gaussian (see module doc)."""
    fitted: dict[str, float] = field(default_factory=dict)
    """Global quantities estimated from the shadows (sds, shift, temperature)."""

    def record(self) -> dict[str, Any]:
        """JSON-ready description, for a store column's attributes."""
        return {"method": self.method, "options": dict(self.options), "direction": DIRECTION,
                "n_no_out": self.n_no_out, "n_in_borrowed": self.n_in_borrowed,
                "fitted": {k: float(v) if np.isfinite(v) else None for k, v in self.fitted.items()}}


def _check_inputs(target: np.ndarray, shadow: np.ndarray, in_shadow: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(target [n], shadow [n, K], IN mask, OUT mask) as float64/bool; missing shadow values in neither mask."""
    target = np.asarray(target, dtype=np.float64)
    shadow = np.asarray(shadow, dtype=np.float64)
    membership = np.asarray(in_shadow)
    if target.ndim != 1 or shadow.ndim != 2 or shadow.shape[0] != target.shape[0]:
        raise UsageError(f"shadow statistics must be [n_images, K] for {target.shape[0]} images (target "
                         f"shape {target.shape}), got shape {shadow.shape}")
    if membership.shape != shadow.shape:
        raise UsageError(f"in_shadow has shape {membership.shape}, shadow statistics {shadow.shape}: one IN/OUT "
                         "flag per image and shadow")
    if not np.isin(membership, (0, 1)).all():
        raise UsageError("in_shadow must hold 1 (IN) and 0 (OUT) only")
    present = np.isfinite(shadow)
    return target, shadow, present & (membership == 1), present & (membership == 0)


def _side(values: np.ndarray, on: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (count, mean, sum of squared deviations from the mean) of `values` where `on`; mean NaN if none."""
    count = on.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(on, values, 0.0).sum(axis=1) / count
    squares = np.where(on, (values - np.where(count > 0, mean, 0.0)[:, None]) ** 2, 0.0).sum(axis=1)
    return count, mean, squares


def _pooled_sd(count: np.ndarray, squares: np.ndarray) -> float | None:
    """The pooled within-image sd over rows with at least two values; None without such rows."""
    dof = np.maximum(count - 1, 0).sum()
    return float(np.sqrt(squares.sum() / dof)) if dof > 0 else None


def _per_image_sd(count: np.ndarray, squares: np.ndarray, global_sd: float, prior_dof: float) -> np.ndarray:
    """Each row's sd, its variance shrunk towards global_sd**2 with weight `prior_dof` (global_sd with no dof)."""
    dof = np.maximum(count - 1, 0) + prior_dof
    with np.errstate(invalid="ignore", divide="ignore"):
        shrunk = np.sqrt((squares + prior_dof * global_sd ** 2) / dof)
    return np.where(dof > 0, shrunk, global_sd)


def lira(target: np.ndarray, shadow: np.ndarray, in_shadow: np.ndarray, *, online: bool = True,
         fixed_variance: bool = False, transform: Transform = DEFAULT_TRANSFORM,
         prior_dof: float = PRIOR_DOF) -> ShadowScores:
    """LiRA scores (lower = member): online, minus log N(s; IN) / N(s; OUT); offline, log Pr[OUT <= s].

    `target`, `shadow` are raw Lrec values; both go through `transform` first. See the module doc for the
    variance choices and for images lacking IN or OUT shadows.
    """
    target, shadow, is_in, is_out = _check_inputs(target, shadow, in_shadow)
    if prior_dof < 0:
        raise UsageError(f"prior_dof must be >= 0 (0: plain per-image variances), got {prior_dof}")
    s, values = transform_statistic(target, transform), transform_statistic(shadow, transform)
    n_out, mu_out, sq_out = _side(values, is_out)
    n_in, mu_in, sq_in = _side(values, is_in)
    pooled_out, pooled_in = _pooled_sd(n_out, sq_out), (_pooled_sd(n_in, sq_in) if online else None)
    sd_out_global = pooled_out or pooled_in or 1.0
    fitted = {"sd_out": sd_out_global}
    sd_out = sd_out_global if fixed_variance else _per_image_sd(n_out, sq_out, sd_out_global, prior_dof)
    no_out = n_out == 0
    options = {"online": online, "fixed_variance": fixed_variance, "transform": transform,
               "prior_dof": None if fixed_variance else prior_dof}
    if not online:
        scores = stats.norm.logcdf((s - mu_out) / sd_out)
        scores[no_out] = np.nan
        return ShadowScores(scores, "lira", options, int(no_out.sum()), fitted=fitted)
    sd_in_global = pooled_in or pooled_out or 1.0
    sd_in = sd_in_global if fixed_variance else _per_image_sd(n_in, sq_in, sd_in_global, prior_dof)
    both = (n_in > 0) & ~no_out
    shift = float(np.mean(mu_in[both] - mu_out[both])) if both.any() else np.nan
    borrowed = (n_in == 0) & ~no_out
    mu_in = np.where(borrowed, mu_out + shift, mu_in)
    fitted.update(sd_in=sd_in_global, in_out_shift=shift)
    log_ratio = stats.norm.logpdf(s, mu_in, sd_in) - stats.norm.logpdf(s, mu_out, sd_out)
    scores = -log_ratio
    scores[no_out | (borrowed & np.isnan(shift))] = np.nan
    return ShadowScores(scores, "lira", options, int(no_out.sum()), int(borrowed.sum()), fitted)


def rmia(target: np.ndarray, shadow: np.ndarray, in_shadow: np.ndarray, *, online: bool = True,
         temperature: float | None = None, offline_a: float | None = None, gamma: float = GAMMA,
         reference: np.ndarray | None = None) -> ShadowScores:
    """RMIA scores (lower = member): minus the fraction of population samples z with LR(x) / LR(z) >= gamma.

    `reference` (bool [n]) selects the rows used as z (default: every scorable row); an image is never
    compared with itself. `temperature` T of the likelihood exp(-Lrec / T), default the median shadow Lrec.
    `offline_a`: None chooses it from the shadows (`choose_offline_a`) where some image needs it (offline,
    or online for images without an IN shadow), else 1 (no correction).
    """
    target, shadow, is_in, is_out = _check_inputs(target, shadow, in_shadow)
    if gamma <= 0:
        raise UsageError(f"gamma must be positive, got {gamma}")
    temperature = _temperature(shadow, temperature)
    fitted = {"temperature": temperature}
    if offline_a is None:
        offline_a = 1.0
        if (not online or (is_in.sum(axis=1) == 0).any()) and shadow.shape[1] >= 2:
            offline_a = fitted["offline_a"] = choose_offline_a(shadow, in_shadow, temperature=temperature)[0]
    if not 0.0 <= offline_a <= 1.0:
        raise UsageError(f"offline_a must be in [0, 1] (1: no correction), got {offline_a}")
    log_likelihood = -shadow / temperature
    log_mean_out = _log_mean(log_likelihood, is_out)
    log_mean_in = _log_mean(log_likelihood, is_in)
    with np.errstate(divide="ignore"):  # offline: Pr(x) = ((1 + a) mean_OUT + (1 - a)) / 2, in log space
        log_prior = np.logaddexp(np.log1p(offline_a) + log_mean_out, np.log(1.0 - offline_a)) - np.log(2.0)
    if online:
        has_in = np.isfinite(log_mean_in)
        log_prior = np.where(has_in, np.logaddexp(log_mean_in, log_mean_out) - np.log(2.0), log_prior)
    log_ratio = -target / temperature - log_prior
    no_out = ~np.isfinite(log_mean_out)
    log_ratio[no_out | np.isnan(target)] = np.nan
    scores = -_fraction_dominated(log_ratio, np.log(gamma), reference)
    options = {"online": online, "temperature": temperature, "offline_a": offline_a, "gamma": gamma,
               "likelihood": "exp(-lrec/temperature)", "reference_rows": None if reference is None
               else int(np.asarray(reference, dtype=bool).sum())}
    return ShadowScores(scores, "rmia", options, int(no_out.sum()), fitted=fitted)


def _temperature(shadow: np.ndarray, temperature: float | None) -> float:
    """The likelihood's temperature: as given, or the median finite shadow Lrec."""
    if temperature is None:
        known = shadow[np.isfinite(shadow)]
        temperature = float(np.median(known)) if known.size else 1.0
    if not temperature > 0:
        raise UsageError(f"temperature must be positive, got {temperature}")
    return temperature


def choose_offline_a(shadow: np.ndarray, in_shadow: np.ndarray, *, temperature: float | None = None,
                     grid: Sequence[float] = A_GRID) -> tuple[float, dict[float, float]]:
    """(a, mean AUC for each a in `grid`): the paper's choice of the offline correction, made without the victim.

    Each shadow in turn plays the victim, whose members are known (the images it was IN for), attacked by
    offline RMIA with the other shadows' OUT values as references; the a with the best mean AUC wins (ties:
    the largest a, the least correction).
    """
    _, shadow, is_in, _ = _check_inputs(np.zeros(np.shape(shadow)[0]), shadow, in_shadow)
    k = shadow.shape[1]
    if k < 2:
        raise UsageError(f"choosing a needs at least 2 shadows (one plays the victim), got {k}")
    temperature = _temperature(shadow, temperature)
    mean_auc = {}
    for a in grid:
        aucs = []
        for played in range(k):
            others = [c for c in range(k) if c != played]
            scores = rmia(shadow[:, played], shadow[:, others], np.asarray(in_shadow)[:, others], online=False,
                          temperature=temperature, offline_a=float(a)).scores
            usable = np.isfinite(scores)
            labels = is_in[usable, played]
            if labels.any() and not labels.all():
                aucs.append(auc(scores[usable], labels))
        mean_auc[float(a)] = float(np.mean(aucs)) if aucs else float("nan")
    best = max(mean_auc, key=lambda a: (np.nan_to_num(mean_auc[a], nan=-1.0), a))
    return best, mean_auc


def _log_mean(log_values: np.ndarray, on: np.ndarray) -> np.ndarray:
    """log of the mean of exp(log_values) over each row's `on` entries; -inf for a row with none."""
    count = on.sum(axis=1)
    with np.errstate(divide="ignore"):
        return logsumexp(np.where(on, log_values, -np.inf), axis=1) - np.log(np.maximum(count, 1)) \
            + np.where(count > 0, 0.0, -np.inf)


def _fraction_dominated(log_ratio: np.ndarray, log_gamma: float, reference: np.ndarray | None) -> np.ndarray:
    """Per row: the share of reference rows z (other than itself, finite) with log_ratio[z] <= log_ratio - log_gamma."""
    usable = np.isfinite(log_ratio)
    if reference is not None:
        reference = np.asarray(reference, dtype=bool)
        if reference.shape != log_ratio.shape:
            raise UsageError(f"reference must be a bool mask of {log_ratio.shape[0]} rows, got shape {reference.shape}")
        usable &= reference
    population = np.sort(log_ratio[usable])
    if population.size < 2:
        raise UsageError(f"RMIA needs at least 2 population samples z with a shadow-calibrated ratio; found "
                         f"{population.size}")
    dominated = np.searchsorted(population, log_ratio - log_gamma, side="right").astype(np.float64)
    compared_with_itself = usable & (log_gamma <= 0)  # z = x counts iff LR(x)/LR(x) = 1 >= gamma
    dominated -= compared_with_itself
    fraction = dominated / (population.size - usable.astype(np.float64))
    fraction[~np.isfinite(log_ratio)] = np.nan
    return fraction


def normality(shadow: np.ndarray, in_shadow: np.ndarray, transform: Transform) -> dict[str, float]:
    """How far each image's transformed shadow statistics are from Gaussian, pooled over images, per side.

    For a side with m + 1 >= 3 values, each value's leave-one-out studentised residual
    (x_j - mean_-j) / (sd_-j sqrt(1 + 1/m)) is exactly Student t with m - 1 degrees of freedom when the values
    are Gaussian, so its t CDF is uniform: the Kolmogorov-Smirnov distance of the pooled CDF values from
    uniform (`ks_in`, `ks_out`) is 0 for Gaussian data whatever the per-image means and sds. `low_tail_*`: the
    share of CDF values below 0.05 over 0.05 (1 when Gaussian; the member side of LiRA lives in that tail).
    `spread_vs_level_*`: Spearman correlation of the images' means and sds (0 when the spread does not grow
    with the level, as LiRA's fixed variance assumes).
    """
    shadow = transform_statistic(shadow, transform)
    _, _, is_in, is_out = _check_inputs(np.zeros(shadow.shape[0]), shadow, in_shadow)
    found: dict[str, float] = {}
    for name, on in (("in", is_in), ("out", is_out)):
        cdf = _loo_t_cdf(shadow, on)
        found[f"n_{name}"] = float(cdf.size)
        found[f"ks_{name}"] = float(stats.kstest(cdf, "uniform").statistic) if cdf.size else float("nan")
        found[f"low_tail_{name}"] = float(np.mean(cdf < 0.05) / 0.05) if cdf.size else float("nan")
        count, mean, squares = _side(shadow, on)
        spread = count >= 2
        found[f"spread_vs_level_{name}"] = float(stats.spearmanr(mean[spread], squares[spread] / (count[spread] - 1))
                                                 .statistic) if spread.sum() >= 3 else float("nan")
    return found


def _loo_t_cdf(values: np.ndarray, on: np.ndarray) -> np.ndarray:
    """Pooled Student-t CDF values of the leave-one-out studentised residuals of rows with >= 3 values."""
    count, _, _ = _side(values, on)
    found = []
    for m_plus_1 in np.unique(count[count >= 3]):
        rows = count == m_plus_1
        picked = values[rows][on[rows]].reshape(-1, int(m_plus_1))  # row-major: each image's values together
        m = m_plus_1 - 1
        total = picked.sum(axis=1, keepdims=True)
        mean_others = (total - picked) / m
        squares = (picked ** 2).sum(axis=1, keepdims=True) - picked ** 2
        var_others = np.maximum(squares - m * mean_others ** 2, 0.0) / (m - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (picked - mean_others) / np.sqrt(var_others * (1 + 1 / m))
        found.append(stats.t.cdf(t[np.isfinite(t)], df=m - 1))
    return np.concatenate(found) if found else np.zeros(0)
