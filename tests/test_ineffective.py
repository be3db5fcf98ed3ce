"""Ablations that change nothing (harness/effective.py): static masking within dupe_factor passes is
dynamic masking, bit for bit; `harness run` (and `--dry-run`, and `harness data`) say so before
training, naming the arms, and the report repeats it beside the comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_suite

from harness.cli import main
from harness.data.batches import PretrainingBatches
from harness.data.cache import StageCache
from harness.data.pipeline import prepare_data
from harness.effective import ArmPlan, find_ineffective, planned_passes, reads_setting
from harness.records import RunRecord
from harness.report import build_report
from harness.report.tables import config_differences
from harness.results import Results, load_results, resolve_sources
from harness.suite import ComparisonSpec as Comparison
from harness.suite import load_suite
from harness.train import planned_steps

# tiny_suite: 12 steps of 1,024 tokens over a corpus of 20,340 training tokens: 0.60 passes, dupe_factor 2


def configs(write_suite, **changes) -> dict[str, dict]:
    suite = load_suite(write_suite(tiny_suite(**changes)))
    return {arm: runs[0].config.model_dump(mode="json") for arm, runs in suite.by_arm().items()}


def built(write_suite, tmp_path: Path, suite: dict) -> Path:
    """The suite file, with its data prepared in tmp_path/out/_cache (as `harness data` leaves it)."""
    path = write_suite(suite)
    config = load_suite(path).runs[0].config
    prepare_data(config.data, StageCache(tmp_path / "out" / "_cache"), config.eval.heldout_sequences)
    return path


# --------------------------------------------------------------------------------- the condition


def test_static_masking_within_dupe_factor_passes_serves_dynamic_masks_bit_for_bit(write_suite, tmp_path):
    """The warning's claim, checked on the trainer's own batches: every step of the static arm equals the
    dynamic arm's while the passes stay within dupe_factor, and they part as soon as pass 3 begins."""
    suite = load_suite(write_suite(tiny_suite()))
    (dynamic,), (static,) = suite.by_arm()["dynamic"], suite.by_arm()["static"]
    data = prepare_data(static.config.data, StageCache(tmp_path / "cache"), static.config.eval.heldout_sequences)

    def batches(config) -> PretrainingBatches:
        train = config.train
        return PretrainingBatches(data.train, data.specials, data.vocab_size, config.masking, train.seed,
                                  train.micro_batch_size, train.batch_size, train.tokens_per_step)  # fmt: skip

    a, b = batches(static.config), batches(dynamic.config)

    def same_step() -> bool:
        return all(np.array_equal(x.input_ids, y.input_ids) and np.array_equal(x.mlm_labels, y.mlm_labels)
                   for x, y in zip(a.next_step(), b.next_step(), strict=True))  # fmt: skip

    steps = 0
    while True:
        same = same_step()
        steps += 1
        if a.epoch >= 2:  # this step reached pass 3: static serves mask 0 again, dynamic a fresh mask 2
            break
        assert same, f"step {steps} differs within the first 2 passes"
    assert steps > 12 and not (same and all(same_step() for _ in range(5)))


def test_planned_passes_follow_the_trainer_plan(write_suite):
    config = load_suite(write_suite(tiny_suite())).runs[0].config
    assert planned_passes(config, 341, 20340) == pytest.approx(12 * 1024 / 20340)
    train = {"tokens_per_step": 1000, "micro_batch_size": 8, "token_budget": 10_500, "lr": 1e-3}
    budget = load_suite(write_suite(tiny_suite(base={**tiny_suite()["base"], "train": train}))).runs[0].config
    steps = planned_steps(budget.train, 1000)  # 11: the trainer's own count
    assert planned_passes(budget, 100, 5000) == pytest.approx(steps * 1000 / 5000)
    train = {"batch_size": 10, "micro_batch_size": 8, "steps": 30, "lr": 1e-3}
    batch = load_suite(write_suite(tiny_suite(base={**tiny_suite()["base"], "train": train}))).runs[0].config
    assert planned_passes(batch, 200, 1) == pytest.approx(30 * 10 / 200)  # whole sequences: exact


# ------------------------------------------------------------------------------ the pure function


def test_static_at_most_dupe_factor_passes_is_named_with_both_arms(write_suite):
    arms = configs(write_suite)
    for passes in (0.6, 2.0):  # at exactly dupe_factor passes the last pass still serves mask 1
        (warning,) = find_ineffective({"dynamic": ArmPlan(arms["dynamic"]),
                                       "static": ArmPlan(arms["static"], passes, 20340)})  # fmt: skip
        assert warning.certain and warning.arms == ("dynamic", "static")
        text = warning.message()
        assert text.startswith("arms dynamic and static train on identical data and masks")
        assert f"dupe_factor 2 at {passes:.2f} planned passes" in text and "(≤ 2)" in text
        assert "more than 40,680 tokens" in text  # what would make static masking differ


def test_beyond_dupe_factor_passes_nothing_is_said(write_suite):
    arms = configs(write_suite)
    plans = {"dynamic": ArmPlan(arms["dynamic"]), "static": ArmPlan(arms["static"], 2.01, 20340)}
    assert find_ineffective(plans) == []


def test_unknown_passes_give_the_condition_not_a_verdict(write_suite):
    arms = configs(write_suite)
    (warning,) = find_ineffective({"dynamic": ArmPlan(arms["dynamic"]), "static": ArmPlan(arms["static"])})
    assert not warning.certain and set(warning.arms) == {"static", "dynamic"}
    assert "may train on identical data and masks" in warning.message()
    assert "unless training makes more than 2 passes" in warning.message()


def test_a_static_arm_alone_and_no_op_arms(write_suite):
    arms = configs(write_suite, arms={"static": {"masking": {"kind": "static", "dupe_factor": 3}},
                                      "nsp": {"data": {"format": "segment_pair", "nsp": True}}})  # fmt: skip
    (alone,) = find_ineffective({"static": ArmPlan(arms["static"], 1.5), "nsp": ArmPlan(arms["nsp"])})
    assert alone.arms == ("static",) and "it trains as dynamic masking would" in alone.message()
    same = configs(write_suite, arms={"a": {}, "b": {}, "c": {"masking": {"dupe_factor": 4}}})
    (noop,) = find_ineffective({name: ArmPlan(config) for name, config in same.items()})
    assert noop.arms == ("a", "b", "c")
    assert "does not read" in noop.message()  # c differs in a setting dynamic masking ignores
    (noop,) = find_ineffective({name: ArmPlan(same[name]) for name in ("a", "b")})
    assert "identical apart from the arm name" in noop.message()


def test_static_copies_packed_anew_train_as_dynamic_within_one_pass_only(write_suite):
    """Segment pairs: each static copy is packed with its own seed, so from the second pass static
    masking serves other sequences than dynamic masking, though it still repeats no mask."""
    pairs = {"data": {"format": "segment_pair", "nsp": True}}
    arms = configs(
        write_suite, arms={"dynamic": pairs, "static": {**pairs, "masking": {"kind": "static", "dupe_factor": 2}}}
    )
    (within,) = find_ineffective({"dynamic": ArmPlan(arms["dynamic"]), "static": ArmPlan(arms["static"], 0.9, 100)})
    assert within.arms == ("dynamic", "static") and "only after 1 pass:" in within.message()
    (beyond,) = find_ineffective({"dynamic": ArmPlan(arms["dynamic"]), "static": ArmPlan(arms["static"], 1.5, 100)})
    assert beyond.arms == ("static",) and "differs from dynamic masking in segmentation only" in beyond.message()
    (unknown,) = find_ineffective({"dynamic": ArmPlan(arms["dynamic"]), "static": ArmPlan(arms["static"])})
    assert "more than 1 pass over" in unknown.message()
    # records of runs packed into one copy (made before copies were packed anew) trained as dynamic
    old = ArmPlan(arms["static"], 1.5, 100, planned=False, format_copies=1)
    (made,) = find_ineffective({"dynamic": ArmPlan(arms["dynamic"]), "static": old})
    assert made.arms == ("dynamic", "static") and "only after 2 passes" in made.message()


# ------------------------------------------------------------------------------ the commands


def test_dry_run_warns_naming_both_arms(write_suite, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    assert main(["run", str(write_suite(tiny_suite())), "--out", str(fresh), "--dry-run"]) == 0
    assert "warning: arms static and dynamic may train on identical data" in capsys.readouterr().err
    assert not fresh.exists(), "a dry run writes nothing, not even to look at the data"
    path = built(write_suite, tmp_path, tiny_suite())
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "warning: arms dynamic and static train on identical data and masks" in err
    assert "0.60 planned passes" in err


def test_no_warning_when_training_passes_dupe_factor(write_suite, tmp_path, capsys):
    suite = tiny_suite()
    suite["base"]["train"]["steps"] = 50  # 2.5 passes over 2 masks: static repeats its masks
    path = built(write_suite, tmp_path, suite)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_run_warns_before_training_and_data_too(write_suite, tmp_path, capsys, monkeypatch):
    """`harness run` builds a static arm's data first (the runs reuse it) and warns before the first
    run trains; `harness data` warns after describing the arms."""
    import harness.runner

    seen: list[str] = []

    def first_step(*args, **kwargs):
        seen.append(capsys.readouterr().err)
        return None

    monkeypatch.setattr(harness.runner, "execute_run", first_step)
    path = write_suite(tiny_suite())
    out = tmp_path / "out"
    main(["run", str(path), "--out", str(out), "--no-progress", "--no-report", "--jobs", "1"])
    assert "warning: arms dynamic and static train on identical data and masks" in seen[0]
    assert main(["data", str(path), "--out", str(out)]) == 0
    assert "warning: arms dynamic and static train on identical data" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the report


def write_records(suite_dir: Path, arms: dict[str, dict], epochs: float) -> None:
    for arm, config in arms.items():
        for seed in (0, 1):
            header = {"suite": "t", "arm": arm, "seed": seed, "run_id": f"{arm}-{seed}"}
            record = RunRecord(suite_dir / header["run_id"])
            record.start(header, {**config, "train": {**config["train"], "seed": seed}})
            record.finish({**header, "metrics": {"heldout_ppl": 30.0 + seed + (arm == "static") * 0.1},
                           "budget": {"tokens": round(epochs * 20340), "steps": 12, "epochs": epochs}})  # fmt: skip


@pytest.mark.parametrize("epochs", [0.6, 3.0])
def test_the_report_notes_it_beside_the_comparison(write_suite, tmp_path, epochs):
    suite_dir = tmp_path / "results" / "t"
    write_records(suite_dir, configs(write_suite), epochs)
    problems: list[str] = []
    results = load_results(resolve_sources([suite_dir], tmp_path / "results", problems=problems), problems)
    text = (build_report(results, tmp_path / "report").directory / "report.md").read_text()
    matrix_row = next(line for line in text.splitlines() if line.startswith("| static vs dynamic"))
    if epochs > 2:
        assert "⚠" not in text
        return
    assert "⚠ identical training" in matrix_row
    assert "- ⚠ **static vs dynamic**: arms dynamic and static train on identical data and masks" in text
    assert "dupe_factor 2 at 0.60 passes" in text and "~40,680 tokens" in text
    assert "(⚠ identical training: see the top)" in text  # beside what the comparison changes


# ------------------------------------------------------------- what the report lists as changed


def _runs_table(rows: list[tuple[str, dict]]) -> Results:
    runs = pd.DataFrame([{"arm": arm, **{f"config.{key}": value for key, value in config.items()}}
                         for arm, config in rows])  # fmt: skip
    empty = pd.DataFrame()
    return Results(runs=runs, metrics=empty, curves=empty, finetune=empty, sources=[])


def _changes(rows: list[tuple[str, dict]], arm: str, baseline: str) -> str:
    [[_, changed]] = config_differences(_runs_table(rows), [Comparison(arm=arm, baseline=baseline)])
    return changed


def test_reads_setting_knows_what_dynamic_masking_and_a_control_never_read():
    assert reads_setting("masking.dupe_factor", "static", None)
    assert not reads_setting("masking.dupe_factor", "dynamic", None)
    assert reads_setting("masking.mask_prob", "dynamic", None)
    assert not reads_setting("masking.kind", "static", False)  # a control trains nothing
    assert not reads_setting("train.lr", "dynamic", np.bool_(False))
    assert reads_setting("train.pretrain", "dynamic", False) and reads_setting("train.seed", "dynamic", False)
    assert reads_setting("data.tokenizer.kind", "dynamic", False)


def test_config_differences_leave_out_settings_one_side_never_reads():
    static = {"masking.kind": "static", "masking.dupe_factor": 2, "train.lr": 1e-3, "train.seed": 0}
    dynamic = {"masking.kind": "dynamic", "masking.dupe_factor": 10, "train.lr": 1e-3, "train.seed": 0}
    control = {**static, "train.pretrain": False, "train.lr": 5e-3}
    rows = [("static", static), ("dynamic", dynamic), ("random-init", control)]
    assert _changes(rows, "dynamic", "static") == "masking.kind: static → dynamic"
    # the control's masking and lr are never read: what makes it a control is the one change
    assert _changes(rows, "dynamic", "random-init") == "train.pretrain: False → unset"
    both_static = [("a", static), ("b", {**static, "masking.dupe_factor": 4})]
    assert _changes(both_static, "b", "a") == "masking.dupe_factor: 2 → 4"


def test_config_differences_show_an_arm_whose_runs_disagree():
    base = {"masking.kind": "dynamic", "train.seed": 0}
    rows = [("a", {**base, "eval.tasks": "x"}), ("b", {**base, "eval.tasks": "x+y"}),
            *[("b", {**base, "train.seed": seed, "eval.tasks": "x"}) for seed in (1, 2)]]  # fmt: skip
    assert _changes(rows, "b", "a") == "eval.tasks: x → x+y (1 run) or x (2 runs)"
    same = [("a", {**base, "eval.tasks": "x"}), ("b", {**base, "eval.tasks": "x"})]
    assert _changes(same, "b", "a") == "(no config difference)"
