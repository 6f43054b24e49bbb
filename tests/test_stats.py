"""Paired statistics against exact computations on constructed data."""

import itertools
import math

import numpy as np
import pytest

from koaml.stats import bootstrap_ci, mcnemar_p, paired, permutation_p


def test_mcnemar_matches_the_exact_binomial():
    # 10 discordant pairs, 8 favour the fine-tuned model: p = 2 * P(X <= 2), X ~ Bin(10, 0.5)
    base = np.array([1] * 2 + [0] * 8 + [1] * 30 + [0] * 10)
    tuned = np.array([0] * 2 + [1] * 8 + [1] * 30 + [0] * 10)
    exact = 2 * sum(math.comb(10, i) for i in range(3)) / 2**10
    assert mcnemar_p(base, tuned) == pytest.approx(exact)
    assert mcnemar_p(base, base) == 1.0


def test_permutation_p_matches_full_enumeration():
    diffs = np.array([0.3, -0.1, 0.25, 0.4, 0.05, -0.2, 0.35, 0.15, 0.1, 0.3, -0.05, 0.2])
    observed = abs(diffs.mean())
    flips = np.array(list(itertools.product([-1, 1], repeat=len(diffs))))
    exact = np.mean(np.abs((flips * diffs).mean(axis=1)) >= observed - 1e-12)
    # Monte-Carlo standard error with 10,000 resamples is at most 0.005
    assert permutation_p(diffs, n_resamples=10_000) == pytest.approx(exact, abs=0.02)


def test_bootstrap_ci_matches_the_exact_bootstrap_distribution():
    diffs = np.array([1.0, 0.0, 0.0, 1.0, -1.0, 1.0])
    n = len(diffs)
    means = np.array([diffs[list(i)].mean() for i in itertools.product(range(n), repeat=n)])
    exact = np.quantile(means, [0.025, 0.975])
    low, high = bootstrap_ci(diffs, n_resamples=20_000)
    assert (low, high) == pytest.approx(tuple(exact), abs=1e-9)


def test_paired_picks_the_test_and_flags_significance():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 300)
    better = np.where(rng.random(300) < 0.4, 1, base)
    result = paired(base.tolist(), better.tolist())
    assert result.test == "mcnemar" and result.significant and result.ci_low > 0
    assert result.delta == pytest.approx(better.mean() - base.mean())
    same = paired(base.tolist(), base.tolist())
    assert not same.significant and same.delta == 0
    graded = paired([0.1, 0.5, 0.3, 0.9], [0.2, 0.5, 0.4, 0.8])
    assert graded.test == "permutation" and graded.n == 4


def test_paired_needs_matching_items():
    with pytest.raises(ValueError, match="same non-empty items"):
        paired([1, 0], [1])
