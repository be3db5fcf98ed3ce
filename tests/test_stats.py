"""The report's statistics are calibrated: simulated comparisons with a known truth, at the seed
counts ablations have, and the multi-bootstrap against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.records import RunRecord
from harness.report.verdicts import compare
from harness.results import load_results, resolve_sources
from harness.stats import (
    compare_seeds,
    holm,
    minimum_detectable_effect,
    multibootstrap,
    multibootstrap_statistic,
    seeds_needed,
)
from harness.suite import ComparisonSpec

SIMULATIONS = 2_000
SEED_SPREAD = 1.0  # how much pretraining seeds differ (shared by both arms of a pair)
NOISE = 0.3  # what is left per run once the seed is fixed
MONTE_CARLO = 3 * math.sqrt(0.05 * 0.95 / SIMULATIONS)  # three standard errors of a 5% rate


def simulate(n: int, effect: float, rng: np.random.Generator) -> tuple[dict[int, float], dict[int, float]]:
    """Per-seed values of arm and baseline: a shared seed effect, the true effect, independent noise."""
    seed_effects = rng.normal(0, SEED_SPREAD, n)
    arm = {s: seed_effects[s] + effect + rng.normal(0, NOISE) for s in range(n)}
    baseline = {s: seed_effects[s] + rng.normal(0, NOISE) for s in range(n)}
    return arm, baseline


@pytest.mark.parametrize("n", [3, 10])
@pytest.mark.parametrize("effect", [0.0, 0.5])
def test_false_claims_and_coverage_at_few_seeds(n: int, effect: float):
    rng = np.random.default_rng(1000 * n + int(10 * effect))
    claims = covered = 0
    for _ in range(SIMULATIONS):
        diff = compare_seeds(*simulate(n, effect, rng))
        assert diff.test == "paired t" and diff.n_pairs == n
        claims += diff.p_value < 0.05
        covered += diff.ci_low <= effect <= diff.ci_high
        assert (diff.p_value < 0.05) == diff.excludes_zero, "interval and test agree by construction"
    if effect == 0:
        assert claims / SIMULATIONS <= 0.05 + MONTE_CARLO, f"{claims} false claims in {SIMULATIONS}"
    assert covered / SIMULATIONS >= 0.93, f"95% interval covered the truth in {covered / SIMULATIONS:.1%}"


def test_the_old_percentile_bootstrap_would_have_failed_this():
    """The check above has teeth: a percentile bootstrap over 3 seeds covers far less than 93%."""
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(500):
        arm, baseline = simulate(3, 0.0, rng)
        diffs = np.array([arm[s] - baseline[s] for s in range(3)])
        means = diffs[rng.integers(0, 3, (2_000, 3))].mean(axis=1)
        low, high = np.quantile(means, [0.025, 0.975])
        covered += low <= 0 <= high
    assert covered / 500 < 0.85


def test_the_minimum_detectable_effect_is_detected_80_percent_of_the_time():
    rng = np.random.default_rng(3)
    n = 5
    spread = math.sqrt(2) * NOISE  # the std of a paired difference in `simulate`
    reference = compare_seeds({s: spread * z for s, z in enumerate([1.2, -0.4, 0.3, -1.1, 0.0])}, dict.fromkeys(
        range(n), 0.0))  # fmt: skip
    mde = minimum_detectable_effect(reference) / reference.spread * spread
    detected = sum(compare_seeds(*simulate(n, mde, rng)).p_value < 0.05 for _ in range(SIMULATIONS))
    assert 0.80 - 0.04 <= detected / SIMULATIONS <= 0.80 + 0.04
    # and the seed count that power calculation asks for detects that effect with power >= 80%
    assert seeds_needed(mde, spread) == n


def test_holm_matches_a_hand_computation():
    # sorted 0.01, 0.02, 0.04 get factors 3, 2, 1 and stay monotone: 0.03, 0.04, 0.04
    assert holm([0.04, 0.01, 0.02, math.nan]) == pytest.approx([0.04, 0.03, 0.04, math.nan], nan_ok=True)


def test_untestable_designs_say_why():
    assert "n < 2" in compare_seeds({0: 1.0}, {0: 0.5, 1: 0.7}).untestable
    assert "zero spread" in compare_seeds({0: 1.1, 1: 1.2}, {0: 1.0, 1: 1.1}).untestable
    assert "no finished runs" in compare_seeds({}, {0: 1.0}).untestable
    assert math.isnan(minimum_detectable_effect(compare_seeds({0: 1.1, 1: 1.2}, {0: 1.0, 1: 1.1})))


def accuracy(gold: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.mean(gold == predicted))


def test_one_multibootstrap_replicate_by_hand():
    labels = np.array([1, 0, 1, 1])
    # two pretraining seeds, one fine-tuning seed each
    arm = [[np.array([1, 0, 1, 0])], [np.array([1, 1, 1, 1])]]
    baseline = [[np.array([0, 0, 0, 0])], [np.array([1, 0, 0, 1])]]
    # draw seed 1 twice and examples 0, 0, 2, 3: gold = 1, 1, 1, 1
    # arm seed 1 predicts 1, 1, 1, 1 -> 1.0; baseline seed 1 predicts 1, 1, 0, 1 -> 0.75
    value = multibootstrap_statistic(arm, baseline, labels, accuracy, np.array([1, 1]), np.array([[0], [0]]),
                                     np.array([0, 0, 2, 3]))  # fmt: skip
    assert value == pytest.approx(1.0 - 0.75)
    # the point estimate: arm 0.75 and 0.75, baseline 0.25 and 0.75
    result = multibootstrap(arm, baseline, labels, accuracy, resamples=200)
    assert result.diff == pytest.approx(0.75 - 0.5)


def test_multibootstrap_distribution_by_hand():
    """One seed, two examples: the arm gets example 0 right, the baseline neither. The four
    equally likely example draws give differences 1, 1/2, 1/2, 0, so P(diff <= 0) = 1/4: the
    two-sided p is 1/2 and the 95% interval is [0, 1]."""
    labels = np.array([1, 1])
    arm, baseline = [[np.array([1, 0])]], [[np.array([0, 0])]]
    result = multibootstrap(arm, baseline, labels, accuracy, resamples=4_000, seed=11)
    assert result.diff == pytest.approx(0.5)
    assert (result.ci_low, result.ci_high) == (0.0, 1.0)
    assert result.p_value == pytest.approx(0.5, abs=0.05)
    again = multibootstrap(arm, baseline, labels, accuracy, resamples=4_000, seed=11)
    assert again == result, "seeded"


def test_the_report_claims_no_more_than_chance_on_fabricated_records(tmp_path):
    """Run records with a known truth through the report's own reader and verdicts: 30 arms with no
    effect and 3 with a large one, 4 seeds each. Holm keeps false claims rare across the family."""
    rng = np.random.default_rng(5)
    seeds = range(4)
    seed_effects = rng.normal(0, SEED_SPREAD, len(seeds))
    truth = {f"null{i}": 0.0 for i in range(30)} | {f"real{i}": 3.0 for i in range(3)}
    suite_dir = tmp_path / "results" / "fabricated"
    for arm, effect in {"base": 0.0, **truth}.items():
        for seed in seeds:
            run_id = f"{arm}-{seed}"
            record = RunRecord(suite_dir / run_id)
            header = {"suite": "fabricated", "arm": arm, "seed": seed, "run_id": run_id}
            record.start(header, {"train": {"seed": seed}})
            value = seed_effects[seed] + effect + rng.normal(0, NOISE)
            record.finish({**header, "metrics": {"score": float(value)}})
    problems: list[str] = []
    results = load_results(resolve_sources([suite_dir], tmp_path / "results", problems=problems), problems)
    table = compare(results, [ComparisonSpec(arm=arm, baseline="base") for arm in truth], ["score"])
    claimed = set(table.loc[table["winner"] != "", "arm"])
    assert {"real0", "real1", "real2"} <= claimed
    assert not {a for a in claimed if a.startswith("null")}
    assert (table["p_holm"] >= table["p_value"]).all()
    nulls = table[table["arm"].str.startswith("null")]
    assert (nulls["verdict"] == "no difference detected").all() and (nulls["mde"] > 0).all()
