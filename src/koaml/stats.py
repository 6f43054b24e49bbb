"""Paired statistics of a fine-tuned model against its base on the same benchmark items.

lm-eval's stderr treats the two scores as independent samples; they are not (same documents),
so the delta gets a paired bootstrap confidence interval and a paired test: McNemar's exact test
for 0/1 scores, a sign-flip permutation test otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 10_000
ALPHA = 0.05


@dataclass(frozen=True)
class PairedResult:
    n: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    test: str

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


def bootstrap_ci(diffs: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``diffs`` over resampled items."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diffs), size=(n_resamples, len(diffs)))
    means = diffs[idx].mean(axis=1)
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high)


def mcnemar_p(base: np.ndarray, tuned: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes."""
    only_base = int(np.sum((base == 1) & (tuned == 0)))
    only_tuned = int(np.sum((base == 0) & (tuned == 1)))
    n = only_base + only_tuned
    if n == 0:
        return 1.0
    k = min(only_base, only_tuned)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def permutation_p(diffs: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value for a zero mean of paired differences."""
    rng = np.random.default_rng(seed)
    observed = abs(diffs.mean())
    signs = rng.choice([-1.0, 1.0], size=(n_resamples, len(diffs)))
    extreme = np.sum(np.abs((signs * diffs).mean(axis=1)) >= observed - 1e-12)
    return float((extreme + 1) / (n_resamples + 1))


def is_binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def paired(base: list[float], tuned: list[float], seed: int = 0) -> PairedResult:
    """Compare per-item scores of the same items (same order) for the base and the fine-tuned model."""
    base_arr, tuned_arr = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if base_arr.shape != tuned_arr.shape or base_arr.size == 0:
        raise ValueError(f"paired scores need the same non-empty items (got {base_arr.size} and {tuned_arr.size})")
    diffs = tuned_arr - base_arr
    low, high = bootstrap_ci(diffs, seed=seed)
    if is_binary(base_arr) and is_binary(tuned_arr):
        p, test = mcnemar_p(base_arr, tuned_arr), "mcnemar"
    else:
        p, test = permutation_p(diffs, seed=seed), "permutation"
    return PairedResult(len(diffs), float(diffs.mean()), low, high, p, test)
