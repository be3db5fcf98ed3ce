"""`harness curves`: held-out curves read from run records, and damaged records named, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from harness.cli import main
from harness.curves import collect_curves


def _run(root: Path, run_id: str, rows: list, config: object = None, summary: object = None) -> Path:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    header = {"arm": "cpu", "seed": 0, "run_id": run_id,
              "config": {"model": {"positions": "rope", "layers": 2}, "train": {"lr": 3e-3}}}  # fmt: skip
    if config is not None:
        header["config"] = config
    (run_dir / "config.json").write_text(json.dumps(header))
    finished = {"metrics": {"heldout_acc": 0.31, "heldout_bpb": 1.5},
                "references": {"heldout_unigram_acc": 0.125, "heldout_unigram_loss": 6.2}}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(finished if summary is None else summary))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


GOOD_ROWS = [
    {"step": 10, "tokens": 1000, "train_loss": 7.0},
    {"step": 100, "tokens": 10000, "train_s": 50.0, "heldout_loss": 5.0, "heldout_acc": 0.18},
    {"step": 200, "tokens": 20000, "train_s": 100.0, "heldout_loss": 4.5, "heldout_acc": 0.26},
    {"step": 300, "tokens": 30000, "train_s": 150.0, "heldout_loss": 4.3, "heldout_acc": 0.31},
]


def test_curve_points_and_first_crossings_come_from_the_heldout_rows(tmp_path: Path):
    _run(tmp_path, "a1", GOOD_ROWS)
    (run,) = collect_curves([tmp_path])["runs"]
    assert [p["step"] for p in run["curve"]] == [100, 200, 300]  # training-only rows are not points
    assert run["first_reached_accuracy"] == {
        "0.15": {"train_s": 50.0, "tokens": 10000}, "0.20": {"train_s": 100.0, "tokens": 20000},
        "0.25": {"train_s": 100.0, "tokens": 20000}, "0.30": {"train_s": 150.0, "tokens": 30000},
    }  # fmt: skip
    assert run["recipe"]["positions"] == "rope" and run["recipe"]["lr"] == 3e-3
    assert run["unigram"] == {"acc": 0.125, "loss": 6.2}
    assert run["final"]["heldout_acc"] == 0.31


def test_a_run_without_a_summary_is_unfinished_and_left_out_quietly(tmp_path: Path):
    run_dir = _run(tmp_path, "a1", GOOD_ROWS)
    (run_dir / "summary.json").unlink()
    problems: list[str] = []
    assert collect_curves([tmp_path], problems)["runs"] == [] and problems == []


def test_damaged_records_are_named_and_left_out_while_good_runs_stay(tmp_path: Path):
    _run(tmp_path, "good", GOOD_ROWS)
    _run(tmp_path, "config-list", GOOD_ROWS, config=["not", "a", "mapping"])
    _run(tmp_path, "section-str", GOOD_ROWS, config={"model": "rope"})
    _run(tmp_path, "metrics-list", GOOD_ROWS, summary={"metrics": [0.3]})
    _run(tmp_path, "acc-string", [{"step": 100, "tokens": 1000, "heldout_loss": 5.0, "heldout_acc": "high"}])
    _run(tmp_path, "no-tokens", [{"step": 100, "heldout_loss": 5.0, "heldout_acc": 0.2}])
    (_run(tmp_path, "summary-binary", GOOD_ROWS) / "summary.json").write_bytes(b"\xff\xfe\x00")
    problems: list[str] = []
    runs = collect_curves([tmp_path], problems)["runs"]
    assert [r["run_id"] for r in runs] == ["good"]
    by_run = {Path(p.split(":")[0]).name: p for p in problems}
    assert set(by_run) == {"config-list", "section-str", "metrics-list", "acc-string", "no-tokens", "summary-binary"}
    assert "'config' is a list where a JSON object is expected" in by_run["config-list"]
    assert "'model' is a string" in by_run["section-str"]
    assert "summary.json: 'metrics' is a list" in by_run["metrics-list"]
    assert "heldout_acc not a number" in by_run["acc-string"]
    assert "no tokens" in by_run["no-tokens"]
    assert "summary.json: not UTF-8" in by_run["summary-binary"]


def test_a_line_cut_short_by_a_crash_is_skipped_and_nan_loss_is_kept(tmp_path: Path):
    run_dir = _run(tmp_path, "a1", GOOD_ROWS[:2])
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 150, "tokens": 15')  # the crash
        f.write('\n{"step": 200, "tokens": 20000, "heldout_loss": NaN, "heldout_acc": 0.0}\n')
    (run,) = collect_curves([tmp_path])["runs"]
    assert [p["step"] for p in run["curve"]] == [100, 200]


def test_the_command_writes_good_runs_and_reports_damaged_ones(tmp_path: Path, capsys):
    results = tmp_path / "results"
    _run(results, "good", GOOD_ROWS)
    _run(results, "bad", GOOD_ROWS, config={"train": 3})
    out = tmp_path / "curves.json"
    assert main(["curves", str(results), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "problem:" in captured.err and "bad" in captured.err and "'train' is a number" in captured.err
    assert [r["run_id"] for r in json.loads(out.read_text())["runs"]] == ["good"]
    assert "150" in captured.out  # first >= 30% at 150 s of training


def test_only_damaged_runs_is_an_error(tmp_path: Path, capsys):
    _run(tmp_path, "bad", GOOD_ROWS, config=[1])
    assert main(["curves", str(tmp_path), "--out", str(tmp_path / "c.json")]) == 2
    assert "no finished runs" in capsys.readouterr().err
