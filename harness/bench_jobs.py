"""`harness bench jobs`: a suite's wall time with `harness run --jobs N` against `--jobs 1`, on a
quiet machine and beside one other busy process, in one invocation.

Each measurement is a whole `harness run` of the suite in a child process, into a fresh temporary
`--out` (so every data stage is built again, on both sides), with the thread defaults of its
`--jobs` (OMP_NUM_THREADS and MKL_NUM_THREADS are removed from its environment). The busy process
is a spinning Python loop the benchmark starts before a measurement and kills after it. Machines
drift, so the two sides are measured back to back, in alternating order from pair to pair, and the
figure to quote is the median over pairs of the paired ratio (wall time at --jobs 1) / (at --jobs N).
The JSON is rewritten after every pair: an interrupted benchmark keeps what it measured.

A side can be given a time limit (`--side-limit-s`): beside a busy process `--jobs 1` can take
hours. A side past its limit is stopped as Ctrl-C stops a run (SIGTERM: the running runs checkpoint
and record `interrupted`) and recorded as censored: its wall time is only known to exceed the limit,
so its pair gives a bound on the speedup (`speedup_at_least` when the sequential side was stopped),
never a speedup, and no median is formed from bounds.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.jobs import STOP_WAIT_S, usable_cores
from harness.records import atomic_write_json, find_records

CONDITIONS = ("quiet", "busy")


@contextmanager
def busy_process(active: bool) -> Iterator[None]:
    """One other process spinning on a core for as long as the block lasts (with `active`)."""
    if not active:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


# a stopped side's runs get this long to checkpoint and record themselves: a `--jobs` parent gives its
# children STOP_WAIT_S before it kills them, and then records what they left
STOP_GRACE_S = STOP_WAIT_S + 120.0


def measure_suite(
    suite: str, overrides: list[str], arms: list[str], jobs: int, limit_s: float | None = None
) -> dict[str, Any]:
    """Wall time of `harness run SUITE --jobs J` into a fresh results directory, and what its runs used;
    past `limit_s` the run is stopped and the measurement censored (`wall_s` None, `stopped_after_s`)."""
    out = Path(tempfile.mkdtemp(prefix="harness-bench-jobs-"))
    argv = [sys.executable, "-m", "harness", "run", suite, "--out", str(out), "--jobs", str(jobs)]
    argv += ["--no-report", "--no-progress"]
    for flag, values in (("--set", overrides), ("--arm", arms)):
        for value in values:
            argv += [flag, value]
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        started = time.perf_counter()
        with tempfile.TemporaryFile("w+") as stderr:
            child = subprocess.Popen(argv, env=environment, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
            stopped_after = None
            try:
                child.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                stopped_after = time.perf_counter() - started
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            wall = time.perf_counter() - started
            stderr.seek(0)
            errors = stderr.read()
        if stopped_after is None and child.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` exited with {child.returncode}:\n{errors[-2000:]}")
        records = find_records(out)
        summaries = [r.summary for r in records if r.summary]
        measured: dict[str, Any] = {
            "jobs": jobs,
            "wall_s": None if stopped_after is not None else round(wall, 2),
            "runs": len(records),
            "runs_done": len(summaries),
            "threads_per_run": sorted({s["environment"]["threads"] for s in summaries}),
            "run_wall_s": sorted(s["wall_s"] for s in summaries),
        }
        if stopped_after is not None:
            measured["stopped_after_s"] = round(stopped_after, 2)
        return measured
    finally:
        shutil.rmtree(out, ignore_errors=True)


def pair_of(condition: str, round_number: int, sequential: dict[str, Any], parallel: dict[str, Any]) -> dict[str, Any]:
    """One condition's two sides as a speedup, or, where a side was stopped at its limit, a bound on it."""
    pair: dict[str, Any] = {
        "round": round_number,
        "condition": condition,
        "sequential_s": sequential["wall_s"],
        "parallel_s": parallel["wall_s"],
    }
    if sequential["wall_s"] is not None and parallel["wall_s"] is not None:
        pair["speedup"] = round(sequential["wall_s"] / parallel["wall_s"], 3)
    elif sequential["wall_s"] is None and parallel["wall_s"] is not None:
        pair["sequential_stopped_after_s"] = sequential["stopped_after_s"]
        pair["speedup_at_least"] = round(sequential["stopped_after_s"] / parallel["wall_s"], 3)
    elif parallel["wall_s"] is None and sequential["wall_s"] is not None:
        pair["parallel_stopped_after_s"] = parallel["stopped_after_s"]
        pair["speedup_at_most"] = round(sequential["wall_s"] / parallel["stopped_after_s"], 3)
    else:
        pair["sequential_stopped_after_s"] = sequential["stopped_after_s"]
        pair["parallel_stopped_after_s"] = parallel["stopped_after_s"]
    return pair


def median_speedups(pairs: list[dict[str, Any]], conditions: tuple[str, ...]) -> dict[str, float]:
    """Per condition, the median over its pairs of the paired speedup; censored pairs (bounds) left out."""
    medians = {}
    for condition in conditions:
        speedups = [p["speedup"] for p in pairs if p["condition"] == condition and "speedup" in p]
        if speedups:
            medians[condition] = round(statistics.median(speedups), 3)
    return medians


def bench_jobs(
    suite: str,
    overrides: list[str],
    arms: list[str],
    jobs: int = 2,
    rounds: int = 1,
    conditions: tuple[str, ...] = CONDITIONS,
    json_path: Path | None = None,
    log: Callable[[str], None] = print,
    measure: Callable[..., dict[str, Any]] = measure_suite,
    side_limit_s: float | None = None,
) -> dict[str, Any]:
    """`rounds` x `conditions` pairs of measurements, --jobs 1 and --jobs `jobs` back to back, each side
    stopped after `side_limit_s` if given."""
    import torch

    report: dict[str, Any] = {
        "what": f"wall time of `harness run` of a suite with --jobs 1 vs --jobs {jobs}, quiet and beside one "
        "spinning process; speedup = wall(--jobs 1) / wall(--jobs N), paired, sides alternating",
        "suite": suite,
        "overrides": overrides,
        "arms": arms,
        "jobs": jobs,
        "side_limit_s": side_limit_s,
        "machine": {
            "usable_cores": usable_cores(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "measurements": [],
        "pairs": [],
        "median_speedup": {},
    }
    for round_number in range(rounds):
        for index, condition in enumerate(conditions):
            # each condition's pairs alternate which side goes first, and the conditions start differently
            order = (1, jobs) if (round_number + index) % 2 == 0 else (jobs, 1)
            sides = {}
            for side in order:
                load = os.getloadavg()[0]
                with busy_process(condition == "busy"):
                    measured = measure(suite, overrides, arms, side, side_limit_s)
                measured.update({"round": round_number, "condition": condition, "load_before": round(load, 2)})
                report["measurements"].append(measured)
                sides[side] = measured
                took = _took(measured["wall_s"], measured.get("stopped_after_s"))
                if measured["wall_s"] is None:
                    took += f", {measured['runs_done']} of {measured['runs']} runs done"
                log(f"round {round_number + 1}/{rounds}, {condition}, --jobs {side}: {took} "
                    f"({measured['runs']} runs, {measured['threads_per_run']} thread(s) per run)")  # fmt: skip
            report["pairs"].append(pair_of(condition, round_number, sides[1], sides[jobs]))
            report["median_speedup"] = median_speedups(report["pairs"], conditions)
            if json_path is not None:
                atomic_write_json(json_path, report)
    return report


def summarize_jobs(report: dict[str, Any]) -> str:
    lines = [f"--jobs {report['jobs']} vs --jobs 1 on {report['suite']} ({report['machine']['usable_cores']} cores):"]
    for pair in report["pairs"]:
        lines.append(f"  round {pair['round'] + 1} {pair['condition']}: {_side(pair, 'sequential')} vs "
                     f"{_side(pair, 'parallel')}, {_speedup(pair)}")  # fmt: skip
    for condition, speedup in report["median_speedup"].items():
        lines.append(f"  median speedup, {condition}: {speedup:.2f}x")
    return "\n".join(lines)


def _side(pair: dict[str, Any], side: str) -> str:
    return _took(pair[f"{side}_s"], pair.get(f"{side}_stopped_after_s"))


def _took(wall_s: float | None, stopped_after_s: float | None) -> str:
    """A side's wall time, or, for a side stopped at its limit, the bound on it."""
    return f"{wall_s:.1f}s" if wall_s is not None else f"> {stopped_after_s:.1f}s (stopped)"


def _speedup(pair: dict[str, Any]) -> str:
    if "speedup" in pair:
        return f"speedup {pair['speedup']:.2f}x"
    if "speedup_at_least" in pair:
        return f"speedup at least {pair['speedup_at_least']:.2f}x"
    if "speedup_at_most" in pair:
        return f"speedup at most {pair['speedup_at_most']:.2f}x"
    return "both sides stopped: no bound"
