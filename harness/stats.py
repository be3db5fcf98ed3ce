"""Statistics for comparing arms over pretraining seeds, calibrated for the few seeds ablations have.

Pure functions of arrays, tested without any run on disk. The distributions come from SciPy and
statsmodels; nothing here hand-writes one.

- Paired comparisons (the same pretraining seed in both arms: same initialisation, same data
  order): the t-interval of the mean paired difference and the paired t-test. They come from one
  `scipy.stats.ttest_1samp` on the differences, so the interval excludes 0 exactly when p < alpha.
- Unpaired comparisons: Welch's interval and test (`scipy.stats.ttest_ind(equal_var=False)`).
- Not testable: fewer than two values on a side, or zero spread (every seed differs by the same
  amount): a t statistic is undefined there, and we say so rather than print p = 0 or 1.
- A percentile bootstrap over seeds is not used: with n seeds it can only return values between
  the smallest and largest per-seed difference, so at n = 3 its "95% interval" is [min, max] and
  covers the truth far less often than 95%. The bootstrap is used only where it resamples
  hundreds of units: the multi-bootstrap over seeds *and* dev examples (`multibootstrap`).
- Holm's step-down correction over a report's family of tests; the minimum detectable effect at
  80% power for a comparison's n and spread; the seeds needed to detect a given effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CI_LEVEL = 0.95
ALPHA = 0.05
POWER = 0.80
MULTIBOOTSTRAP_RESAMPLES = 1_000


@dataclass(frozen=True)
class Difference:
    """arm minus baseline over pretraining seeds: estimate, interval and test."""

    diff: float  # mean paired difference, or difference of means when unpaired
    ci_low: float
    ci_high: float
    p_value: float
    test: str  # "paired t", "Welch t", or "" when not testable
    n_arm: int
    n_baseline: int
    n_pairs: int
    baseline_mean: float
    spread: float  # std of the paired differences (paired) or the pooled std (Welch); NaN if not testable
    untestable: str = ""  # why no test was possible

    @property
    def testable(self) -> bool:
        return not self.untestable

    @property
    def excludes_zero(self) -> bool:
        return bool(self.ci_low > 0 or self.ci_high < 0)

    @property
    def relative(self) -> float:
        """diff as a fraction of the baseline mean."""
        return self.diff / abs(self.baseline_mean) if self.baseline_mean else math.nan


def mean_interval(values: np.ndarray | list[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """Student-t interval of a mean over seeds; NaN for fewer than two values or zero spread."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or _no_spread(values.std(ddof=1), values):
        return math.nan, math.nan
    low, high = stats.t.interval(level, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return float(low), float(high)


def _no_spread(spread: float, values: np.ndarray) -> bool:
    """Zero up to rounding: 0.612 + 0.01 − 0.612 is not exactly 0.01, and a t statistic over such
    rounding noise would be astronomically large."""
    return spread <= 1e-9 * max(1.0, float(np.max(np.abs(values))))


def compare_seeds(arm: dict[int, float], baseline: dict[int, float], level: float = CI_LEVEL) -> Difference:
    """Difference of arm and baseline over pretraining seeds (values keyed by seed).

    Paired on the seeds both arms ran when there are at least two of them, else Welch."""
    from scipy import stats

    shared = sorted(set(arm) & set(baseline))
    arm_values = np.array([arm[s] for s in sorted(arm)], dtype=np.float64)
    base_values = np.array([baseline[s] for s in sorted(baseline)], dtype=np.float64)
    base_mean = float(base_values.mean()) if len(base_values) else math.nan

    def untestable(diff: float, why: str, pairs: int = 0, test: str = "") -> Difference:
        return Difference(diff, math.nan, math.nan, math.nan, test, len(arm_values), len(base_values), pairs,
                          base_mean, math.nan, why)  # fmt: skip

    if not len(arm_values) or not len(base_values):
        return untestable(math.nan, "no finished runs on one side")
    if len(shared) >= 2:
        diffs = np.array([arm[s] - baseline[s] for s in shared], dtype=np.float64)
        spread = float(diffs.std(ddof=1))
        if _no_spread(spread, diffs):
            return untestable(float(diffs.mean()), f"zero spread: every one of {len(shared)} seeds differs by "
                              f"{diffs.mean():+.4g}", len(shared), "paired t")  # fmt: skip
        result = stats.ttest_1samp(diffs, 0.0)
        low, high = result.confidence_interval(level)
        return Difference(float(diffs.mean()), float(low), float(high), float(result.pvalue), "paired t",
                          len(arm_values), len(base_values), len(shared), base_mean, spread)  # fmt: skip
    diff = float(arm_values.mean() - base_values.mean())
    if len(arm_values) < 2 or len(base_values) < 2:
        return untestable(diff, f"n < 2 on a side ({len(arm_values)} vs {len(base_values)} seeds, "
                          f"{len(shared)} paired)")  # fmt: skip
    if _no_spread(arm_values.std(ddof=1), arm_values) and _no_spread(base_values.std(ddof=1), base_values):
        return untestable(diff, "zero spread: every seed of each arm has the same value", test="Welch t")
    result = stats.ttest_ind(arm_values, base_values, equal_var=False)
    low, high = result.confidence_interval(level)
    pooled = math.sqrt((arm_values.var(ddof=1) + base_values.var(ddof=1)) / 2)
    return Difference(diff, float(low), float(high), float(result.pvalue), "Welch t",
                      len(arm_values), len(base_values), 0, base_mean, pooled)  # fmt: skip


def holm(p_values: list[float], alpha: float = ALPHA) -> list[float]:
    """Holm-adjusted p-values (NaN entries are not part of the family and stay NaN)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(len(p), math.nan)
    tested = ~np.isnan(p)
    if tested.any():
        adjusted[tested] = multipletests(p[tested], alpha=alpha, method="holm")[1]
    return [float(v) for v in adjusted]


def minimum_detectable_effect(diff: Difference, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference (in the metric's units) this design detects with `power`: the
    standardised effect from statsmodels' power solver times the observed spread. NaN when the
    comparison was not testable."""
    from statsmodels.stats.power import TTestIndPower, TTestPower

    if not diff.testable or not diff.spread > 0:
        return math.nan
    if diff.test == "paired t":
        effect = TTestPower().solve_power(nobs=diff.n_pairs, alpha=alpha, power=power, alternative="two-sided")
    else:
        effect = TTestIndPower().solve_power(
            nobs1=diff.n_arm, ratio=diff.n_baseline / diff.n_arm, alpha=alpha, power=power, alternative="two-sided"
        )
    return float(effect) * diff.spread


MAX_SEEDS_NEEDED = 10_000  # past this, "more than 10,000": the effect is tiny against the spread


def seeds_needed(effect: float, spread: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Paired seeds needed to detect a true difference of `effect` with `power`, given the spread
    of paired differences observed; NaN when either is unknown or zero, inf past MAX_SEEDS_NEEDED."""
    from statsmodels.stats.power import TTestPower

    if not (spread > 0) or not effect or math.isnan(effect):
        return math.nan
    standardised = abs(effect) / spread
    analysis = TTestPower()
    if analysis.power(standardised, MAX_SEEDS_NEEDED, alpha) < power:
        return math.inf
    nobs = analysis.solve_power(effect_size=standardised, alpha=alpha, power=power, alternative="two-sided")
    return float(max(2, math.ceil(nobs)))


# ------------------------------------------------------------------------- multi-bootstrap


@dataclass(frozen=True)
class MultiBootstrap:
    """Distribution of (arm − baseline) under joint resampling of seeds and dev examples."""

    diff: float  # the point estimate on the data as observed
    ci_low: float
    ci_high: float
    p_value: float  # two-sided: twice the smaller share of replicates on either side of 0
    seeds: int
    examples: int
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        return bool(self.ci_low > 0 or self.ci_high < 0)


Metric = Callable[[np.ndarray, np.ndarray], float]  # (labels, predictions) -> score


def multibootstrap_statistic(
    arm: list[list[np.ndarray]],
    baseline: list[list[np.ndarray]],
    labels: np.ndarray,
    metric: Metric,
    seed_draw: np.ndarray,
    finetune_draws: np.ndarray,
    example_draw: np.ndarray,
) -> float:
    """One replicate: mean over the drawn pretraining seeds (and, within each, the drawn fine-tuning
    seeds) of the metric on the drawn dev examples, arm minus baseline. The same draws serve both
    arms: the design is paired in seeds and in examples.

    arm[s][f] is the prediction vector of pretraining seed s, fine-tuning seed f (same for
    baseline); finetune_draws[i] are the fine-tuning seed indices used for the i-th drawn seed."""
    gold = labels[example_draw]

    def side(predictions: list[list[np.ndarray]]) -> float:
        scores = [
            metric(gold, predictions[s][f][example_draw]) for s, draws in zip(seed_draw, finetune_draws) for f in draws
        ]
        return float(np.mean(scores))

    return side(arm) - side(baseline)


def multibootstrap(
    arm: list[list[np.ndarray]],
    baseline: list[list[np.ndarray]],
    labels: np.ndarray,
    metric: Metric,
    resamples: int = MULTIBOOTSTRAP_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> MultiBootstrap:
    """The multi-bootstrap of Sellam et al. (2022, MultiBERTs): resample pretraining seeds (paired
    across arms), fine-tuning seeds within each, and dev examples (shared by both arms) jointly,
    and read the interval off the percentiles of the replicate differences. Seeded: the same
    predictions give the same interval."""
    seeds = len(arm)
    if seeds != len(baseline) or seeds == 0:
        raise ValueError(f"multibootstrap: arms need the same pretraining seeds ({len(arm)} vs {len(baseline)})")
    finetune = len(arm[0])
    if any(len(runs) != finetune for runs in (*arm, *baseline)):
        raise ValueError("multibootstrap: every run needs the same number of fine-tuning seeds")
    examples = len(labels)
    rng = np.random.default_rng(seed)
    every_seed, every_finetune = np.arange(seeds), np.tile(np.arange(finetune), (seeds, 1))
    observed = multibootstrap_statistic(arm, baseline, labels, metric, every_seed, every_finetune, np.arange(examples))
    replicates = np.empty(resamples)
    for i in range(resamples):
        seed_draw = rng.integers(0, seeds, seeds)
        finetune_draws = rng.integers(0, finetune, (seeds, finetune))
        example_draw = rng.integers(0, examples, examples)
        replicates[i] = multibootstrap_statistic(arm, baseline, labels, metric, seed_draw, finetune_draws, example_draw)
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    p_value = min(1.0, 2 * min(np.mean(replicates <= 0), np.mean(replicates >= 0)))
    return MultiBootstrap(observed, float(low), float(high), float(p_value), seeds, examples, resamples)
