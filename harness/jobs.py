"""Several runs of a suite at once on one machine: `harness run --jobs N`.

Each run trains in a child process of its own, `python -m harness run SUITE --only-run RUN_ID`,
with its share of the cores. On a small CPU machine extra torch threads wait for a core by
spinning: a run with 2 threads beside one other busy process measured 5-20x slower than with 1
(PERF-NOTES.md), so small models train best one thread per run, several runs at once. The thread
count is fixed before torch starts: OMP_NUM_THREADS and MKL_NUM_THREADS in the child's environment,
then torch.set_num_threads in the child. A run's numbers depend on its config, seed and thread
count only, so N jobs give the records of one job at the same threads per run.

The parent takes each run's lock and hands it to the child (an inherited descriptor: the kernel
keeps the lock while either holds it), keeps at most N children going, shows every running run from
the status.json and metrics.jsonl it writes, and reads each outcome from status.json, so a run is
recorded exactly as a sequential `harness run` records it. A finished run that lacks downstream tasks
goes to a child the same way, which evaluates them from its checkpoint (`Job.evaluate`); whatever
happens to that evaluation, the run stays done.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.interrupt import EXIT_INTERRUPTED
from harness.records import RunLock, RunRecord

LOG_NAME = "output.log"  # a child's stdout and stderr, in its run directory
POLL_S = 0.25  # how often the parent looks for finished children
LIVE_EVERY_S = 2.0  # status redrawn in place on a terminal
PLAIN_EVERY_S = 20.0  # status as a block of lines in a log file
STOP_WAIT_S = 60.0  # after Ctrl-C, time the children get to finish their step, checkpoint and record it


# ------------------------------------------------------------------------------ threads


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or taskset's share)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # a platform without affinity
        return os.cpu_count() or 1


def thread_limit(environ: Mapping[str, str]) -> int | None:
    """OMP_NUM_THREADS when set to a positive number: an upper bound the user chose."""
    value = environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def default_jobs(cores: int, runs_to_do: int, device_type: str) -> int:
    """Runs at once without --jobs: one per core on a CPU, one on CUDA; never more than the runs to do."""
    if device_type != "cpu":
        return 1
    return max(1, min(cores, runs_to_do))


def threads_per_run(cores: int, processes: int, requested: int | None = None, limit: int | None = None) -> int:
    """Torch threads for each of `processes` runs side by side on `cores` cores: an even share, at
    least one, or `requested` (--threads). A `limit` (OMP_NUM_THREADS) lowers the share; nothing
    raises a run above the cores it may use."""
    threads = requested or max(1, cores // max(1, processes))
    if limit and not requested:
        threads = min(threads, limit)
    return max(1, min(threads, cores))


def set_torch_threads(threads: int) -> None:
    """This process's torch intra- and inter-op threads (the inter-op count can be set only once
    per process; a second run in the same process keeps the first)."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass


def child_environment(environ: Mapping[str, str], threads: int) -> dict[str, str]:
    """The environment of a child run: OpenMP and MKL read their thread counts when torch loads."""
    return {**environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


# ------------------------------------------------------------------------------ progress


def tail_rows(path: Path, size: int = 8192) -> list[dict[str, Any]]:
    """The JSON rows at the end of a growing file: only the last `size` bytes are read."""
    try:
        with path.open("rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(max(0, end - size))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines[1:] if end > size else lines:  # the first line read may be cut
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def run_progress(run_dir: Path) -> str:
    """What a running run is doing, read from its record: starting, preparing data, step N/M, evaluating."""
    status = RunRecord(run_dir).status or {}
    planned, state = status.get("planned_steps"), status.get("state")
    if state in ("done", "failed", "diverged", "interrupted"):
        return f"{state}, ending"
    if state != "running":
        return "starting"
    if planned is None:
        return "preparing data"
    rows = tail_rows(run_dir / "metrics.jsonl")
    if any(row.get("final") for row in rows):
        return "evaluating"
    # numbers only: the rows are read from a file anything may have written into
    step = max((row["step"] for row in rows if _is_number(row.get("step"))), default=status.get("resumed_from_step", 0))
    losses = [row["train_loss"] for row in rows if _is_number(row.get("train_loss"))]
    return f"step {step}/{planned}" + (f", loss {losses[-1]:.3f}" if losses else "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Board:
    """Event lines on stdout, and the running runs on stderr: redrawn in place on a terminal, a
    block every PLAIN_EVERY_S seconds in a log file, nothing with `enabled` off."""

    def __init__(self, enabled: bool, live: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.live = enabled and (sys.stderr.isatty() if live is None else live)
        self.enabled = enabled
        self.every = LIVE_EVERY_S if self.live else PLAIN_EVERY_S
        self.clock = clock
        self.last = clock()
        self.drawn = 0

    def event(self, line: str, error: bool = False) -> None:
        self._clear()
        print(line, file=sys.stderr if error else sys.stdout, flush=True)
        if self.live:
            self.last = float("-inf")  # redraw at the next call to show

    def show(self, lines: list[str]) -> None:
        now = self.clock()
        if not self.enabled or not lines or now - self.last < self.every:
            return
        self.last = now
        self._clear()
        if self.live:  # a wrapped line would break the redraw
            width = shutil.get_terminal_size().columns - 1
            lines = [line[:width] for line in lines]
            self.drawn = len(lines)
        sys.stdout.flush()
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.flush()

    def _clear(self) -> None:
        if self.drawn:
            sys.stderr.write(f"\x1b[{self.drawn}F\x1b[J")  # up to the block's first line, erase below
            sys.stderr.flush()
            self.drawn = 0


# ------------------------------------------------------------------------------ the pool


@dataclass(frozen=True)
class Job:
    """One run to train in a child: its label for messages, its directory and the child's command."""

    label: str
    run_id: str
    run_dir: Path
    argv: list[str]
    evaluate: tuple[str, ...] = ()  # a finished run's tasks left to evaluate; empty: a run to train
    arm: str = ""  # runs of one arm take about as long as each other: the time-left estimate groups by it


@dataclass
class Tally:
    """What a `harness run` did, sequential or parallel: the exit status and summary lines come from it."""

    skipped: int = 0
    trained: int = 0
    evaluated: int = 0  # finished runs evaluated on the tasks they lacked, nothing trained
    busy: int = 0
    failed: list[str] = field(default_factory=list)
    not_evaluated: list[str] = field(default_factory=list)  # finished runs whose evaluation failed (still done)
    diverged: list[str] = field(default_factory=list)
    interrupted: bool = False  # the command itself was stopped (Ctrl-C, SIGTERM)
    interrupted_runs: list[str] = field(default_factory=list)  # runs a signal to their own process stopped


@dataclass
class _Child:
    job: Job
    lock: RunLock
    process: subprocess.Popen
    started: float


def run_parallel(
    jobs: list[Job],
    slots: int,
    threads: int,
    where: str,
    done_line: Callable[[str, dict[str, Any]], str],
    progress: bool = True,
) -> Tally:
    """Train `jobs` in at most `slots` children at once, each with `threads` threads. A run already
    done or locked by another process is skipped, as in sequential mode; Ctrl-C (or SIGTERM) is passed
    on to every child, which checkpoints at its next step and records its run as interrupted."""
    tally = Tally()
    board = Board(progress)
    queue = list(jobs)
    running: list[_Child] = []
    took: dict[str, list[float]] = {}  # arm -> seconds of each run trained to the end in this sitting
    # jobs already done when the command starts are skipped when their turn comes: not waiting
    to_do = {job.run_id for job in jobs if job.evaluate or not RunRecord(job.run_dir).is_done()}
    environment = child_environment(os.environ, threads)
    with _sigterm_as_interrupt():
        try:
            while queue or running:
                for child in [c for c in running if c.process.poll() is not None]:
                    running.remove(child)
                    # a resumed run took only its remainder: no measure of a run's time
                    if _collect(child, tally, board, done_line) and not _resumed(child.job.run_dir):
                        took.setdefault(child.job.arm, []).append(time.monotonic() - child.started)
                while queue and len(running) < slots:
                    child = _start(queue.pop(0), environment, where, tally, board)
                    if child is not None:
                        running.append(child)
                if running:
                    board.show(_status_lines(running, [job for job in queue if job.run_id in to_do], took, slots))
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            tally.interrupted = True
            _stop(running, board)
    return tally


def _status_lines(running: list[_Child], waiting: list[Job], took: dict[str, list[float]], slots: int) -> list[str]:
    """The status block: its head counts the jobs waiting and, once a run has finished, estimates the
    time left."""
    now = time.monotonic()
    head = f"{len(running)} running" + (f", {len(waiting)} waiting" if waiting else "")
    left = time_left(took, [(c.job.arm, now - c.started) for c in running if not c.job.evaluate],
                     [job.arm for job in waiting if not job.evaluate], slots)  # fmt: skip
    if left is not None:
        finished = sum(len(times) for times in took.values())
        head += f"; about {_rough(left)} left (from the {finished} run(s) finished in this sitting)"
    return [head + ":"] + [
        f"  {c.job.label}: {run_progress(c.job.run_dir)} ({_duration(now - c.started)})" for c in running
    ]


def time_left(
    took: Mapping[str, list[float]], running: list[tuple[str, float]], waiting: list[str], slots: int
) -> float | None:
    """Seconds until the last run ends, roughly: each run takes the mean time of its arm's runs finished
    in this sitting (of all finished runs where its arm has none yet), less what a running one has
    already had, shared among `slots` at a time. None until a run has finished. Evaluation-only jobs
    are left out (minutes beside hours of training)."""
    times = [seconds for arm_times in took.values() for seconds in arm_times]
    if not times:
        return None
    overall = sum(times) / len(times)

    def expected(arm: str) -> float:
        arm_times = took.get(arm) or []
        return sum(arm_times) / len(arm_times) if arm_times else overall

    work = sum(max(expected(arm) - elapsed, 0.0) for arm, elapsed in running)
    work += sum(expected(arm) for arm in waiting)
    return work / max(slots, 1)


def _resumed(run_dir: Path) -> bool:
    return bool((RunRecord(run_dir).summary or {}).get("resumed_from_step"))


def _rough(seconds: float) -> str:
    """'2 h 10 min', '14 min', 'under a minute': an estimate's precision."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _start(job: Job, environment: dict[str, str], where: str, tally: Tally, board: Board) -> _Child | None:
    record, lock = RunRecord(job.run_dir), RunLock(job.run_dir)
    if job.evaluate:  # a finished run: the child evaluates what it lacks (nothing, if another process just did)
        if not lock.acquire():
            board.event(f"{job.label}: being evaluated by {lock.holder()}, skipped")
            tally.busy += 1
            return None
        board.event(f"{job.label}: done; evaluating {', '.join(job.evaluate)} on {where}")
        return _spawn(job, environment, lock)
    if record.is_done():
        board.event(f"{job.label}: already done, skipped")
        tally.skipped += 1
        return None
    if not lock.acquire():
        board.event(f"{job.label}: being trained by {lock.holder()}, skipped")
        tally.busy += 1
        return None
    if record.is_done():  # finished by another process just before we locked it
        lock.release()
        board.event(f"{job.label}: already done, skipped")
        tally.skipped += 1
        return None
    board.event(f"{job.label}: training on {where}")
    return _spawn(job, environment, lock)


def _spawn(job: Job, environment: dict[str, str], lock: RunLock) -> _Child:
    try:
        with (job.run_dir / LOG_NAME).open("a") as log:
            log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S%z')} {' '.join(job.argv)}\n")
            log.flush()
            process = subprocess.Popen(
                job.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                pass_fds=(lock.fileno(),),  # the child holds the run's lock with us, and alone if we die
                start_new_session=True,  # Ctrl-C reaches the parent alone, which stops the children once
            )
    except BaseException:
        lock.release()
        raise
    return _Child(job, lock, process, time.monotonic())


def _collect(child: _Child, tally: Tally, board: Board, done_line: Callable[[str, dict[str, Any]], str]) -> bool:
    """A finished child's outcome, read from its run's record; True when it trained its run to the end."""
    child.lock.release()
    job, code = child.job, child.process.returncode
    record = RunRecord(job.run_dir)
    status = record.status or {}
    if job.evaluate:  # the run stays done whatever happened to its evaluation
        if code == 0:
            tally.evaluated += 1
            board.event(f"{job.label}: evaluated {', '.join(job.evaluate)}")
        else:
            tally.not_evaluated.append(job.run_id)
            board.event(f"{job.label}: evaluation FAILED (log: {job.run_dir / LOG_NAME})", error=True)
        return False
    if record.is_done():
        tally.trained += 1
        board.event(done_line(job.label, record.summary or {}))
        return True
    if status.get("state") == "diverged":
        tally.diverged.append(job.run_id)
        board.event(f"{job.label}: DIVERGED: {status.get('error', '')}", error=True)
        return False
    if status.get("state") == "interrupted":  # its process alone was signalled
        tally.interrupted_runs.append(job.run_id)
        board.event(f"{job.label}: interrupted ({status.get('error', '')})", error=True)
        return False
    if status.get("state") != "failed":  # it died before it could record anything (killed, out of memory)
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        record.set_status("failed", error=f"its process {how} without recording a result")
        status = record.status or {}
    tally.failed.append(job.run_id)
    board.event(f"{job.label}: FAILED: {status.get('error', '')} (log: {job.run_dir / LOG_NAME})", error=True)
    return False


def _signal(child: _Child, number: int) -> None:
    signal_session(child.process, number)


def signal_session(process: subprocess.Popen, number: int) -> None:
    """Signal a child started in its own session: it and anything it started (gone already: nothing)."""
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:
        pass


def _stop(running: list[_Child], board: Board) -> None:
    """Ctrl-C: each child is interrupted, checkpoints at its next step and records its run as
    interrupted; one that does not end within STOP_WAIT_S (or at a second Ctrl-C) is killed, and its
    run recorded interrupted here (it resumes from its last periodic checkpoint)."""
    for child in running:
        _signal(child, signal.SIGINT)
    deadline = time.monotonic() + STOP_WAIT_S
    try:
        for child in running:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(child, signal.SIGKILL)
    except KeyboardInterrupt:
        for child in running:
            _signal(child, signal.SIGKILL)
    for child in running:
        child.process.wait()
        child.lock.release()
        if child.job.evaluate:
            board.event(f"{child.job.label}: evaluation interrupted (the run stays done)", error=True)
            continue
        record = RunRecord(child.job.run_dir)
        if (record.status or {}).get("state") in ("pending", "running"):  # killed before it recorded anything
            _record_killed(record)
        board.event(f"{child.job.label}: interrupted ({(record.status or {}).get('error', '')})", error=True)


def _record_killed(record: RunRecord) -> None:
    """A child killed after Ctrl-C before it could stop: interrupted, resumed from its latest checkpoint."""
    from harness.checkpoint import Checkpointer

    found = Checkpointer(record.dir / "checkpoints", 0).latest()
    step = found.step if found is not None else 0
    record.set_status("interrupted", error=f"SIGINT: its process was killed before it stopped; the next attempt "
                      f"resumes from step {step}", signal="SIGINT", resume_step=step)  # fmt: skip


def combined_exit_status(codes: list[int]) -> int:
    """One exit status for processes run side by side: 130 when any was interrupted (the work resumes),
    1 when any was killed by a signal (a negative returncode, which max() would read as success),
    else the largest."""
    if EXIT_INTERRUPTED in codes:
        return EXIT_INTERRUPTED
    if any(code < 0 for code in codes):
        return 1
    return max(codes, default=0)


def run_side_by_side(commands: list[tuple[list[str], Mapping[str, str] | None]]) -> int:
    """Start every (argv, environment) at once, each in its own session, and wait for all. Each Ctrl-C
    or SIGTERM to this process is passed on to each once, as SIGINT: the first makes each stop at its
    next step with a checkpoint, a second stops them at once (in one process group a terminal's Ctrl-C
    would reach every process directly as well, so each would see it twice)."""
    processes = [subprocess.Popen(argv, env=env, start_new_session=True) for argv, env in commands]
    interrupted = False
    with _sigterm_as_interrupt():
        while True:
            try:
                codes = [process.wait() for process in processes]
                break
            except KeyboardInterrupt:
                interrupted = True
                for process in processes:
                    if process.poll() is None:
                        signal_session(process, signal.SIGINT)
    return EXIT_INTERRUPTED if interrupted else combined_exit_status(codes)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the children as Ctrl-C does, rather than leaving them to run on alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
