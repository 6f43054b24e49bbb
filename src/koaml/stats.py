"""Paired statistics of a fine-tuned model against its base on the same benchmark items.

lm-eval's stderr treats the two scores as independent samples; they are not (same documents),
so the delta gets a paired bootstrap confidence interval and a paired test: McNemar's exact test
for 0/1 scores, a sign-flip permutation test otherwise. Across a whole comparison table the p-values
are adjusted for multiple comparisons (Benjamini-Hochberg or Holm), and each row gets the minimum
detectable effect: the smallest true delta its items would show as significant with the chosen power.

The tests, the single-level bootstrap and Benjamini-Hochberg are scipy.stats's (``binomtest``, ``permutation_test``,
``bootstrap``, ``false_discovery_control``); Holm, the two-level bootstrap and the minimum detectable effect are
ours, as scipy has no equivalent of them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import stats

N_RESAMPLES = 10_000
ALPHA = 0.05
POWER = 0.8
CORRECTIONS = ("bh", "holm", "none")


@dataclass(frozen=True)
class PairedResult:
    n: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str
    mde: float  # minimum detectable effect at ALPHA and POWER (see minimum_detectable_effect)


def bootstrap_ci(
    diffs: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0, alpha: float = ALPHA
) -> tuple[float, float]:
    """The (1 - alpha) percentile interval of the mean of ``diffs`` over resampled items (95% by default)."""
    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2:  # scipy needs two items; every resample of one item is that item
        return float(diffs.mean()), float(diffs.mean())
    with warnings.catch_warnings():  # scipy's warning for a NaN interval speaks of BCa, which this is not
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (diffs,),
            np.mean,
            n_resamples=n_resamples,
            confidence_level=1 - alpha,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mcnemar_p(base: np.ndarray, tuned: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes: the discordant pairs against Bin(n, 1/2)."""
    only_base = int(np.sum((base == 1) & (tuned == 0)))
    only_tuned = int(np.sum((base == 0) & (tuned == 1)))
    if only_base + only_tuned == 0:
        return 1.0
    return float(stats.binomtest(min(only_base, only_tuned), only_base + only_tuned, 0.5).pvalue)


def _abs_mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.abs(np.mean(x, axis=axis))


def permutation_p(diffs: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value for a zero mean of paired differences: the share of sign flips
    whose |mean| reaches the observed one (exact over every flip when there are at most ``n_resamples``)."""
    if len(diffs) < 2:  # scipy needs two items; flipping one item's sign leaves its |mean| as it is
        return 1.0
    result = stats.permutation_test(
        (np.asarray(diffs, dtype=float),),
        _abs_mean,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="greater",
        batch=1000,
        rng=np.random.default_rng(seed),
    )
    return float(result.pvalue)


def is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def minimum_detectable_effect(diffs: np.ndarray, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference a two-sided paired test at ``alpha`` detects with probability ``power``
    on ``len(diffs)`` items (ours: scipy has no power analysis): (z_{1-alpha/2} + z_power) * sd / sqrt(n), with the standard deviation of the paired
    differences observed here (at least that of one item in ``n`` changing by 1, so that identical outputs do
    not claim a detectable effect of 0)."""
    n = len(diffs)
    sd = max(float(np.std(diffs, ddof=1)) if n > 1 else 0.0, 1 / math.sqrt(n))
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * sd / math.sqrt(n)


def adjust_p_values(p_values, method: str = "bh") -> np.ndarray:
    """p-values adjusted for multiple comparisons (NaN stays NaN and is not counted): ``bh`` (Benjamini-Hochberg,
    false discovery rate), ``holm`` (Holm-Bonferroni, family-wise error) or ``none``."""
    p = np.asarray(p_values, dtype=float)
    out = p.copy()
    tested = ~np.isnan(p)
    m = int(tested.sum())
    if method == "none" or m == 0:
        return out
    if method == "bh":
        out[tested] = stats.false_discovery_control(p[tested], method="bh")
    elif method == "holm":  # ours: scipy has no Holm
        order = np.argsort(p[tested], kind="stable")
        adjusted = np.maximum.accumulate(p[tested][order] * (m - np.arange(m)))
        values = np.empty(m)
        values[order] = np.minimum(adjusted, 1.0)
        out[tested] = values
    else:
        raise ValueError(f"unknown correction {method!r}; expected one of {', '.join(CORRECTIONS)}")
    return out


def two_level_bootstrap(
    diffs: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0, chunk: int = 500
) -> np.ndarray:
    """Ours: scipy's bootstrap resamples one level. Bootstrap means of paired differences from seed replicates
    (``diffs``: seeds x items): each resample
    draws the seeds with replacement, then within each drawn seed the items with replacement, so that the
    spread includes both the training seed's luck and the benchmark's finite items."""
    rng = np.random.default_rng(seed)
    n_seeds, n_items = diffs.shape
    means = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        seeds = rng.integers(0, n_seeds, size=(size, n_seeds, 1))
        items = rng.integers(0, n_items, size=(size, n_seeds, n_items))
        means.append(diffs[seeds, items].mean(axis=(1, 2)))
    return np.concatenate(means)


@dataclass(frozen=True)
class ReplicatedResult:
    seeds: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    mde: float
    seed_sd: float  # standard deviation of the per-seed deltas


def replicated(
    diffs: np.ndarray, seed: int = 0, alpha: float = ALPHA, power: float = POWER, n_resamples: int = N_RESAMPLES
) -> ReplicatedResult:
    """Mean delta of seed replicates with its two-level bootstrap interval, a two-sided bootstrap p-value (twice
    the share of resampled means on the other side of 0), and the minimum detectable effect from the
    bootstrap standard error."""
    diffs = np.asarray(diffs, dtype=float)
    means = two_level_bootstrap(diffs, n_resamples, seed=seed)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    beyond = min(int(np.sum(means <= 0)), int(np.sum(means >= 0)))
    p = min(1.0, 2 * (beyond + 1) / (len(means) + 1))
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    per_seed = diffs.mean(axis=1)
    sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
    return ReplicatedResult(len(diffs), float(diffs.mean()), float(low), float(high), p, z * float(np.std(means)), sd)


def paired(
    base: list[float], tuned: list[float], seed: int = 0, alpha: float = ALPHA, power: float = POWER
) -> PairedResult:
    """Compare per-item scores of the same items (same order) for the base and the fine-tuned model."""
    base_arr, tuned_arr = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if base_arr.shape != tuned_arr.shape or base_arr.size == 0:
        raise ValueError(f"paired scores need the same non-empty items (got {base_arr.size} and {tuned_arr.size})")
    diffs = tuned_arr - base_arr
    low, high = bootstrap_ci(diffs, seed=seed, alpha=alpha)
    if is_binary(base_arr) and is_binary(tuned_arr):
        p, test = mcnemar_p(base_arr, tuned_arr), "mcnemar"
    else:
        p, test = permutation_p(diffs, seed=seed), "permutation"
    return PairedResult(
        len(diffs), float(diffs.mean()), low, high, p, test, minimum_detectable_effect(diffs, alpha, power)
    )
