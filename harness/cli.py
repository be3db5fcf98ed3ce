"""The command line: `harness run | data | eval | search | bench | export | import-hf | report | migrate | ls`.

Exit status 2 for bad input, 1 when any run failed."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Collection
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from harness.config import ConfigError
from harness.data.sources import DataSourceError
from harness.inputs import check_output_dir, check_output_file, finite_float, int_at_least
from harness.interrupt import EXIT_INTERRUPTED, stop_on_signals
from harness.jobs import LOG_NAME, Tally, set_torch_threads
from harness.records import RunRecord, find_records
from harness.suite import Suite, load_suite

DEFAULT_OUT = "results"


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _mean_spread(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    digits = 4 if abs(mean) < 10 else 2
    return f"{mean:.{digits}f} ± {spread:.{digits}f} (n={len(values)})"


def suite_table(suite: Suite, out_root: Path) -> str:
    """One row per arm: runs done (a damaged one is not: harness/integrity.py), then each suite metric
    as mean ± std over seeds."""
    metrics = suite.spec.metrics
    rows = []
    for arm, runs in suite.by_arm().items():
        records = [RunRecord(suite.run_dir(out_root, r)) for r in runs]
        done = [(record.summary or {}).get("metrics", {}) for record in records if record.is_done()]
        cells = [_mean_spread([d[m] for d in done if isinstance(d.get(m), (int, float))]) for m in metrics]
        rows.append([arm, f"{len(done)}/{len(runs)}", *cells])
    return _format_table(["arm", "done", *metrics], rows)


def check_task_data(suite: Suite) -> None:
    """Load every downstream task the suite names once, before any training: missing files or
    columns and labels outside the label set stop the command here, not after hours of pretraining."""
    from harness.evaluate import task_data_for
    from harness.squad import SPAN_TASKS
    from harness.tasks import TaskDataError

    checked = set()
    for run in suite.runs:
        for task in run.config.eval.tasks:
            key = (task, run.config.eval.model_dump_json())
            if key in checked or (task not in SPAN_TASKS and run.config.eval.task(task).definition.synthetic):
                continue
            checked.add(key)
            try:
                task_data_for(run.config, task)
            except TaskDataError as err:
                raise ConfigError(str(suite.path), f"eval.tasks ({task})", str(err)) from None


def check_corpora(suite: Suite, out_root: Path) -> None:
    """Read every file corpus the suite's runs use once, before anything is written: a corpus that
    does not decode or parse, or holds too few documents, stops the command here (exit 2), not as a
    failed run per arm."""
    from harness.data.cache import StageCache
    from harness.data.pipeline import check_corpus

    cache = StageCache(out_root / "_cache")  # read only: a corpus whose documents are cached was read whole
    checked = set()
    for run in suite.runs:
        key = run.config.data.model_dump_json(include={"corpus", "heldout_fraction"})
        if key in checked:
            continue
        checked.add(key)
        try:
            check_corpus(run.config.data, cache)
        except DataSourceError as err:
            raise ConfigError(str(suite.path), f"data.corpus (arm {run.arm})", str(err)) from None


def parse_gpus(text: str) -> list[str]:
    """`--gpus 0,1` -> ["0", "1"]: distinct ids, at least one."""
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or len(set(gpus)) != len(gpus):
        raise ConfigError("--gpus", text, "expected distinct comma-separated GPU ids such as 0,1")
    return gpus


def check_outputs(args: argparse.Namespace) -> None:
    """The results root and the report directory can be made and written, before anything is."""
    check_output_dir(args.out, "--out")
    if getattr(args, "report_out", None):
        check_output_dir(args.report_out, "--report-out")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`i/N` (1-based) -> (i, N)."""
    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError("--shard", "shard", f"expected I/N such as 2/4, got {text!r}") from None
    if not 1 <= index <= count:
        raise ConfigError("--shard", "shard", f"expected 1 <= I <= N, got {text!r}")
    return index, count


def shard_runs(runs: list, shard: tuple[int, int] | None) -> list:
    """A deterministic 1/N of the runs: every N-th in suite order, starting at the I-th. The N
    shards together hold every run exactly once, with no coordination between machines."""
    if shard is None:
        return list(runs)
    index, count = shard
    return [run for position, run in enumerate(runs) if position % count == index - 1]


def check_record_versions(suite: Suite, out_root: Path) -> None:
    """A results directory written by an incompatible version is refused, never overwritten."""
    from harness.records import SCHEMA_VERSION, read_json

    for run in suite.runs:
        for name in ("config.json", "status.json"):
            existing = read_json(suite.run_dir(out_root, run) / name)
            if existing is not None and existing.get("schema_version") != SCHEMA_VERSION:
                raise ConfigError(
                    str(suite.run_dir(out_root, run) / name),
                    "schema_version",
                    f"written by record schema {existing.get('schema_version')}; this version writes "
                    f"{SCHEMA_VERSION}. Use another --out, or move the old results away.",
                )


def warn_ineffective(suite: Suite, out_root: Path, build_arms: Collection[str] = ()) -> None:
    """Before training: arms whose comparison would measure nothing (harness/effective.py), on stderr.
    Static arms to be trained (`build_arms`) get their data built now, which their runs reuse."""
    from harness.effective import arm_plans, find_ineffective

    for warning in find_ineffective(arm_plans(suite, out_root / "_cache", build_arms)):
        print(f"warning: {warning.message()}", file=sys.stderr, flush=True)


def child_run_argv(args: argparse.Namespace, device_type: str, *extra: str) -> list[str]:
    """A `harness run` of this suite in another process, with this command's options."""
    argv = [sys.executable, "-m", "harness", "run", args.suite, "--out", args.out, "--device", device_type]
    argv.append("--no-report")
    for flag, value in (("--set", args.set), ("--arm", args.arm)):
        for item in value or []:
            argv += [flag, item]
    argv += ["--checkpoint-every", str(args.checkpoint_every), "--keep-checkpoints", str(args.keep_checkpoints)]
    argv += ["--spike-factor", str(args.spike_factor)]
    if args.no_progress:
        argv.append("--no-progress")
    if args.compile:
        argv.append("--compile")
    return [*argv, *extra]


def run_on_gpus(args: argparse.Namespace, gpus: list[str]) -> int:
    """One `harness run` per GPU, each with its own shard of the suite, side by side."""
    from harness.jobs import child_environment, run_side_by_side, threads_per_run, usable_cores

    threads = threads_per_run(usable_cores(), len(gpus), args.threads)
    commands = []
    for position, gpu in enumerate(gpus, 1):
        env = {**child_environment(os.environ, threads), "CUDA_VISIBLE_DEVICES": gpu}
        argv = child_run_argv(args, "cuda", "--shard", f"{position}/{len(gpus)}", "--threads", str(threads))
        commands.append((argv, env))
    status = run_side_by_side(commands)
    if not args.no_report and status != EXIT_INTERRUPTED:
        _report_after_run(args, Path(args.out))
    return status


def done_line(label: str, summary: dict[str, Any], headline: str) -> str:
    value = summary.get("metrics", {}).get(headline, float("nan"))
    return f"{label}: done in {summary.get('wall_s', 0):.0f}s, {headline} = {value:.4f}"


def train_one(run, run_dir: Path, label: str, cache, device, options, progress: bool, headline: str) -> str:
    """Train one run whose lock is held (by this process, or by the parent of a `--jobs` child):
    "done", "diverged", "failed" (recorded, the suite goes on) or "interrupted"."""
    from harness.runner import execute_run
    from harness.train import Diverged

    try:
        summary = execute_run(run, run_dir, cache, device, progress=progress, options=options)
    except KeyboardInterrupt:
        how = (RunRecord(run_dir).status or {}).get("error") or "KeyboardInterrupt"
        print(f"{label}: interrupted ({how})", file=sys.stderr)
        return "interrupted"
    except Diverged as err:
        print(f"{label}: DIVERGED: {err}", file=sys.stderr)
        return "diverged"
    except Exception as err:  # a failed run is recorded; the suite goes on with the next one
        print(f"{label}: FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        return "failed"
    if summary is not None:
        print(done_line(label, summary, headline))
    return "done"


def run_label(number: int, total: int, run) -> str:
    return f"[{number}/{total}] {run.arm} seed={run.seed} ({run.run_id})"


def tasks_left(run, run_dir: Path) -> list[str] | None:
    """None for a run to train (not done, or damaged: harness/integrity.py); for a finished one, the
    tasks of its config it still lacks (none, or ones added or changed since it ran:
    harness/downstream.py) and those whose kept predictions are damaged."""
    from harness.downstream import tasks_to_evaluate
    from harness.integrity import prediction_problems

    record = RunRecord(run_dir)
    if not record.is_done():
        return None
    summary = record.summary or {}
    lacking = tasks_to_evaluate(run.config.model_dump(mode="json"), summary)
    damaged = [task for task in prediction_problems(run_dir, summary) if task in run.config.eval.tasks]
    return lacking + [task for task in damaged if task not in lacking]


def report_damage(suite: Suite, runs: list, out_root: Path) -> None:
    """One line per run whose record is damaged (harness/integrity.py), saying what and what happens
    now: a run no longer done is run again, a finished one with damaged predictions evaluated again."""
    from harness.integrity import run_problems

    for number, run in enumerate(runs, 1):
        run_dir = suite.run_dir(out_root, run)
        problems = run_problems(run_dir)
        if problems:
            tasks = tasks_left(run, run_dir)
            then = (
                "it is run again" if tasks is None
                else f"{', '.join(tasks)} evaluated again" if tasks
                else "of tasks this suite no longer evaluates: left as they are"
            )  # fmt: skip
            print(f"{run_label(number, len(runs), run)}: damaged: {'; '.join(problems)}: {then}", file=sys.stderr)


def evaluate_one(run, run_dir: Path, label: str, tasks: list[str], device) -> str:
    """Evaluate a finished run, whose lock is held, on the tasks it lacks, from its checkpoint:
    "evaluated", "failed" (the run stays done; the suite goes on) or "interrupted"."""
    from harness.runner import evaluate_run

    try:
        downstream = evaluate_run(run_dir, device, tasks, config=run.config, keep_config=True)
    except KeyboardInterrupt:
        print(f"{label}: evaluation interrupted (the run stays done)", file=sys.stderr)
        return "interrupted"
    except Exception as err:  # the pretrained run is safe; its evaluation can be retried
        print(f"{label}: evaluation FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        return "failed"
    scores = [f"{task}.{m} = {r['median']:.4f}" for task, t in downstream.items() for m, r in t["metrics"].items()]
    print(f"{label}: evaluated, {', '.join(scores)}")
    return "evaluated"


def cmd_run(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite, overrides=args.set or [], arms=args.arm)
    if args.only_run:
        return _run_child(args, suite)
    shard = parse_shard(args.shard)
    out_root = Path(args.out)
    runs = shard_runs(suite.runs, shard)
    total = len(runs)
    part = f", shard {shard[0]}/{shard[1]}: {total} of them" if shard else ""
    controls = len(suite.spec.control_sources())
    control_part = f" + {controls} control(s) x {len(suite.spec.seeds)} seed(s)" if controls else ""
    print(f"suite {suite.name}: {len(suite.spec.arms)} arm(s) x {len(suite.spec.seeds)} seed(s){control_part} -> "
          f"{len(suite.runs)} run(s){part}")  # fmt: skip
    if args.dry_run:
        report_damage(suite, runs, out_root)
        rows = []
        for run in runs:
            left = tasks_left(run, suite.run_dir(out_root, run))
            state = "to run" if left is None else f"to evaluate: {', '.join(left)}" if left else "done"
            rows.append([run.arm, str(run.seed), run.run_id, state])
        print(_format_table(["arm", "seed", "run-id", "state"], rows))
        warn_ineffective(suite, out_root)
        for arm, arm_runs in suite.by_arm().items():
            print(f"\n[{arm}] resolved config (seed varies):")
            print(json.dumps(arm_runs[0].config.model_dump(mode="json"), indent=2))
        return 0
    gpus = parse_gpus(args.gpus) if args.gpus is not None else None
    if gpus and args.jobs is not None:
        raise ConfigError("--jobs", "jobs", "--gpus already runs one process per GPU; give one or the other")
    check_outputs(args)
    check_record_versions(suite, out_root)
    check_corpora(suite, out_root)
    if gpus:
        return run_on_gpus(args, gpus)

    import torch  # imported late: `--dry-run` and bad-input errors stay fast

    from harness.data.cache import StageCache
    from harness.distributed import from_environment
    from harness.jobs import Job, default_jobs, run_parallel, thread_limit, threads_per_run, usable_cores
    from harness.results import write_manifest
    from harness.runner import RunOptions

    check_task_data(suite)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "device", "cuda requested but no CUDA device is available")
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ranks = from_environment(device_type)
    if ranks.enabled and (args.jobs or 1) > 1:
        raise ConfigError("--jobs", "jobs", "under torchrun each run already spans several processes: use --jobs 1")
    if ranks.is_main:
        report_damage(suite, runs, out_root)
    left = {run.run_id: tasks_left(run, suite.run_dir(out_root, run)) for run in runs}
    to_do = sum(tasks is None or bool(tasks) for tasks in left.values())
    if ranks.is_main:
        warn_ineffective(suite, out_root, build_arms={run.arm for run in runs if left[run.run_id] is None})
    cores = usable_cores()
    jobs = min(args.jobs or default_jobs(cores, to_do, device_type), max(1, to_do))
    # torchrun's processes on this machine share its cores too
    processes = jobs * int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = threads_per_run(cores, processes, args.threads, thread_limit(os.environ))
    if jobs == 1 and args.threads is None:  # nor more than torch chose by itself (e.g. physical cores only)
        threads = min(threads, torch.get_num_threads())
    device = torch.device(f"cuda:{ranks.local_rank}" if device_type == "cuda" and ranks.enabled else device_type)
    if ranks.is_main:
        write_manifest(out_root / suite.name, suite, args.set or [])
        for run in suite.runs:  # the whole suite is visible (`harness ls`) before the first run starts
            RunRecord(suite.run_dir(out_root, run)).register(run.header, run.config.model_dump(mode="json"))
    headline = suite.spec.metrics[0]
    where = f"{device}, {threads} thread(s)" if device_type == "cpu" else str(device)
    if jobs > 1:
        print(f"{jobs} runs at a time, {threads} thread(s) each ({cores} core(s) usable); "
              f"each run's output in its {LOG_NAME}")  # fmt: skip
        work = [
            Job(run_label(n, total, run), run.run_id, suite.run_dir(out_root, run),
                child_run_argv(args, device_type, "--only-run", run.run_id, "--threads", str(threads)),
                tuple(left[run.run_id] or ()), run.arm)
            for n, run in enumerate(runs, 1)
        ]  # fmt: skip
        tally = run_parallel(work, jobs, threads, where, lambda label, s: done_line(label, s, headline),
                             progress=not args.no_progress)  # fmt: skip
    else:
        set_torch_threads(threads)
        with stop_on_signals() as stop:  # Ctrl-C or SIGTERM: the run in training stops at a step, checkpointed
            options = RunOptions(args.compile, args.checkpoint_every, args.keep_checkpoints, args.spike_factor, ranks,
                                 stop)  # fmt: skip
            tally = _run_sequentially(args, suite, runs, out_root, StageCache(out_root / "_cache"), device, options,
                                      where)  # fmt: skip
    if tally.interrupted:
        return EXIT_INTERRUPTED
    if not ranks.is_main:
        return 0
    return _end_of_run(args, suite, out_root, tally)


def _run_sequentially(args, suite: Suite, runs: list, out_root: Path, cache, device, options, where: str) -> Tally:
    """One run after another in this process (under torchrun, every rank takes part in each; a
    finished run lacking tasks is evaluated by rank 0 alone)."""
    from harness.records import RunLock

    ranks = options.distributed
    headline = suite.spec.metrics[0]
    tally = Tally()
    for number, run in enumerate(runs, 1):
        run_dir = suite.run_dir(out_root, run)
        label = run_label(number, len(runs), run)
        lock = RunLock(run_dir)
        decision, tasks = _decide(run, run_dir, lock) if ranks.is_main else ("train", [])
        decision = ranks.broadcast(decision)
        if decision == "done":
            if ranks.is_main:
                print(f"{label}: already done, skipped")
            tally.skipped += 1
            continue
        if decision == "busy":
            print(f"{label}: being trained or evaluated by {lock.holder()}, skipped")
            tally.busy += 1
            continue
        if decision == "evaluate":
            if not ranks.is_main:
                continue
            print(f"{label}: done; evaluating {', '.join(tasks)} on {where}")
            with lock:
                outcome = evaluate_one(run, run_dir, label, tasks, device)
            if outcome == "interrupted":
                tally.interrupted = True
                break
            if outcome == "evaluated":
                tally.evaluated += 1
            else:
                tally.not_evaluated.append(run.run_id)
            continue
        if ranks.is_main:
            where = f"{ranks.world} processes" if ranks.enabled else where
            doing = "training" if run.config.train.pretrain is not False else "evaluating without pretraining"
            print(f"{label}: {doing} on {where}")
        with lock:
            outcome = train_one(run, run_dir, label, cache, device, options, not args.no_progress, headline)
        if outcome == "interrupted":
            tally.interrupted = True
            break
        if outcome == "done":
            tally.trained += 1
        else:
            (tally.diverged if outcome == "diverged" else tally.failed).append(run.run_id)
    return tally


def _decide(run, run_dir: Path, lock) -> tuple[str, list[str]]:
    """What a run needs: "done" (nothing), "busy" (another process holds it), "evaluate" (a finished
    run lacking tasks, returned with them) or "train"; the lock is held for the last two."""
    if tasks_left(run, run_dir) == []:
        return "done", []
    if not lock.acquire():
        return "busy", []
    tasks = tasks_left(run, run_dir)  # again, now that no other process can be at it
    if tasks is None:
        return "train", []
    if not tasks:
        lock.release()
        return "done", []
    return "evaluate", tasks


def _run_child(args: argparse.Namespace, suite: Suite) -> int:
    """`--only-run RUN_ID`: train that one run, whose lock the parent `harness run --jobs` holds and
    shares with this process. Exit status 1 when it failed, 130 when interrupted (the parent stops it
    with SIGINT: it checkpoints at the next step and records the run as interrupted)."""
    found = [run for run in suite.runs if run.run_id == args.only_run]
    if not found:
        raise ConfigError("--only-run", "only_run", f"no run {args.only_run} in suite {suite.name}")
    # a parent started in the background of a non-interactive shell passes SIGINT down as ignored;
    # the parent stops its children with SIGINT, so take it back
    with stop_on_signals(take_ignored=True) as stop:
        return _child_work(args, suite, found[0], stop)


def _child_work(args: argparse.Namespace, suite: Suite, run, stop) -> int:
    """A `--jobs` child's run: trained, or (finished) evaluated on the tasks it lacks; the exit status."""
    import torch

    from harness.data.cache import StageCache
    from harness.runner import RunOptions

    out_root = Path(args.out)
    set_torch_threads(args.threads or 1)
    device = torch.device(args.device or "cpu")
    tasks = tasks_left(run, suite.run_dir(out_root, run))
    if tasks is not None:  # finished: evaluate what it lacks, if another process has not just done so
        if not tasks:
            print(f"{run.arm} seed={run.seed} ({run.run_id}): done, nothing left to evaluate")
            return 0
        print(f"{run.arm} seed={run.seed} ({run.run_id}): evaluating {', '.join(tasks)} on {device}", flush=True)
        outcome = evaluate_one(run, suite.run_dir(out_root, run), run.run_id, tasks, device)
        return {"evaluated": 0, "interrupted": EXIT_INTERRUPTED}.get(outcome, 1)
    options = RunOptions(args.compile, args.checkpoint_every, args.keep_checkpoints, args.spike_factor, stop=stop)
    print(f"{run.arm} seed={run.seed} ({run.run_id}): training on {device}, {torch.get_num_threads()} thread(s) "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})", flush=True)  # fmt: skip
    cache, headline = StageCache(out_root / "_cache"), suite.spec.metrics[0]
    outcome = train_one(
        run, suite.run_dir(out_root, run), run.run_id, cache, device, options, not args.no_progress, headline
    )
    return {"done": 0, "diverged": 0, "failed": 1}.get(outcome, EXIT_INTERRUPTED)


def _end_of_run(args: argparse.Namespace, suite: Suite, out_root: Path, tally: Tally) -> int:
    """The suite's table and report once every run has ended, then what did not go well; exit 1 when a
    run failed, 130 when a run's own process was interrupted."""
    if tally.trained == 0 and not tally.failed and not tally.diverged and not tally.busy and not tally.interrupted_runs:
        if tally.evaluated or tally.not_evaluated:
            done = f", {tally.skipped} already up to date" if tally.skipped else ""
            print(f"nothing trained: {tally.evaluated} finished run(s) evaluated on the task(s) they lacked{done}")
        else:
            print(f"all {tally.skipped} run(s) were already done: nothing trained")
    print()
    print(suite_table(suite, out_root))
    if not args.no_report:
        _report_after_run(args, out_root)
    if tally.diverged:
        print(f"\n{len(tally.diverged)} run(s) diverged: {', '.join(tally.diverged)} (recorded; see status.json)",
              file=sys.stderr)  # fmt: skip
    if tally.busy:
        print(f"\n{tally.busy} run(s) were being trained by other processes", file=sys.stderr)
    if tally.not_evaluated:
        print(f"\n{len(tally.not_evaluated)} finished run(s) could not be evaluated: {', '.join(tally.not_evaluated)} "
              "(they stay done; the error is above, or in their output.log)", file=sys.stderr)  # fmt: skip
    if tally.interrupted_runs:
        print(f"\n{len(tally.interrupted_runs)} run(s) interrupted: {', '.join(tally.interrupted_runs)} "
              "(`harness run` again resumes them)", file=sys.stderr)  # fmt: skip
    if tally.failed:
        print(f"\n{len(tally.failed)} run(s) failed: {', '.join(tally.failed)} (see status.json in each)",
              file=sys.stderr)  # fmt: skip
    if tally.failed or tally.not_evaluated:
        return 1
    return EXIT_INTERRUPTED if tally.interrupted_runs else 0


def _report_after_run(args: argparse.Namespace, out_root: Path) -> None:
    """The suite's report, every arm (also those not run this time); a report that cannot be
    written is an error message, never a failed run."""
    from harness.report import build_report, default_report_dir
    from harness.results import load_results, source_from_suite

    try:
        source = source_from_suite(load_suite(args.suite, overrides=args.set or []), out_root)
        out_dir = Path(args.report_out) if args.report_out else default_report_dir([source])
        output = build_report(load_results([source]), out_dir)
    except Exception as err:  # the runs are safe on disk; `harness report` can retry
        print(f"report not written: {type(err).__name__}: {err}", file=sys.stderr)
        return
    print(f"\nreport: {output.directory / 'report.md'} (and report.html)")
    for problem in output.problems:
        print(f"  problem: {problem}", file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import build_report, default_report_dir
    from harness.results import load_results, resolve_sources

    if args.out:
        check_output_dir(args.out, "--out")
    problems: list[str] = []
    sources = resolve_sources(args.source, Path(args.results), args.set or [], problems)
    results = load_results(sources, problems)
    if not len(results.runs):
        for problem in results.problems:
            print(f"error: {problem}", file=sys.stderr)
        if not results.problems:
            print(f"error: no runs found for {', '.join(args.source)}", file=sys.stderr)
        return 2
    try:
        output = build_report(results, Path(args.out) if args.out else default_report_dir(sources), args.baseline)
    except ValueError as err:
        raise ConfigError("--baseline", "baseline", str(err)) from None
    done = int((results.runs["state"] == "done").sum())
    print(f"{len(results.runs)} run(s), {done} finished -> {output.directory / 'report.md'} (and report.html)")
    for problem in output.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from harness.curves import describe, write_curves

    for directory in args.dirs:
        if not Path(directory).is_dir():
            raise ConfigError(directory, "", "not a results directory")
    check_output_file(args.out, "--out")
    problems: list[str] = []
    document = write_curves([Path(d) for d in args.dirs], Path(args.out), problems)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if not document["runs"]:
        print(f"error: no finished runs under {', '.join(args.dirs)}", file=sys.stderr)
        return 2
    print(describe(document))
    print(f"written: {args.out}")
    return 0


def cmd_references(args: argparse.Namespace) -> int:
    from harness.data.cache import StageCache
    from harness.runner import fill_references

    changed = 0
    for directory in map(Path, args.dirs):
        if not directory.is_dir():
            raise ConfigError(str(directory), "", "not a results directory")
        cache = StageCache(Path(args.cache) if args.cache else directory.parent / "_cache")
        for run_dir in sorted(p.parent for p in directory.glob("*/summary.json")):
            changed += fill_references(run_dir, cache)
    print(f"{changed} record(s) updated")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from harness.migrate import migrate

    for directory in args.dirs:
        if not Path(directory).is_dir():
            raise ConfigError(directory, "", "not a results directory")
    result = migrate([Path(d) for d in args.dirs], dry_run=args.dry_run)
    for problem in result.problems:
        print(f"error: {problem}", file=sys.stderr)
    if result.problems:
        print("nothing was changed", file=sys.stderr)
        return 2
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from harness.index import IndexFileError, write_index

    check_output_file(args.out, "--out")
    try:
        write_index([Path(r) for r in args.reports], Path(args.out))
    except IndexFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(args.reports)} report(s) -> {args.out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite, overrides=args.set or [])
    search = suite.spec.search
    if search is None:
        raise ConfigError(str(suite.path), "search", "the suite has no search section")
    from harness import search as searching

    out_root = Path(args.out)
    trials = args.trials or search.trials
    if trials is None and not (args.timeout_s or search.timeout_s):
        raise ConfigError(str(suite.path), "search.trials", "give a number of trials or a timeout")
    timeout = args.timeout_s or search.timeout_s
    died: dict[int, int] = {}  # worker -> exit status, for the workers that did not end well
    if args.worker_index is None:  # the parent checks what the workers will read; they skip it
        check_outputs(args)
        check_corpora(suite, out_root)
        check_task_data(suite)
    url = args.storage or searching.default_storage(out_root, suite)
    storage = searching.open_storage(url, search)
    if args.worker_index is None:
        searching.create_studies(suite, storage)
        print(f"search {suite.name}: {trials} trial(s) per study, {args.workers} worker(s), storage {url}")
    if args.workers > 1 and args.worker_index is None:
        died = _search_workers(args, suite, storage, url, trials, timeout)
    else:
        import torch

        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        worker = args.worker_index or 0
        prefix = f"[worker {worker}] " if args.worker_index is not None else ""
        budget = trials or 10**9  # a time budget alone: trials until the timeout

        def log(message: str) -> None:
            print(prefix + message, flush=True)

        searching.work(suite, storage, out_root, device, budget, timeout, worker, log=log)
    if args.worker_index is not None:
        return 0
    report_dir = searching.report_dir(out_root, suite, url, args.report_out)
    for line in searching.write_search_report(suite, storage, report_dir, args.set or []):
        print(line)
    if died:
        print(f"\n{len(died)} worker(s) died: the search is incomplete or ran trials again (above)", file=sys.stderr)
        return 1
    return 0


def _search_workers(args: argparse.Namespace, suite: Suite, storage, url: str, trials, timeout) -> dict[int, int]:
    """`harness search --workers N`: N worker processes on the study, waited for. Returns the workers
    that died (worker -> exit status), each named on stderr with the trials it left unfinished."""
    from harness import search as searching

    argv = ["search", args.suite, "--storage", url, "--out", args.out, "--workers", "1"]
    argv += [f"--set={s}" for s in args.set or []]
    argv += ["--trials", str(trials)] if trials else []
    argv += ["--timeout-s", str(timeout)] if timeout else []
    argv += ["--device", args.device] if args.device else []
    started = datetime.now()  # the trials a dead worker left are among those started since
    codes = searching.spawn_workers(argv, args.workers)
    died = {worker: code for worker, code in enumerate(codes) if code != 0}
    for worker, code in died.items():
        lost = searching.dead_worker_trials(suite, storage, worker, started) or ["no trial of it was left unfinished"]
        print(f"worker {worker} {searching.how_it_ended(code)}: " + "; ".join(lost), file=sys.stderr)
    return died


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from harness.bench import BENCH_PRESETS, BenchSpec, run_bench, summarize

    if args.json:  # checked now: the file is written after minutes of measuring
        check_output_file(args.json, "--json")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", "device", "cuda requested but no CUDA device is available")
    if args.vs == "hf":
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise ConfigError("--vs", "hf", "needs transformers: pip install -e '.[bench]'") from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.preset not in BENCH_PRESETS:
        raise ConfigError("--preset", "preset", f"expected one of {', '.join(BENCH_PRESETS)}")
    spec = BenchSpec(args.preset, args.seq, args.vocab, args.batch, device, args.steps, args.pairs, args.warmup)
    report = run_bench(spec, vs_hf=args.vs == "hf", switches=args.switches)
    print(summarize(report))
    if args.json:
        from harness.records import atomic_write_json

        atomic_write_json(Path(args.json), report)
        print(f"written: {args.json}")
    return 0


def cmd_bench_jobs(args: argparse.Namespace) -> int:
    from harness.bench_jobs import CONDITIONS, bench_jobs, summarize_jobs

    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    if not conditions or any(c not in CONDITIONS for c in conditions):
        raise ConfigError("--conditions", "conditions", f"expected some of {', '.join(CONDITIONS)}")
    load_suite(args.suite, overrides=args.set or [], arms=args.arm)  # bad input fails here, not in a child
    if args.json:
        check_output_file(args.json, "--json")
    json_path = Path(args.json) if args.json else None

    def log(line: str) -> None:
        print(line, flush=True)

    report = bench_jobs(args.suite, args.set or [], args.arm or [], args.jobs, args.rounds, conditions, json_path, log,
                        side_limit_s=args.side_limit_s)  # fmt: skip
    print(summarize_jobs(report))
    if json_path:
        print(f"written: {json_path}")
    return 0


def naming(source: str, err: Exception) -> str:
    """The error's text led by the file or directory it is about, unless it names it first already."""
    text = str(err)
    return text if text.startswith(str(source)) else f"{source}: {text}"


def _interop(action, source: str, out: str) -> int:
    """export / import-hf: transformers is needed; a model that cannot be converted is bad input."""
    check_output_dir(out, "--out")
    try:
        action(Path(source), Path(out))
    except ImportError:
        raise ConfigError(source, "transformers", "needs transformers: pip install -e '.[bench]'") from None
    except (ValueError, OSError) as err:  # ExportError is a ValueError
        print(f"error: {naming(source, err)}", file=sys.stderr)
        return 2
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.export import export_run

    return _interop(export_run, args.run_dir, args.out)


def cmd_import(args: argparse.Namespace) -> int:
    from harness.export import import_hf

    return _interop(import_hf, args.hf_dir, args.out)


def eval_changes(assignments: list[str]) -> dict[str, Any]:
    """`harness eval --set eval.KEY=VALUE ...` -> the changes to a run's eval section. Anything else
    would change the pretrained model, and so would the held-out fields of eval: refused."""
    from harness.config import HELDOUT_EVAL_FIELDS, deep_merge, nested, parse_set

    changes: dict[str, Any] = {}
    for assignment in assignments:
        parts, value = parse_set(assignment)
        key = ".".join(parts)
        if parts[0] != "eval":
            raise ConfigError(
                "--set",
                key,
                "harness eval changes eval.* only: the rest decides the pretrained model (and its run "
                "id); a changed model is pretrained by `harness run`",
            )
        change = nested(parts[1:], value) if len(parts) > 1 else value
        if not isinstance(change, dict):
            raise ConfigError("--set", key, "expected a mapping of eval settings")
        held_out = [f for f in HELDOUT_EVAL_FIELDS if f in change]
        if held_out:
            raise ConfigError(
                "--set",
                f"eval.{held_out[0]}",
                "the held-out MLM evaluation is part of pretraining and of the run "
                "id: harness eval redoes downstream tasks only",
            )
        changes = deep_merge(changes, change)
    return changes


def cmd_eval(args: argparse.Namespace) -> int:
    changes = eval_changes(args.set or [])  # bad overrides stop here, before torch is imported
    import torch

    from harness.runner import evaluate_run, evaluation_config
    from harness.tasks import TaskDataError

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    status = 0
    for run_dir in args.run_dir:
        try:
            config = evaluation_config(Path(run_dir), changes, args.task)
            with stop_on_signals():  # SIGTERM stops it as Ctrl-C does
                downstream = evaluate_run(Path(run_dir), device, args.task, config=config)
        except KeyboardInterrupt as err:
            print(f"{run_dir}: evaluation interrupted ({err or 'KeyboardInterrupt'}); the fine-tuning seeds "
                  "finished are kept and `harness eval` again does the rest", file=sys.stderr)  # fmt: skip
            return EXIT_INTERRUPTED
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 2
            continue
        except (TaskDataError, ValueError, OSError) as err:
            print(f"error: {naming(run_dir, err)}", file=sys.stderr)
            status = 2
            continue
        for name, result in downstream.items():
            medians = ", ".join(f"{m} {r['median']:.4f}" for m, r in result["metrics"].items())
            baseline = ", ".join(f"{m} {v:.4f}" for m, v in result["majority_baseline"].items())
            diverged = f", {len(result['diverged_seeds'])} seed(s) diverged" if result["diverged_seeds"] else ""
            seeds = len(next(iter(result["metrics"].values()))["seeds"])
            print(f"{run_dir}: {name}: median {medians} over {seeds} seed(s){diverged}; majority baseline {baseline}")
    return status


def cmd_data(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite, overrides=args.set or [], arms=args.arm)
    from harness.data.cache import StageCache
    from harness.data.inspect import data_statistics, format_statistics
    from harness.data.pipeline import prepare_data
    from harness.runner import masking_copies

    check_output_dir(args.out, "--out")
    check_corpora(suite, Path(args.out))
    cache = StageCache(Path(args.out) / "_cache")
    report = {}
    for arm, runs in suite.by_arm().items():
        config = runs[0].config
        try:
            data = prepare_data(config.data, cache, config.eval.heldout_sequences, masking_copies(config))
            report[arm] = data_statistics(data, config, epochs=args.epochs)
        except (DataSourceError, ValueError, OSError) as err:  # a corpus or format that cannot be built
            print(f"error: arm {arm}: {type(err).__name__}: {err}", file=sys.stderr)
            return 2
        if not args.json:
            print(format_statistics(arm, report[arm]), flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
    warn_ineffective(suite, Path(args.out))
    return 0


def _headline(summary: dict[str, Any] | None) -> str:
    metrics = (summary or {}).get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        return "-"
    key = "heldout_ppl" if "heldout_ppl" in metrics else next(iter(metrics))
    value = metrics[key]
    return f"{key}={value:.4f}" if isinstance(value, (int, float)) else f"{key}={value!r}"


def cmd_ls(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        print(f"error: {root}: {'not a directory' if root.exists() else 'no such directory'}", file=sys.stderr)
        return 2
    from harness.integrity import run_problems
    from harness.records import RunLock

    rows = []
    for record in find_records(root):
        header = record.config or {}
        status = record.status or {}
        state = str(status.get("state", "unknown"))
        problems = run_problems(record.dir)
        if problems:  # never `done`: `harness run` runs it again, or evaluates its damaged tasks again
            state = f"damaged ({'; '.join(problems)[:100]})"
        elif state == "running" and not RunLock(record.dir).held_elsewhere():
            state = "running? (stale: no live process holds it; `harness run` resumes it)"
        elif state == "failed":
            state += f" ({str(status.get('error', ''))[:60]})"
        elif state == "interrupted":
            state += f" at step {status.get('resume_step', 0)} (`harness run` resumes it)"
        rows.append(
            [
                str(header.get("suite", "?")),
                str(header.get("arm", "?")) + (f"#trial-{header['trial']}" if "trial" in header else ""),
                str(header.get("seed", "?")),
                str(header.get("run_id", record.dir.name)),
                state,
                _headline(record.summary),
            ]
        )
    if not rows:
        print(f"no runs under {root}")
        return 0
    print(_format_table(["suite", "arm", "seed", "run-id", "status", "headline"], rows))
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with a bad flag reported as every bad input is: one line, exit status 2 (argparse's
    own prints the whole usage first). Subcommands' parsers are made of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="harness", description="BERT/RoBERTa pretraining ablations as data.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and evaluate every arm x seed of a suite (finished runs are skipped)")
    run.add_argument("suite", help="suite YAML file, e.g. ablations/quickstart.yaml")
    run.add_argument("--arm", action="append", help="run only this arm (repeatable)")
    run.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config field in every arm")
    run.add_argument("--out", default=DEFAULT_OUT, help="results root (default: results)")
    run.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    run.add_argument("--dry-run", action="store_true", help="print the resolved runs and configs; train nothing")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--shard", metavar="I/N", help="train only the I-th of N deterministic shards of the runs")
    run.add_argument("--gpus", help="comma-separated GPU ids: one process per GPU, each a shard of the runs")
    run.add_argument(
        "--jobs",
        type=int_at_least(1),
        help="runs trained at once, each in its own process (default: on a CPU one per usable core, "
        "at most the runs to do; on CUDA 1)",
    )
    run.add_argument(
        "--threads",
        type=int_at_least(1),
        help="torch threads per run (default: usable cores // jobs, at most OMP_NUM_THREADS when set)",
    )
    run.add_argument("--only-run", help=argparse.SUPPRESS)  # a `--jobs` child: this run, its lock held by the parent
    run.add_argument(
        "--checkpoint-every",
        type=int_at_least(0),
        default=200,
        help="steps between checkpoints (default 200; 0: only at the end of training)",
    )
    run.add_argument("--keep-checkpoints", type=int_at_least(1), default=2, help="checkpoints kept per run (default 2)")
    run.add_argument(
        "--spike-factor",
        type=finite_float(above=1, or_zero=True),
        default=0.0,
        help="stop a run as diverged when its loss exceeds this (> 1) x the median of recent steps "
        "(default 0: only NaN/inf)",
    )
    run.add_argument("--compile", action="store_true", help="train through torch.compile (falls back to eager)")
    run.add_argument("--no-report", action="store_true", help="do not write the suite's report at the end")
    run.add_argument(
        "--report-out", help="report directory (default: <out>/reports/<suite>; committed results: reports/<suite>)"
    )
    run.set_defaults(func=cmd_run)

    data = sub.add_parser("data", help="build (or load) each arm's data and print what to check about it")
    data.add_argument("suite", help="suite YAML file")
    data.add_argument("--arm", action="append", help="only this arm (repeatable)")
    data.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config field")
    data.add_argument("--out", default=DEFAULT_OUT, help="results root whose _cache holds the data stages")
    data.add_argument("--epochs", type=int_at_least(1), help="epochs over which to count distinct masks per sequence")
    data.add_argument("--json", action="store_true", help="machine-readable output")
    data.set_defaults(func=cmd_data)

    evaluate = sub.add_parser("eval", help="(re-)evaluate finished runs downstream without retraining")
    evaluate.add_argument("run_dir", nargs="+", help="run directories (results/<suite>/<run-id>)")
    evaluate.add_argument("--task", action="append", help="only this task (repeatable; default: the run's eval.tasks)")
    evaluate.add_argument(
        "--set",
        action="append",
        metavar="eval.KEY=VALUE",
        help="override an eval field of the run's config, e.g. eval.glue_dir=DIR (eval.* only, held-out fields aside)",
    )
    evaluate.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    evaluate.set_defaults(func=cmd_eval)

    search = sub.add_parser("search", help="Optuna search over the suite's `search` section; trials are runs")
    search.add_argument("suite", help="suite YAML file with a search section")
    search.add_argument("--storage", help="SQLAlchemy URL (default: sqlite file in <out>/<suite>.search/)")
    search.add_argument(
        "--trials", type=int_at_least(1), help="trials per study, all workers together (default: the suite's)"
    )
    search.add_argument("--timeout-s", type=finite_float(above=0), help="stop starting trials after this many seconds")
    search.add_argument(
        "--workers", type=int_at_least(1), default=1, help="worker processes on this machine (default 1)"
    )
    search.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config field")
    search.add_argument("--out", default=DEFAULT_OUT, help="results root (default: results)")
    search.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    search.add_argument(
        "--report-out",
        help="report directory (default: <out>/reports/<suite>); the search goes in its search/ folder, "
        "search-<storage>/ for a storage other than the default SQLite file",
    )
    search.add_argument("--worker-index", type=int_at_least(0), help=argparse.SUPPRESS)  # set on spawned workers
    search.set_defaults(func=cmd_search)

    bench = sub.add_parser("bench", help="training-step throughput, vs Hugging Face on the same model (--vs hf)")
    bench.add_argument("--preset", default="tiny", help="tiny (4x256) | small (4x512) | base (12x768)")
    bench.add_argument("--seq", type=int_at_least(8), default=128, help="sequence length (default 128)")
    bench.add_argument("--vocab", type=int_at_least(64), default=50265, help="vocabulary size (default 50265)")
    bench.add_argument("--batch", type=int_at_least(1), default=32, help="sequences per step (default 32)")
    bench.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    bench.add_argument("--vs", choices=["hf"], help="interleave with RobertaForMaskedLM on the same configuration")
    bench.add_argument("--steps", type=int_at_least(1), default=6, help="timed steps per measurement (default 6)")
    bench.add_argument("--pairs", type=int_at_least(1), default=3, help="A B measurement pairs (default 3)")
    bench.add_argument("--warmup", type=int_at_least(1), default=2, help="untimed steps per side first (default 2)")
    bench.add_argument("--switches", action="store_true", help="also measure each fast-path switch off vs on")
    bench.add_argument("--json", help="write the full results here (results/bench/...)")
    bench.set_defaults(func=cmd_bench)
    bench_kinds = bench.add_subparsers(dest="bench_kind", metavar="jobs")
    jobs = bench_kinds.add_parser(
        "jobs", help="a suite's wall time with run --jobs N vs --jobs 1, quiet and beside one busy process"
    )
    jobs.add_argument("suite", nargs="?", default="ablations/quickstart.yaml", help="default: the quickstart")
    jobs.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config field")
    jobs.add_argument("--arm", action="append", help="only this arm (repeatable)")
    jobs.add_argument("--jobs", type=int_at_least(2), default=2, help="the parallel side (default 2)")
    jobs.add_argument("--rounds", type=int_at_least(1), default=1, help="pairs per condition (default 1)")
    jobs.add_argument("--conditions", default="quiet,busy", help="quiet, busy or both (default quiet,busy)")
    jobs.add_argument(
        "--side-limit-s",
        type=finite_float(above=0),
        help="stop a side after this many seconds and record it as censored: a bound on the speedup, not a "
        "speedup (--jobs 1 beside a busy process can take hours)",
    )
    jobs.add_argument("--json", help="write the results here (results/bench/jobs.json)")
    jobs.set_defaults(func=cmd_bench_jobs)

    export = sub.add_parser("export", help="write a finished run as a Hugging Face transformers checkpoint")
    export.add_argument("run_dir", help="results/<suite>/<run-id>")
    export.add_argument("--out", required=True, help="directory to write (from_pretrained loads it)")
    export.add_argument("--format", choices=["hf"], default="hf", help="hf: transformers (the only format)")
    export.set_defaults(func=cmd_export)

    importer = sub.add_parser("import-hf", help="a local BERT/RoBERTa checkpoint as a run directory (for eval)")
    importer.add_argument("hf_dir", help="transformers checkpoint directory (config.json, weights, tokenizer.json)")
    importer.add_argument("--out", required=True, help="run directory to create, e.g. results/imported/roberta")
    importer.set_defaults(func=cmd_import)

    report = sub.add_parser("report", help="tables, statistics, figures and report.md/.html comparing a suite's arms")
    report.add_argument("source", nargs="+", help="suite YAML file(s) or results director(ies); several are compared")
    report.add_argument(
        "--out", help="report directory (default: <results root>/reports/<suite>; committed results: reports/<suite>)"
    )
    report.add_argument("--baseline", help="compare every arm with this one (default: the suite's comparisons)")
    report.add_argument("--results", default=DEFAULT_OUT, help="results root for suite files (default: results)")
    report.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="the overrides the suite ran with")
    report.set_defaults(func=cmd_report)

    index = sub.add_parser("index", help="every comparison of several reports in one Markdown table, by scale")
    index.add_argument("reports", nargs="+", help="report directories, e.g. reports/*.tiny reports/*.small")
    index.add_argument(
        "--out", required=True, help="Markdown file whose marked comparisons block is rewritten (created if absent)"
    )
    index.set_defaults(func=cmd_index)

    curves = sub.add_parser("curves", help="held-out learning curves of finished runs as one JSON file")
    curves.add_argument("dirs", nargs="+", help="suite results directories")
    curves.add_argument("--out", required=True, help="JSON file to write, e.g. results/bench/cpu-recipe.json")
    curves.set_defaults(func=cmd_curves)

    refs = sub.add_parser(
        "references", help="add the held-out unigram floor and byte counts to finished runs recorded without them"
    )
    refs.add_argument("dirs", nargs="+", help="suite results directories, e.g. results/roberta-table1-masking.tiny")
    refs.add_argument("--cache", help="stage cache to build data in (default: <results root>/_cache)")
    refs.set_defaults(func=cmd_references)

    migrate = sub.add_parser(
        "migrate", help="rename run records made under an earlier run-id rule to their current id (see README)"
    )
    migrate.add_argument("dirs", nargs="+", help="suite results directories or a results root, e.g. results/*.tiny")
    migrate.add_argument("--dry-run", action="store_true", help="say what would be done; change nothing")
    migrate.set_defaults(func=cmd_migrate)

    ls = sub.add_parser("ls", help="list runs with their status and headline metric")
    ls.add_argument("dir", nargs="?", default=DEFAULT_OUT, help="results root or one suite's directory")
    ls.set_defaults(func=cmd_ls)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a bad flag, already reported: the status is returned like any other
        return stop.code if isinstance(stop.code, int) else 2
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stderr.close()
        return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C (or SIGTERM where a command handles it) outside a run
        print(f"interrupted ({err or 'KeyboardInterrupt'})", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
