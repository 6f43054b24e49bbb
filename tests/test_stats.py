"""Paired statistics against exact computations on constructed data, and scipy.stats (which now computes the tests,
the bootstrap interval and Benjamini-Hochberg) against the formulas we used before it, on fixed inputs."""

import itertools
import math
import warnings

import numpy as np
import pytest

from koaml.stats import (
    adjust_p_values,
    bootstrap_ci,
    mcnemar_p,
    minimum_detectable_effect,
    paired,
    permutation_p,
    replicated,
    two_level_bootstrap,
)


def test_mcnemar_matches_the_exact_binomial():
    # 10 discordant pairs, 8 favour the fine-tuned model: p = 2 * P(X <= 2), X ~ Bin(10, 0.5)
    base = np.array([1] * 2 + [0] * 8 + [1] * 30 + [0] * 10)
    tuned = np.array([0] * 2 + [1] * 8 + [1] * 30 + [0] * 10)
    exact = 2 * sum(math.comb(10, i) for i in range(3)) / 2**10
    assert mcnemar_p(base, tuned) == pytest.approx(exact)
    assert mcnemar_p(base, base) == 1.0


def sign_flip_enumeration(diffs):
    """The exact sign-flip p-value: the share of all 2^n sign flips whose |mean| reaches the observed one."""
    flips = np.array(list(itertools.product([-1, 1], repeat=len(diffs))))
    return np.mean(np.abs((flips * diffs).mean(axis=1)) >= abs(diffs.mean()) - 1e-12)


def previous_permutation_p(diffs, n_resamples=10_000, seed=0):
    """Our sign-flip Monte Carlo before scipy.stats.permutation_test, kept as the reference."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_resamples, len(diffs)))
    extreme = np.sum(np.abs((signs * diffs).mean(axis=1)) >= abs(diffs.mean()) - 1e-12)
    return float((extreme + 1) / (n_resamples + 1))


def test_permutation_p_matches_full_enumeration():
    # 12 items: 4,096 sign flips, fewer than the resamples, so scipy enumerates them all: the exact p-value
    diffs = np.array([0.3, -0.1, 0.25, 0.4, 0.05, -0.2, 0.35, 0.15, 0.1, 0.3, -0.05, 0.2])
    assert permutation_p(diffs) == pytest.approx(sign_flip_enumeration(diffs), rel=1e-12)
    # 15 items: 32,768 flips, so 10,000 random ones: Monte-Carlo standard error at most 0.005, like ours before
    diffs = np.array([0.3, -0.1, 0.25, 0.4, 0.05, -0.2, 0.35, -0.15, 0.1, 0.3, -0.05, 0.2, -0.4, 0.1, -0.3])
    exact = sign_flip_enumeration(diffs)
    assert 0.05 < exact < 0.5
    assert permutation_p(diffs) == pytest.approx(exact, abs=0.02)
    assert previous_permutation_p(diffs) == pytest.approx(exact, abs=0.02)
    assert permutation_p(diffs, seed=1) == pytest.approx(previous_permutation_p(diffs, seed=1), abs=0.03)
    assert permutation_p(np.array([0.4])) == 1.0 and permutation_p(np.zeros(40)) == 1.0
    strong = np.random.default_rng(2).normal(0.3, 0.5, 400)  # far beyond every flip: the smallest p, 1/10,001
    assert permutation_p(strong) == previous_permutation_p(strong) == pytest.approx(1 / 10_001)


def previous_mcnemar_p(only_base, only_tuned):
    """Our exact binomial sum before scipy.stats.binomtest, kept as the reference."""
    n = only_base + only_tuned
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_base, only_tuned) + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_mcnemar_gives_the_numbers_of_the_exact_binomial_sum():
    cases = [(n, k) for n in range(1, 41) for k in range(n + 1)] + [
        (n, k) for n in (500, 1000) for k in range(0, n, 19)
    ]
    for n, k in cases:
        base = np.array([1] * k + [0] * (n - k) + [1, 0])  # two concordant items, which do not count
        tuned = np.array([0] * k + [1] * (n - k) + [1, 0])
        assert mcnemar_p(base, tuned) == pytest.approx(previous_mcnemar_p(k, n - k), rel=1e-12, abs=1e-300)


def previous_bootstrap_ci(diffs, n_resamples=10_000, seed=0, alpha=0.05):
    """Our percentile bootstrap before scipy.stats.bootstrap, kept as the reference: the same draws."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diffs), size=(n_resamples, len(diffs)))
    return tuple(np.quantile(diffs[idx].mean(axis=1), [alpha / 2, 1 - alpha / 2]))


def test_bootstrap_ci_gives_the_numbers_of_our_previous_bootstrap():
    """scipy draws the same resamples from the same seed, so the published intervals stay the same."""
    rng = np.random.default_rng(5)
    cases = [rng.choice([-1.0, 0.0, 1.0], size=200), rng.integers(0, 2, 37).astype(float), rng.normal(0.1, 1, 301)]
    for i, diffs in enumerate(cases):
        for alpha in (0.05, 0.01, 0.1):
            expected = previous_bootstrap_ci(diffs, seed=i, alpha=alpha)
            assert bootstrap_ci(diffs, seed=i, alpha=alpha) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert bootstrap_ci(np.array([0.25])) == (0.25, 0.25)  # one item: scipy needs two; every resample is that item
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy warning about BCa for a NaN score
        assert np.isnan(bootstrap_ci(np.array([1.0, np.nan, 0.0]))).all()


def test_paired_picks_the_test_and_flags_significance():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 300)
    better = np.where(rng.random(300) < 0.4, 1, base)
    result = paired(base.tolist(), better.tolist())
    assert result.test == "mcnemar" and result.p_value < 0.05 and result.ci_low > 0
    assert result.delta == pytest.approx(better.mean() - base.mean())
    same = paired(base.tolist(), base.tolist())
    assert same.p_value == 1.0 and same.delta == 0
    graded = paired([0.1, 0.5, 0.3, 0.9], [0.2, 0.5, 0.4, 0.8])
    assert graded.test == "permutation" and graded.n == 4


def test_paired_needs_matching_items():
    with pytest.raises(ValueError, match="same non-empty items"):
        paired([1, 0], [1])


def previous_benjamini_hochberg(p):
    """Our step-up formula before scipy.stats.false_discovery_control, kept as the reference."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def test_benjamini_hochberg_gives_the_numbers_of_the_step_up_formula_and_holm_the_textbook():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2, 0.6, 0.011])
    assert adjust_p_values(p, "bh") == pytest.approx(previous_benjamini_hochberg(p), rel=1e-12)
    many = np.random.default_rng(3).random(520) ** 3
    assert adjust_p_values(many, "bh") == pytest.approx(previous_benjamini_hochberg(many), rel=1e-12)
    # untested rows (NaN) are not counted: the others are adjusted as a family of two
    assert adjust_p_values([0.01, np.nan, 0.04], "bh")[[0, 2]] == pytest.approx([0.02, 0.04])
    assert np.isnan(adjust_p_values([0.01, np.nan, 0.04], "bh")[1])
    assert np.isnan(adjust_p_values([np.nan, np.nan], "bh")).all()
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone: 0.02, 0.03, 0.06, 0.06
    assert adjust_p_values([0.01, 0.04, 0.03, 0.005], "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with_gaps = adjust_p_values([0.01, np.nan, 0.04], "holm")  # untested rows are not counted
    assert np.isnan(with_gaps[1]) and with_gaps[[0, 2]] == pytest.approx([0.02, 0.04])
    assert adjust_p_values(p, "none") == pytest.approx(p)
    assert adjust_p_values([0.9, 0.8], "holm") == pytest.approx([1.0, 1.0])  # capped at 1


def simulate_pairs(rng, n, p_fixed, p_broken, p_right=0.3):
    """Paired 0/1 scores of n items: a share p_fixed wrong -> right, p_broken right -> wrong."""
    u = rng.random(n)
    base = (u < p_right + p_broken).astype(float)
    tuned = base.copy()
    tuned[u < p_broken] = 0.0
    tuned[(u >= p_right + p_broken) & (u < p_right + p_broken + p_fixed)] = 1.0
    return base, tuned


def test_corrections_keep_false_discoveries_in_check_at_scale():
    """520 comparisons (40 runs x 13 benchmarks) of which 500 have no effect: raw p < 0.05 finds about 25 false
    positives; Benjamini-Hochberg keeps the false discovery rate near 5%, Holm the chance of any near 5%."""
    rng = np.random.default_rng(0)
    effects = [0.15] * 20 + [0.0] * 500
    p = np.array([mcnemar_p(*simulate_pairs(rng, 300, 0.05 + e, 0.05)) for e in effects])
    real = np.arange(520) < 20
    raw, bh, holm = p < 0.05, adjust_p_values(p, "bh") < 0.05, adjust_p_values(p, "holm") < 0.05
    assert 12 <= (raw & ~real).sum() <= 40
    assert (bh & ~real).sum() <= 3 and (bh & real).sum() >= 15
    assert (holm & ~real).sum() <= 1 and (holm & real).sum() >= 10


def test_minimum_detectable_effect_has_the_stated_power():
    """Items whose true delta equals the MDE are found significant in about 80% of simulated evaluations."""
    rng = np.random.default_rng(1)
    n, discordant = 400, 0.2
    planning = simulate_pairs(rng, 100_000, 0.15, 0.05)  # the variability of such comparisons
    mde = minimum_detectable_effect(planning[1] - planning[0]) * np.sqrt(100_000 / n)
    p_fixed, p_broken = (discordant + mde) / 2, (discordant - mde) / 2
    found = [mcnemar_p(*simulate_pairs(rng, n, p_fixed, p_broken)) < 0.05 for _ in range(1000)]
    assert 0.72 <= np.mean(found) <= 0.88
    assert minimum_detectable_effect(np.zeros(100)) == pytest.approx(2.8016 * 0.1 / 10, rel=1e-3)  # one item's change
    assert minimum_detectable_effect(np.zeros(100), alpha=0.01, power=0.9) > minimum_detectable_effect(np.zeros(100))


def test_two_level_bootstrap_resamples_seeds_then_items():
    # two seeds whose items all moved by 0 and by 1: only the draw of seeds varies; the resampled mean is 0, 0.5
    # or 1 with probabilities 1/4, 1/2, 1/4, so the 95% interval is [0, 1] and the spread sqrt(1/8)
    means = two_level_bootstrap(np.array([[0.0] * 50, [1.0] * 50]), n_resamples=20_000)
    assert set(np.round(means, 6)) == {0.0, 0.5, 1.0}
    assert np.quantile(means, [0.025, 0.975]) == pytest.approx([0.0, 1.0])
    assert np.std(means) == pytest.approx(np.sqrt(1 / 8), rel=0.03)
    # one seed: the ordinary item bootstrap of its mean
    one = np.random.default_rng(3).normal(0.1, 1.0, size=(1, 400))
    assert np.std(two_level_bootstrap(one)) == pytest.approx(one.std() / 20, rel=0.05)


def test_replicated_interval_covers_the_true_effect_across_seeds():
    """Seeds with their own luck (sd 3 points around a true +5) on 200 shared items: the two-level interval
    covers +5 in most simulated experiments, where an item-only interval around one seed would not."""
    rng = np.random.default_rng(7)
    covered, item_only = 0, 0
    for _ in range(100):
        seed_effects = 0.05 + rng.normal(0, 0.03, size=5)
        diffs = np.array([rng.normal(e, 0.3, size=200) for e in seed_effects])
        result = replicated(diffs, n_resamples=2000)
        covered += result.ci_low <= 0.05 <= result.ci_high
        low, high = bootstrap_ci(diffs[0], n_resamples=2000)
        item_only += low <= 0.05 <= high
    assert covered >= 80 and covered > item_only
    result = replicated(np.array([[1.0] * 30, [1.0] * 30, [1.0] * 30]))
    assert result.delta == 1.0 and result.p_value < 0.001 and result.seed_sd == 0.0 and result.seeds == 3
    assert replicated(np.zeros((3, 30))).p_value == 1.0
