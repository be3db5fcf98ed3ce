"""Optuna searches: bad input before any trial, better lr found, pruning, dead workers, PostgreSQL."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import tiny_suite

from harness.cli import main
from harness.config import ConfigError
from harness.records import RunRecord
from harness.search import retry_callback
from harness.suite import load_suite

BAD_LR = 1.0e-5


def search_suite(**search: Any) -> dict[str, Any]:
    suite = tiny_suite(arms={"dynamic": {}}, metrics=["heldout_loss"])
    suite["base"]["train"].update({"lr": BAD_LR, "steps": 16, "log_every": 4})
    suite["search"] = {
        "objective": {"metric": "heldout_loss"},
        "space": {"train.lr": {"type": "log_float", "low": 1.0e-5, "high": 3.0e-2}},
        "trials": 5,
        "sampler": {"kind": "tpe", "seed": 0, "startup_trials": 3},
        "pruner": {"kind": "none"},
        "enqueue": [{"train.lr": BAD_LR}],
        **search,
    }
    return suite


def write(tmp_path: Path, suite: dict[str, Any]) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def study_of(tmp_path: Path, name: str = "t") -> optuna.Study:
    storage = f"sqlite:///{tmp_path / 'results' / 't.search' / 'search.db'}"
    return optuna.load_study(study_name=name, storage=storage)


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"train.lrr": {"type": "float", "low": 0.1, "high": 0.2}}}, "search.space.train.lrr: unknown key"),
        ({"space": {"train.lr": {"type": "float", "low": 0.2, "high": 0.2}}}, "empty range"),
        ({"space": {"train.lr": {"type": "log_float", "low": 0.0, "high": 0.1}}}, "a log range must be positive"),
        ({"space": {"model.layers": {"type": "int", "low": 0, "high": 2}}}, "value 0 is not accepted"),
        ({"space": {"train.schedule": {"type": "categorical", "choices": []}}}, "non-empty `choices`"),
        ({"pruner": {"kind": "asha"}}, "search.pruner.kind"),
        ({"objective": {"metric": "heldout_los"}}, "unknown metric 'heldout_los'"),
        ({"enqueue": [{"train.wd": 0.1}]}, "search.enqueue.0: train.wd not in search.space"),
        ({"enqueue": [{"train.lr": 0.5}]}, "search.enqueue.0.train.lr: 0.5 is outside the space"),
    ],
)
def test_a_bad_search_is_an_error_before_any_trial(tmp_path, change, message, capsys):
    path = write(tmp_path, search_suite(**change))
    with pytest.raises(ConfigError) as err:
        load_suite(path)
    assert message in str(err.value)
    assert main(["search", str(path), "--out", str(tmp_path / "results")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_an_unreachable_storage_is_an_error_before_any_trial(tmp_path, capsys):
    path = write(tmp_path, search_suite())
    url = f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/none"
    assert main(["search", str(path), "--storage", url, "--out", str(tmp_path / "results")]) == 2
    assert "cannot open the study storage" in capsys.readouterr().err
    assert not list((tmp_path / "results").glob("t.search/*/config.json"))


def test_a_missing_postgres_driver_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # `import psycopg2` raises ImportError
    path = write(tmp_path, search_suite())
    url = f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/none"
    assert main(["search", str(path), "--storage", url, "--out", str(tmp_path / "results")]) == 2
    assert "pip install -e '.[postgres]'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- search


def test_search_finds_a_better_lr_than_a_bad_start(tmp_path, capsys):
    path = write(tmp_path, search_suite())
    assert main(["search", str(path), "--out", str(tmp_path / "results")]) == 0
    study = study_of(tmp_path)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 5
    first = study.trials[0]
    assert first.params == {"train.lr": BAD_LR}, "the enqueued point runs first"
    assert study.best_value < first.value - 0.3, (study.best_value, first.value)
    assert study.best_params["train.lr"] > 10 * BAD_LR
    # every trial is an ordinary run record, tagged with its trial number
    record = RunRecord(tmp_path / "results" / "t.search" / study.best_trial.user_attrs["run_id"])
    assert record.is_done() and record.config["trial"] == study.best_trial.number
    assert record.config["config"]["train"]["lr"] == pytest.approx(study.best_params["train.lr"])
    # the tuned suite runs as it is
    tuned = tmp_path / "results" / "reports" / "t" / "search" / "best-suite.yaml"  # inside the results root
    loaded = load_suite(tuned)
    assert loaded.spec.search is None
    assert loaded.runs[0].config.train.lr == pytest.approx(study.best_params["train.lr"])
    search_dir = tuned.parent
    assert (search_dir / "t-history.png").stat().st_size > 1000 and (search_dir / "search.md").is_file()
    # the answer first: a verdict row per study right under the title, saying what one seed cannot test
    opening = (search_dir / "search.md").read_text().splitlines()
    assert opening[2].startswith("| study | best setting |") and "not testable" in opening[4]
    assert "best trial" in capsys.readouterr().out
    # re-running continues the same study: the budget is met, nothing new runs
    assert main(["search", str(path), "--out", str(tmp_path / "results")]) == 0
    assert len(study_of(tmp_path).trials) == 5


def test_pruning_stops_a_clearly_worse_trial(tmp_path):
    suite = search_suite(
        trials=2,
        report_every_tokens=2048,
        pruner={"kind": "median", "startup_trials": 1, "warmup_reports": 0},
        enqueue=[{"train.lr": 5.0e-3}, {"train.lr": 1.0e-4}],
    )
    suite["search"]["space"]["train.lr"]["low"] = 1.0e-4
    suite["base"]["train"]["steps"] = 24
    path = write(tmp_path, suite)
    assert main(["search", str(path), "--out", str(tmp_path / "results")]) == 0
    good, bad = study_of(tmp_path).trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert bad.state == optuna.trial.TrialState.PRUNED
    record = RunRecord(tmp_path / "results" / "t.search" / bad.user_attrs["run_id"])
    assert record.status["state"] == "pruned" and "pruned at" in record.status["error"]
    assert max(row["step"] for row in record.metrics()) < 24, "stopped before the end"
    # intermediate values are reported at the same token counts for both trials
    assert set(bad.intermediate_values) <= set(good.intermediate_values)


def test_killed_worker_mid_trial_and_another_continues_the_study(tmp_path):
    suite = search_suite(trials=3, heartbeat_s=1, grace_s=3, enqueue=[])
    suite["base"]["train"]["steps"] = 60
    path = write(tmp_path, suite)
    command = [sys.executable, "-m", "harness", "search", str(path), "--out", str(tmp_path / "results")]
    worker = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states = optuna.trial.TrialState
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                trials = study_of(tmp_path).trials
            except (KeyError, Exception):
                continue
            if [t.state for t in trials] == [states.COMPLETE, states.RUNNING]:
                break
        else:
            pytest.fail("the worker never got to its second trial")
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    completed_before = study_of(tmp_path).trials[0]

    assert main(["search", str(path), "--out", str(tmp_path / "results")]) == 0
    trials = study_of(tmp_path).trials
    complete = [t for t in trials if t.state == states.COMPLETE]
    assert len(complete) == 3
    assert trials[0].value == completed_before.value and trials[0].params == completed_before.params
    killed = trials[1]
    assert killed.state == states.FAIL
    retry = next(t for t in trials if retry_callback().retried_trial_number(t) == 1)
    assert retry.state == states.COMPLETE and retry.params == killed.params
    assert len({t.number for t in trials}) == len(trials)


# --------------------------------------------------------------------------------- PostgreSQL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on loopback (Debian's postgresql package)."""
    initdb, pg_ctl = _postgres_binary("initdb"), _postgres_binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (`.ci/run` installs Debian's postgresql)")
    pytest.importorskip("psycopg2")
    root = Path(tempfile.mkdtemp(prefix="harness-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot start PostgreSQL as its own user")
        shutil.chown(root, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    os.chmod(root, 0o755)
    data, port = root / "data", free_port()
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_study_in_postgres(tmp_path, postgres):
    suite = search_suite(trials=4, enqueue=[], sampler={"kind": "random", "seed": 0})
    suite["base"]["train"]["steps"] = 40
    path = write(tmp_path, suite)
    out = str(tmp_path / "results")
    assert main(["search", str(path), "--storage", postgres, "--workers", "2", "--out", out]) == 0
    trials = optuna.load_study(study_name="t", storage=postgres).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}, "both workers took trials"
    assert len({t.params["train.lr"] for t in trials}) == 4, "workers sample with different seeds"
