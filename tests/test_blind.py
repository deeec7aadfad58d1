"""memscore.blind: the blind baseline scores each row with a model that never saw it, finds a split whose members
differ as images, does not flag a fair one, and breaks an attack score's AUC down by strata of its score."""
from __future__ import annotations

import numpy as np
import pytest

from memscore.blind import auc_by_strata, blind_baseline, blind_scores, format_blind_baseline
from memscore.metrics import auc


def _images(n: int, width: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, ldiff, is_member): features independent of membership unless `shift` (added for members)."""
    rng = np.random.default_rng(seed)
    members = rng.random(n) < 0.5
    features = rng.normal(size=(n, width)) + shift * members[:, None]
    return features.astype(np.float16), rng.uniform(0.05, 0.3, n), members


def test_each_row_is_scored_by_a_model_that_never_saw_it():
    # 60 noise features for 120 rows: a model scoring its own training rows separates them perfectly.
    features, ldiff, members = _images(120, 60, 0.0, seed=3)
    scores = blind_scores(features, ldiff, members, seed=0)
    assert np.isfinite(scores).all()
    assert 0.3 < auc(scores, members) < 0.7
    np.testing.assert_array_equal(scores, blind_scores(features, ldiff, members, seed=0))  # seeded


def test_rows_without_features_are_left_out_and_too_few_rows_refused():
    features, ldiff, members = _images(200, 4, 1.0, seed=4)
    features[5, 2] = np.nan
    ldiff[9] = np.nan
    scores = blind_scores(features, ldiff, members)
    assert np.isnan(scores[[5, 9]]).all() and np.isfinite(np.delete(scores, [5, 9])).all()
    with pytest.raises(ValueError, match="at least 10 members and 10 non-members"):
        blind_scores(features[:15], ldiff[:15], members[:15])


def test_fair_splits_are_rarely_flagged():
    """Over 20 null draws (features independent of membership) the 95% interval lies above 0.5 in few: the
    bootstrap holds the fitted models fixed, so it is somewhat narrow (measured: 5 of 60 draws at n = 400)."""
    records = [blind_baseline(*_images(300, 8, 0.0, seed), seed=seed, n_boot=200) for seed in range(20)]
    flagged = [record for record in records if record["warning"]]
    assert len(flagged) <= 4
    assert all(r["metrics"]["auc_ci"][0] > 0.5 for r in flagged)
    fair = next(record for record in records if not record["warning"])
    assert "no sign" in format_blind_baseline(fair)
    assert abs(np.mean([r["metrics"]["auc"] for r in records]) - 0.5) < 0.03


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_split_whose_members_differ_as_images_is_flagged(seed):
    features, ldiff, members = _images(400, 8, 0.4, seed)
    record = blind_baseline(features, ldiff, members, seed=seed, n_boot=300)
    assert record["metrics"]["auc_ci"][0] > 0.5 and "differ as images" in record["warning"]
    assert record["metrics"]["tpr_at_fpr"][0]["target_fpr"] == 0.01
    assert "WARNING: members and non-members differ as images" in format_blind_baseline(record)


def test_auc_by_strata_is_the_auc_within_each_quintile_of_the_blind_score():
    rng = np.random.default_rng(5)
    members = rng.random(500) < 0.5
    blind = rng.normal(size=500) - members
    attack = rng.normal(size=500) - 0.5 * members
    strata = auc_by_strata(attack, members, blind)
    assert [s["stratum"] for s in strata] == [1, 2, 3, 4, 5]
    assert sum(s["n_members"] + s["n_nonmembers"] for s in strata) == 500
    edges = np.quantile(blind, np.linspace(0, 1, 6))
    for stratum, low, high in zip(strata, edges[:-1], edges[1:]):
        rows = (blind >= low) & ((blind < high) if high < edges[-1] else (blind <= high))
        assert stratum["auc"] == auc(attack[rows], members[rows])
        assert stratum["n_members"] == int(members[rows].sum())
