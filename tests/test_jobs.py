"""`harness run --jobs N`: threads per run, children that see their thread counts, records equal to
a sequential run's, progress read from run records, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import default_sigint, tiny_suite

from harness import jobs
from harness.cli import main
from harness.jobs import (
    Board,
    child_environment,
    default_jobs,
    run_progress,
    thread_limit,
    threads_per_run,
    time_left,
)
from harness.records import RunLock, RunRecord


def test_threads_per_run_share_the_cores_and_never_exceed_them():
    assert threads_per_run(cores=2, processes=1) == 2
    assert threads_per_run(cores=2, processes=2) == 1
    assert threads_per_run(cores=2, processes=3) == 1, "at least one thread"
    assert threads_per_run(cores=16, processes=3) == 5
    assert threads_per_run(cores=8, processes=1, limit=2) == 2, "OMP_NUM_THREADS lowers the share"
    assert threads_per_run(cores=8, processes=2, limit=16) == 4, "but never raises it"
    assert threads_per_run(cores=8, processes=4, requested=3, limit=1) == 3, "--threads is explicit"
    assert threads_per_run(cores=2, processes=1, requested=8) == 2, "never more threads than cores"
    assert thread_limit({"OMP_NUM_THREADS": "3"}) == 3
    assert thread_limit({"OMP_NUM_THREADS": "0"}) is None and thread_limit({}) is None


def test_default_jobs_is_one_per_usable_core_on_a_cpu_and_one_on_cuda(monkeypatch):
    assert default_jobs(cores=4, runs_to_do=12, device_type="cpu") == 4
    assert default_jobs(cores=4, runs_to_do=3, device_type="cpu") == 3, "no more than the runs to do"
    assert default_jobs(cores=4, runs_to_do=0, device_type="cpu") == 1
    assert default_jobs(cores=8, runs_to_do=12, device_type="cuda") == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert jobs.usable_cores() == 3, "the cores this process may run on, not the machine's"


def test_a_child_sees_its_thread_counts_before_torch_loads():
    probe = (
        "import os, torch; first = torch.get_num_threads()\n"
        "from harness.jobs import set_torch_threads; set_torch_threads(int(os.environ['OMP_NUM_THREADS']))\n"
        "print(first, torch.get_num_threads(), torch.get_num_interop_threads(),"
        " os.environ['OMP_NUM_THREADS'], os.environ['MKL_NUM_THREADS'])"
    )
    # the parent's own OMP_NUM_THREADS (7: torch would take every core) is replaced, not inherited
    environment = child_environment({**os.environ, "OMP_NUM_THREADS": "7"}, threads=1)
    done = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1", "1", "1", "1"]


def test_progress_is_read_from_the_run_record(tmp_path):
    record = RunRecord(tmp_path)
    assert run_progress(tmp_path) == "starting"
    record.start({"arm": "a"}, {})
    assert run_progress(tmp_path) == "preparing data"
    record.update_status(planned_steps=12)
    assert record.status["state"] == "running" and record.status["pid"] == os.getpid()
    assert run_progress(tmp_path) == "step 0/12"
    record.append_metrics({"step": 6, "train_loss": 5.4321})
    record.append_metrics({"step": 6, "heldout_loss": 5.9})
    assert run_progress(tmp_path) == "step 6/12, loss 5.432"
    record.append_metrics({"step": 12, "final": True, "heldout_loss": 5.8})
    assert run_progress(tmp_path) == "evaluating"
    record.finish({"metrics": {}})
    assert run_progress(tmp_path) == "done, ending"


def test_status_goes_to_a_log_as_a_block_every_few_seconds(capsys):
    now = [0.0]
    board = Board(enabled=True, live=False, clock=lambda: now[0])
    board.show(["1 running:", "  [1/2] a seed=0: step 3/12"])
    now[0] = jobs.PLAIN_EVERY_S + 1
    board.event("[2/2] b seed=0: training on cpu, 1 thread(s)")
    board.show(["2 running:", "  [1/2] a seed=0: step 9/12", "  [2/2] b seed=0: preparing data"])
    board.show(["2 running:", "too soon"])
    captured = capsys.readouterr()
    assert captured.out == "[2/2] b seed=0: training on cpu, 1 thread(s)\n"
    assert captured.err == "2 running:\n  [1/2] a seed=0: step 9/12\n  [2/2] b seed=0: preparing data\n"


# ------------------------------------------------------------------------------ whole suites


def two_by_two(tmp_path: Path, steps: int = 8) -> Path:
    suite = tiny_suite(arms={"a": {}, "b": {"train": {"lr": 1e-3}}}, seeds=[0, 1])
    suite["base"]["train"].update({"steps": steps, "eval_every": 4})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def records(out: Path) -> dict[str, RunRecord]:
    return {p.name: RunRecord(p) for p in (out / "t").iterdir() if p.is_dir()}


def curve(record: RunRecord) -> list[dict]:
    # wall-clock fields (throughput, seconds of training) differ between any two runs
    return [{k: v for k, v in row.items() if k not in ("tokens_per_s", "train_s")} for row in record.metrics()]


def test_time_left_counts_each_arm_at_its_own_pace_shared_among_the_slots():
    assert time_left({}, [("a", 10.0)], ["a", "a"], 2) is None  # nothing finished: no estimate
    took = {"pretrained": [900.0, 1100.0], "random-init": [200.0]}
    # running: 1,000 - 400 left of one, 200 - 50 of a control; waiting: two pretrained and one control
    left = time_left(
        took, [("pretrained", 400.0), ("random-init", 50.0)], ["pretrained", "pretrained", "random-init"], 2
    )
    assert left == pytest.approx((600 + 150 + 2 * 1000 + 200) / 2)
    # an arm with no finished run yet takes the mean of all finished runs; one overdue counts as ending now
    assert time_left(took, [("pretrained", 5000.0)], ["new-arm"], 1) == pytest.approx(2200 / 3)
    assert jobs._rough(20) == "under a minute" and jobs._rough(14 * 60 + 10) == "14 min"
    assert jobs._rough(2 * 3600 + 9 * 60 + 40) == "2 h 10 min"


def test_the_status_block_says_how_long_is_left_once_a_run_has_finished(tmp_path):
    now = time.monotonic()
    child = SimpleNamespace(job=jobs.Job("[3/4] a seed=0", "r3", tmp_path, [], arm="a"), started=now - 120)
    waiting = [jobs.Job("[4/4] a seed=1", "r4", tmp_path, [], arm="a")]
    head = jobs._status_lines([child], waiting, {}, 2)[0]
    assert head == "1 running, 1 waiting:"
    head = jobs._status_lines([child], waiting, {"a": [600.0, 600.0]}, 2)[0]
    # (600 - 120 + 600) / 2 seconds
    assert head == "1 running, 1 waiting; about 9 min left (from the 2 run(s) finished in this sitting):"


def test_two_jobs_give_the_records_of_one_job(tmp_path, monkeypatch, capsys):
    path = two_by_two(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the children's own count replaces the parent's
    common = ["run", str(path), "--no-progress", "--no-report", "--threads", "1"]
    assert main([*common, "--out", str(tmp_path / "parallel"), "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 runs at a time, 1 thread(s) each" in printed and printed.count(": training on ") == 4
    assert main([*common, "--out", str(tmp_path / "sequential"), "--jobs", "1"]) == 0
    parallel, sequential = records(tmp_path / "parallel"), records(tmp_path / "sequential")
    assert sorted(parallel) == sorted(sequential) and len(parallel) == 4
    for run_id, record in parallel.items():
        one, two = sequential[run_id].summary, record.summary
        assert two["metrics"] == one["metrics"], "exactly equal floats"
        assert two["budget"] == one["budget"] and two["downstream"] == one["downstream"]
        assert curve(record) == curve(sequential[run_id])
        environment = two["environment"]
        assert (environment["threads"], environment["interop_threads"], environment["omp_num_threads"]) == (1, 1, "1")
        assert "training on cpu, 1 thread(s) (OMP_NUM_THREADS=1)" in (record.dir / jobs.LOG_NAME).read_text()
        assert not (sequential[run_id].dir / jobs.LOG_NAME).exists()
    assert main([*common, "--out", str(tmp_path / "parallel"), "--jobs", "2"]) == 0
    assert "all 4 run(s) were already done: nothing trained" in capsys.readouterr().out


def test_ctrl_c_stops_every_child_and_records_its_run_as_interrupted(tmp_path):
    path = two_by_two(tmp_path, steps=5000)
    out = tmp_path / "r"
    command = [sys.executable, "-m", "harness", "run", str(path), "--out", str(out), "--jobs", "2", "--no-report"]
    parent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=default_sigint)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and parent.poll() is None:
            found = records(out).values() if (out / "t").is_dir() else []
            running = [r for r in found if (r.status or {}).get("planned_steps")]
            if len(running) == 2 and all(r.metrics() for r in running):
                break
            time.sleep(0.2)
        else:
            pytest.fail("two runs never trained side by side")
        parent.send_signal(signal.SIGINT)
        _, err = parent.communicate(timeout=90)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 130, err
    assert err.count("interrupted (SIGINT: stopped at step") == 2, err
    states = sorted(r.status["state"] for r in records(out).values())
    assert states == ["interrupted", "interrupted", "pending", "pending"], "runs not started are left alone"
    assert not any(RunLock(record.dir).held_elsewhere() for record in records(out).values()), "no child left"


def test_the_jobs_benchmark_pairs_the_two_sides_and_alternates_their_order(tmp_path):
    from harness.bench_jobs import bench_jobs

    calls = []

    def fake_measure(suite, overrides, arms, jobs, limit_s):
        calls.append(jobs)
        return {"jobs": jobs, "wall_s": 30.0 if jobs == 1 else 10.0, "runs": 2, "threads_per_run": [2 // jobs]}

    report = bench_jobs("s.yaml", [], [], jobs=2, rounds=2, json_path=tmp_path / "jobs.json", log=lambda line: None,
                        measure=fake_measure)  # fmt: skip
    assert calls == [1, 2, 2, 1, 2, 1, 1, 2], "each condition alternates which side goes first"
    assert [(p["condition"], p["speedup"]) for p in report["pairs"]] == [("quiet", 3.0), ("busy", 3.0)] * 2
    assert report["median_speedup"] == {"quiet": 3.0, "busy": 3.0}
    assert yaml.safe_load((tmp_path / "jobs.json").read_text()) == report


def test_a_side_past_its_limit_gives_a_bound_on_the_speedup_and_no_median(tmp_path):
    from harness.bench_jobs import bench_jobs, summarize_jobs

    def fake_measure(suite, overrides, arms, jobs, limit_s):
        assert limit_s == 100.0
        if jobs == 1:  # the sequential side runs past its limit
            return {"jobs": 1, "wall_s": None, "stopped_after_s": 100.4, "runs": 4, "runs_done": 1,
                    "threads_per_run": [2]}  # fmt: skip
        return {"jobs": jobs, "wall_s": 25.1, "runs": 4, "runs_done": 4, "threads_per_run": [1]}

    report = bench_jobs("s.yaml", [], [], jobs=2, conditions=("busy",), json_path=tmp_path / "jobs.json",
                        log=lambda line: None, measure=fake_measure, side_limit_s=100.0)  # fmt: skip
    (pair,) = report["pairs"]
    assert "speedup" not in pair and pair["sequential_s"] is None
    assert pair["speedup_at_least"] == 4.0 and pair["sequential_stopped_after_s"] == 100.4
    assert report["median_speedup"] == {}, "a bound is not a speedup"
    assert report["side_limit_s"] == 100.0
    assert "> 100.4s (stopped) vs 25.1s, speedup at least 4.00x" in summarize_jobs(report)


def test_a_real_side_stopped_at_its_limit_records_its_runs_as_interrupted(tmp_path, monkeypatch):
    from harness import bench_jobs

    kept = {}
    real_rmtree = bench_jobs.shutil.rmtree

    def keep_states(path, ignore_errors=False):  # read the records before the temporary folder goes
        kept["states"] = sorted(r.status["state"] for r in bench_jobs.find_records(Path(path)))
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(bench_jobs.shutil, "rmtree", keep_states)
    path = two_by_two(tmp_path, steps=5000)
    measured = bench_jobs.measure_suite(str(path), [], ["a"], 1, limit_s=15.0)
    assert measured["wall_s"] is None and measured["stopped_after_s"] >= 15.0
    assert (measured["runs"], measured["runs_done"]) == (2, 0)
    assert kept["states"] == ["interrupted", "pending"], "the running run checkpointed and said so"


def test_side_by_side_exit_status_counts_a_killed_process_as_a_failure():
    # a negative returncode (killed by a signal) is smaller than 0: max() read it as success
    assert jobs.combined_exit_status([0, -9]) == 1
    assert jobs.combined_exit_status([0, 0]) == 0
    assert jobs.combined_exit_status([2, 0]) == 2
    assert jobs.combined_exit_status([1, 130]) == 130, "an interrupted shard means: run again to resume"


def test_side_by_side_passes_sigterm_on_once_and_reports_the_interruption(tmp_path):
    # each child counts the SIGINTs it gets and ends after 1 s of quiet; the parent is sent SIGTERM
    child = (
        "import signal, sys, time\n"
        "seen = []\n"
        "signal.signal(signal.SIGINT, lambda *a: seen.append(time.monotonic()))\n"
        "open(sys.argv[1] + '.ready', 'w').close()\n"
        "deadline = time.monotonic() + 30\n"
        "while time.monotonic() < deadline and not (seen and time.monotonic() - seen[-1] > 1):\n"
        "    time.sleep(0.05)\n"
        "open(sys.argv[1], 'w').write(str(len(seen)))\n"
    )
    parent = (
        "import sys\n"
        "from harness.jobs import run_side_by_side\n"
        f"child = {child!r}\n"
        "marks = sys.argv[1:]\n"
        "sys.exit(run_side_by_side([([sys.executable, '-c', child, m], None) for m in marks]))\n"
    )
    marks = [str(tmp_path / "a"), str(tmp_path / "b")]
    process = subprocess.Popen([sys.executable, "-c", parent, *marks])
    deadline = time.monotonic() + 60
    while not all(Path(m + ".ready").exists() for m in marks):
        assert time.monotonic() < deadline, "children never started"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 130
    assert [Path(m).read_text() for m in marks] == ["1", "1"], "each child got exactly one SIGINT"
