"""The ablation reports committed under reports/ are what the committed code makes of the committed
run records under results/: each is rebuilt from results/<suite>/ and its tables must match byte
for byte. `harness report results/<suite>` rebuilds one in place: committed results are the one case
whose default report directory is the repository's reports/ (harness/report/__init__.py). (The
quickstart's and the search example's records are not committed: their reports are written with
`harness run ablations/quickstart.yaml --report-out reports/quickstart` and `harness search
ablations/search-quickstart-lr.yaml --report-out reports/search-quickstart-lr`.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.report import build_report
from harness.report.figures import batch_points
from harness.report.tables import batch_axis, summarize
from harness.report.verdicts import unlearned_arms
from harness.results import load_results, resolve_sources

ROOT = Path(__file__).resolve().parent.parent
PAPER_SUITES = (
    "roberta-table1-masking",
    "roberta-table2-formats",
    "roberta-table3-batch",
    "text-encoding",
    "roberta-vs-bert",
)
SHIPPED = [f"{name}.{scale}" for scale in ("tiny", "cpu") for name in PAPER_SUITES]


@pytest.mark.parametrize("suite", SHIPPED)
def test_committed_report_regenerates_from_results(suite: str, tmp_path: Path):
    results_dir = ROOT / "results" / suite
    assert (results_dir / "suite.json").is_file(), f"reports/{suite} has no run records in results/{suite}/"
    problems: list[str] = []
    results = load_results(resolve_sources([results_dir], ROOT / "results", problems=problems), problems)
    assert not problems, problems
    build_report(results, tmp_path)
    committed = ROOT / "reports" / suite
    for table in ("summary.csv", "comparisons.csv", "runs.csv"):
        regenerated = (tmp_path / table).read_text(encoding="utf-8")
        assert regenerated == (committed / table).read_text(encoding="utf-8"), f"reports/{suite}/{table} is stale"


def test_the_batch_figure_draws_the_control_as_a_level_not_at_an_arms_batch():
    # the control takes bsz-256's config (512 tokens per step) but trains on no batch at all
    results_dir = ROOT / "results" / "roberta-table3-batch.cpu"
    results = load_results(resolve_sources([results_dir], ROOT / "results"))
    summary = summarize(results, ["sst2.accuracy"])
    points, levels = batch_points(results, summary, "sst2.accuracy", batch_axis(results))
    assert list(points["arm"]) == ["bsz-256", "bsz-2k", "bsz-8k"]
    assert list(points["batch"]) == [512.0, 4096.0, 16384.0]
    assert list(levels["arm"]) == ["random-init"]


def test_only_a_pretrained_arm_at_the_unigram_floor_counts_as_not_having_learned_context():
    # bsz-8k: 440 steps, held-out accuracy 8.2-11.6% against 12.5%; the control sits there by design
    def unlearned(suite: str) -> set[str]:
        return unlearned_arms(load_results(resolve_sources([ROOT / "results" / suite], ROOT / "results")))

    assert unlearned("roberta-table3-batch.cpu") == {"bsz-8k"}
    assert unlearned("roberta-table1-masking.cpu") == set()
