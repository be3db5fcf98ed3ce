"""Reports from synthetic run records with known effects: statistics, flags, figures, HTML, bad records."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.config import ConfigError
from harness.paper import load_paper_tables, paper_deltas
from harness.records import RunRecord, read_jsonl
from harness.report import build_report
from harness.report.content import _wall_time
from harness.results import load_results, resolve_sources
from harness.stats import compare_seeds, mean_interval
from harness.suite import load_suite

SEEDS = [0, 1, 2, 3, 4]
# per-seed baseline accuracy; B is better by a fixed margin plus small seed noise, C is identical to A
BASELINE = {0: 0.612, 1: 0.655, 2: 0.631, 3: 0.598, 4: 0.640}
MARGIN = 0.05
B_NOISE = {0: 0.002, 1: -0.003, 2: 0.001, 3: 0.000, 4: -0.001}


def write_record(
    suite_dir: Path,
    arm: str,
    seed: int,
    metrics: dict[str, float] | None,
    config: dict | None = None,
    state: str = "done",
    error: str = "",
    suite: str = "fake",
) -> Path:
    """A run record as `harness run` leaves it, with chosen metrics and a short training curve."""
    run_id = f"{arm}-{seed}"
    record = RunRecord(suite_dir / run_id)
    header = {"suite": suite, "arm": arm, "seed": seed, "run_id": run_id}
    config = config or {"masking": {"kind": arm}, "train": {"seed": seed, "tokens_per_step": 1024}}
    record.start(header, config)
    for step in (10, 20, 30):
        record.append_metrics({"step": step, "tokens": step * 1000 + seed, "train_loss": 5.0 - step / 10})
    record.append_metrics({"step": 30, "tokens": 30000, "heldout_loss": 3.0, "heldout_ppl": math.exp(3.0)})
    if state == "done":
        record.finish({**header, "metrics": metrics, "budget": {"tokens": 30000, "steps": 30, "epochs": 1.5},
                       "wall_s": 12.0})  # fmt: skip
    else:
        record.set_status(state, error=error)
    return record.dir


def write_suite_dir(root: Path, arms: list[str] | None = None, seeds: list[int] = SEEDS, name: str = "fake") -> Path:
    """Arms A (baseline), B (A + MARGIN), C (= A) on accuracy; heldout_ppl alongside."""
    suite_dir = root / "results" / name
    for arm in arms or ["A", "B", "C"]:
        for seed in seeds:
            accuracy = BASELINE[seed] + (MARGIN + B_NOISE[seed] if arm == "B" else 0.0)
            ppl = 20.0 + seed - (1.0 + 10 * B_NOISE[seed] if arm == "B" else 0.0)
            write_record(suite_dir, arm, seed, {"sst2.accuracy": accuracy, "heldout_ppl": ppl}, suite=name)
    return suite_dir


def report_of(suite_dir: Path, out: Path, baseline: str | None = None):
    problems: list[str] = []
    sources = resolve_sources([suite_dir], suite_dir.parent, problems=problems)
    results = load_results(sources, problems)
    return results, build_report(results, out, baseline)


# --------------------------------------------------------------------------------- statistics


def test_mean_interval_is_the_t_interval_and_needs_two_values():
    from scipy import stats

    values = [0.61, 0.66, 0.63, 0.60, 0.64]
    low, high = mean_interval(values)
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert (low, high) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert all(math.isnan(v) for v in mean_interval([0.5]))


def test_paired_comparison_uses_shared_seeds_and_welch_otherwise():
    base = {s: v for s, v in BASELINE.items()}
    shifted = {s: v + 0.01 for s, v in BASELINE.items()}
    paired = compare_seeds(shifted, base)
    assert paired.test == "paired t" and paired.n_pairs == 5
    # the shift is identical on every seed: the paired analysis sees no noise at all
    assert paired.diff == pytest.approx(0.01) and math.isnan(paired.ci_low)
    assert math.isnan(paired.p_value) and not paired.testable, "no spread across seeds: untestable, not p = 0"
    assert "zero spread" in paired.untestable
    disjoint = compare_seeds({s + 10: v for s, v in shifted.items()}, base)
    assert disjoint.test == "Welch t" and disjoint.n_pairs == 0
    # unpaired, the seed-to-seed spread (±0.02) swamps a 0.01 shift
    assert disjoint.ci_low < 0 < disjoint.ci_high and disjoint.p_value > 0.05
    from scipy import stats

    expected = stats.ttest_ind(list(shifted.values()), list(base.values()), equal_var=False).pvalue
    assert disjoint.p_value == pytest.approx(expected)
    noisy = {s: v + 0.01 + (0.004 if s % 2 else -0.004) for s, v in BASELINE.items()}
    assert compare_seeds(noisy, base).p_value == pytest.approx(
        stats.ttest_rel(list(noisy.values()), list(base.values())).pvalue
    )


# ------------------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def known_effects(tmp_path_factory):
    root = tmp_path_factory.mktemp("known")
    suite_dir = write_suite_dir(root)
    results, output = report_of(suite_dir, root / "report")
    return results, output


def test_summary_numbers_match_the_records(known_effects):
    _, output = known_effects
    summary = pd.read_csv(output.directory / "summary.csv")
    for arm, expected in {
        "A": list(BASELINE.values()),
        "B": [BASELINE[s] + MARGIN + B_NOISE[s] for s in SEEDS],
        "C": list(BASELINE.values()),
    }.items():
        row = summary[(summary["arm"] == arm) & (summary["metric"] == "sst2.accuracy")].iloc[0]
        assert row["n"] == 5 and row["runs"] == 5
        assert row["mean"] == pytest.approx(np.mean(expected), abs=1e-6)
        assert row["std"] == pytest.approx(np.std(expected, ddof=1), abs=1e-6)
        assert row["median"] == pytest.approx(np.median(expected), abs=1e-6)
        assert row["ci_low"] < row["mean"] < row["ci_high"]
    tidy = pd.read_csv(output.directory / "results.csv")
    assert len(tidy) == 3 * 5 * 2  # arms x seeds x metrics, one row each
    assert {"suite", "arm", "seed", "run_id", "metric", "value", "config.masking.kind"} <= set(tidy.columns)
    assert pd.read_parquet(output.directory / "results.parquet").shape == tidy.shape


def test_b_differs_from_the_baseline_and_c_does_not(known_effects):
    _, output = known_effects
    table = pd.read_csv(output.directory / "comparisons.csv").set_index(["comparison", "metric"])
    b = table.loc[("B vs A", "sst2.accuracy")]
    assert b["diff"] == pytest.approx(MARGIN + np.mean(list(B_NOISE.values())), abs=1e-6)
    assert b["ci_low"] > 0 and b["p_holm"] < 0.05 and b["p_holm"] >= b["p_value"]
    assert b["test"] == "paired t" and b["n_pairs"] == 5
    assert b["verdict"] == "B better" and b["winner"] == "B"
    # C equals A on every seed: zero spread, said as not testable rather than given a p-value
    c = table.loc[("C vs A", "sst2.accuracy")]
    assert c["diff"] == 0 and c["verdict"] == "not testable" and "zero spread" in c["reason"]
    # lower perplexity is better: B's lower ppl makes B the winner there too
    assert table.loc[("B vs A", "heldout_ppl")]["verdict"] == "B better"
    text = (output.directory / "report.md").read_text()
    matrix_row = next(line for line in text.splitlines() if line.startswith("| B vs A |"))
    assert "+0.0498" in matrix_row and "**B better**" in matrix_row
    # the verdict matrix comes before any other section
    assert text.index("| B vs A |") < text.index("## How to read the verdicts")


def test_every_figure_is_a_valid_png_and_svg(known_effects):
    import matplotlib.image

    _, output = known_effects
    figures = output.directory / "figures"
    for stem in ("curves", "metrics", "differences"):
        image = matplotlib.image.imread(figures / f"{stem}.png")
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image.std() > 0.01, "not a blank image"
        root = ET.parse(figures / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")
    assert not (figures / "batch-size.png").exists(), "no batch-size figure when the batch does not vary"


def test_html_is_self_contained(known_effects):
    _, output = known_effects
    page = (output.directory / "report.html").read_text()
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert len(links) >= 3  # the figures
    assert all(link.startswith(("data:", "#")) for link in links), links
    assert "http://" not in page and "https://" not in page
    assert page.count("<img") == len(re.findall(r"!\[", (output.directory / "report.md").read_text()))


def test_jsonl_records_split_on_newlines_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"note": "NEL\u0085here"}, {"note": "LS\u2028here"}, {"note": "plain"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:2]) + '{"cut\n' + json.dumps(rows[2])
    path.write_text(text, encoding="utf-8")
    bad = []
    assert read_jsonl(path, bad.append) == rows and bad == [3]


def test_partial_failed_and_corrupt_records_are_shown_not_dropped(tmp_path):
    suite_dir = write_suite_dir(tmp_path, arms=["A", "B"])
    (suite_dir / "B-4").joinpath("config.json").unlink()
    (suite_dir / "B-4").joinpath("status.json").unlink()
    write_record(suite_dir, "C", 0, {"sst2.accuracy": 0.6})
    write_record(suite_dir, "C", 1, None, state="failed", error="RuntimeError: loss is nan")
    half = write_record(suite_dir, "C", 2, {"sst2.accuracy": 0.6})
    (half / "summary.json").write_text('{"metrics": {"sst2.accu')  # a write cut short
    bad_metric = write_record(suite_dir, "C", 3, {"sst2.accuracy": "n/a", "heldout_ppl": 21.0})
    with (bad_metric / "metrics.jsonl").open("a") as f:
        f.write('{"step": 40, "tok')
    corrupt_config = suite_dir / "broken"
    corrupt_config.mkdir()
    (corrupt_config / "config.json").write_text("{not json")
    binary_config, list_config = suite_dir / "binary", suite_dir / "listed"
    binary_config.mkdir(), list_config.mkdir()
    (binary_config / "config.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    (list_config / "config.json").write_text('["arm", "seed"]')

    results, output = report_of(suite_dir, tmp_path / "report")
    runs = results.runs.set_index(["arm", "seed"])
    assert runs.loc[("B", 4), "state"] == "missing"
    assert runs.loc[("C", 1), "state"] == "failed" and "loss is nan" in runs.loc[("C", 1), "error"]
    assert runs.loc[("C", 2), "state"] == "damaged"
    assert runs.loc[("C", 4), "state"] == "missing"
    problems = "\n".join(output.problems)
    # the cut summary no longer matches the size recorded with it (harness/integrity.py)
    assert re.search(rf"{re.escape(str(half / 'summary.json'))}: \d+ bytes, \d+ were written", problems)
    assert f"{bad_metric / 'summary.json'}: metric sst2.accuracy = 'n/a' is not a number" in problems
    assert f"{bad_metric / 'metrics.jsonl'}: line 5 is not valid JSON" in problems
    assert f"{corrupt_config / 'config.json'}: not valid JSON" in problems
    assert f"{binary_config / 'config.json'}: not UTF-8 text (byte 0x89 at offset 0)" in problems
    assert f"{list_config / 'config.json'}: a list where a JSON object is expected" in problems
    summary = pd.read_csv(output.directory / "summary.csv").set_index(["arm", "metric"])
    assert summary.loc[("B", "sst2.accuracy"), "n"] == 4 and summary.loc[("B", "sst2.accuracy"), "runs"] == 5
    assert summary.loc[("C", "sst2.accuracy"), "n"] == 1
    assert summary.loc[("C", "heldout_ppl"), "n"] == 1  # C-3 kept its good metric
    text = (output.directory / "report.md").read_text()
    assert "| C | 1 | C-1 | failed | RuntimeError: loss is nan |" in text
    assert "| B | 4 | – | missing |" in text
    assert "problem:" in text and str(corrupt_config / "config.json") in text


def test_an_empty_directory_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "results" / "nothing").mkdir(parents=True)
    assert main(["report", str(tmp_path / "results" / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "no run records" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "no-such-dir")]) == 2
    assert "neither a suite file nor a results directory" in capsys.readouterr().err


def test_cli_report_with_baseline_override(tmp_path, capsys):
    suite_dir = write_suite_dir(tmp_path)
    assert main(["report", str(suite_dir), "--baseline", "C"]) == 0
    out = suite_dir.parent / "reports" / "fake"  # default: <results root>/reports/<suite>
    assert "report.md" in capsys.readouterr().out
    names = set(pd.read_csv(out / "comparisons.csv")["comparison"])
    assert names == {"A vs C", "B vs C"}
    assert main(["report", str(suite_dir), "--baseline", "Z", "--out", str(tmp_path / "z")]) == 2
    assert "no such arm" in capsys.readouterr().err


def test_several_suites_are_compared_on_shared_metrics(tmp_path):
    one = write_suite_dir(tmp_path, arms=["A"], name="one")
    two = tmp_path / "results" / "two"
    for seed in SEEDS:
        accuracy = BASELINE[seed] + MARGIN + B_NOISE[seed]
        write_record(two, "A", seed, {"sst2.accuracy": accuracy, "rte.accuracy": 0.5}, suite="two")
    problems: list[str] = []
    results = load_results(resolve_sources([one, two], tmp_path, problems=problems), problems)
    output = build_report(results, tmp_path / "both")
    table = pd.read_csv(output.directory / "comparisons.csv").set_index(["comparison", "metric"])
    row = table.loc[("two/A vs one/A", "sst2.accuracy")]
    assert row["diff"] == pytest.approx(MARGIN, abs=1e-3) and row["verdict"] == "two/A better"
    assert any("rte.accuracy not reported by every suite" in n for n in results.notes)


def test_a_batch_size_suite_gets_its_figure(tmp_path):
    suite_dir = tmp_path / "results" / "batch"
    for arm, tokens in (("small", 1024), ("medium", 4096), ("large", 8192)):
        for seed in (0, 1, 2):
            config = {"train": {"seed": seed, "tokens_per_step": tokens}}
            write_record(suite_dir, arm, seed, {"heldout_ppl": 20.0 + seed + tokens / 4096}, config, suite="batch")
    _, output = report_of(suite_dir, tmp_path / "report")
    assert (output.directory / "figures" / "batch-size.png").stat().st_size > 1000
    assert (output.directory / "figures" / "batch-size.svg").is_file()
    # two batch sizes are a comparison, not a sweep: no figure, and the one drawn before is removed
    for seed in (0, 1, 2):
        (suite_dir / f"medium-{seed}").rename(tmp_path / f"medium-{seed}")
    _, output = report_of(suite_dir, tmp_path / "report")
    assert not list((output.directory / "figures").glob("batch-size.*"))
    assert "batch-size" not in (output.directory / "report.md").read_text()


# -------------------------------------------------------------------------------------- paper


def test_paper_tables_hold_the_published_numbers():
    tables = load_paper_tables()
    assert set(tables) == {"roberta-table1", "roberta-table2", "roberta-table3", "roberta-table4"}
    table1 = tables["roberta-table1"][1]
    deltas = {d.column: round(d.delta, 3) for d in paper_deltas(table1, "dynamic", "static")}
    assert deltas == {"squad2": 0.4, "mnli-m": -0.3, "sst2": 0.4}
    table3 = tables["roberta-table3"][1]
    ppl = next(d for d in paper_deltas(table3, "bsz-2k", "bsz-256") if d.column == "ppl")
    assert ppl.arm_better is True, "lower perplexity is better"
    table4 = tables["roberta-table4"][1]
    recipe = {d.column: round(d.delta, 3) for d in paper_deltas(table4, "roberta-books-wiki", "bert-large")}
    assert recipe == {"squad1.1": 2.7, "squad2": 5.5, "mnli-m": 2.4, "sst2": 1.6}


def test_a_suite_mapped_to_a_paper_table_shows_both(tmp_path):
    from conftest import tiny_suite

    suite = tiny_suite(
        name="masking",
        arms={"static": {"masking": {"kind": "static"}}, "dynamic": {}},
        seeds=SEEDS,
        metrics=["sst2.accuracy"],
        comparisons=[
            {"arm": "dynamic", "baseline": "static",
             "paper": {"table": "roberta-table1", "arm": "dynamic", "baseline": "static"}}
        ],
    )  # fmt: skip
    suite["base"]["eval"]["tasks"] = ["sst2"]
    path = tmp_path / "masking.yaml"
    path.write_text(yaml.safe_dump(suite))
    loaded = load_suite(path)
    for run in loaded.runs:
        accuracy = BASELINE[run.seed] + (0.03 + B_NOISE[run.seed] if run.arm == "dynamic" else 0.0)
        directory = tmp_path / "results" / "masking" / run.run_id
        record = RunRecord(directory)
        record.start(run.header, run.config.model_dump(mode="json"))
        record.finish({**run.header, "metrics": {"sst2.accuracy": accuracy}})
    problems: list[str] = []
    results = load_results(resolve_sources([path], tmp_path / "results", problems=problems), problems)
    output = build_report(results, tmp_path / "report")
    row = pd.read_csv(output.directory / "comparisons.csv").iloc[0]
    assert row["paper_direction"] == "dynamic better (SST-2 +0.40)"
    assert row["agrees_with_paper"] == "agree" and row["verdict"] == "dynamic better"
    text = (output.directory / "report.md").read_text()
    assert "RoBERTa Table 1" in text
    dynamic_mean = 100 * np.mean([BASELINE[s] + 0.03 + B_NOISE[s] for s in SEEDS])
    assert f"| arm dynamic | ours (mean) | not in this suite | not in this suite | {dynamic_mean:.2f} |" in text
    assert "| dynamic masking | paper | 78.70 | 84.00 | 92.90 |" in text


@pytest.mark.parametrize(
    ("comparison", "message"),
    [
        ({"arm": "dynamic", "baseline": "nope"}, "comparisons.0.baseline: no arm named 'nope'"),
        ({"arm": "dynamic", "baseline": "dynamic"}, "an arm compared with itself"),
        (
            {"arm": "dynamic", "baseline": "static", "paper": {"table": "roberta-table9", "arm": "a", "baseline": "b"}},
            "unknown table 'roberta-table9'",
        ),
        (
            {"arm": "dynamic", "baseline": "static",
             "paper": {"table": "roberta-table1", "arm": "dynamic", "baseline": "sttic"}},
            "roberta-table1 has no row 'sttic'",
        ),
    ],
)  # fmt: skip
def test_bad_comparisons_are_config_errors(write_suite, comparison, message):
    from conftest import tiny_suite

    path = write_suite(tiny_suite(comparisons=[comparison]))
    with pytest.raises(ConfigError) as err:
        load_suite(path)
    assert message in str(err.value)


def test_manifest_keeps_the_suite_order_for_directory_reports(tmp_path):
    suite_dir = write_suite_dir(tmp_path, arms=["C", "A"], seeds=[0, 1])
    manifest = {"schema_version": 1, "source": "x.yaml", "overrides": [],
                "spec": {"name": "fake", "base": {}, "arms": {"C": {}, "A": {}, "B": {}}, "seeds": [0, 1, 2],
                         "metrics": ["sst2.accuracy"], "baseline": "A"}}  # fmt: skip
    (suite_dir / "suite.json").write_text(json.dumps(manifest))
    results, output = report_of(suite_dir, tmp_path / "report")
    assert results.arms() == ["C", "A", "B"]
    states = results.runs.groupby("arm", sort=False)["state"].apply(list).to_dict()
    assert states == {"C": ["done", "done", "missing"], "A": ["done", "done", "missing"], "B": ["missing"] * 3}
    assert set(pd.read_csv(output.directory / "comparisons.csv")["comparison"]) == {"C vs A", "B vs A"}


# ------------------------------------------------------------------------- floors and refusals


def test_per_token_loss_across_tokenizers_is_refused_at_load(write_suite):
    from conftest import tiny_suite

    wordpiece = {"data": {"tokenizer": {"kind": "wordpiece", "vocab_size": 1024}}}
    suite = tiny_suite(arms={"bpe": {}, "wordpiece": wordpiece}, metrics=["heldout_ppl"])
    with pytest.raises(ConfigError) as err:
        load_suite(write_suite(suite))
    message = str(err.value)
    assert "heldout_ppl is per token" in message and "byte_bpe 1024" in message and "wordpiece 1024" in message
    assert "heldout_bpb" in message
    load_suite(write_suite({**suite, "metrics": ["heldout_bpb"]}))  # bits per byte is fine


def floored_record(suite_dir: Path, arm: str, seed: int, accuracy: float, loss: float, tokenizer: str = "byte_bpe"):
    """A finished run with a downstream majority baseline of 0.5 (800 dev examples) and a held-out
    unigram floor of 7.0 nats (noise 0.05)."""
    run_id = f"{arm}-{seed}"
    record = RunRecord(suite_dir / run_id)
    header = {"suite": "floors", "arm": arm, "seed": seed, "run_id": run_id}
    record.start(header, {"data": {"tokenizer": {"kind": tokenizer, "vocab_size": 1024}}, "train": {"seed": seed}})
    record.finish({
        **header,
        "metrics": {"sst2.accuracy": accuracy, "heldout_loss": loss, "heldout_ppl": math.exp(loss)},
        "references": {"heldout_unigram_loss": 7.0, "heldout_unigram_acc": 0.12, "heldout_unigram_bpb": 2.5,
                       "heldout_loss_noise": 0.05, "heldout_masked": 4000.0, "heldout_masked_bytes": 16000.0},
        "downstream": {"sst2": {"metrics": {"accuracy": {"seeds": {"0": accuracy}, "median": accuracy}},
                                "majority_baseline": {"accuracy": 0.5}, "dev_examples": 800}},
    })  # fmt: skip


def test_floors_are_labelled_not_tested(tmp_path):
    suite_dir = tmp_path / "results" / "floors"
    # A and B: at the majority baseline (within 2 SE = 0.035 of 0.5) and at the unigram loss;
    # C: well above the baseline and well below the unigram loss
    for seed, jitter in enumerate([0.0, 0.01, -0.01]):
        floored_record(suite_dir, "A", seed, 0.50 + jitter, 7.02 + jitter)
        floored_record(suite_dir, "B", seed, 0.51 + jitter, 7.30 + jitter)
        floored_record(suite_dir, "C", seed, 0.70 + 2 * jitter, 5.00 + 2 * jitter)
    results, output = report_of(suite_dir, tmp_path / "report")
    table = pd.read_csv(output.directory / "comparisons.csv").set_index(["comparison", "metric"])
    for metric in ("sst2.accuracy", "heldout_ppl"):
        assert table.loc[("B vs A", metric)]["verdict"] == "both at floor: no evidence"
        assert math.isnan(table.loc[("B vs A", metric)]["p_holm"]), "floors are not part of the tested family"
        c = table.loc[("C vs A", metric)]
        assert c["verdict"] == "C better" and bool(c["baseline_at_floor"]) and not bool(c["arm_at_floor"])
    summary = pd.read_csv(output.directory / "summary.csv").set_index(["arm", "metric"])
    assert summary.loc[("A", "sst2.accuracy")]["floor"] == pytest.approx(0.5)
    assert summary.loc[("A", "heldout_ppl")]["floor"] == pytest.approx(math.exp(7.0), rel=1e-5)  # 6 digits in csv
    text = (output.directory / "report.md").read_text()
    assert "⚑ A at majority baseline" in text and "⚑ A has not learned context" in text
    assert "majority class 0.5000 ⚑ at it" in text


def test_per_token_loss_across_tokenizers_is_refused_in_a_report(tmp_path):
    suite_dir = tmp_path / "results" / "floors"
    for seed, jitter in enumerate([0.0, 0.01, -0.01]):
        floored_record(suite_dir, "A", seed, 0.70 + jitter, 5.0 + jitter)
        floored_record(suite_dir, "W", seed, 0.75 + 2 * jitter, 4.0 + 2 * jitter, tokenizer="wordpiece")
    _, output = report_of(suite_dir, tmp_path / "report")
    table = pd.read_csv(output.directory / "comparisons.csv").set_index(["comparison", "metric"])
    refused = table.loc[("W vs A", "heldout_ppl")]
    assert refused["verdict"] == "not comparable" and "wordpiece 1024" in refused["reason"]
    assert table.loc[("W vs A", "sst2.accuracy")]["verdict"] == "W better"


def test_wall_time_is_averaged_over_runs_trained_in_one_sitting():
    # a resumed run's wall_s is its last sitting's alone: 170 s of a ~1,000 s run would pull the mean down
    runs = pd.DataFrame({"wall_s": [1000.0, 1100.0, 170.0], "resumed_from_step": [0, 0, 440]})
    assert _wall_time(runs) == "1050.0 (2 of 3; 1 resumed)"
    assert _wall_time(runs.iloc[:2]) == "1050.0"
    assert _wall_time(runs.drop(columns="resumed_from_step")) == "756.7"  # records from before the column
    assert _wall_time(runs.iloc[2:]) == "– (0 of 1; 1 resumed)"
