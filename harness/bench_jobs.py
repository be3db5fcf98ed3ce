"""`harness bench jobs`: a suite's wall time with `harness run --jobs N` against `--jobs 1`, on a
quiet machine and beside one other busy process, in one invocation.

Each measurement is a whole `harness run` of the suite in a child process, into a fresh temporary
`--out` (so every data stage is built again, on both sides), with the thread defaults of its
`--jobs` (OMP_NUM_THREADS and MKL_NUM_THREADS are removed from its environment). The busy process
is a spinning Python loop the benchmark starts before a measurement and kills after it. Machines
drift, so the two sides are measured back to back, in alternating order from pair to pair, and the
figure to quote is the median over pairs of the paired ratio (wall time at --jobs 1) / (at --jobs N).
The JSON is rewritten after every pair: an interrupted benchmark keeps what it measured.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.jobs import usable_cores
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


def measure_suite(suite: str, overrides: list[str], arms: list[str], jobs: int) -> dict[str, Any]:
    """Wall time of `harness run SUITE --jobs J` into a fresh results directory, and what its runs used."""
    out = Path(tempfile.mkdtemp(prefix="harness-bench-jobs-"))
    argv = [sys.executable, "-m", "harness", "run", suite, "--out", str(out), "--jobs", str(jobs)]
    argv += ["--no-report", "--no-progress"]
    for flag, values in (("--set", overrides), ("--arm", arms)):
        for value in values:
            argv += [flag, value]
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        started = time.perf_counter()
        done = subprocess.run(argv, env=environment, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` exited with {done.returncode}:\n{done.stderr[-2000:]}")
        summaries = [r.summary for r in find_records(out) if r.summary]
        return {
            "jobs": jobs,
            "wall_s": round(wall, 2),
            "runs": len(summaries),
            "threads_per_run": sorted({s["environment"]["threads"] for s in summaries}),
            "run_wall_s": sorted(s["wall_s"] for s in summaries),
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_jobs(
    suite: str,
    overrides: list[str],
    arms: list[str],
    jobs: int = 2,
    rounds: int = 1,
    conditions: tuple[str, ...] = CONDITIONS,
    json_path: Path | None = None,
    log: Callable[[str], None] = print,
    measure: Callable[[str, list[str], list[str], int], dict[str, Any]] = measure_suite,
) -> dict[str, Any]:
    """`rounds` x `conditions` pairs of measurements, --jobs 1 and --jobs `jobs` back to back."""
    import torch

    report: dict[str, Any] = {
        "what": f"wall time of `harness run` of a suite with --jobs 1 vs --jobs {jobs}, quiet and beside one "
        "spinning process; speedup = wall(--jobs 1) / wall(--jobs N), paired, sides alternating",
        "suite": suite,
        "overrides": overrides,
        "arms": arms,
        "jobs": jobs,
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
            walls = {}
            for side in order:
                load = os.getloadavg()[0]
                with busy_process(condition == "busy"):
                    measured = measure(suite, overrides, arms, side)
                measured.update({"round": round_number, "condition": condition, "load_before": round(load, 2)})
                report["measurements"].append(measured)
                walls[side] = measured["wall_s"]
                log(f"round {round_number + 1}/{rounds}, {condition}, --jobs {side}: {measured['wall_s']:.1f}s "
                    f"({measured['runs']} runs, {measured['threads_per_run']} thread(s) per run)")  # fmt: skip
            speedup = walls[1] / walls[jobs]
            report["pairs"].append(
                {
                    "round": round_number,
                    "condition": condition,
                    "sequential_s": walls[1],
                    "parallel_s": walls[jobs],
                    "speedup": round(speedup, 3),
                }  # fmt: skip
            )
            report["median_speedup"] = {
                c: round(statistics.median(p["speedup"] for p in report["pairs"] if p["condition"] == c), 3)
                for c in conditions
                if any(p["condition"] == c for p in report["pairs"])
            }
            if json_path is not None:
                atomic_write_json(json_path, report)
    return report


def summarize_jobs(report: dict[str, Any]) -> str:
    lines = [f"--jobs {report['jobs']} vs --jobs 1 on {report['suite']} ({report['machine']['usable_cores']} cores):"]
    for pair in report["pairs"]:
        lines.append(f"  round {pair['round'] + 1} {pair['condition']}: {pair['sequential_s']:.1f}s vs "
                     f"{pair['parallel_s']:.1f}s, speedup {pair['speedup']:.2f}x")  # fmt: skip
    for condition, speedup in report["median_speedup"].items():
        lines.append(f"  median speedup, {condition}: {speedup:.2f}x")
    return "\n".join(lines)
