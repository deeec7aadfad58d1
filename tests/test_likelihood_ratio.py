"""memscore.likelihood_ratio: LiRA and RMIA against direct loop-by-loop computations on synthetic per-image
distributions, their fallbacks for images without IN or OUT shadows, and that LiRA beats the raw statistic."""
from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest

from memscore.likelihood_ratio import A_GRID, PRIOR_DOF, choose_offline_a, lira, normality, rmia, transform_statistic
from memscore.metrics import auc, tpr_at_fpr


def synthetic(n: int = 400, k: int = 8, shift: float = 0.25, sd: float = 0.15, seed: int = 0):
    """(victim Lrec [n], shadow Lrec [n, k], IN [n, k] int8, victim membership [n]): log Lrec of image i under
    a model is Gaussian around the image's difficulty, `shift` lower when the model was trained on it;
    shadows in complementary pairs of random halves; the victim trained on a random half."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(np.log(0.12), 0.5, n)
    noise = rng.uniform(0.5, 1.5, n) * sd  # per-image spread
    in_shadow = np.zeros((n, k), np.int8)
    for pair in range(k // 2):
        half = rng.permutation(n)[: n // 2]
        in_shadow[:, 2 * pair] = 0
        in_shadow[half, 2 * pair] = 1
        in_shadow[:, 2 * pair + 1] = 1 - in_shadow[:, 2 * pair]
    shadow = np.exp(difficulty[:, None] - shift * in_shadow + noise[:, None] * rng.standard_normal((n, k)))
    member = rng.random(n) < 0.5
    target = np.exp(difficulty - shift * member + noise * rng.standard_normal(n))
    return target, shadow, in_shadow, member


def _norm_logpdf(x: float, mu: float, sd: float) -> float:
    return -0.5 * ((x - mu) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)


def _norm_logcdf(z: float) -> float:
    return math.log(0.5 * math.erfc(-z / math.sqrt(2)))


def _pooled(groups: list[list[float]]) -> float | None:
    squares = sum(sum((v - statistics.fmean(g)) ** 2 for v in g) for g in groups if len(g) >= 2)
    dof = sum(len(g) - 1 for g in groups if len(g) >= 2)
    return math.sqrt(squares / dof) if dof else None


def reference_lira(target, shadow, in_shadow, *, online, fixed_variance, prior_dof=PRIOR_DOF) -> list[float]:
    """LiRA image by image with Python lists and math (log transform), as the module doc describes it."""
    n, k = shadow.shape
    ins = [[math.log(shadow[i, j]) for j in range(k) if in_shadow[i, j] == 1 and not math.isnan(shadow[i, j])]
           for i in range(n)]
    outs = [[math.log(shadow[i, j]) for j in range(k) if in_shadow[i, j] == 0 and not math.isnan(shadow[i, j])]
            for i in range(n)]
    global_out = _pooled(outs) or (_pooled(ins) if online else None) or 1.0
    global_in = _pooled(ins) or _pooled(outs) or 1.0
    shifts = [statistics.fmean(a) - statistics.fmean(b) for a, b in zip(ins, outs) if a and b]
    shift = statistics.fmean(shifts) if shifts else math.nan

    def sd_of(values, fallback):
        if fixed_variance:
            return fallback
        squares = sum((v - statistics.fmean(values)) ** 2 for v in values)
        return math.sqrt((squares + prior_dof * fallback ** 2) / (len(values) - 1 + prior_dof)) \
            if len(values) - 1 + prior_dof > 0 else fallback

    scores = []
    for i in range(n):
        s = math.log(target[i])
        if not outs[i]:
            scores.append(math.nan)
            continue
        mu_out, sd_out = statistics.fmean(outs[i]), sd_of(outs[i], global_out)
        if not online:
            scores.append(_norm_logcdf((s - mu_out) / sd_out))
            continue
        if ins[i]:
            mu_in, sd_in = statistics.fmean(ins[i]), sd_of(ins[i], global_in)
        else:
            mu_in, sd_in = mu_out + shift, global_in
        scores.append(-(_norm_logpdf(s, mu_in, sd_in) - _norm_logpdf(s, mu_out, sd_out)))
    return scores


def reference_rmia(target, shadow, in_shadow, *, online, temperature, a, gamma, reference=None) -> list[float]:
    """RMIA image by image: likelihood exp(-Lrec/T), Pr(x) from the reference models, pairwise comparisons."""
    n, k = shadow.shape
    ratios = []
    for i in range(n):
        p_in = [math.exp(-shadow[i, j] / temperature) for j in range(k) if in_shadow[i, j] == 1]
        p_out = [math.exp(-shadow[i, j] / temperature) for j in range(k) if in_shadow[i, j] == 0]
        if not p_out:
            ratios.append(math.nan)
            continue
        if online and p_in:
            prior = 0.5 * (statistics.fmean(p_in) + statistics.fmean(p_out))
        else:
            prior = 0.5 * ((1 + a) * statistics.fmean(p_out) + (1 - a))
        ratios.append(math.exp(-target[i] / temperature) / prior)
    population = [z for z in range(n) if not math.isnan(ratios[z]) and (reference is None or reference[z])]
    scores = []
    for i in range(n):
        if math.isnan(ratios[i]):
            scores.append(math.nan)
            continue
        others = [z for z in population if z != i]
        dominated = sum(1 for z in others if ratios[i] / ratios[z] >= gamma * (1 - 1e-12))
        scores.append(-dominated / len(others))
    return scores


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize(("fixed_variance", "prior_dof"), [(True, PRIOR_DOF), (False, PRIOR_DOF), (False, 0.0)])
def test_lira_matches_a_direct_computation(online, fixed_variance, prior_dof):
    target, shadow, in_shadow, _ = synthetic(n=60, k=6, seed=3)
    shadow[4, 1] = np.nan  # a missing shadow value is left out
    in_shadow[7] = 1  # an image IN for every shadow: no OUT Gaussian, NaN
    in_shadow[9] = 0  # an image OUT for every shadow: online borrows its IN Gaussian
    in_shadow[11, [0, 2, 4]] = 0  # a single IN value: the global IN sd
    got = lira(target, shadow, in_shadow, online=online, fixed_variance=fixed_variance, transform="log",
               prior_dof=prior_dof)
    expected = reference_lira(target, shadow, in_shadow, online=online, fixed_variance=fixed_variance,
                              prior_dof=prior_dof)
    np.testing.assert_allclose(got.scores, expected, rtol=1e-9, atol=1e-9, equal_nan=True)
    assert np.isnan(got.scores[7]) and np.isfinite(np.delete(got.scores, 7)).all()
    assert got.n_no_out == 1 and got.n_in_borrowed == (1 if online else 0)


def test_lira_with_one_value_per_side_and_fixed_variance_falls_back_to_unit_sd():
    target, shadow, in_shadow, _ = synthetic(n=40, k=2, seed=4)
    got = lira(target, shadow, in_shadow, online=False, fixed_variance=True)
    assert got.fitted["sd_out"] == 1.0
    out_value = np.log(shadow[in_shadow == 0])
    np.testing.assert_allclose(got.scores, [_norm_logcdf(z) for z in np.log(target) - out_value], rtol=1e-9)


def test_lira_online_with_one_shadow_scores_nothing_and_its_record_says_why():
    target, shadow, in_shadow, _ = synthetic(n=20, k=2, seed=13)
    got = lira(target, shadow[:, :1], in_shadow[:, :1])  # no image has both an IN and an OUT value
    assert np.isnan(got.scores).all() and got.n_no_out == in_shadow[:, 0].sum()
    record = json.loads(json.dumps(got.record(), allow_nan=False))
    assert record["fitted"]["in_out_shift"] is None and record["direction"] == "lower score = member"


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize(("a", "gamma", "with_reference"), [(1.0, 1.0, False), (0.3, 2.0, True), (0.0, 0.5, False)])
def test_rmia_matches_a_direct_computation(online, a, gamma, with_reference):
    target, shadow, in_shadow, _ = synthetic(n=50, k=4, seed=5)
    in_shadow[3] = 1  # no OUT reference: NaN, and not a population sample
    in_shadow[8] = 0  # no IN reference online: the offline prior
    reference = np.arange(50) % 3 == 0 if with_reference else None
    got = rmia(target, shadow, in_shadow, online=online, temperature=0.05, offline_a=a, gamma=gamma,
               reference=reference)
    expected = reference_rmia(target, shadow, in_shadow, online=online, temperature=0.05, a=a, gamma=gamma,
                              reference=reference)
    np.testing.assert_allclose(got.scores, expected, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert got.n_no_out == 1 and np.isnan(got.scores[3])


def test_offline_a_is_chosen_by_letting_each_shadow_play_the_victim():
    target, shadow, in_shadow, _ = synthetic(n=40, k=4, seed=12)
    chosen, table = choose_offline_a(shadow, in_shadow, temperature=0.05)
    assert tuple(table) == A_GRID and chosen == max(table, key=lambda a: (table[a], a))
    for a in (0.0, 0.5):
        direct = []
        for played in range(4):
            others = [c for c in range(4) if c != played]
            scores = reference_rmia(shadow[:, played], shadow[:, others], in_shadow[:, others], online=False,
                                    temperature=0.05, a=a, gamma=1.0)
            direct.append(auc(scores, in_shadow[:, played] == 1))
        assert table[a] == pytest.approx(np.mean(direct))
    default = rmia(target, shadow, in_shadow, online=False, temperature=0.05)
    assert default.fitted["offline_a"] == chosen
    np.testing.assert_array_equal(default.scores, rmia(target, shadow, in_shadow, online=False, temperature=0.05,
                                                       offline_a=chosen).scores)
    assert "offline_a" not in rmia(target, shadow, in_shadow, online=True).fitted  # every image has IN shadows


def test_rmia_default_temperature_is_the_median_shadow_lrec():
    target, shadow, in_shadow, _ = synthetic(n=30, k=4, seed=6)
    assert rmia(target, shadow, in_shadow).fitted["temperature"] == pytest.approx(float(np.median(shadow)))


def test_lira_online_beats_the_raw_statistic_at_low_fpr():
    target, shadow, in_shadow, member = synthetic(n=3000, k=8, shift=0.25, sd=0.12, seed=7)
    raw = tpr_at_fpr(target, member, 0.01).tpr
    for fixed_variance in (False, True):
        scores = lira(target, shadow, in_shadow, online=True, fixed_variance=fixed_variance).scores
        assert tpr_at_fpr(scores, member, 0.01).tpr > 2 * raw
        assert auc(scores, member) > auc(target, member) + 0.1
    offline = lira(target, shadow, in_shadow, online=False).scores
    rmia_scores = rmia(target, shadow, in_shadow, online=False).scores
    assert tpr_at_fpr(offline, member, 0.01).tpr > 2 * raw and auc(rmia_scores, member) > auc(target, member) + 0.1


def test_shrunk_per_image_variances_beat_plain_ones_with_few_shadows():
    target, shadow, in_shadow, member = synthetic(n=4000, k=8, shift=0.25, sd=0.15, seed=11)
    shrunk = tpr_at_fpr(lira(target, shadow, in_shadow).scores, member, 0.01).tpr
    plain = tpr_at_fpr(lira(target, shadow, in_shadow, prior_dof=0.0).scores, member, 0.01).tpr
    assert shrunk > 1.5 * plain


def test_scores_are_lower_for_members():
    target, shadow, in_shadow, member = synthetic(n=400, k=4, seed=8)
    for scores in (lira(target, shadow, in_shadow).scores, lira(target, shadow, in_shadow, online=False).scores,
                   rmia(target, shadow, in_shadow).scores):
        assert np.median(scores[member]) < np.median(scores[~member])


def test_normality_is_near_zero_for_the_transform_that_makes_the_data_gaussian():
    _, shadow, in_shadow, _ = synthetic(n=2000, k=8, sd=0.4, seed=9)  # log Lrec is Gaussian by construction
    measured = {t: normality(shadow, in_shadow, t) for t in ("log", "logit", "none")}
    assert measured["log"]["ks_out"] < 0.02 and measured["log"]["ks_in"] < 0.02
    assert measured["none"]["ks_out"] > 2 * measured["log"]["ks_out"]
    assert abs(measured["log"]["low_tail_out"] - 1) < 0.1
    assert abs(measured["log"]["spread_vs_level_out"]) < 0.1  # the sd does not depend on the level in log space...
    assert measured["none"]["spread_vs_level_out"] > 0.3  # ...but grows with it in raw Lrec


def test_transforms_and_refusals():
    np.testing.assert_allclose(transform_statistic(np.array([0.25]), "logit"), [math.log(1 / 3)])
    assert np.isfinite(transform_statistic(np.array([0.0, 1.0]), "log")).all()
    with pytest.raises(ValueError, match="transform must be one of"):
        transform_statistic(np.array([0.1]), "sqrt")
    target, shadow, in_shadow, _ = synthetic(n=10, k=2)
    with pytest.raises(ValueError, match=r"in_shadow has shape \(10, 3\)"):
        lira(target, shadow, np.zeros((10, 3), np.int8))
    with pytest.raises(ValueError, match="1 \\(IN\\) and 0 \\(OUT\\)"):
        lira(target, shadow, in_shadow * 2)
    with pytest.raises(ValueError, match="offline_a"):
        rmia(target, shadow, in_shadow, offline_a=1.5)
