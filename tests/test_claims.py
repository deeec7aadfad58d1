"""Tests for engine/claims.py: conformal p-values are valid on held-out non-members (uniform, also leave-one-out),
Benjamini-Hochberg and Storey claim what their definitions say, the realised false-discovery proportion stays at
or below the target over many seeded draws while a naive per-image threshold does not, and the store and command
claim members, never a reference image."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from memscore.claims import (benjamini_hochberg, claims, claims_store, conformal_p_values, leave_one_out_p_values,
                             storey_pi0)
from memscore.cli import main
from memscore.errors import StoreError, UsageError
from stores_for_tests import synthetic_store

FDR = 0.05


def _skewed(rng: np.random.Generator, size: int) -> np.ndarray:
    """Lrec-like non-member scores: positive and right-skewed (validity must not need a normal score)."""
    return rng.lognormal(-1.5, 0.5, size)


def _within_binomial(rate: float, target: float, draws: int) -> bool:
    """`rate` at most `target` plus 3 binomial standard errors of `draws` draws."""
    return rate <= target + 3 * np.sqrt(target * (1 - target) / draws)


# ---------------------------------------------------------------- p-values


def test_conformal_p_values_by_hand():
    p = conformal_p_values([3.0, 1.0, 2.0], [0.5, 2.0, 10.0, np.nan])
    np.testing.assert_allclose(p, [1 / 4, 3 / 4, 1.0, np.nan])
    assert conformal_p_values([1.0, 1.0, 1.0], [1.0])[0] == 1.0  # ties count against the claim
    np.testing.assert_allclose(leave_one_out_p_values([3.0, 1.0, 2.0]), [1.0, 1 / 3, 2 / 3])
    with pytest.raises(UsageError, match="reference_scores holds 1 non-finite"):
        conformal_p_values([1.0, np.nan], [0.5])
    with pytest.raises(UsageError, match="reference_scores is empty"):
        conformal_p_values([], [0.5])


def test_p_values_are_uniform_on_held_out_nonmembers():
    draws = 3000
    rng = np.random.default_rng(0)
    # One fresh reference and one held-out non-member per draw: the draws are independent.
    p = np.array([conformal_p_values(_skewed(rng, 999), _skewed(rng, 1))[0] for _ in range(draws)])
    for a in (0.01, 0.05, 0.1):
        assert _within_binomial(np.mean(p <= a), a, draws), (a, np.mean(p <= a))
    counts = np.histogram(p, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - draws / 10) < 4 * np.sqrt(draws * 0.1 * 0.9)), counts
    assert stats.kstest(p, "uniform").pvalue > 0.01


def test_leave_one_out_p_values_are_valid_for_the_reference_itself():
    draws = 3000
    rng = np.random.default_rng(1)
    p = np.array([leave_one_out_p_values(_skewed(rng, 50))[0] for _ in range(draws)])
    for a in (0.02, 0.06, 0.1):  # multiples of 1/50, where P(p <= a) = a exactly
        assert _within_binomial(np.mean(p <= a), a, draws), (a, np.mean(p <= a))
        assert np.mean(p <= a) > a / 2  # not needlessly conservative either


# ---------------------------------------------------------------- Benjamini-Hochberg and Storey


@pytest.mark.parametrize(("p_values", "rejected"), [
    ([0.01, 0.04, 0.03, 0.005, 0.5], [True, True, True, True, False]),
    # Step-up: 0.03 is above its own line (2 * 0.05 / 4) but 0.032 is below its line, so both are rejected.
    ([0.2, 0.03, 0.001, 0.032], [False, True, True, True]),
    ([0.2, 0.3, 0.04], [False, False, False]),
    ([0.02, 0.02, 0.02], [True, True, True]),
    ([], []),
])
def test_benjamini_hochberg_by_hand(p_values, rejected):
    assert benjamini_hochberg(p_values, FDR).tolist() == rejected


def test_benjamini_hochberg_matches_scipy_adjusted_p_values():
    rng = np.random.default_rng(2)
    for _ in range(200):
        m = int(rng.integers(1, 60))
        p = np.where(rng.random(m) < 0.4, rng.random(m) * 0.01, rng.random(m))
        expected = stats.false_discovery_control(p, method="bh") <= FDR
        np.testing.assert_array_equal(benjamini_hochberg(p, FDR), expected)


def test_storey_pi0_and_its_claims_by_hand():
    assert storey_pi0([0.01, 0.02, 0.6, 0.7, 0.8, 0.9, 0.95, 0.3]) == 1.0  # (5 + 1) / (0.5 * 8), capped
    p = [0.001] * 10 + [0.04] * 5 + [0.95] * 5
    assert storey_pi0(p) == pytest.approx(0.6)  # (5 + 1) / (0.5 * 20)
    bh, storey = claims(p, fdr=FDR), claims(p, fdr=FDR, procedure="storey")
    assert (bh.n_claimed, bh.pi0, bh.threshold) == (10, 1.0, 0.001)
    assert (storey.n_claimed, storey.threshold) == (15, 0.04)  # BH at 0.05 / 0.6 also takes the 0.04s
    assert storey.expected_false_claims == pytest.approx(FDR * 15)
    assert storey.estimated_false_claims == pytest.approx(0.6 * 20 * 0.04)
    # No p-value above lambda is claimed, however high the level BH runs at.
    high = [0.001] * 19 + [0.6]
    assert benjamini_hochberg(high, 0.4 / storey_pi0(high)).all()
    assert claims(high, fdr=0.4, procedure="storey").n_claimed == 19


def test_claims_refuses_bad_settings():
    with pytest.raises(UsageError, match="fdr must lie strictly between 0 and 1"):
        claims([0.1], fdr=1.5)
    with pytest.raises(UsageError, match="unknown procedure 'holm'"):
        claims([0.1], procedure="holm")
    with pytest.raises(UsageError, match=r"p_values must lie in \[0, 1\]"):
        claims([1.2])


def _draw(seed: int, member_share: float, shift: float, n_reference: int = 1000, n_tested: int = 200):
    """One audit: conformal p-values of `n_tested` images (a `member_share` of them members, their scores
    `shift` standard deviations lower) against `n_reference` non-members; returns (p, is_member)."""
    rng = np.random.default_rng(seed)
    is_member = rng.random(n_tested) < member_share
    scores = rng.normal(0, 1, n_tested) - shift * is_member
    return conformal_p_values(rng.normal(0, 1, n_reference), scores), is_member


def _false_discovery_proportions(member_share: float, procedure: str, draws: int = 200):
    """Per seeded draw: the share of false claims (0 when nothing is claimed) and the share of members claimed."""
    fdp, power = [], []
    for seed in range(draws):
        p, is_member = _draw(seed, member_share, shift=2.5)
        claimed = claims(p, fdr=FDR, procedure=procedure).claimed if procedure != "naive" else p <= FDR
        fdp.append(np.sum(claimed & ~is_member) / max(claimed.sum(), 1))
        power.append(np.sum(claimed & is_member) / max(is_member.sum(), 1))
    return np.array(fdp), np.array(power)


@pytest.mark.parametrize("member_share", [0.2, 0.7])
def test_the_false_discovery_rate_is_controlled_over_many_draws(member_share):
    fdp = {}
    for procedure in ("bh", "storey"):
        fdp[procedure], power = _false_discovery_proportions(member_share, procedure)
        error = fdp[procedure].std(ddof=1) / np.sqrt(fdp[procedure].size)
        # BH's bound is pi0 * fdr (the share of non-members times the target); Storey's aims at fdr itself.
        target = (1 - member_share) * FDR if procedure == "bh" else FDR
        assert fdp[procedure].mean() <= target + 3 * error, (procedure, fdp[procedure].mean(), error)
        assert power.mean() > 0.4, (procedure, power.mean())
    assert fdp["bh"].mean() < fdp["storey"].mean()  # Storey spends the FDR that BH leaves unused


def test_a_per_image_threshold_does_not_control_the_false_discovery_rate():
    fdp, _ = _false_discovery_proportions(0.2, "naive")
    assert fdp.mean() > 2 * FDR, fdp.mean()  # what the procedures above are needed for


def test_strongly_separated_members_are_claimed():
    p, is_member = _draw(3, member_share=0.5, shift=8.0, n_reference=500, n_tested=100)
    for procedure in ("bh", "storey"):
        result = claims(p, procedure=procedure)
        assert np.sum(result.claimed & is_member) >= 0.95 * is_member.sum()
        assert result.n_claimed == result.claimed.sum() and result.n_tested == p.size


# ---------------------------------------------------------------- on a store and on the command line


def _audit_store(tmp_path):
    """A labelled synthetic store (members sit lower on lmem), one failed row, and a reference file of every
    other scored non-member plus an id the store lacks. Returns (store, reference file, member, reference)."""
    store = synthetic_store(tmp_path / "s.zarr", n=400, shard_size=100, failed=(5,), seed=4)
    member = store.column("member") == 1
    reference = ~member & (np.arange(member.size) % 2 == 0) & np.isfinite(store.column("lmem"))
    reference_file = tmp_path / "reference.txt"
    reference_file.write_text("\n".join([*store.column("id")[reference], "not-an-id"]) + "\n")
    return store, reference_file, member, reference


def test_claims_store_finds_members_and_never_claims_the_reference(tmp_path):
    store, reference_file, member, reference = _audit_store(tmp_path)
    result = claims_store(store.path, reference_file, score="lmem")
    ids = store.column("id")
    claimed = np.isin(ids, result["claimed_ids"])
    assert not (claimed & reference).any()
    assert claimed[member].mean() > 0.5, claimed[member].mean()
    assert (claimed & ~member).sum() <= max(2, FDR * 3 * claimed.sum())
    found = result["claims"]
    assert found["n_tested"] == 400 - reference.sum() - 1  # the failed row is not tested
    assert found["n_claimed"] == len(result["claimed_ids"]) == claimed.sum()
    assert result["n_reference_scored"] == reference.sum() and result["n_not_scored"] == 1
    assert result["reference_ids"]["n_not_in_store"] == 1
    images = {image["id"]: image for image in result["images"]}
    p_claimed = [images[image_id]["p_value"] for image_id in result["claimed_ids"]]
    assert p_claimed == sorted(p_claimed) and p_claimed[-1] == found["threshold"]
    assert all(image["p_value"] is not None and not image["claimed"] for image in images.values()
               if image["reference"])
    assert images["5"]["p_value"] is None and not images["5"]["claimed"]
    with pytest.raises(UsageError, match="reference file .* 1 not in the store .*--strict refuses"):
        claims_store(store.path, reference_file, score="lmem", strict=True)
    with pytest.raises(UsageError, match="has no score 'lcal'"):
        claims_store(store.path, reference_file)


def test_only_the_suspects_are_tested_and_a_smaller_test_claims_at_least_as_many_of_them(tmp_path):
    store, reference_file, member, reference = _audit_store(tmp_path)
    ids = store.column("id")
    suspects = ids[member & ~reference & np.isfinite(store.column("lmem"))][:40]
    suspect_file = tmp_path / "mine.txt"
    suspect_file.write_text("\n".join(suspects) + "\nnot-an-id\n")
    everyone = claims_store(store.path, reference_file, score="lmem")
    mine = claims_store(store.path, reference_file, score="lmem", suspect_file=suspect_file)
    assert mine["claims"]["n_tested"] == len(suspects) and set(mine["claimed_ids"]) <= set(suspects)
    assert mine["suspect_ids"]["n_not_in_store"] == 1
    claimed_before = set(everyone["claimed_ids"]) & set(suspects)
    assert claimed_before <= set(mine["claimed_ids"])  # BH over fewer tests has a threshold at least as high
    both = tmp_path / "both.txt"
    both.write_text(ids[reference][0] + "\n")
    with pytest.raises(UsageError, match="both suspect"):
        claims_store(store.path, reference_file, score="lmem", suspect_file=both)


def test_claims_store_reads_an_unfinished_store_only_when_asked(tmp_path):
    store = synthetic_store(tmp_path / "s.zarr", n=100, shard_size=50, pending_shards=(1,))
    reference_file = tmp_path / "reference.txt"
    reference_file.write_text("\n".join(str(i) for i in range(0, 50, 2)) + "\n")
    with pytest.raises(StoreError, match="not finished"):
        claims_store(store.path, reference_file, score="lrec")
    result = claims_store(store.path, reference_file, score="lrec", partial=True)
    assert result["partial"] and result["pending"] == 50
    assert len(result["images"]) == 50 and result["claims"]["n_tested"] == 25


def test_claims_command_prints_and_writes_json(tmp_path, capsys):
    store, reference_file, _, reference = _audit_store(tmp_path)
    out = tmp_path / "claims.json"
    command = ["claims", str(store.path), "--reference", str(reference_file), "--score", "lmem", "--json", str(out)]
    assert main(command) == 0
    printed = capsys.readouterr().out
    document = json.loads(out.read_text())
    found = document["claims"]
    assert (f"{found['n_claimed']} of {found['n_tested']} images claimed as members at FDR 5% (Benjamini-Hochberg): "
            f"expected false claims <= {found['expected_false_claims']:.3g}") in printed
    assert "reference file" in printed and f"not tested: {reference.sum()} reference images" in printed
    assert repr(document["claimed_ids"][0]) in printed
    assert {"id", "score", "p_value", "claimed", "reference"} == set(document["images"][0])
    assert main(command) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*command, "--overwrite", "--procedure", "storey"]) == 0
    assert json.loads(out.read_text())["claims"]["procedure"] == "storey"
    assert "(Storey, pi0 = " in capsys.readouterr().out
