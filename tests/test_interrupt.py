"""SIGINT and SIGTERM lose nothing: a run stops at the next step boundary with a checkpoint there,
is recorded `interrupted` (exit 130) and the next `harness run` resumes it to the summary of a run
never interrupted; sequentially, with --jobs, and when cut short outside training. A search whose
worker was killed exits non-zero naming the trial it left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import default_sigint, tiny_suite

from harness import runner
from harness.cli import main
from harness.interrupt import StopSignals
from harness.records import RunLock, RunRecord
from harness.results import load_results, source_from_suite
from harness.search import dead_worker_trials, retry_callback
from harness.suite import load_suite

STEPS = 40
STOP_AFTER = 3  # the signal goes once a run has logged this step


def interrupt_suite(tmp_path: Path) -> Path:
    suite = tiny_suite()  # arms dynamic and static
    suite["base"]["train"].update({"steps": STEPS, "log_every": 1, "eval_every": 10})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def run_argv(path: Path, out: Path, *extra: str) -> list[str]:
    # one thread everywhere: the numbers of a run depend on its thread count
    return ["run", str(path), "--out", str(out), "--no-progress", "--no-report", "--threads", "1", *extra]


def records(out: Path) -> dict[str, RunRecord]:
    return {p.name: RunRecord(p) for p in (out / "t").iterdir() if p.is_dir()}


def train_rows(record: RunRecord) -> list[dict]:
    # wall-clock fields differ between any two runs
    return [{k: v for k, v in row.items() if k not in ("tokens_per_s", "train_s")} for row in record.metrics()]


def logged(record: RunRecord, step: int) -> bool:
    return any(row.get("step", 0) >= step for row in record.metrics())


def interrupt(argv: list[str], out: Path, signum: int, runs: int = 1) -> subprocess.CompletedProcess:
    """Start `harness ARGV`, send `signum` once `runs` runs have logged step STOP_AFTER, and wait for it."""
    process = subprocess.Popen([sys.executable, "-m", "harness", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            started = records(out).values() if (out / "t").is_dir() else []
            if sum(logged(record, STOP_AFTER) for record in started) >= runs:
                break
            if process.poll() is not None:
                pytest.fail(f"harness ended before the signal: {process.communicate()}")
            time.sleep(0.02)
        else:
            pytest.fail("no run got to the step where the signal goes")
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, RunRecord]:
    """Both runs of the suite, never interrupted (trained in this process: the numbers are those of a
    child with one thread)."""
    root = tmp_path_factory.mktemp("reference")
    assert main(run_argv(interrupt_suite(root), root / "r", "--jobs", "1")) == 0
    return records(root / "r")


def assert_interrupted_at_a_checkpoint(record: RunRecord, signal_name: str) -> int:
    """The run is recorded interrupted by `signal_name` at a step after the signal, with a checkpoint
    there (the periodic ones come every 200 steps: this one was written for the signal)."""
    status = record.status
    assert status["state"] == "interrupted" and status["signal"] == signal_name, status
    step = status["resume_step"]
    assert STOP_AFTER <= step < STEPS, status
    assert f"stopped at step {step} of {STEPS}" in status["error"]
    assert [p.name for p in (record.dir / "checkpoints").glob("step-*")] == [f"step-{step:09d}"]
    assert max(row["step"] for row in record.metrics()) == step, "nothing logged past the checkpoint"
    assert not record.is_done() and not RunLock(record.dir).held_elsewhere()
    return step


def assert_resumed_as_uninterrupted(record: RunRecord, step: int, reference: RunRecord) -> None:
    assert record.is_done()
    summary = record.summary
    assert summary["resumed_from_step"] == step
    assert summary["metrics"] == reference.summary["metrics"], "exactly equal floats"
    assert summary["budget"] == reference.summary["budget"]
    assert train_rows(record) == train_rows(reference), "the curve has every step once"
    assert not (record.dir / "checkpoints").exists()


# ------------------------------------------------------------------------------- sequential


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_at_a_step_and_the_next_run_resumes_it_exactly(tmp_path, reference, signum, capsys):
    path, out = interrupt_suite(tmp_path), tmp_path / "r"
    stopped = interrupt(run_argv(path, out, "--arm", "dynamic"), out, signum)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    (record,) = records(out).values()
    step = assert_interrupted_at_a_checkpoint(record, signum.name)
    assert f"interrupted ({signum.name}: stopped at step {step} of {STEPS}; the next attempt resumes from step " \
           f"{step})" in stopped.stderr  # fmt: skip
    # `harness ls` and the report's tables see an unfinished run, not a failed one
    assert main(["ls", str(out)]) == 0
    assert f"interrupted at step {step} (`harness run` resumes it)" in capsys.readouterr().out
    runs = load_results([source_from_suite(load_suite(path), out)]).runs
    assert dict(zip(runs["arm"], runs["state"])) == {"dynamic": "interrupted", "static": "missing"}

    capsys.readouterr()
    assert main(run_argv(path, out, "--arm", "dynamic")) == 0  # in this process: no second start of torch
    assert f"resuming from step-{step:09d}" in capsys.readouterr().err
    assert_resumed_as_uninterrupted(record, step, reference[record.dir.name])


# ------------------------------------------------------------------------------------ --jobs


def test_jobs_pass_the_signal_to_every_child_and_the_next_run_resumes_each(tmp_path, reference, capsys):
    """SIGTERM to the parent reaches each child as SIGINT: each checkpoints at its next step."""
    path, out = interrupt_suite(tmp_path), tmp_path / "r"
    stopped = interrupt(run_argv(path, out, "--jobs", "2"), out, signal.SIGTERM, runs=2)
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.count("interrupted (SIGINT: stopped at step") == 2, stopped.stderr
    steps = {run_id: assert_interrupted_at_a_checkpoint(record, "SIGINT") for run_id, record in records(out).items()}

    # resumed one after the other in this process: a run's numbers depend on its threads, not on --jobs
    assert main(run_argv(path, out, "--jobs", "1")) == 0
    resumed = capsys.readouterr().err
    for run_id, record in records(out).items():
        assert f"resuming from step-{steps[run_id]:09d}" in resumed
        assert_resumed_as_uninterrupted(record, steps[run_id], reference[run_id])


# ------------------------------------------------------------------------ outside training


@pytest.mark.parametrize("stage", ["prepare_data", "evaluate_downstream"])
def test_an_interrupt_outside_training_is_recorded_and_that_part_redone(tmp_path, reference, monkeypatch, stage):
    """Ctrl-C while the data is prepared, or after training while the model is evaluated: exit 130,
    `interrupted`, and the next run redoes that part (training resumes from its final checkpoint)."""
    path, out = interrupt_suite(tmp_path), tmp_path / "r"
    real = getattr(runner, stage)

    def cut_short(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises there: only training waits for a step boundary

    monkeypatch.setattr(runner, stage, cut_short)
    assert main(run_argv(path, out, "--arm", "dynamic")) == 130
    (record,) = records(out).values()
    status = record.status
    expected = 0 if stage == "prepare_data" else STEPS
    assert status["state"] == "interrupted" and status["resume_step"] == expected, status
    assert "stopped at once" in status["error"]
    monkeypatch.setattr(runner, stage, real)
    assert main(run_argv(path, out, "--arm", "dynamic")) == 0
    assert record.is_done() and record.summary["resumed_from_step"] == expected
    assert record.summary["metrics"] == reference[record.dir.name].summary["metrics"]


def test_an_interrupted_eval_exits_130_and_leaves_the_run_done(reference, monkeypatch, capsys):
    record = reference[next(iter(reference))]

    def cut_short(*args, **kwargs):
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(runner, "evaluate_run", cut_short)
    assert main(["eval", str(record.dir)]) == 130
    assert "evaluation interrupted (SIGTERM)" in capsys.readouterr().err
    assert record.is_done()


def test_a_first_signal_waits_for_the_step_boundary_and_a_second_stops_at_once():
    stop = StopSignals()
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):  # outside training: at once
        stop.handle(signal.SIGINT, None)
    stop = StopSignals()
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        with stop.deferred():
            stop.handle(signal.SIGTERM, None)  # only the flag: the trainer stops at its next step
            assert stop.requested()
            stop.handle(signal.SIGINT, None)  # a second signal does not wait
    assert stop.received == "SIGTERM", "the run is recorded as stopped by the first"
    stop = StopSignals()
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        with stop.deferred():
            stop.handle(signal.SIGTERM, None)
        # training ended before its next step boundary: the stop happens as the block ends


# ------------------------------------------------------------------------------------ search


def test_a_search_whose_worker_was_killed_exits_non_zero_naming_the_trial(tmp_path, capsys):
    """Two workers, one of them killed while it trains a trial: the other (after its own trial, if it
    got one) sees that trial go silent and fails it (no retry, to keep the test short); the command
    names it and exits 1."""
    suite = tiny_suite(arms={"dynamic": {}}, metrics=["heldout_loss"])
    suite["base"]["train"].update({"steps": 40, "log_every": 1})
    suite["search"] = {
        "objective": {"metric": "heldout_loss"},
        "space": {"train.lr": {"type": "log_float", "low": 1.0e-4, "high": 3.0e-3}},
        "trials": 1,  # each worker may still start one: both ask before either's trial exists
        "sampler": {"kind": "random", "seed": 0},
        "pruner": {"kind": "none"},
        "heartbeat_s": 1,
        "grace_s": 2,
        "max_retries": 0,
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "results"
    storage = f"sqlite:///{out / 't.search' / 'search.db'}"
    killed: list[tuple[optuna.trial.FrozenTrial, int]] = []

    def kill_a_worker_in_training() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            found = running_trial_in_training(storage, out / "t.search")
            if found is not None:
                os.kill(found[1], signal.SIGKILL)
                killed.append(found)
            time.sleep(0.1)

    # the search runs in this process (one start of torch fewer), the killer beside it
    killer = threading.Thread(target=kill_a_worker_in_training)
    killer.start()
    try:
        status = main(["search", str(path), "--out", str(out), "--workers", "2"])
    finally:
        killer.join()
    assert killed, "no worker was killed while training a trial"
    trial = killed[0][0]
    err = capsys.readouterr().err
    assert status == 1, err
    assert f"worker {trial.user_attrs['worker']} was killed by SIGKILL: trial {trial.number} of study t (run " \
           f"{trial.user_attrs['run_id']}): FAIL (its worker went silent); not retried" in err  # fmt: skip
    assert "1 worker(s) died" in err and "Traceback" not in err
    assert optuna.load_study(study_name="t", storage=storage).trials[trial.number].state == optuna.trial.TrialState.FAIL


def running_trial_in_training(storage: str, trials_dir: Path) -> tuple[optuna.trial.FrozenTrial, int] | None:
    """A RUNNING trial whose run has logged a step, with the pid of the worker training it."""
    if not list(trials_dir.glob("*/status.json")):
        return None  # the storage is not opened before a trial exists: its tables may be being created
    trials = optuna.load_study(study_name="t", storage=storage).trials
    for trial in trials:
        run_id = trial.user_attrs.get("run_id")
        if trial.state != optuna.trial.TrialState.RUNNING or run_id is None:
            continue
        record = RunRecord(trials_dir / run_id)
        status = record.status or {}
        if status.get("state") == "running" and "pid" in status and logged(record, 2):
            return trial, status["pid"]
    return None


def test_the_trials_of_a_dead_worker_are_those_it_left_unfinished(tmp_path):
    """Named: its trial still RUNNING, and its trial failed for silence with the retry's state. Not
    named: a trial that failed with an error its worker saw, another worker's, and an older one."""
    suite = tiny_suite(arms={"dynamic": {}}, metrics=["heldout_loss"])
    space = {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-3}}
    suite["search"] = {"objective": {"metric": "heldout_loss"}, "space": space, "trials": 4}
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(suite))
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    study = optuna.create_study(study_name="t", storage=storage)
    states = optuna.trial.TrialState

    def add(state: optuna.trial.TrialState, worker: int, system_attrs: dict | None = None, **user_attrs) -> None:
        study.add_trial(optuna.trial.create_trial(
            state=state, value=1.0 if state == states.COMPLETE else None, params={"train.lr": 5.0e-4},
            distributions={"train.lr": optuna.distributions.FloatDistribution(1.0e-4, 1.0e-3)},
            user_attrs={"worker": worker, "run_id": f"run{len(study.trials)}", **user_attrs},
            system_attrs=system_attrs or {},
        ))  # fmt: skip

    add(states.FAIL, 1)  # 0: from an earlier search
    time.sleep(0.01)
    since = datetime.now()
    add(states.FAIL, 1)  # 1: its worker went silent...
    add(states.COMPLETE, 0, {"failed_trial": 1, "retry_history": [1]})  # 2: ...retried by worker 0
    add(states.FAIL, 1, error="ValueError: diverged")  # 3: a failure worker 1 saw
    add(states.RUNNING, 1)  # 4: left running
    add(states.RUNNING, 0)  # 5: another worker's
    assert retry_callback().retried_trial_number(study.trials[2]) == 1
    lines = dead_worker_trials(load_suite(path), storage, 1, since)
    assert lines == [
        "trial 1 of study t (run run1): FAIL (its worker went silent); retried as trial 2, COMPLETE",
        "trial 4 of study t (run run4): left RUNNING; `harness search` again retries it once it has been silent 180s",
    ]
