"""Statistics for comparing arms over seeds: bootstrap intervals and paired tests.

Pure functions of arrays of per-seed values, so they are tested without any run on disk. Every
bootstrap is seeded: the same results give the same report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000


def bootstrap_mean_ci(
    values: np.ndarray | list[float], level: float = CI_LEVEL, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean. NaN for fewer than two values: one seed says
    nothing about seed noise."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Difference:
    """arm minus baseline, over seeds."""

    diff: float  # difference of means
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # "paired t" over seeds present in both, "Welch t" otherwise, "" when untestable
    n_arm: int
    n_baseline: int
    n_pairs: int
    baseline_mean: float

    @property
    def excludes_zero(self) -> bool:
        return bool(self.ci_low > 0 or self.ci_high < 0)

    @property
    def relative(self) -> float:
        """diff as a fraction of the baseline mean."""
        return self.diff / abs(self.baseline_mean) if self.baseline_mean else math.nan


def _t_test_p(t_stat: float, dof: float) -> float:
    from scipy import stats

    return float(2 * stats.t.sf(abs(t_stat), dof))


def _paired_p(diffs: np.ndarray) -> float:
    """Two-sided paired t-test on the per-seed differences. Identical differences on every seed
    (zero spread: accuracies on a small dev set can tie) leave the test undefined: NaN, untestable,
    rather than a p of 0 from two tied seeds."""
    spread = diffs.std(ddof=1)
    if spread == 0:
        return 1.0 if diffs.mean() == 0 else math.nan
    return _t_test_p(diffs.mean() / (spread / math.sqrt(len(diffs))), len(diffs) - 1)


def _welch_p(arm: np.ndarray, baseline: np.ndarray) -> float:
    var_a, var_b = arm.var(ddof=1) / len(arm), baseline.var(ddof=1) / len(baseline)
    if var_a + var_b == 0:
        return 1.0 if arm.mean() == baseline.mean() else math.nan
    t_stat = (arm.mean() - baseline.mean()) / math.sqrt(var_a + var_b)
    dof = (var_a + var_b) ** 2 / (var_a**2 / (len(arm) - 1) + var_b**2 / (len(baseline) - 1))
    return _t_test_p(t_stat, dof)


def compare_seeds(
    arm: dict[int, float],
    baseline: dict[int, float],
    level: float = CI_LEVEL,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> Difference:
    """Difference of means (arm - baseline) with a bootstrap CI and a t-test.

    Runs of two arms with the same pretraining seed share their initialisation and data order, so
    where at least two seeds pair up the comparison is paired: the bootstrap resamples seeds and
    the test is a paired t-test, both on the seeds present in both arms. Otherwise the two groups
    are resampled independently and compared with Welch's t-test."""
    shared = sorted(set(arm) & set(baseline))
    arm_values = np.array([arm[s] for s in sorted(arm)], dtype=np.float64)
    base_values = np.array([baseline[s] for s in sorted(baseline)], dtype=np.float64)
    base_mean = float(base_values.mean()) if len(base_values) else math.nan
    if not len(arm_values) or not len(base_values):
        return Difference(math.nan, math.nan, math.nan, math.nan, "", len(arm_values), len(base_values), 0, base_mean)
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2
    if len(shared) >= 2:
        diffs = np.array([arm[s] - baseline[s] for s in shared], dtype=np.float64)
        boot = diffs[rng.integers(0, len(diffs), size=(resamples, len(diffs)))].mean(axis=1)
        low, high = np.quantile(boot, [tail, 1 - tail])
        return Difference(
            float(diffs.mean()), float(low), float(high), _paired_p(diffs), "paired t",
            len(arm_values), len(base_values), len(shared), base_mean,
        )  # fmt: skip
    diff = float(arm_values.mean() - base_values.mean())
    if len(arm_values) < 2 or len(base_values) < 2:
        return Difference(diff, math.nan, math.nan, math.nan, "", len(arm_values), len(base_values), 0, base_mean)
    boot_arm = arm_values[rng.integers(0, len(arm_values), size=(resamples, len(arm_values)))].mean(axis=1)
    boot_base = base_values[rng.integers(0, len(base_values), size=(resamples, len(base_values)))].mean(axis=1)
    low, high = np.quantile(boot_arm - boot_base, [tail, 1 - tail])
    return Difference(
        diff, float(low), float(high), _welch_p(arm_values, base_values), "Welch t",
        len(arm_values), len(base_values), 0, base_mean,
    )  # fmt: skip
